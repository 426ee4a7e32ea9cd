"""Refused requests tell the person what to fix, in the provider's own error shape.

The real relay on a loopback port, in front of the bundled mock upstream, plus
providers whose upstream is a closed port, an unknown host, a plain-TCP server
spoken to in TLS, and a server that never finishes the TLS handshake.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator

import httpx
import pytest
import trio

from relay.auth import create_token, create_user, revoke_token
from relay.providers import store
from tests.relay_harness import config_settled, mock_and_relay

CHAT = {"model": "mock-text", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "mock-text", "max_tokens": 5, "messages": CHAT["messages"]}


def anthropic_error(r: httpx.Response) -> tuple[str, str]:
    body = r.json()
    assert body["type"] == "error", body
    return body["error"]["type"], body["error"]["message"]


def openai_error(r: httpx.Response) -> dict[str, str | None]:
    body = r.json()
    assert set(body) == {"error"}, body
    return body["error"]  # type: ignore[no-any-return]


async def test_unknown_disabled_and_misplaced_routes(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path) as (_mock, relay), httpx.AsyncClient() as http:
        auth = {"authorization": f"Bearer {relay.token}"}

        r = await http.post(relay.gateway("nope") + "/v1/chat/completions", json=CHAT)
        assert r.status_code == 404
        assert openai_error(r)["message"] == (
            "unknown provider 'nope': the configured providers are anthropic, openai"
        )
        r = await http.post(relay.gateway("nope") + "/v1/messages", json=MESSAGES)
        assert r.status_code == 404
        assert anthropic_error(r) == (
            "not_found_error",
            "unknown provider 'nope': the configured providers are anthropic, openai",
        )

        # No /api/v2/ai-gateway/<name>/ prefix: the hint names the route to use.
        r = await http.post(relay.url + "/v1/messages", json=MESSAGES, headers=auth)
        assert r.status_code == 404
        kind, message = anthropic_error(r)
        assert kind == "not_found_error"
        assert message == (
            "route not supported: POST /v1/messages: provider routes start with "
            "/api/v2/ai-gateway/<provider name>/, e.g. /api/v2/ai-gateway/anthropic/v1/messages "
            "(set the client's base URL to http(s)://<relay>/api/v2/ai-gateway/anthropic)"
        )
        r = await http.post(relay.url + "/v1/chat/completions", json=CHAT, headers=auth)
        assert r.status_code == 404
        assert openai_error(r)["message"].endswith(
            "e.g. /api/v2/ai-gateway/openai/v1/chat/completions "
            "(set the client's base URL to http(s)://<relay>/api/v2/ai-gateway/openai/v1)"
        )
        r = await http.get(relay.url + "/api/v2/ai-gateway/")
        assert r.status_code == 404
        assert openai_error(r)["message"] == (
            "route not supported: GET /api/v2/ai-gateway/: the path has no provider name "
            "(use /api/v2/ai-gateway/<provider name>/…; "
            "the configured providers are anthropic, openai)"
        )
        # A base URL without /v1 for an OpenAI client.
        r = await http.post(relay.gateway("openai") + "/chat/completions", json=CHAT)
        assert r.status_code == 404
        assert openai_error(r)["message"] == (
            "route not supported: POST /chat/completions: did you mean "
            "/api/v2/ai-gateway/openai/v1/chat/completions? "
            "(set the client's base URL to http(s)://<relay>/api/v2/ai-gateway/openai/v1)"
        )

        # A disabled provider is disabled, not unknown: 503 provider_disabled.
        await store.set_provider_enabled(relay.db, "openai", False)
        await store.set_provider_enabled(relay.db, "anthropic", False)
        await config_settled(relay.app)
        r = await http.post(relay.gateway("openai") + "/v1/chat/completions", json=CHAT)
        assert r.status_code == 503
        error = openai_error(r)
        assert error["code"] == "provider_disabled"
        assert error["message"] == (
            "provider 'openai' is disabled on this relay; ask its administrator to enable it"
        )
        r = await http.post(relay.gateway("anthropic") + "/v1/messages", json=MESSAGES)
        assert r.status_code == 503
        assert anthropic_error(r) == (
            "api_error",
            "provider 'anthropic' is disabled on this relay; ask its administrator to enable it",
        )
        r = await http.post(relay.gateway("nope") + "/v1/messages", json=MESSAGES)
        assert (
            anthropic_error(r)[1] == "unknown provider 'nope': no provider is enabled on this relay"
        )


async def test_token_refusals_are_distinct_and_reveal_nothing_of_others(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path) as (mock, relay), httpx.AsyncClient() as http:
        chat = relay.gateway("openai") + "/v1/chat/completions"
        messages = relay.gateway("anthropic") + "/v1/messages"

        async def chat_message(headers: dict[str, str]) -> str:
            r = await http.post(chat, json=CHAT, headers=headers)
            assert r.status_code == 401
            error = openai_error(r)
            assert error["code"] == "invalid_api_key"
            return str(error["message"])

        async def messages_message(headers: dict[str, str]) -> str:
            r = await http.post(messages, json=MESSAGES, headers=headers)
            assert r.status_code == 401
            kind, message = anthropic_error(r)
            assert kind == "authentication_error"
            return message

        missing = await chat_message({})
        assert missing.startswith("missing relay API token: send your relay token as ")
        assert await messages_message({}) == missing

        invalid = "invalid relay API token: it is not a token this relay issued"
        forged = f"relay_{secrets.token_hex(6)}_{'A' * 43}"
        assert await chat_message({"authorization": f"Bearer {forged}"}) == invalid
        assert await messages_message({"x-api-key": "not-a-token"}) == invalid

        await create_user(relay.db, "bob")
        expired, expired_row = await create_token(relay.db, "bob")
        await relay.db.execute(
            "UPDATE api_keys SET expires_at = now() - interval '1 hour' WHERE id = $1",
            expired_row.id,
        )
        revoked, revoked_row = await create_token(relay.db, "bob")
        await revoke_token(relay.db, revoked_row.id)
        await config_settled(relay.app)

        assert await chat_message({"authorization": f"Bearer {expired}"}) == (
            "the relay API token has expired: ask for a new one"
        )
        assert await messages_message({"x-api-key": revoked}) == (
            "the relay API token has been revoked: ask for a new one"
        )
        # The same ids with another secret: nothing is told about bob's tokens.
        for row in (expired_row, revoked_row):
            guess = f"relay_{row.id}_{'B' * 43}"
            assert await chat_message({"authorization": f"Bearer {guess}"}) == invalid
        assert not mock.requests  # nothing went upstream


async def test_a_provider_key_in_the_relay_tokens_place_gets_a_hint(pg_dsn, tmp_path):
    openai_key = "sk-proj-" + "Z" * 40
    anthropic_key = "sk-ant-api03-" + "Y" * 40
    async with mock_and_relay(pg_dsn, tmp_path) as (_mock, relay), httpx.AsyncClient() as http:
        r = await http.post(
            relay.gateway("openai") + "/v1/chat/completions",
            json=CHAT,
            headers={"authorization": f"Bearer {openai_key}"},
        )
        assert r.status_code == 401
        message = str(openai_error(r)["message"])
        assert message == (
            "this is an OpenAI API key (sk-…), not a relay API token: send your relay token "
            "instead, or, to use your own key (BYOK), keep it and add your relay token in the "
            "X-Coder-AI-Governance-Token header"
        )
        r = await http.post(
            relay.gateway("anthropic") + "/v1/messages",
            json=MESSAGES,
            headers={"x-api-key": anthropic_key},
        )
        assert anthropic_error(r)[1].startswith("this is an Anthropic API key (sk-ant-…), not")
        # The key in the governance header, the relay token where the key belongs.
        r = await http.post(
            relay.gateway("anthropic") + "/v1/messages",
            json=MESSAGES,
            headers={"x-coder-ai-governance-token": anthropic_key, "x-api-key": relay.token},
        )
        assert anthropic_error(r)[1] == (
            "the X-Coder-AI-Governance-Token header holds an Anthropic API key (sk-ant-…), not "
            "a relay API token: put your relay token there and your provider key in "
            "Authorization or X-Api-Key"
        )
        assert "Y" * 10 not in r.text


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """Accepts TCP connections (the kernel does) and never says a word."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


async def test_upstream_connection_failures_name_the_host_and_the_cause(
    pg_dsn, tmp_path, closed_port, silent_listener
):
    async def plain_tcp(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")

    upstreams = {
        "refused": f"http://127.0.0.1:{closed_port}/v1/",
        "dns": "http://no-such-host.invalid/v1/",
        "silent": f"https://127.0.0.1:{silent_listener}/v1/",
    }
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, plain_tcp, 0)
        upstreams["tls"] = f"https://127.0.0.1:{listeners[0].socket.getsockname()[1]}/v1/"
        # Long enough for a slow resolver to say "unknown host" on a loaded
        # machine; the silent listener waits it out once.
        env = {"CODER_AI_GATEWAY_UPSTREAM_CONNECT_TIMEOUT": "2s"}
        for index, (name, url) in enumerate(upstreams.items(), start=2):
            env[f"CODER_AI_GATEWAY_PROVIDER_{index}_TYPE"] = "openai"
            env[f"CODER_AI_GATEWAY_PROVIDER_{index}_NAME"] = name
            env[f"CODER_AI_GATEWAY_PROVIDER_{index}_KEY"] = "sk-upstream-test-key-0002"
            env[f"CODER_AI_GATEWAY_PROVIDER_{index}_BASE_URL"] = url
        async with (
            mock_and_relay(pg_dsn, tmp_path, extra_env=env) as (_mock, relay),
            httpx.AsyncClient() as http,
        ):
            auth = {"authorization": f"Bearer {relay.token}"}

            async def failure(name: str) -> tuple[int, str]:
                r = await http.post(
                    relay.gateway(name) + "/v1/chat/completions", json=CHAT, headers=auth
                )
                return r.status_code, str(openai_error(r)["message"])

            assert await failure("refused") == (
                502,
                f"upstream unreachable: cannot connect to 127.0.0.1:{closed_port}: "
                "connection refused (nothing listens on that port)",
            )
            status, message = await failure("dns")
            assert status == 502
            assert message.startswith(
                "upstream unreachable: cannot connect to no-such-host.invalid:80: "
                "unknown host (DNS: "
            )
            status, message = await failure("tls")
            assert status == 502
            assert message.startswith(
                f"upstream unreachable: TLS handshake with {upstreams['tls'][8:-4]} failed: "
            )
            assert await failure("silent") == (
                504,
                f"upstream timed out: cannot connect to 127.0.0.1:{silent_listener}: "
                "no connection within 2 s (timeout)",
            )
        nursery.cancel_scope.cancel()
