-- Providers, users and API tokens: the relay's runtime configuration.
--
-- The database is the single source of truth for providers: the environment
-- only seeds this table at boot (source 'env'); the CLI adds rows of its own
-- (source 'api'). Every change, from any process (a relay, the CLI, psql),
-- is announced on the 'relay_config' channel so running relays reload it.

CREATE TABLE providers (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- The name appears in routes: /api/v2/ai-gateway/<name>/...
    name text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9]+(-[a-z0-9]+)*$'),
    type text NOT NULL CHECK (type IN ('openai', 'anthropic', 'bedrock')),
    base_url text NOT NULL DEFAULT '',
    -- The key pool, tried in order. Stored as given: whoever can read this
    -- table can use the keys, so protect the database like the keys.
    keys text[] NOT NULL DEFAULT '{}' CHECK (cardinality(keys) <= 5),
    bedrock_region text NOT NULL DEFAULT '',
    bedrock_access_key text NOT NULL DEFAULT '',
    bedrock_access_key_secret text NOT NULL DEFAULT '',
    bedrock_model text NOT NULL DEFAULT '',
    bedrock_small_fast_model text NOT NULL DEFAULT '',
    bedrock_base_url text NOT NULL DEFAULT '',
    enabled boolean NOT NULL DEFAULT true,
    source text NOT NULL CHECK (source IN ('env', 'api')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL UNIQUE CHECK (name <> ''),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A token is relay_<id>_<secret>. The id is a short random lookup prefix;
-- only a SHA-256 hash of the secret is kept. The secret is at least 32
-- random bytes, so brute force is out of reach whatever the hash's speed: a
-- slow password hash (bcrypt, scrypt) would only add milliseconds of CPU to
-- every cache miss without making the token any harder to guess.
CREATE TABLE api_keys (
    id text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{12}$'),
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    hash bytea NOT NULL CHECK (octet_length(hash) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    revoked_at timestamptz,
    last_used_at timestamptz
);
CREATE INDEX api_keys_user_id ON api_keys (user_id);

-- Payload: {"kind": <table>, "op": INSERT|UPDATE|DELETE, "id": ..., "user_id": ...}.
-- Row level, so a relay can evict exactly the token that changed.
CREATE FUNCTION relay_notify_config() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    row_data record;
    payload jsonb;
BEGIN
    IF TG_OP = 'DELETE' THEN
        row_data := OLD;
    ELSE
        row_data := NEW;
    END IF;
    payload := jsonb_build_object('kind', TG_TABLE_NAME, 'op', TG_OP);
    IF TG_TABLE_NAME = 'providers' THEN
        payload := payload || jsonb_build_object('id', row_data.name);
    ELSIF TG_TABLE_NAME = 'api_keys' THEN
        payload := payload || jsonb_build_object('id', row_data.id, 'user_id', row_data.user_id);
    ELSE
        payload := payload || jsonb_build_object('id', row_data.id, 'user_id', row_data.id);
    END IF;
    PERFORM pg_notify('relay_config', payload::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER providers_notify
    AFTER INSERT OR UPDATE OR DELETE ON providers
    FOR EACH ROW EXECUTE FUNCTION relay_notify_config();

CREATE TRIGGER users_notify
    AFTER INSERT OR UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION relay_notify_config();

-- Not on last_used_at: relays touch it as tokens are used, and announcing
-- that would make every relay drop its cache over and over.
CREATE TRIGGER api_keys_notify
    AFTER INSERT OR DELETE OR UPDATE OF user_id, hash, expires_at, revoked_at ON api_keys
    FOR EACH ROW EXECUTE FUNCTION relay_notify_config();
