"""The tool loop: one client answer made of several upstream requests.

When a request carries injected MCP tools (``relay.mcp``), the model may call
one of them: the relay then withholds those calls from the client, runs the
tools against their MCP servers (concurrently when there are several, each
within ``MCP_TOOL_TIMEOUT``), appends the results (an error's text when a
call failed) and asks the upstream again, up to ``MCP_MAX_ROUNDS`` requests.
The client sees one continuous answer. What differs by API is a ``ToolLoop``
(sans-io: ``relay.intercept.messages.injection`` ...): the rounds' stream
rewriting and the next request's body; this module is the I/O around it,
built from the shell's own pieces (``relay.intercept.base``): key failover,
the disconnect watcher (which cancels a tool call and the upstream at once),
keepalive between rounds, the outcome.

Every round's events are also fed to the API's accumulator, so each inner
request's usage is recorded, and so are the client's own tool calls.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import trio

from relay.asgi import Receive, Send, forwardable_response_headers
from relay.facts import Facts, InjectedToolCall, RoundUsage, ToolCall
from relay.intercept.base import (
    Accumulator,
    ApiSpec,
    Outcome,
    StreamState,
    UpstreamCall,
    answer_exhausted,
    fail_before_response,
    send_body,
    send_error,
    send_upstream,
    supervise,
)
from relay.intercept.ports import McpPort
from relay.mcp.tools import ToolSet
from relay.observe import tracing
from relay.streams.sse import SSEDecoder, SSEEvent
from relay.upstream.errors import UpstreamError
from relay.upstream.http11 import UpstreamResponse
from relay.upstream.keypool import Exhausted

log = logging.getLogger("relay.intercept")

MAX_ROUNDS_ERROR = "mcp_max_rounds"


class StreamRound(Protocol):
    calls: list[ToolCall]
    usage: Any

    @property
    def continues(self) -> bool: ...

    def feed(self, event: SSEEvent) -> bytes: ...


class WholeRound(Protocol):
    calls: list[ToolCall]
    usage: Any

    @property
    def continues(self) -> bool: ...


class ToolLoop(Protocol):
    """An API's side of the loop (sans-io)."""

    rounds: int
    toolset: ToolSet

    def round(self) -> Any: ...

    def whole(self, body: bytes) -> Any: ...

    def follow_up(self, round_: Any, results: Sequence[tuple[ToolCall, str, bool]]) -> bytes: ...

    def whole_final(self, last: Any) -> bytes: ...


@dataclass(slots=True)
class _Facts:
    """Every round's accumulated facts, merged into the interception's."""

    rounds: list[Facts] = field(default_factory=list)
    injected: list[InjectedToolCall] = field(default_factory=list)
    current: Accumulator | None = None

    def merged(self, toolset: ToolSet) -> Facts:
        done = [*self.rounds, *([self.current.facts] if self.current is not None else [])]
        if not done:
            return Facts(injected_calls=list(self.injected))
        last = done[-1]
        facts = msgspec.structs.replace(last)
        facts.response_id = done[0].response_id or last.response_id
        facts.tool_calls = [
            c for f in done for c in f.tool_calls if toolset.resolve(c.name) is None
        ]
        facts.thoughts = [t for f in done for t in f.thoughts]
        facts.round_usages = [
            RoundUsage(response_id=f.response_id, usage=f.usage)
            for f in done[:-1]
            if f.usage is not None
        ]
        facts.injected_calls = list(self.injected)
        return facts


async def run_tool_loop(
    send: Send,
    receive: Receive,
    call: UpstreamCall,
    loop: ToolLoop,
    spec: ApiSpec,
    outcome: Outcome,
    mcp: McpPort,
    *,
    keepalive_interval: float,
) -> None:
    """Relay one answer whose request carries injected tools; fills ``outcome``."""
    facts = _Facts()

    async def work(state: StreamState, nursery: trio.Nursery) -> None:
        runner = _Loop(send, call, loop, spec, outcome, mcp, state, facts, nursery)
        await runner.run(keepalive_interval)

    await supervise(send, receive, outcome, work, lambda: facts.merged(loop.toolset))


@dataclass(slots=True)
class _Loop:
    send: Send
    call: UpstreamCall
    loop: ToolLoop
    spec: ApiSpec
    outcome: Outcome
    mcp: McpPort
    state: StreamState
    facts: _Facts
    nursery: trio.Nursery
    streaming: bool = False

    async def run(self, keepalive_interval: float) -> None:
        call, outcome, state = self.call, self.outcome, self.state
        body = call.body
        outcome.sent_at = trio.current_time()
        while True:
            try:
                async with send_upstream(
                    call.client, call.method, call.url, call.headers, body, call.failover
                ) as answer:
                    if isinstance(answer, Exhausted):
                        if not state.headers_sent:
                            await answer_exhausted(
                                self.send, self.spec.error_style, outcome, call.failover, answer
                            )
                        else:
                            await self._fail_stream("key_pool_exhausted", answer.message)
                        return
                    round_ = await self._round(answer, keepalive_interval)
                    if round_ is None:
                        return  # answered (an error, or the client's final message)
            except UpstreamError as exc:
                if not state.headers_sent:
                    await fail_before_response(self.send, self.spec.error_style, outcome, exc)
                    return
                log.warning("upstream failed in a tool loop: %s", type(exc).__name__)
                await self._fail_stream(
                    "upstream_stream_error",
                    f"upstream connection failed mid-stream ({type(exc).__name__})",
                )
                return
            if self.loop.rounds >= self.mcp.max_rounds:
                await self._max_rounds()
                return
            results = await self._run_tools(round_.calls)
            body = self.loop.follow_up(round_, results)

    async def _round(self, response: UpstreamResponse, keepalive_interval: float) -> Any | None:
        """One upstream answer; the round when the loop goes on, None when the client has its answer."""
        outcome, state, dump = self.outcome, self.state, self.call.dump
        first = self.loop.rounds == 0
        outcome.upstream_status = response.status_code
        if first and dump is not None:
            dump.response_start(response.status_code, response.headers.raw)
        streams = response.headers.get("content-type", "").startswith("text/event-stream")
        if state.headers_sent and not streams and response.status_code < 400:
            await response.aread()
            await self._fail_stream(
                "upstream_not_a_stream", "the upstream answered without a stream"
            )
            return None
        if response.status_code >= 400 or not streams:
            body = await response.aread()
            if first and dump is not None:
                dump.response_chunk(body)
            if response.status_code >= 400:
                await self._upstream_error(response, body)
                return None
            return await self._whole(response, body)
        if not state.headers_sent:
            headers = forwardable_response_headers(response.headers.raw, streaming=True)
            await self.send(
                {"type": "http.response.start", "status": response.status_code, "headers": headers}
            )
            state.headers_sent = True
            state.last_send = trio.current_time()
            self.streaming = True
            if keepalive_interval > 0:
                state.start_keepalive(keepalive_interval)
        round_ = self.loop.round()
        accumulator = self._new_accumulator()
        decoder = SSEDecoder(keep_raw=True)
        feed, account = round_.feed, accumulator.feed
        async for chunk in response.aiter_raw():
            if first and dump is not None:
                dump.response_chunk(chunk)
            if outcome.first_byte_at is None:
                outcome.first_byte_at = trio.current_time()
            out: list[bytes] = []
            for event in decoder.feed(chunk):
                if event.dispatch:
                    account(event)
                out.append(feed(event))
            data = b"".join(out)
            state.at_boundary = decoder.pending == 0
            if data:
                await send_body(self.send, state, data)
        tail: list[bytes] = []
        for event in decoder.close():
            if event.dispatch:
                account(event)
            tail.append(feed(event))
        state.at_boundary = True
        if round_.continues:
            if tail:
                await send_body(self.send, state, b"".join(tail))
            return round_
        if tail:
            await send_body(self.send, state, b"".join(tail))
        outcome.upstream_complete = True
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        return None

    def _new_accumulator(self) -> Accumulator:
        if self.facts.current is not None:
            self.facts.rounds.append(self.facts.current.facts)
        self.facts.current = self.spec.new_accumulator()
        return self.facts.current

    async def _whole(self, response: UpstreamResponse, body: bytes) -> Any | None:
        """A blocking round: the loop goes on, or the client gets the one merged message."""
        self._new_accumulator().feed_response(body)
        round_ = self.loop.whole(body)
        if round_.continues:
            return round_
        out = self.loop.whole_final(round_)
        self.outcome.upstream_complete = True
        headers = [
            (k, v)
            for k, v in forwardable_response_headers(response.headers.raw, streaming=False)
            if k.lower() != b"content-length"
        ]
        headers.append((b"content-length", str(len(out)).encode()))
        self.state.headers_sent = True
        await self.send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        self.outcome.first_byte_at = self.outcome.first_byte_at or trio.current_time()
        await self.send({"type": "http.response.body", "body": out, "more_body": False})
        return None

    async def _upstream_error(self, response: UpstreamResponse, body: bytes) -> None:
        outcome = self.outcome
        outcome.status = "failed"
        outcome.error_type = f"upstream_{response.status_code}"
        outcome.error_message = body[:2000].decode("utf-8", "replace")
        if self.state.headers_sent:
            await self._fail_stream(outcome.error_type, outcome.error_message)
            return
        outcome.upstream_complete = True
        self.state.headers_sent = True
        headers = forwardable_response_headers(response.headers.raw, streaming=False)
        await self.send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        outcome.first_byte_at = outcome.first_byte_at or trio.current_time()
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def _fail_stream(self, error_type: str, message: str) -> None:
        """End a stream already started with the API's error event."""
        outcome = self.outcome
        outcome.upstream_complete = True
        outcome.status = "failed"
        outcome.error_type = error_type
        outcome.error_message = message[:2000]
        await send_body(self.send, self.state, self.spec.stream_error("api_error", message))
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _max_rounds(self) -> None:
        message = (
            f"the model kept calling injected MCP tools: stopped after {self.loop.rounds} "
            "upstream requests (CODER_AI_GATEWAY_MCP_MAX_ROUNDS)"
        )
        if self.state.headers_sent:
            await self._fail_stream(MAX_ROUNDS_ERROR, message)
            return
        outcome = self.outcome
        outcome.upstream_complete = True
        outcome.status = "failed"
        outcome.error_type = MAX_ROUNDS_ERROR
        outcome.error_message = message
        self.state.headers_sent = True
        await send_error(self.send, self.spec.error_style, 502, message)

    async def _run_tools(self, calls: Sequence[ToolCall]) -> list[tuple[ToolCall, str, bool]]:
        """Every injected call of the round, side by side; a result (or an error) for each."""
        results: list[tuple[ToolCall, str, bool] | None] = [None] * len(calls)

        async def one(i: int, call: ToolCall) -> None:
            tool = self.loop.toolset.resolve(call.name)
            error: str | None
            if tool is None:
                text = error = f"unknown tool {call.name}"
                url = server = ""
            else:
                url, server = tool.url, tool.server
                try:
                    arguments = msgspec.json.decode(call.arguments or "{}")
                except msgspec.DecodeError:
                    arguments = None
                if not isinstance(arguments, dict):
                    text = error = "the tool's input is not a JSON object"
                else:
                    with tracing.span(
                        "Intercept.ToolCall",
                        tracing.tool_call_attributes(call.name, call.id, server, url)
                        if tracing.enabled()
                        else None,
                    ) as span:
                        result = await self.mcp.call(tool, arguments)
                        text, error = result.text, result.error
                        tracing.tool_call_failed(span, error)
            self.facts.injected.append(
                InjectedToolCall(
                    id=call.id,
                    name=call.name,
                    arguments=call.arguments,
                    server=server,
                    server_url=url,
                    error=error,
                )
            )
            results[i] = (call, text, error is not None)

        async with trio.open_nursery() as nursery:
            for i, call in enumerate(calls):
                nursery.start_soon(one, i, call)
        return [r for r in results if r is not None]
