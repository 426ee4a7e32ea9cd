-- MCP tool injection (issue 18): an injected tool's call names the MCP server
-- it ran on. NULL for the tools the model called for the client (and for rows
-- written before this migration).
ALTER TABLE tool_usages ADD COLUMN server_url text;
