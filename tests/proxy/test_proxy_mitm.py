"""Decrypted traffic through the proxy is an ordinary relay request.

A real relay (hypercorn, PostgreSQL) in front of the mock upstream, the proxy
beside it, and real clients (httpx, the official openai and anthropic SDKs,
curl) with their default base URLs, only the proxy and its CA configured.
No name is resolved for a decrypted host: everything stays on loopback.
"""

from __future__ import annotations

import json
import shutil
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import trio

from relay.providers.store import add_provider
from relay.providers.types import Provider, ProviderType
from relay.proxy.ca import CertificateAuthority
from relay.proxy.server import ProxyServer
from relay.proxy.service import build_proxy
from relay.testing.mock_upstream import scenarios
from relay.testing.mock_upstream.server import MockUpstream
from tests.relay_harness import RunningRelay, config_settled, mock_and_relay

USER = [{"role": "user", "content": "What is the weather in Paris?"}]


@dataclass
class Setup:
    mock: MockUpstream
    relay: RunningRelay
    proxy: ProxyServer
    port: int
    ca_pem: bytes
    ca_file: Path

    def proxy_url(self, token: str | None = None) -> str:
        return f"http://me:{token or self.relay.token}@127.0.0.1:{self.port}"

    def verify(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem.decode())

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(proxy=self.proxy_url(token), verify=self.verify(), timeout=10)

    def anthropic(self, api_key: str) -> anthropic.AsyncAnthropic:
        # This SDK brings its own HTTP client (httpx2): configured the same way.
        http = anthropic.DefaultAsyncHttpxClient(proxy=self.proxy_url(), verify=self.verify())
        return anthropic.AsyncAnthropic(api_key=api_key, http_client=http, max_retries=0)


@asynccontextmanager
async def relay_and_proxy(pg_dsn: str, tmp_path: Path) -> AsyncIterator[Setup]:
    ca = CertificateAuthority.generate()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    async with mock_and_relay(pg_dsn, tmp_path) as (mock, relay):
        # A copilot provider (no key: BYOK only), answered by the mock's OpenAI side.
        await add_provider(
            relay.db,
            Provider(
                name="copilot",
                type=ProviderType.COPILOT,
                base_url=mock.openai_base_url + "/",
                source="api",
            ),
        )
        await config_settled(relay.app)
        async with proxy_beside(relay, ca) as (proxy, port):
            yield Setup(mock, relay, proxy, port, ca.cert_pem, ca_file)


@asynccontextmanager
async def proxy_beside(
    relay: RunningRelay, ca: CertificateAuthority, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[ProxyServer, int]]:
    """The proxy of a running relay, on a loopback port, for the body of the block."""
    assert relay.app.options is not None
    proxy = build_proxy(relay.app.options, relay.app, ca=ca, tls=tls)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve, listeners)
        yield proxy, listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def test_a_decrypted_stream_is_relayed_byte_for_byte_and_recorded(
    pg_dsn: str, tmp_path: Path
) -> None:
    async with relay_and_proxy(pg_dsn, tmp_path) as s:
        body = {"model": "mock-text", "stream": True, "messages": USER}
        async with s.client() as client:
            response = await client.post(
                "https://api.openai.com/v1/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {s.relay.token}"},
            )
        assert response.status_code == 200
        assert response.headers["x-relay-proxy-request-id"]
        upstream = s.mock.requests[0]
        assert upstream.path == "/v1/chat/completions"
        # The provider's key went upstream, never the relay token.
        assert upstream.header("authorization") == "Bearer sk-upstream-test-key-0001"
        assert s.relay.token not in repr(upstream.headers)
        # What the client received is what the provider sent (the include_usage
        # rewrite leaves out only what it caused).
        assert b"".join(_text_deltas(response.content)) == scenarios.TEXT.encode()
        rows = await s.relay.wait_for_rows(
            "SELECT i.status, i.provider_name, i.model, i.credential_kind, u.input_tokens, p.prompt "
            "FROM interceptions i JOIN token_usages u ON u.interception_id = i.id "
            "JOIN user_prompts p ON p.interception_id = i.id"
        )
        row = rows[0]
        assert (row["status"], row["provider_name"], row["model"], row["credential_kind"]) == (
            "completed",
            "openai",
            "mock-text",
            "centralized",
        )
        assert row["prompt"] == USER[0]["content"]


def _text_deltas(raw: bytes) -> list[bytes]:
    out = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data: {"):
            for choice in json.loads(line[6:]).get("choices", []):
                content = choice.get("delta", {}).get("content")
                if content:
                    out.append(content.encode())
    return out


async def test_the_anthropic_stream_is_byte_for_byte_the_providers(
    pg_dsn: str, tmp_path: Path
) -> None:
    async with relay_and_proxy(pg_dsn, tmp_path) as s:
        body = {"model": "mock-text", "stream": True, "max_tokens": 50, "messages": USER}
        async with s.client() as client:
            response = await client.post(
                "https://api.anthropic.com/v1/messages?beta=true",
                json=body,
                headers={"x-api-key": s.relay.token, "anthropic-version": "2023-06-01"},
            )
        assert response.status_code == 200
        upstream = s.mock.requests[0]
        assert upstream.path == "/v1/messages?beta=true"
        assert response.content == upstream.response_body


async def test_official_sdks_with_default_base_urls(pg_dsn: str, tmp_path: Path) -> None:
    async with relay_and_proxy(pg_dsn, tmp_path) as s:
        async with s.client() as http:
            oa = openai.AsyncOpenAI(api_key=s.relay.token, http_client=http, max_retries=0)
            stream = await oa.chat.completions.create(model="mock-text", messages=USER, stream=True)  # type: ignore[arg-type]
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text == scenarios.TEXT
            an = s.anthropic(s.relay.token)
            message = await an.messages.create(model="mock-text", max_tokens=50, messages=USER)  # type: ignore[arg-type]
            assert message.content[0].text == scenarios.TEXT  # type: ignore[union-attr]
        rows = await s.relay.wait_for_rows(
            "SELECT provider_name, client FROM interceptions ORDER BY started_at", count=2
        )
        assert [r["provider_name"] for r in rows] == ["openai", "anthropic"]
        assert [r["client"] for r in rows] == ["sdk-python-openai", "sdk-python-anthropic"]


async def test_byok_through_the_proxy(pg_dsn: str, tmp_path: Path) -> None:
    """The client's own key goes upstream; the proxy's token says who it is."""
    async with relay_and_proxy(pg_dsn, tmp_path) as s:
        async with s.anthropic("sk-ant-my-own-key-12345678") as an:
            message = await an.messages.create(model="mock-text", max_tokens=50, messages=USER)  # type: ignore[arg-type]
            assert message.content[0].text == scenarios.TEXT  # type: ignore[union-attr]
        upstream = s.mock.requests[0]
        # (This SDK version sends its key as a Bearer token; older ones as X-Api-Key.)
        own = upstream.header("x-api-key") or upstream.header("authorization")
        assert own in ("sk-ant-my-own-key-12345678", "Bearer sk-ant-my-own-key-12345678")
        assert upstream.header("x-coder-ai-governance-token") is None
        assert s.relay.token not in repr(upstream.headers)
        rows = await s.relay.wait_for_rows("SELECT credential_kind FROM interceptions")
        assert rows[0]["credential_kind"] == "byok"


async def test_decrypted_requests_need_the_proxy_token(pg_dsn: str, tmp_path: Path) -> None:
    async with relay_and_proxy(pg_dsn, tmp_path) as s:
        async with s.client(token="not-a-relay-token") as client:
            with pytest.raises(httpx.ProxyError, match="407"):
                await client.get("https://api.openai.com/v1/models")
        # Inside a tunnel, nothing of the relay's own is reachable: the path is the provider's.
        async with s.client() as client:
            response = await client.get("https://api.openai.com/metrics")
            assert response.status_code == 404
            response = await client.get("https://api.openai.com/../admin/v1/users")
            assert response.status_code in (400, 404)
        assert not s.mock.requests


async def test_curl_with_https_proxy_and_the_ca(pg_dsn: str, tmp_path: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    async with relay_and_proxy(pg_dsn, tmp_path) as s:
        body = json.dumps(
            {"model": "mock-text", "stream": True, "max_tokens": 50, "messages": USER}
        )
        env = {"HTTPS_PROXY": s.proxy_url(), "PATH": "/usr/bin:/bin"}
        done = await trio.run_process(
            [
                curl, "-sS", "--fail-with-body", "--cacert", str(s.ca_file),
                "-H", f"x-api-key: {s.relay.token}", "-H", "content-type: application/json",
                "-H", "anthropic-version: 2023-06-01",
                "--data-binary", body, "https://api.anthropic.com/v1/messages",
            ],
            env=env, capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout == s.mock.requests[0].response_body
        # Without the CA, curl refuses the minted certificate.
        refused = await trio.run_process(
            [curl, "-sS", "https://api.anthropic.com/v1/models"],
            env=env, capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
        assert refused.returncode == 60, refused.stderr  # SSL certificate problem


async def test_a_provider_added_while_running_is_decrypted_within_a_second(
    pg_dsn: str, tmp_path: Path
) -> None:
    async with relay_and_proxy(pg_dsn, tmp_path) as s:
        interceptor = s.proxy.interceptor
        assert interceptor is not None
        assert interceptor.provider_for("llm.corp.example") is None
        await add_provider(
            s.relay.db,
            Provider(
                name="corp",
                type=ProviderType.OPENAI,
                base_url="https://llm.corp.example/v1/",
                keys=("sk-corp-0000000000000000",),
                source="api",
            ),
        )
        with trio.fail_after(1):
            while interceptor.provider_for("llm.corp.example") != "corp":
                await trio.sleep(0.02)


async def test_copilot_with_its_own_credential(pg_dsn: str, tmp_path: Path) -> None:
    """Copilot's default host, its own token forwarded (BYOK), the client detected."""
    async with relay_and_proxy(pg_dsn, tmp_path) as s:
        headers = {
            "authorization": "Bearer ghu_copilot-session-token-0001",
            "user-agent": "copilot/0.0.330 (linux v22.12.0) term/unknown",
            "x-client-session-id": "sess-42",
            "copilot-integration-id": "copilot-developer-cli",
        }
        body = {"model": "mock-text", "stream": True, "messages": USER}
        async with s.client() as client:
            response = await client.post(
                "https://api.individual.githubcopilot.com/chat/completions",
                json=body,
                headers=headers,
            )
            assert response.status_code == 200
            assert b"".join(_text_deltas(response.content)) == scenarios.TEXT.encode()
            models = await client.get(
                "https://api.individual.githubcopilot.com/models", headers=headers
            )
            assert models.status_code == 200
        chat, listing = s.mock.requests
        assert (chat.path, listing.path) == ("/v1/chat/completions", "/v1/models")
        assert chat.header("authorization") == "Bearer ghu_copilot-session-token-0001"
        assert chat.header("copilot-integration-id") == "copilot-developer-cli"
        rows = await s.relay.wait_for_rows(
            "SELECT provider_name, credential_kind, client, client_session_id FROM interceptions"
        )
        assert dict(rows[0]) == {
            "provider_name": "copilot",
            "credential_kind": "byok",
            "client": "copilot",
            "client_session_id": "sess-42",
        }


async def test_the_ca_certificate_is_served(pg_dsn: str, tmp_path: Path) -> None:
    async with relay_and_proxy(pg_dsn, tmp_path) as s:
        async with httpx.AsyncClient() as client:
            for prefix in ("/api/v2/ai-gateway", "/api/v2/aibridge"):
                response = await client.get(f"{s.relay.url}{prefix}/proxy/ca-cert.pem")
                assert response.status_code == 200
                assert response.content == s.ca_pem
                assert response.headers["content-type"] == "application/x-pem-file"
