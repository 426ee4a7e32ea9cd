-- The console's Sessions page (issue 20; docs/console.md "Sessions"): a client
-- session is the interceptions sharing a client_session_id (Claude Code's,
-- Codex's, ...). Its page and its summary in the list read them by this index;
-- without it, each would scan the table. Partial: requests without a session
-- id (SDKs, curl) add nothing to maintain. This is the only index the console
-- adds: the list walks interceptions_started_at_idx newest first, grouped
-- sessions use interceptions_initiator_started_idx, spend the started_at
-- index and the usage tables' BRIN indexes on created_at.
CREATE INDEX interceptions_client_session_idx ON interceptions (client_session_id, started_at)
    WHERE client_session_id IS NOT NULL;
