"""The MCP client against a real MCP server (the SDK's, Streamable HTTP on loopback)."""

from __future__ import annotations

import re
import socket

import pytest
import trio

from relay.mcp.client import McpServers
from relay.options import McpServerOption
from relay.testing.mock_mcp import serve_mock_mcp


def _option(url: str, name: str = "mock", **kw: object) -> McpServerOption:
    return McpServerOption(0, name, url, **kw)  # type: ignore[arg-type]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_tools_listed_called_and_filtered(nursery: trio.Nursery) -> None:
    mock = await serve_mock_mcp(nursery)
    servers = McpServers(
        [
            _option(
                mock.url,
                headers=(("Authorization", "Bearer secret-token"),),
                allow=re.compile("^(echo|add|fail|slow|huge)$"),
                deny=re.compile("^slow$"),
            )
        ],
        tool_timeout=5,
        max_result=1000,
    )
    await nursery.start(servers.run)
    toolset = servers.snapshot()
    assert [t.name for t in toolset.tools] == [
        "bmcp_mock_echo",
        "bmcp_mock_add",
        "bmcp_mock_fail",
        "bmcp_mock_huge",
    ]
    add = toolset.resolve("bmcp_mock_add")
    assert add is not None and add.input_schema["required"] == ["a", "b"]
    assert (await servers.call(add, {"a": 2, "b": 3})).text == "5"
    failed = await servers.call(toolset.tools[2], {"reason": "kaput"})
    assert failed.error is not None and failed.text == failed.error
    huge = await servers.call(toolset.tools[3], {"size": 5000})
    assert huge.error is None and len(huge.text) < 1100 and "cut at 1000 of 5000" in huge.text
    assert all(h.get("authorization") == "Bearer secret-token" for h in mock.headers)


async def test_a_slow_tool_times_out(nursery: trio.Nursery, autojump_clock: object) -> None:
    mock = await serve_mock_mcp(nursery)
    servers = McpServers([_option(mock.url)], tool_timeout=2)
    await nursery.start(servers.run)
    slow = servers.snapshot().resolve("bmcp_mock_slow")
    assert slow is not None
    result = await servers.call(slow, {"seconds": 60})
    assert result.error == "the tool call timed out after 2s"


async def test_list_changed_refreshes_the_tools(nursery: trio.Nursery) -> None:
    mock = await serve_mock_mcp(nursery)
    servers = McpServers([_option(mock.url)], refresh_interval=0)
    await nursery.start(servers.run)
    assert servers.snapshot().resolve("bmcp_mock_added") is None
    grow = servers.snapshot().resolve("bmcp_mock_grow")
    assert grow is not None
    assert (await servers.call(grow, {})).text == "grown"
    with trio.fail_after(5):
        while servers.snapshot().resolve("bmcp_mock_added") is None:
            await trio.sleep(0.01)


async def test_a_server_down_at_start_is_skipped_then_picked_up(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    port = _closed_port()
    servers = McpServers(
        [_option(f"http://127.0.0.1:{port}/mcp", headers=(("X-Key", "hidden-value"),))],
        refresh_interval=0.2,
        connect_timeout=2,
    )
    with trio.fail_after(5):
        await nursery.start(servers.run)
    assert not servers.snapshot()
    assert "MCP server mock" in caplog.text and "hidden-value" not in caplog.text
    await serve_mock_mcp(nursery, port=port)
    with trio.fail_after(5):
        while not servers.snapshot():
            await trio.sleep(0.05)
    assert servers.snapshot().resolve("bmcp_mock_echo") is not None


async def test_an_answer_over_the_cap_fails_the_call_not_the_relay(nursery: trio.Nursery) -> None:
    mock = await serve_mock_mcp(nursery)
    servers = McpServers([_option(mock.url)], tool_timeout=10, max_result=1000)
    for server in servers.servers:
        server.max_response = 200_000  # the cap, small for the test
    await nursery.start(servers.run)
    huge = servers.snapshot().resolve("bmcp_mock_huge")
    assert huge is not None
    with trio.fail_after(5):
        result = await servers.call(huge, {"size": 1_000_000})
    assert result.error is not None and "timed out" not in result.error, result.error
    # The server stays usable (or is connected again) for the next call.
    echo = servers.snapshot().resolve("bmcp_mock_echo")
    with trio.fail_after(5):
        while True:
            if echo is not None and (await servers.call(echo, {"text": "a"})).text == "echo: a":
                break
            await trio.sleep(0.1)
            echo = servers.snapshot().resolve("bmcp_mock_echo")
