-- Groups of users, spend budgets, and the running spend totals the recorder
-- keeps (docs/cost.md).

CREATE TABLE user_groups (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text NOT NULL UNIQUE CHECK (name <> ''),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE user_group_members (
    group_id uuid NOT NULL REFERENCES user_groups (id) ON DELETE CASCADE,
    user_id  uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX user_group_members_user_idx ON user_group_members (user_id);

-- A limit on what one user, every member of a group together, or one relay
-- token may spend per calendar period (UTC), on every model or one.
CREATE TABLE budgets (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name         text NOT NULL UNIQUE CHECK (name <> ''),
    user_id      uuid REFERENCES users (id) ON DELETE CASCADE,
    group_id     uuid REFERENCES user_groups (id) ON DELETE CASCADE,
    api_key_id   text REFERENCES api_keys (id) ON DELETE CASCADE,
    CHECK (num_nonnulls(user_id, group_id, api_key_id) = 1),
    -- null: every model; else a price-book family (claude-sonnet-4-5) or, for
    -- an unpriced model, its name as recorded.
    model        text CHECK (model <> ''),
    period       text NOT NULL CHECK (period IN ('day', 'week', 'month')),
    limit_micros bigint NOT NULL CHECK (limit_micros > 0),
    soft_percent integer NOT NULL DEFAULT 80 CHECK (soft_percent BETWEEN 1 AND 100),
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Running totals: spend per UTC day, user, relay token and model, added to by
-- the recorder once per batch (one statement per batch, in the batch's
-- transaction, from the usage rows it inserted; so a retried batch or a
-- replayed spool never counts twice). A budget's spend is the sum of its
-- period's days: a few rows per user, never a scan of token_usages.
-- model: the price-book entry (price_model) or, unpriced, the recorded model.
CREATE TABLE spend_daily (
    day         date NOT NULL,
    user_id     uuid NOT NULL,    -- the nil uuid when the interception had none
    api_key_id  text NOT NULL,    -- '' when none
    model       text NOT NULL,
    cost_micros bigint NOT NULL,
    usages      bigint NOT NULL,  -- usage rows
    unpriced    bigint NOT NULL,  -- of which recorded without a price
    PRIMARY KEY (day, user_id, api_key_id, model)
);
CREATE INDEX spend_daily_user_idx ON spend_daily (user_id, day);

-- Budgets and groups reach running relays as configuration changes do.
CREATE TRIGGER budgets_notify AFTER INSERT OR UPDATE OR DELETE ON budgets
    FOR EACH STATEMENT EXECUTE FUNCTION relay_notify_prices();
CREATE TRIGGER user_groups_notify AFTER INSERT OR UPDATE OR DELETE ON user_groups
    FOR EACH STATEMENT EXECUTE FUNCTION relay_notify_prices();
CREATE TRIGGER user_group_members_notify AFTER INSERT OR UPDATE OR DELETE ON user_group_members
    FOR EACH STATEMENT EXECUTE FUNCTION relay_notify_prices();

-- A request refused before it went upstream (a spent budget) is recorded too.
ALTER TABLE interceptions DROP CONSTRAINT interceptions_status_check;
ALTER TABLE interceptions ADD CONSTRAINT interceptions_status_check
    CHECK (status IN ('in_progress', 'completed', 'failed', 'cancelled', 'interrupted', 'refused'));
