-- The price book and the cost of each token-usage row (docs/cost.md).
--
-- Money is integer micro-dollars (1e-6 USD), never floating point. Prices are
-- micro-dollars per million tokens: $3 per million input tokens is 3000000.
-- The relay loads its default book (relay/pricing/default_prices.json, source
-- 'default') right after migrating; rows an operator set ('admin') are never
-- overwritten by it.

CREATE TABLE model_prices (
    provider_type         text NOT NULL CHECK (provider_type <> ''),
    -- An exact model name (matched after the documented normalisation), or a
    -- prefix ending in '*'.
    model                 text NOT NULL CHECK (model <> ''),
    effective_from        date NOT NULL,
    input_micros          bigint NOT NULL CHECK (input_micros >= 0),
    output_micros         bigint NOT NULL CHECK (output_micros >= 0),
    cache_read_micros     bigint CHECK (cache_read_micros >= 0),      -- null: as input
    cache_write_micros    bigint CHECK (cache_write_micros >= 0),     -- null: as input
    cache_write_1h_micros bigint CHECK (cache_write_1h_micros >= 0),  -- null: as cache write
    reasoning_micros      bigint CHECK (reasoning_micros >= 0),       -- null: billed as output
    source                text NOT NULL CHECK (source IN ('default', 'admin')),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider_type, model, effective_from)
);

-- One notification per statement (an import of a hundred prices is one
-- reload), on the channel the relays already listen to.
CREATE FUNCTION relay_notify_prices() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('relay_config', jsonb_build_object('kind', TG_TABLE_NAME, 'op', TG_OP)::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER model_prices_notify
    AFTER INSERT OR UPDATE OR DELETE ON model_prices
    FOR EACH STATEMENT EXECUTE FUNCTION relay_notify_prices();

-- Computed once, when the usage is recorded: a later price change does not
-- rewrite the past. price_model is the book entry that matched; all null
-- (cost_micros null) means the model was unpriced when recorded.
ALTER TABLE token_usages
    ADD COLUMN price_model                 text,
    ADD COLUMN input_price_micros          bigint,
    ADD COLUMN output_price_micros         bigint,
    ADD COLUMN cache_read_price_micros     bigint,
    ADD COLUMN cache_write_price_micros    bigint,
    ADD COLUMN cache_write_1h_price_micros bigint,
    ADD COLUMN reasoning_price_micros      bigint,
    ADD COLUMN cost_micros                 bigint;
