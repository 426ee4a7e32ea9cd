"""Issue 18 with the real Claude Code CLI: an injected MCP tool inside one ``claude -p`` run.

Claude Code is the one clients/package-lock.json pins (tests/agent_clis.py). It
talks to the relay's ``anthropic`` provider (``ANTHROPIC_BASE_URL``, the relay
token as its API key); the relay offers the in-process MCP server's tools
(``bmcp_mock_*``) and the mock upstream, scripted through the header Claude
Code adds to every request (``ANTHROPIC_CUSTOM_HEADERS``), calls
``bmcp_mock_add``. The relay runs the tool, asks again, and Claude Code only
ever sees the one answer quoting the tool's result.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec
import trio

from relay.testing.mock_upstream.tool_script import HEADER
from tests.agent_clis import CLAUDE, needs_claude
from tests.e2e.test_mcp_injection import mcp_relay

pytestmark = needs_claude

MODEL = "claude-sonnet-4-5"


async def test_claude_code_runs_with_an_injected_tool(pg_dsn: str, tmp_path: Path) -> None:
    async with mcp_relay(pg_dsn, tmp_path / "relay") as (mock, relay, mcp):
        assert mcp is not None
        home = tmp_path / "home"
        work = home / "work"
        work.mkdir(parents=True)
        script = json.dumps([[{"name": "bmcp_mock_add", "input": {"a": 20, "b": 22}}]])
        env = {
            "HOME": str(home),
            "PATH": os.environ.get("PATH", ""),
            "ANTHROPIC_BASE_URL": relay.gateway("anthropic"),
            "ANTHROPIC_API_KEY": relay.token,
            "ANTHROPIC_CUSTOM_HEADERS": f"{HEADER}: {script}",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
        }
        with trio.fail_after(60):
            done = await trio.run_process(
                [CLAUDE, "-p", "--model", MODEL, "What is 20 plus 22?"],
                env=env,
                cwd=str(work),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        out = done.stdout.decode(errors="replace")
        err = done.stderr.decode(errors="replace")
        assert done.returncode == 0, out + err
        # The answer quotes what the MCP server computed (the mock only quotes results).
        assert "Done: 42" in out, out + err
        assert mcp.calls == {"add": 1}
        # Upstream: the run's request with the injected tools before Claude Code's own,
        # then the relay's follow-up carrying the tool's result; small/fast (haiku)
        # requests, if Claude Code makes any, get no injected tools.
        main = [
            msgspec.json.decode(r.body)
            for r in mock.requests
            if r.body and "haiku" not in msgspec.json.decode(r.body).get("model", "")
        ]
        assert len(main) == 2, [r.path for r in mock.requests]
        names = [t["name"] for t in main[0]["tools"]]
        assert names[:2] == ["bmcp_mock_echo", "bmcp_mock_add"]
        assert "Bash" in names  # Claude Code's own tools follow
        result = main[1]["messages"][-1]["content"][0]
        assert result["type"] == "tool_result" and "42" in json.dumps(result["content"])
        for request in mock.requests:
            body = msgspec.json.decode(request.body) if request.body else {}
            if "haiku" in body.get("model", ""):
                assert not any(
                    t.get("name", "").startswith("bmcp_") for t in body.get("tools") or ()
                )
        tools = await relay.wait_for_rows(
            "SELECT name, input, injected, invocation_error, server_url FROM tool_usages", count=1
        )
        assert [(t["name"], json.loads(t["input"]), t["injected"]) for t in tools] == [
            ("bmcp_mock_add", {"a": 20, "b": 22}, True)
        ]
        assert tools[0]["invocation_error"] is None and tools[0]["server_url"] == mcp.url
        rows = await relay.wait_for_rows(
            "SELECT i.id, i.status, i.client, u.output_tokens FROM interceptions i "
            "JOIN token_usages u ON u.interception_id = i.id WHERE i.model = $1",
            MODEL,
            count=2,
        )
        # One interception for the run, with the usage of both inner requests.
        assert len(rows) == 2 and len({r["id"] for r in rows}) == 1
        assert {(r["status"], r["client"]) for r in rows} == {("completed", "claude-code")}
