-- The `copilot` provider type (GitHub Copilot's API, used through the AI
-- Gateway Proxy: docs/proxy.md). The CHECK of 0002 lists the types by name.
ALTER TABLE providers DROP CONSTRAINT providers_type_check;
ALTER TABLE providers ADD CONSTRAINT providers_type_check
    CHECK (type IN ('openai', 'anthropic', 'bedrock', 'copilot'));
