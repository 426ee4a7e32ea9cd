-- What the recorder stores (relay/record). Column names are the field names of
-- the msgspec records in relay/record/events.py; docs/recorded-data.md explains
-- every column.
--
-- Every row has its own UUID, chosen by the relay: the recorder writes with
-- INSERT ... ON CONFLICT (id) DO NOTHING, so a retried batch or a replayed
-- spool never duplicates a row. There are deliberately no foreign keys: rows of
-- one interception may reach the database in different batches (or from the
-- spool, after a restart), users may be deleted while their usage stays, and a
-- row the database refused would otherwise block the spool behind it.
--
-- Ids are time-ordered (UUID version 7) and rows arrive in about time order,
-- so the child tables' timestamps, used only by retention, get BRIN indexes:
-- a few pages each, next to nothing to maintain at 100,000 rows per second.

CREATE TABLE interceptions (
    id                uuid PRIMARY KEY,
    initiator_id      uuid,            -- users.id of the person behind the token
    api_key_id        text,            -- api_keys.id of the relay token used
    provider_name     text NOT NULL,
    provider_type     text NOT NULL,
    model             text NOT NULL,   -- the model the client asked for
    route             text NOT NULL,   -- API path after the provider prefix
    started_at        timestamptz NOT NULL,
    ended_at          timestamptz NOT NULL,
    status            text NOT NULL CHECK (status IN ('completed', 'failed', 'cancelled')),
    error_type        text,
    error_message     text,
    client            text NOT NULL,   -- claude-code, codex, sdk-python-openai, ...
    client_session_id text,
    user_agent        text,
    credential_kind   text NOT NULL CHECK (credential_kind IN ('centralized', 'byok')),
    credential_hint   text             -- masked (sk-…abcd), never a whole key
);
-- Newest-first pages (admin API), time ranges (relay usage), retention.
CREATE INDEX interceptions_started_at_idx ON interceptions (started_at, id);
CREATE INDEX interceptions_initiator_started_idx ON interceptions (initiator_id, started_at);

CREATE TABLE token_usages (
    id                   uuid PRIMARY KEY,
    interception_id      uuid NOT NULL,
    provider_response_id text,
    input_tokens         bigint NOT NULL,  -- excludes cache reads (see docs)
    output_tokens        bigint NOT NULL,
    cache_read_tokens    bigint NOT NULL,
    cache_write_tokens   bigint NOT NULL,
    extra                jsonb NOT NULL,   -- {"reasoning": 12, "cache_creation_1h": 0, ...}
    raw                  jsonb NOT NULL,   -- the provider's usage object as sent
    created_at           timestamptz NOT NULL
);
CREATE INDEX token_usages_interception_idx ON token_usages (interception_id);
CREATE INDEX token_usages_created_at_idx ON token_usages USING brin (created_at);

CREATE TABLE user_prompts (
    id                   uuid PRIMARY KEY,
    interception_id      uuid NOT NULL,
    provider_response_id text,
    prompt               text NOT NULL,
    created_at           timestamptz NOT NULL
);
CREATE INDEX user_prompts_interception_idx ON user_prompts (interception_id);
CREATE INDEX user_prompts_created_at_idx ON user_prompts USING brin (created_at);

CREATE TABLE tool_usages (
    id                   uuid PRIMARY KEY,
    interception_id      uuid NOT NULL,
    provider_response_id text,
    tool_call_id         text NOT NULL,
    name                 text NOT NULL,
    input                text NOT NULL,    -- the arguments' JSON text, as the model produced it
    injected             boolean NOT NULL,
    invocation_error     text,
    created_at           timestamptz NOT NULL
);
CREATE INDEX tool_usages_interception_idx ON tool_usages (interception_id);
CREATE INDEX tool_usages_created_at_idx ON tool_usages USING brin (created_at);

CREATE TABLE model_thoughts (
    id                   uuid PRIMARY KEY,
    interception_id      uuid NOT NULL,
    provider_response_id text,
    content              text NOT NULL,
    created_at           timestamptz NOT NULL
);
CREATE INDEX model_thoughts_interception_idx ON model_thoughts (interception_id);
CREATE INDEX model_thoughts_created_at_idx ON model_thoughts USING brin (created_at);
