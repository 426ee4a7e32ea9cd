"""The real agent CLIs through the proxy, with their default base URLs.

Claude Code and Codex as clients/package-lock.json pins them
(tests/agent_clis.py), with only ``HTTPS_PROXY`` (the relay token as the proxy
password) and the proxy's CA set: Claude Code reaches the provider named
``anthropic``, Codex the one named ``openai``, both pointing at the mock
upstream. Nothing is resolved: the decrypted hosts are served in-process and
every other host a client tries is refused by the guard or by the absent
network, so everything stays on loopback.
"""

from __future__ import annotations

import os
from pathlib import Path

import trio

from relay.proxy.ca import CertificateAuthority
from relay.testing.mock_upstream import scenarios
from tests.agent_clis import CLAUDE, CODEX, needs_claude, needs_codex
from tests.e2e.test_responses_websocket import KEY, ws_relay
from tests.proxy.test_proxy_mitm import proxy_beside, relay_and_proxy

CLIENT_ENV = {
    "PATH": os.environ.get("PATH", ""),
    "NO_PROXY": "",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_AUTOUPDATER": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}


async def run(cmd: list[str], env: dict[str, str], cwd: Path) -> str:
    with trio.fail_after(60):
        done = await trio.run_process(
            cmd, env=env, cwd=cwd, capture_stdout=True, capture_stderr=True, check=False
        )
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert done.returncode == 0, out
    return out


@needs_claude
async def test_claude_code_with_only_https_proxy_and_the_ca(pg_dsn: str, tmp_path: Path) -> None:
    async with relay_and_proxy(pg_dsn, tmp_path) as s:
        home = tmp_path / "home"
        home.mkdir()
        env = {
            **CLIENT_ENV,
            "HOME": str(home),
            "HTTPS_PROXY": s.proxy_url(),
            "NODE_EXTRA_CA_CERTS": str(s.ca_file),
            "ANTHROPIC_API_KEY": s.relay.token,
        }
        out = await run([CLAUDE, "-p", "--model", "mock-text", "say hi"], env, home)
        assert scenarios.TEXT in out
        messages = [r for r in s.mock.requests if r.path.startswith("/v1/messages")]
        assert messages, [r.path for r in s.mock.requests]
        assert messages[0].header("x-api-key") != s.relay.token
        rows = await s.relay.wait_for_rows(
            "SELECT provider_name, client, credential_kind, status FROM interceptions "
            "WHERE model = 'mock-text'"
        )
        assert {(r["provider_name"], r["client"], r["credential_kind"]) for r in rows} == {
            ("anthropic", "claude-code", "centralized")
        }
        assert {r["status"] for r in rows} == {"completed"}


@needs_codex
async def test_codex_with_only_https_proxy_and_the_ca(pg_dsn: str, tmp_path: Path) -> None:
    """Codex opens the Responses WebSocket through the proxy, decrypted and bridged by the relay."""
    ca = CertificateAuthority.generate()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    async with (
        ws_relay(pg_dsn, tmp_path / "relay") as (mock, relay),
        proxy_beside(relay, ca) as (_proxy, port),
    ):
        home = tmp_path / "home"
        home.mkdir()
        (home / ".codex").mkdir()
        env = {
            **CLIENT_ENV,
            "HOME": str(home),
            "HTTPS_PROXY": f"http://me:{relay.token}@127.0.0.1:{port}",
            "SSL_CERT_FILE": str(ca_file),
            "CODEX_HOME": str(home / ".codex"),
            "OPENAI_API_KEY": relay.token,
        }
        cmd = [CODEX, "exec", "--skip-git-repo-check", "-m", "mock-text", "say hi"]
        out = await run(cmd, env, home)
        assert scenarios.TEXT in out
        assert "Falling back from WebSockets" not in out
        # The upstream socket is the relay's, with the provider's key.
        assert mock.upgrades, "Codex did not use the WebSocket"
        assert mock.upgrades[0]["authorization"] == f"Bearer {KEY}"
        rows = await relay.wait_for_rows(
            "SELECT provider_name, client, credential_kind, status FROM interceptions "
            "WHERE model = 'mock-text'"
        )
        assert {(r["provider_name"], r["client"], r["credential_kind"]) for r in rows} == {
            ("openai", "codex", "centralized")
        }
        assert {r["status"] for r in rows} == {"completed"}
        metrics = relay.app.services.metrics.render()  # type: ignore[union-attr]
        assert (
            b'coder_ai_gateway_proxy_mitm_responses_total{code="101",provider="openai"}' in metrics
        )
