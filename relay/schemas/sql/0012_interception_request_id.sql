-- Observability (issue 21): the relay's request id of the HTTP request an
-- interception served, the value of its x-relay-request-id response header,
-- so a client's complaint that quotes it finds the row (a Responses
-- WebSocket's turns carry the socket's). NULL for rows written before this
-- migration.
ALTER TABLE interceptions ADD COLUMN request_id text;
CREATE INDEX interceptions_request_id ON interceptions (request_id) WHERE request_id IS NOT NULL;
