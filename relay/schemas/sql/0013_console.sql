-- The operator's console (issue 20, docs/console.md): who is an admin, the
-- console's sign-in sessions, and the audit log of configuration changes.

-- An admin may sign in to the console and use the admin API with their own
-- relay token. Set with `relay users admin NAME` (and `--revoke`). The users
-- trigger announces the change, as any change of a user.
ALTER TABLE users ADD COLUMN is_admin boolean NOT NULL DEFAULT false;

-- One signed-in browser. The cookie holds a random secret; only its SHA-256 is
-- kept (the id), so this table cannot be used to sign in. Every request looks
-- its row up joined with the user and the token it was opened with: revoking
-- the token or the admin role ends the session at once, on every relay.
CREATE TABLE console_sessions (
    id           bytea PRIMARY KEY CHECK (octet_length(id) = 32),
    -- NULL: signed in with ADMIN_TOKEN (then admin_token_hash is its SHA-256,
    -- so a changed ADMIN_TOKEN ends those sessions).
    user_id      uuid REFERENCES users (id) ON DELETE CASCADE,
    api_key_id   text REFERENCES api_keys (id) ON DELETE CASCADE,
    admin_token_hash bytea CHECK (admin_token_hash IS NULL OR octet_length(admin_token_hash) = 32),
    CHECK ((user_id IS NULL) = (api_key_id IS NULL)),
    CHECK ((user_id IS NULL) = (admin_token_hash IS NOT NULL)),
    actor_name   text NOT NULL,
    csrf         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX console_sessions_expires_at ON console_sessions (expires_at);
CREATE INDEX console_sessions_user_id ON console_sessions (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX console_sessions_api_key_id ON console_sessions (api_key_id)
    WHERE api_key_id IS NOT NULL;

-- Who changed what, when: every change made in the console, the admin API or
-- the CLI. detail never holds a secret (a provider key only as its mask).
CREATE TABLE audit_log (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor_id   uuid,          -- the user; NULL for ADMIN_TOKEN and the CLI
    actor_name text NOT NULL, -- the user name, 'admin-token', or the OS user of the CLI
    via        text NOT NULL CHECK (via IN ('console', 'api', 'cli')),
    action     text NOT NULL CHECK (action <> ''),
    target     text NOT NULL,
    detail     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at DESC, id DESC);

-- Taking the admin role away ends the user's console sessions (the session
-- lookup refuses them already; this keeps a role given back from reviving them).
CREATE FUNCTION relay_console_sessions_end() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM console_sessions WHERE user_id = NEW.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER users_console_sessions_end
    AFTER UPDATE OF is_admin ON users
    FOR EACH ROW WHEN (OLD.is_admin AND NOT NEW.is_admin)
    EXECUTE FUNCTION relay_console_sessions_end();
