"""Hostile request bodies, sent to the real relay in front of the bundled mock.

Each body here once reached the provider (invalid UTF-8, no model) or came
back as a 500 with an empty body (nesting deeper than msgspec can recurse).
Each must be a 400 in the provider's own error shape, with nothing sent
upstream.
"""

from __future__ import annotations

import httpx
import pytest

from tests.relay_harness import mock_and_relay

pytestmark = pytest.mark.usefixtures("pg_dsn")

MESSAGES = ("anthropic", "/v1/messages")
CHAT = ("openai", "/v1/chat/completions")
RESPONSES = ("openai", "/v1/responses")
ROUTES = (MESSAGES, CHAT, RESPONSES)


def deeply_nested(depth: int) -> bytes:
    nested = b"[" * depth + b"]" * depth
    return b'{"model":"mock-text","max_tokens":5,"messages":' + nested + b"}"


def check_refused(response: httpx.Response, provider: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    if provider == "anthropic":
        assert body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error"
    else:
        assert body["error"]["type"] == "invalid_request_error"
        assert isinstance(body["error"]["message"], str)


async def test_bodies_the_relay_cannot_read_are_refused(pg_dsn, tmp_path):
    bodies = {
        "nested 1,000 deep": deeply_nested(1000),
        "nested 100,000 deep": deeply_nested(100_000),
        "invalid UTF-8 in a skipped part": (
            b'{"model":"mock-text","max_tokens":5,"messages":[{"role":"user","content":"caf\xe9"}]}'
        ),
        "invalid UTF-8 after a megabyte": (
            b'{"model":"mock-text","max_tokens":5,"metadata":{"x":"'
            + "é".encode() * (1 << 19)
            + b'\xc3"},"messages":[{"role":"user","content":"hi"}]}'
        ),
        "a lone surrogate's bytes": b'{"model":"mock-text","x":"\xed\xa0\x80"}',
        "no model": b'{"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}',
        "a model that is not a string": b'{"model":42,"messages":[]}',
    }
    async with mock_and_relay(pg_dsn, tmp_path) as (mock, relay):
        headers = {"authorization": f"Bearer {relay.token}", "content-type": "application/json"}
        async with httpx.AsyncClient(timeout=30) as http:
            for provider, path in ROUTES:
                for name, body in bodies.items():
                    r = await http.post(
                        relay.gateway(provider) + path, content=body, headers=headers
                    )
                    check_refused(r, provider)
                    assert mock.requests == [], (path, name)
            # Valid non-ASCII UTF-8 still goes through.
            ok = '{"model":"mock-text","max_tokens":5,"messages":[{"role":"user","content":"café ☕"}]}'
            r = await http.post(
                relay.gateway("anthropic") + "/v1/messages", content=ok.encode(), headers=headers
            )
            assert r.status_code == 200, r.text
            assert len(mock.requests) == 1
