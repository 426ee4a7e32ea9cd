"""Hostile input over raw sockets: path tricks, slow bodies, smuggling, connection floods.

HTTP clients normalise paths and refuse ambiguous framing, so these requests
are written byte for byte (tests/raw_http.py). The relay runs in front of the
bundled mock upstream; "nothing ran" means the mock saw no request.
"""

from __future__ import annotations

import pytest

from relay.routes import PathRefused, normalise_api_path
from tests.raw_http import exchange, request_bytes
from tests.relay_harness import mock_and_relay

pytestmark = pytest.mark.usefixtures("pg_dsn")

CHAT_BODY = b'{"model":"mock-text","messages":[{"role":"user","content":"hi"}]}'

# Each would reach another route once a front end or the provider resolves it.
BYPASSES = [
    ("POST", "/openai/v1/conversations/../chat/completions"),
    ("POST", "/openai/v1/conversations/%2e%2e/chat/completions"),
    ("POST", "/openai/v1/conversations/%2E%2E/responses"),
    ("POST", "/openai/v1/conversations/.%2e/responses"),
    ("POST", "/openai/v1/conversations/./x"),
    ("POST", "/openai/v1/conversations/%2e/x"),
    ("GET", "/openai/v1/models/../files"),
    ("GET", "/openai/v1/models/%2e%2E/files"),
    ("GET", "/openai/v1/models/x%2F..%2Ffiles"),
    ("GET", "/openai/v1/models/x%2f..%2ffiles"),
    ("GET", "/openai/v1/models/x%5C..%5Cfiles"),
    ("GET", "/openai/v1/models/x%5c..%5cfiles"),
    ("GET", "/openai/v1/models/x\\..\\files"),
    ("GET", "/openai/v1/models//files"),
    ("GET", "/openai/v1/models/"),
    ("POST", "/openai/v1/conversations//x"),
    ("GET", "/anthropic/v1/models/%2e%2e"),
    ("POST", "/anthropic/v1/messages/../count_tokens"),
]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/models", "/v1/models"),
        ("/v1/%6Dodels/%7Ex", "/v1/models/~x"),
        ("/v1/models/a%2Fb", "/v1/models/a%2Fb"),  # an escaped "/" stays as sent
        ("/model/arn%3Aaws%3Ax/invoke", "/model/arn%3Aaws%3Ax/invoke"),
        ("/", "/"),
    ],
)
def test_normalise_decodes_only_unreserved_escapes(path, expected):
    assert normalise_api_path(path) == expected


@pytest.mark.parametrize("path", ["/v1/..", "/v1/%2E", "/v1/.%2E/x", "/v1//x", "/v1/x/", "/v\\1"])
def test_normalise_refuses_what_could_resolve_elsewhere(path):
    with pytest.raises(PathRefused):
        normalise_api_path(path)


async def test_passthrough_paths_cannot_reach_other_routes(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path) as (mock, relay):
        auth = {
            "authorization": f"Bearer {relay.token}",
            "content-type": "application/json",
            "connection": "close",
        }
        for method, path in BYPASSES:
            for prefix in ("/api/v2/ai-gateway", "/api/v2/aibridge"):
                body = CHAT_BODY if method == "POST" else b""
                headers = {**auth, "content-length": str(len(body))}
                raw = request_bytes(method, prefix + path, headers, body)
                result = await exchange(relay.url, raw, quiet=0.5)
                assert [r.status for r in result.responses] == [400], path
                error = result.responses[0].json()
                if path.startswith("/openai"):
                    assert error["error"]["type"] == "invalid_request_error", path
                    assert "path not allowed" in error["error"]["message"]
                else:
                    assert error["type"] == "error", path
                    assert error["error"]["type"] == "invalid_request_error"
        assert mock.requests == []
        # Routes are matched on the normalised path, which is also what goes upstream.
        raw = request_bytes("GET", "/api/v2/ai-gateway/openai/v1/%6dodels", auth)
        result = await exchange(relay.url, raw, quiet=0.5)
        assert [r.status for r in result.responses] == [200]
        assert [r.path for r in mock.requests] == ["/v1/models"]
