"""The MCP servers' connections: tool lists kept current, tool calls made.

One ``McpServer`` per configured server runs for the process's life in the
services nursery: it connects with the official ``mcp`` SDK's Streamable
HTTP client (on anyio, which runs on trio), lists the tools, and lists them
again every ``refresh_interval`` and whenever the server sends
``notifications/tools/list_changed``. A server that cannot be reached, or
whose connection fails, is logged (its name, never its headers) and has no
tools until a later attempt succeeds: no request waits for it or fails for
it. ``McpServers`` is what the interception sees: a snapshot of every
server's tools (``relay.mcp.tools.ToolSet``) and ``call``.

The SDK is imported only when a server is configured: importing it costs
about two seconds here (it brings pydantic, starlette and the SDK's server
side), which a relay without MCP servers should not pay.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from relay.mcp.tools import (
    MAX_TOOLS_PER_SERVER,
    McpTool,
    ServerTools,
    ToolSet,
    build_toolset,
    check_tool,
)
from relay.options import McpServerOption

if TYPE_CHECKING:
    from mcp import Client

log = logging.getLogger("relay.mcp")

RETRY_CAP = 30.0
# What one MCP answer (a JSON body, or one SSE event) may weigh before it is read
# whole: a hostile server cannot make the relay buffer more.
MIN_RESPONSE_CAP = 4 * 1024 * 1024  # a server that is down is tried again at least this often
MAX_PAGES = 16  # tools/list pages read per listing


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What goes back to the model: the result's text, or the error's (``error`` set)."""

    text: str
    error: str | None = None


def result_text(result: Any, max_bytes: int) -> ToolResult:
    """A ``CallToolResult`` as the text handed to the model, cut at ``max_bytes``."""
    parts: list[str] = []
    for item in getattr(result, "content", None) or ():
        if getattr(item, "type", None) == "text":
            parts.append(str(getattr(item, "text", "")))
        else:
            # Images, audio, resources: described, not inlined (a model cannot use base64 text).
            parts.append(f"[{getattr(item, 'type', 'content')} omitted]")
    if not parts and getattr(result, "structured_content", None) is not None:
        parts.append(msgspec.json.encode(result.structured_content).decode())
    text = cap_text("\n".join(parts), max_bytes)
    if getattr(result, "is_error", False):
        return ToolResult(text or "the tool failed", error=text or "the tool failed")
    return ToolResult(text)


def cap_text(text: str, max_bytes: int) -> str:
    encoded = text.encode("utf-8", "replace")
    if max_bytes <= 0 or len(encoded) <= max_bytes:
        return text
    kept = encoded[:max_bytes].decode("utf-8", "ignore")
    return f"{kept}\n[result cut at {max_bytes} of {len(encoded)} bytes]"


class McpServer:
    """One configured server: its connection and its last tool list."""

    def __init__(
        self,
        option: McpServerOption,
        *,
        connect_timeout: float,
        refresh_interval: float,
        max_response: int = MIN_RESPONSE_CAP,
    ) -> None:
        self.option = option
        self.max_response = max_response  # bytes of one answer the SDK may read
        self.connect_timeout = connect_timeout
        self.refresh_interval = refresh_interval
        self.tools = ServerTools(option.name, option.url)
        self._client: Client | None = None
        self._changed = trio.Event()
        self.listings = 0  # successful tools/list rounds (tests, logs)

    @property
    def up(self) -> bool:
        return self._client is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the connection and the tool list; started once the first attempt is over."""
        started = False
        while True:
            try:
                await self._session(task_status if not started else None)
            except Exception as exc:  # a server's failure is its own, never the relay's
                log.warning(
                    "MCP server %s: %s; its tools are not injected until it answers",
                    self.option.name,
                    describe_failure(exc),
                )
            finally:
                self._client = None
                self.tools = ServerTools(self.option.name, self.option.url)
            if not started:
                started = True
                task_status.started()
            retry = min(self.refresh_interval or RETRY_CAP, RETRY_CAP)
            await trio.sleep(retry)

    async def _session(self, task_status: trio.TaskStatus[None] | None) -> None:
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        async def on_message(message: Any) -> None:
            if getattr(message, "method", None) == "notifications/tools/list_changed":
                self._changed.set()

        headers = dict(self.option.headers)
        timeout = httpx2.Timeout(self.connect_timeout, read=None)
        limit = self.max_response
        http = httpx2.AsyncClient(
            headers=headers, timeout=timeout, transport=capped_transport(limit)
        )
        try:
            # One scope bounds the connection and the first listing: the SDK's task groups
            # live inside it, so its deadline is lifted, not left, once the tools are known.
            with trio.CancelScope(deadline=trio.current_time() + self.connect_timeout) as scope:
                async with Client(
                    streamable_http_client(
                        self.option.url, http_client=http, max_sse_event_size=limit
                    ),
                    mode="legacy",
                    cache=None,
                    message_handler=on_message,
                ) as client:
                    try:
                        await self._list(client)
                        scope.deadline = math.inf
                        self._client = client
                        if task_status is not None:
                            task_status.started()
                            task_status = None
                        while True:
                            with trio.move_on_after(self.refresh_interval or math.inf):
                                await self._changed.wait()
                            self._changed = trio.Event()
                            with trio.fail_after(self.connect_timeout):
                                await self._list(client)
                    finally:
                        self._client = None
        finally:
            # Closed to the end even when cancelled (shutdown): no connection is left
            # for the garbage collector to close on another thread's event loop.
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await http.aclose()
        if scope.cancelled_caught:
            raise TimeoutError(f"no answer within {self.connect_timeout:g}s")

    async def _list(self, client: Client) -> None:
        tools: list[tuple[str, str, dict[str, Any]]] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            page = await client.list_tools(cursor=cursor)
            for tool in page.tools:
                checked = check_tool(tool.model_dump(by_alias=False))
                if isinstance(checked, str):
                    log.warning("MCP server %s: tool left out: %s", self.option.name, checked)
                    continue
                if not self.option.injects(checked[0]):
                    continue
                tools.append(checked)
            cursor = page.next_cursor
            if cursor is None:
                break
        if len(tools) > MAX_TOOLS_PER_SERVER:
            log.warning(
                "MCP server %s lists %d tools; the first %d are injected",
                self.option.name,
                len(tools),
                MAX_TOOLS_PER_SERVER,
            )
            tools = tools[:MAX_TOOLS_PER_SERVER]
        self.tools = ServerTools(self.option.name, self.option.url, tuple(tools))
        self.listings += 1
        log.info("MCP server %s: %d tools", self.option.name, len(tools))

    async def call(
        self, tool: str, arguments: Mapping[str, Any], timeout: float, max_bytes: int
    ) -> ToolResult:
        client = self._client
        if client is None:
            return ToolResult(
                "the MCP server is unavailable", error="the MCP server is unavailable"
            )
        try:
            with trio.fail_after(timeout):
                result = await client.call_tool(tool, dict(arguments))
        except trio.TooSlowError:
            message = f"the tool call timed out after {timeout:g}s"
            return ToolResult(message, error=message)
        except Exception as exc:
            message = f"the tool call failed: {describe_failure(exc)}"
            return ToolResult(message, error=message)
        return result_text(result, max_bytes)


class ResponseTooLarge(Exception):
    """An MCP server's answer was larger than the relay reads."""


def capped_transport(limit: int) -> Any:
    """An httpx2 transport whose POST answers end in ``ResponseTooLarge`` past ``limit`` bytes.

    The session's GET stream (notifications, for as long as the session lives) is
    left alone; its events are bounded by the SDK's ``max_sse_event_size``.
    """
    import httpx2

    class Capped(httpx2.AsyncByteStream):
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        async def __aiter__(self) -> Any:
            seen = 0
            async for chunk in self._inner:
                seen += len(chunk)
                if seen > limit:
                    raise ResponseTooLarge(f"the MCP server's answer is over {limit} bytes")
                yield chunk

        async def aclose(self) -> None:
            await self._inner.aclose()

    class Transport(httpx2.AsyncBaseTransport):
        def __init__(self) -> None:
            self._inner = httpx2.AsyncHTTPTransport()

        async def handle_async_request(self, request: Any) -> Any:
            response = await self._inner.handle_async_request(request)
            if request.method != "POST":
                return response
            return httpx2.Response(
                response.status_code,
                headers=response.headers,
                stream=Capped(response.stream),
                extensions=response.extensions,
            )

        async def aclose(self) -> None:
            await self._inner.aclose()

    return Transport()


def describe_failure(exc: BaseException) -> str:
    """One line for a failure (the first leaf of an exception group), never a header value."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class McpServers:
    """Every configured server; what the interception asks for (``relay.intercept.ports``)."""

    def __init__(
        self,
        options: Sequence[McpServerOption],
        *,
        connect_timeout: float = 10.0,
        refresh_interval: float = 300.0,
        tool_timeout: float = 60.0,
        max_result: int = 256 * 1024,
        max_rounds: int = 10,
    ) -> None:
        cap = max(MIN_RESPONSE_CAP, 8 * max_result)
        self.servers = [
            McpServer(
                o,
                connect_timeout=connect_timeout,
                refresh_interval=refresh_interval,
                max_response=cap,
            )
            for o in options
        ]
        self.tool_timeout = tool_timeout
        self.max_result = max_result
        self.max_rounds = max_rounds
        self._by_name = {s.option.name: s for s in self.servers}
        self._snapshot: tuple[tuple[ServerTools, ...], ToolSet] | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Every server's task; started once each has had its first attempt."""
        async with trio.open_nursery() as nursery:
            # The first attempts run side by side: the start waits for the slowest only.
            async with trio.open_nursery() as starting:
                for server in self.servers:
                    starting.start_soon(nursery.start, server.run)
            task_status.started()

    def snapshot(self) -> ToolSet:
        """Every server's tools now; built again only after a server's list changed."""
        lists = tuple(s.tools for s in self.servers)
        cached = self._snapshot
        if cached is None or any(a is not b for a, b in zip(cached[0], lists, strict=True)):
            cached = self._snapshot = (lists, build_toolset(lists))
        return cached[1]

    async def call(self, tool: McpTool, arguments: Mapping[str, Any]) -> ToolResult:
        server = self._by_name.get(tool.server)
        if server is None:
            return ToolResult("unknown MCP server", error="unknown MCP server")
        return await server.call(tool.tool, arguments, self.tool_timeout, self.max_result)
