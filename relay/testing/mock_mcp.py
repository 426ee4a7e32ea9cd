"""A real MCP server for the tests: the official SDK's ``MCPServer``, Streamable HTTP.

It runs under hypercorn's trio worker in the caller's nursery (the SDK's
server side is anyio, so it runs on trio as it is). Its tools cover what
injection must handle: an ordinary answer, a failing tool, a slow one, a
huge result, and a tool that changes the tool list and says so
(``notifications/tools/list_changed``). ``calls`` counts the calls per tool
and ``headers`` keeps the request headers seen, so tests can check them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from mcp.server.mcpserver import Context, MCPServer


@dataclass
class MockMcp:
    server: MCPServer
    url: str = ""
    calls: dict[str, int] = field(default_factory=dict)
    headers: list[dict[str, str]] = field(default_factory=list)
    # Set while the slow tool runs; cancelled: the call was abandoned by its client.
    slow_started: trio.Event = field(default_factory=trio.Event)
    slow_cancelled: trio.Event = field(default_factory=trio.Event)

    def count(self, tool: str) -> None:
        self.calls[tool] = self.calls.get(tool, 0) + 1


def build_mock_mcp(name: str = "mock") -> MockMcp:
    server = MCPServer(name, log_level="WARNING")
    mock = MockMcp(server)

    @server.tool()
    def echo(text: str) -> str:
        """Echo the text back."""
        mock.count("echo")
        return f"echo: {text}"

    @server.tool()
    def add(a: int, b: int) -> str:
        """Add two integers."""
        mock.count("add")
        return str(a + b)

    @server.tool()
    def fail(reason: str = "broken") -> str:
        """Always fails."""
        mock.count("fail")
        raise ValueError(reason)

    @server.tool()
    async def slow(seconds: float = 30.0) -> str:
        """Sleeps before it answers."""
        mock.count("slow")
        mock.slow_started.set()
        try:
            await trio.sleep(seconds)  # the SDK's server runs on trio here
        except BaseException:
            mock.slow_cancelled.set()
            raise
        return "slow done"

    @server.tool()
    def huge(size: int = 1_000_000) -> str:
        """A result of ``size`` characters."""
        mock.count("huge")
        return "x" * size

    @server.tool()
    async def grow(ctx: Context) -> str:
        """Adds the tool ``added`` and tells the client the list changed."""
        mock.count("grow")

        def added() -> str:
            """A tool that appeared later."""
            return "added"

        server.add_tool(added, name="added")
        await ctx.session.send_tool_list_changed()
        return "grown"

    return mock


def _recording(mock: MockMcp, app: Any) -> Callable[..., Awaitable[None]]:
    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            mock.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await app(scope, receive, send)

    return asgi


async def serve_mock_mcp(
    nursery: trio.Nursery, mock: MockMcp | None = None, *, port: int = 0
) -> MockMcp:
    """Start ``mock`` (a new one by default) on a loopback port in ``nursery``."""
    mock = mock or build_mock_mcp()
    app = mock.server.streamable_http_app()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None
    binds = await nursery.start(serve, _recording(mock, app), config)
    mock.url = binds[0] + "/mcp"
    return mock
