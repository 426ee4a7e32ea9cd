-- A stored prompt is cut at CODER_AI_GATEWAY_MAX_STORED_PROMPT (UTF-8 bytes):
-- one agent request can carry a multi-megabyte last message, and every row is
-- kept for the retention period. The row says whether it was cut and how
-- large the whole prompt was. Rows written before this migration: not cut
-- (truncated false), size unknown (original_bytes NULL).
ALTER TABLE user_prompts
    ADD COLUMN truncated      boolean NOT NULL DEFAULT false,
    ADD COLUMN original_bytes bigint;
