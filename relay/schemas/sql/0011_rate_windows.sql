-- Requests and tokens per minute per user (or relay token), shared by every
-- relay process through this table (relay.budgets.minute, docs/cost.md).
-- Each process adds its deltas about once a second and reads the minute's
-- totals back in the same statement. UNLOGGED: short-lived counters, no WAL;
-- a database crash empties it, which only forgets the current minute.
CREATE UNLOGGED TABLE rate_windows (
    window_start timestamptz NOT NULL,  -- the UTC minute
    subject      text NOT NULL,         -- the user's id or the relay token's id
    requests     bigint NOT NULL,
    tokens       bigint NOT NULL,
    PRIMARY KEY (window_start, subject)
);
