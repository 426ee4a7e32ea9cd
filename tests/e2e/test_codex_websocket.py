"""Issue 17 with the real Codex CLI: ``supports_websockets = true`` against the relay.

Codex is the one clients/package-lock.json pins (tests/agent_clis.py); the mock WebSocket's upgrades
and the relay's refusal metric tell which path Codex took. Verified with
codex-cli 0.171.0: it opens one socket per run, sends a ``generate: false``
prewarm turn, then its turns (a tool call and its result on the same socket).
"""

from __future__ import annotations

import os
from pathlib import Path

import trio

from relay.testing.mock_upstream.server import MockUpstream
from tests.agent_clis import CODEX, needs_codex
from tests.e2e.test_responses_websocket import KEY, ws_relay
from tests.relay_harness import RunningRelay, running_relay

pytestmark = needs_codex


async def run_codex(relay: RunningRelay, home: Path, model: str, prompt: str) -> str:
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(
        f'model = "{model}"\n'
        'model_provider = "relay"\n'
        "[model_providers.relay]\n"
        'name = "Relay"\n'
        f'base_url = "{relay.gateway("openai")}/v1"\n'
        'env_key = "RELAY_TOKEN"\n'
        'wire_api = "responses"\n'
        "supports_websockets = true\n"
    )
    env = {
        "HOME": str(home),
        "CODEX_HOME": str(codex_home),
        "RELAY_TOKEN": relay.token,
        "PATH": os.environ.get("PATH", ""),
    }
    work = home / "work"
    work.mkdir(exist_ok=True)
    with trio.fail_after(60):
        done = await trio.run_process(
            [CODEX, "exec", "--skip-git-repo-check", "-C", str(work), prompt],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert done.returncode == 0, out
    return out


async def test_codex_over_the_websocket(pg_dsn: str, tmp_path: Path) -> None:
    async with ws_relay(pg_dsn, tmp_path / "relay") as (mock, relay):
        await run_codex(relay, tmp_path / "home", "mock-text", "say hello")
        await run_codex(relay, tmp_path / "home2", "mock-tool", "what is the weather")
        assert mock.upgrades, "Codex did not use the WebSocket"
        rows = await relay.wait_for_rows(
            "SELECT model, status, client FROM interceptions ORDER BY started_at", count=2
        )
        assert {r["client"] for r in rows} == {"codex"}
        assert {r["model"] for r in rows} >= {"mock-text", "mock-tool"}
        tools = await relay.wait_for_rows("SELECT name FROM tool_usages", count=1)
        assert tools[0]["name"] == "get_weather"


async def test_codex_falls_back_to_http_on_426(pg_dsn: str, tmp_path: Path) -> None:
    mock = MockUpstream()
    async with trio.open_nursery() as nursery:
        await nursery.start(mock.serve, 0)
        env = {
            "CODER_AI_GATEWAY_PROVIDER_0_TYPE": "openai",
            "CODER_AI_GATEWAY_PROVIDER_0_NAME": "openai",
            "CODER_AI_GATEWAY_PROVIDER_0_KEY": KEY,
            "CODER_AI_GATEWAY_PROVIDER_0_BASE_URL": mock.openai_base_url + "/",
            "CODER_AI_GATEWAY_RESPONSES_WEBSOCKET": "false",
        }
        async with running_relay(pg_dsn, tmp_path / "relay", env) as relay:
            await run_codex(relay, tmp_path / "home", "mock-text", "say hello")
            rows = await relay.wait_for_rows("SELECT status, client FROM interceptions", count=1)
            assert {r["client"] for r in rows} == {"codex"}
            assert {r["status"] for r in rows} == {"completed"}
            # It asked for the WebSocket first and was sent to HTTP.
            metrics = relay.app.services.metrics.render()  # type: ignore[union-attr]
            assert b'relay_responses_websocket_refusals_total{reason="disabled"}' in metrics
        nursery.cancel_scope.cancel()
