"""A recorded-data set of the size issue 20 names: 1M interceptions, built in
PostgreSQL with generate_series (seconds, not a million Python rows).

Shared by the EXPLAIN test (tests/admin/test_console_explain.py) and the
console benchmark (bench/console.py), so both look at the same table.

Shape (``rows`` interceptions over ``DAYS`` days ending at ``now``, oldest
first, ids and times increasing together as the relay's UUIDv7 ids do):

- ``USERS`` users; blocks of ``SESSION_LEN`` consecutive interceptions are one
  session of one user: 4 blocks in 5 carry a client session id (Claude Code
  or Codex), the fifth none (an SDK: grouped by user and time).
- every interception: one token usage (priced, cost_micros set; created 2 s
  after the start, as the recorder writes it when the response ends), one
  prompt; every other one a tool call; every fourth a thought. 1 in 50 failed.
- ``spend_daily`` holds the running totals the recorder would have kept, and a
  few budgets exist.
"""

from __future__ import annotations

from datetime import datetime

USERS = 1000
SESSION_LEN = 20
DAYS = 180
MODELS = ("claude-sonnet-4-5", "claude-opus-4-1", "gpt-5", "gpt-4.1")


def build_statements(rows: int, now: datetime) -> list[str]:
    """The SQL that fills a migrated, empty database (run in order)."""
    end = now.isoformat()
    step = f"(interval '{DAYS} days' / {rows})"
    i_id = "lpad(to_hex(g), 12, '0')"
    last_user = ((rows - 1) // SESSION_LEN) % USERS
    tables = "'interceptions', 'token_usages', 'user_prompts', 'tool_usages', 'model_thoughts'"
    return [
        # The tables' secondary indexes are dropped while the rows go in and
        # built again after (several times faster than maintaining them row
        # by row); the same definitions, read from the catalogue.
        "SET maintenance_work_mem = '256MB'",
        f"""
CREATE TEMP TABLE console_bench_indexes AS
SELECT indexname, indexdef FROM pg_indexes
WHERE schemaname = 'public' AND tablename IN ({tables}) AND indexname NOT LIKE '%\\_pkey'
""",
        """
DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT indexname FROM console_bench_indexes LOOP
    EXECUTE format('DROP INDEX %I', r.indexname);
  END LOOP;
END $$
""",
        f"""
INSERT INTO users (id, name, created_at)
SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(u), 12, '0'))::uuid,
       'user' || lpad(u::text, 4, '0'), now()
FROM generate_series(0, {USERS - 1}) AS u
""",
        f"""
INSERT INTO interceptions (id, initiator_id, api_key_id, provider_name, provider_type, model,
    route, started_at, ended_at, status, error_type, error_message, client, client_session_id,
    user_agent, credential_kind, credential_hint)
SELECT ('01900000-0000-7000-8000-' || {i_id})::uuid,
       ('00000000-0000-4000-8000-' || lpad(to_hex((g / {SESSION_LEN}) % {USERS}), 12, '0'))::uuid,
       NULL,
       CASE WHEN m < 2 THEN 'anthropic' ELSE 'openai' END,
       CASE WHEN m < 2 THEN 'anthropic' ELSE 'openai' END,
       (ARRAY['{"','".join(MODELS)}'])[m + 1],
       CASE WHEN m < 2 THEN '/v1/messages' ELSE '/v1/responses' END,
       t, t + interval '2 seconds',
       CASE WHEN g % 50 = 0 THEN 'failed' ELSE 'completed' END,
       CASE WHEN g % 50 = 0 THEN 'overloaded_error' END,
       CASE WHEN g % 50 = 0 THEN 'Overloaded' END,
       CASE k WHEN 0 THEN 'sdk-python-openai' WHEN 1 THEN 'claude-code' WHEN 2 THEN 'claude-code'
              ELSE 'codex' END,
       CASE WHEN k = 0 THEN NULL
            ELSE '0198' || lpad(to_hex(g / {SESSION_LEN}), 4, '0') || '-aaaa-4bbb-8ccc-' ||
                 lpad(to_hex(g / {SESSION_LEN}), 12, '0') END,
       'bench/1.0', 'centralized', 'sk-…abcd'
FROM (SELECT g, (g / {SESSION_LEN}) % 5 AS k, (g / {SESSION_LEN}) % 4 AS m,
             '{end}'::timestamptz - interval '{DAYS} days' + g * {step} AS t
      FROM generate_series(0, {rows - 1}) AS g) s
""",
        f"""
INSERT INTO token_usages (id, interception_id, provider_response_id, input_tokens, output_tokens,
    cache_read_tokens, cache_write_tokens, extra, raw, created_at, price_model, cost_micros)
SELECT ('01900000-0000-7000-9000-' || {i_id})::uuid, ('01900000-0000-7000-8000-' || {i_id})::uuid,
       'msg_' || g, 100 + g % 900, 20 + g % 400, g % 5000, g % 300, '{{}}', '{{}}',
       '{end}'::timestamptz - interval '{DAYS} days' + g * {step} + interval '2 seconds',
       'bench-model', (100 + g % 900) * 3 + (20 + g % 400) * 15
FROM generate_series(0, {rows - 1}) AS g
""",
        f"""
INSERT INTO user_prompts (id, interception_id, provider_response_id, prompt, created_at)
SELECT ('01900000-0000-7000-a000-' || {i_id})::uuid, ('01900000-0000-7000-8000-' || {i_id})::uuid,
       NULL, 'Fix the failing test number ' || g,
       '{end}'::timestamptz - interval '{DAYS} days' + g * {step} + interval '2 seconds'
FROM generate_series(0, {rows - 1}) AS g
""",
        f"""
INSERT INTO tool_usages (id, interception_id, provider_response_id, tool_call_id, name, input,
    injected, invocation_error, created_at)
SELECT ('01900000-0000-7000-b000-' || {i_id})::uuid, ('01900000-0000-7000-8000-' || {i_id})::uuid,
       NULL, 'toolu_' || g, 'Bash', '{{"command":"pytest -k ' || g || '"}}', false, NULL,
       '{end}'::timestamptz - interval '{DAYS} days' + g * {step} + interval '2 seconds'
FROM generate_series(0, {rows - 1}, 2) AS g
""",
        f"""
INSERT INTO model_thoughts (id, interception_id, provider_response_id, content, created_at)
SELECT ('01900000-0000-7000-c000-' || {i_id})::uuid, ('01900000-0000-7000-8000-' || {i_id})::uuid,
       NULL, 'The test fails because ' || g,
       '{end}'::timestamptz - interval '{DAYS} days' + g * {step} + interval '2 seconds'
FROM generate_series(0, {rows - 1}, 4) AS g
""",
        # The recorder's running totals, as it would have added them up.
        """
INSERT INTO spend_daily (day, user_id, api_key_id, model, cost_micros, usages, unpriced)
SELECT (i.started_at AT TIME ZONE 'UTC')::date, i.initiator_id, '', i.model,
       sum(t.cost_micros), count(*), 0
FROM interceptions i JOIN token_usages t ON t.interception_id = i.id
GROUP BY 1, 2, 4
""",
        # Monthly budgets of the 20 users of the newest sessions.
        f"""
INSERT INTO budgets (name, user_id, model, period, limit_micros)
SELECT 'user' || lpad(u::text, 4, '0') || '-monthly',
       ('00000000-0000-4000-8000-' || lpad(to_hex(u), 12, '0'))::uuid, NULL, 'month', 50000000
FROM (SELECT ({last_user} - n + {USERS}) % {USERS} AS u FROM generate_series(0, 19) AS n) b
""",
        """
DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT indexdef FROM console_bench_indexes LOOP EXECUTE r.indexdef; END LOOP;
END $$
""",
        "DROP TABLE console_bench_indexes",
        "ANALYZE",
    ]
