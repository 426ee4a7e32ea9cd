-- Per provider: whether the relay bridges the Responses API over WebSocket
-- (CODER_AI_GATEWAY_PROVIDER_<N>_RESPONSES_WEBSOCKET, `relay providers add|update
-- --responses-websocket`). Off: the upgrade is answered 426 and the client uses
-- HTTP. Providers written before this migration: on (the default for openai).
ALTER TABLE providers
    ADD COLUMN responses_websocket boolean NOT NULL DEFAULT true;
