-- Interceptions are recorded when they start and completed when they end, so a
-- relay that dies (SIGKILL, OOM, power loss) leaves a row for every request it
-- was serving instead of nothing. docs/recorded-data.md describes the cycle.
--
-- in_progress ──▶ completed | failed | cancelled   (the relay's own completion)
--      └────────▶ interrupted                       (its process was found gone)
-- A completion that arrives after 'interrupted' (a spool replayed later) still
-- wins: the recorder upserts, and a row never goes back to an earlier state.

-- One row per running relay process (an "instance"), kept alive by a heartbeat.
-- host_key is the hostname, the boot id and the PID namespace: processes with
-- the same key can tell from the pid whether the other is still running, so a
-- relay restarted on the same machine settles its predecessor's rows at once;
-- others wait until the heartbeat is older than the lease.
CREATE TABLE relay_instances (
    id           uuid PRIMARY KEY,
    host_key     text NOT NULL,
    hostname     text NOT NULL,
    pid          integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at   timestamptz   -- set by a graceful stop
);

ALTER TABLE interceptions ADD COLUMN instance_id uuid;  -- relay_instances.id (no FK: rows outlive it)
ALTER TABLE interceptions ALTER COLUMN ended_at DROP NOT NULL;  -- null while in_progress
ALTER TABLE interceptions DROP CONSTRAINT interceptions_status_check;
ALTER TABLE interceptions ADD CONSTRAINT interceptions_status_check
    CHECK (status IN ('in_progress', 'completed', 'failed', 'cancelled', 'interrupted'));
-- The sweep for rows of dead instances reads only these.
CREATE INDEX interceptions_in_progress_idx ON interceptions (instance_id)
    WHERE status = 'in_progress';
