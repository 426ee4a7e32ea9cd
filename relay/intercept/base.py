"""The interception shell: one upstream request, relayed and accounted for.

Every upstream chunk goes to the client as it arrives, unchanged, and the
same bytes are fed to the API's sans-io decoder and accumulator. The shell is
thin: all parsing lives in ``relay.streams`` and the accumulators.

Cancellation: hypercorn does not cancel the app when the client leaves, so
one companion task per exchange (``watch_client``) waits on ``receive()``
for ``http.disconnect`` and cancels the request's scope. Leaving the upstream
response's ``async with`` then closes the upstream connection at once
(``relay.upstream.http11`` closes, never pools, a connection whose response
was not read to the end). The same task keeps a quiet stream alive: its wait
on ``receive()`` has the keepalive deadline, so a stream costs one task
besides its own, not two.

Backpressure: ``send`` blocks while the client is slow, so the upstream read
waits too; the relay holds at most one socket read per stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import trio

from relay.asgi import Headers, Receive, Send, forwardable_response_headers, send_response
from relay.dump import DumpHandle
from relay.facts import Facts
from relay.observe import tracing
from relay.streams.sse import SSEDecoder, SSEEvent
from relay.upstream.errors import UpstreamError, UpstreamTimeout
from relay.upstream.http11 import HTTP11Client, RequestBody, UpstreamResponse
from relay.upstream.keypool import Exhausted, Failover, retry_after_header
from relay.wire.common import RequestInfo
from relay.wire.errors import ErrorStyle, error_body_for

log = logging.getLogger("relay.intercept")
UPSTREAM_SPAN = "Intercept.ProcessRequest.Upstream"

KEEPALIVE_COMMENT = b": keepalive\n\n"


class Accumulator(Protocol):
    @property
    def facts(self) -> Facts: ...  # read-only: accumulators build it on access

    def feed(self, event: SSEEvent) -> None: ...

    def feed_response(self, body: bytes) -> None: ...


@dataclass(frozen=True)
class ApiSpec:
    """What differs between the intercepted APIs."""

    name: str  # route label: messages, chat, responses
    error_style: ErrorStyle
    parse_request: Callable[[bytes], RequestInfo]
    new_accumulator: Callable[[], Accumulator]
    # (error type, message) -> an SSE error event that the official SDK raises on.
    stream_error: Callable[[str, str], bytes]
    # Optional rewrite of the request: returns (body to send, drop the usage chunk it caused).
    prepare_body: Callable[[bytes, RequestInfo], tuple[bytes, bool]] | None = None
    # Whether an SSE event is one the relay caused and the client must not see.
    is_injected: Callable[[SSEEvent], bool] | None = None
    # Undo what the relay's rewrite of the request added to the other events.
    restore_raw: Callable[[bytes], bytes] | None = None
    # MCP tool injection (relay.intercept.injection): the request decoded and the
    # servers' tools -> the API's tool loop (its body carries the tools), or None
    # when nothing is injected. None: the API has no tool loop.
    tool_loop: Callable[[dict[str, Any], Any], Any] | None = None


@dataclass
class Outcome:
    """How the interception ended; filled as it goes, read by the recorder."""

    status: Literal["completed", "failed", "cancelled"] = "completed"
    error_type: str | None = None
    error_message: str | None = None
    upstream_status: int | None = None
    first_byte_at: float | None = None
    sent_at: float | None = None  # the upstream request went out (time to first byte)
    disconnect_phase: str | None = None
    upstream_complete: bool = False
    # The model the relay asked the upstream for, when the relay chose it (Bedrock).
    upstream_model: str | None = None
    facts: Facts = field(default_factory=Facts)


@dataclass
class UpstreamCall:
    client: HTTP11Client
    method: str
    url: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    # Centralized key pool: each attempt adds one key's auth headers to
    # ``headers``. None: ``headers`` already carry the credential (BYOK, no keys).
    failover: Failover | None = None
    dump: DumpHandle | None = None  # the exchange's dump (None: dumps are off)


class StreamState:
    """The client side of one stream, as ``send_body`` and ``watch_client`` share it."""

    __slots__ = (
        "at_boundary",
        "headers_sent",
        "keepalive_interval",
        "last_send",
        "sending",
        "timer",
    )

    def __init__(self) -> None:
        self.last_send = trio.current_time()
        self.sending = False
        self.headers_sent = False
        self.at_boundary = True
        # Set by ``start_keepalive``; 0: no keepalive (not streaming yet, or off).
        self.keepalive_interval = 0.0
        # The deadline of ``watch_client``'s current wait (its next keepalive look).
        self.timer = trio.CancelScope()

    def start_keepalive(self, interval: float) -> None:
        """From now on, an SSE comment after ``interval`` of silence (see ``watch_client``)."""
        self.keepalive_interval = interval
        self.timer.deadline = self.last_send + interval


async def watch_disconnect(receive: Receive, scope: trio.CancelScope, outcome: Outcome) -> None:
    """Cancel ``scope`` as soon as the client goes away (no keepalive: passthrough)."""
    await watch_client(receive, scope, outcome, _no_send, StreamState())


async def _no_send(message: Any) -> None:
    raise AssertionError("a keepalive without keepalive_interval")


async def watch_client(
    receive: Receive, scope: trio.CancelScope, outcome: Outcome, send: Send, state: StreamState
) -> None:
    """Cancel ``scope`` as soon as the client goes away; keep a quiet stream alive.

    A client that leaves after the upstream answer was complete (SDKs close
    on the last event, before the final empty chunk) did not cancel anything.

    Keepalive (once ``state.start_keepalive`` was called): an SSE comment
    after ``interval`` of silence, only between events. One look per
    interval: a send that is blocked (a slow client) or a decoder in the
    middle of an event (an upstream pausing mid-event) puts the next look a
    whole interval later, never into a loop that wakes at once. Waiting on
    ``receive()`` under the look's deadline loses nothing: a memory
    channel's receive, cancelled, has taken no message.
    """
    while True:
        with state.timer:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not outcome.upstream_complete:
                    outcome.status = "cancelled"
                    scope.cancel()
                return
        if not state.timer.cancelled_caught:
            # Another message (none is expected once the body was read): wait
            # again under the same deadline, in a new scope (one is entered once).
            state.timer = trio.CancelScope(deadline=state.timer.deadline)
            continue
        # The look's deadline passed.
        interval = state.keepalive_interval
        now = trio.current_time()
        due = state.last_send + interval
        if now < due:
            deadline = due  # something was sent meanwhile
        elif state.sending or not state.at_boundary:
            deadline = now + interval
        else:
            await send_body(send, state, KEEPALIVE_COMMENT)
            deadline = state.last_send + interval
        state.timer = trio.CancelScope(deadline=deadline)


@asynccontextmanager
async def send_upstream(
    client: HTTP11Client,
    method: str,
    url: str,
    headers: Headers,
    body: RequestBody,
    failover: Failover | None,
    *,
    span_name: str = UPSTREAM_SPAN,
) -> AsyncIterator[UpstreamResponse | Exhausted]:
    """Send a request, walking the key pool while the provider refuses a key.

    Each attempt adds one key's auth headers to ``headers`` and sends the
    body again (with a key pool it is bytes). Nothing has reached the client
    yet: a refused key's answer (429, 401, 403) is read and dropped and the
    next key is tried. Yields the response to relay, or ``Exhausted`` when no
    key is left. ``UpstreamError`` propagates: a timeout or an unreachable
    provider is not a key's fault.

    With tracing on the request is the ``span_name`` span, and carries its
    W3C ``traceparent`` (relay.observe.tracing); off, nothing of it is made.
    """
    with tracing.upstream_span(span_name, method, url, headers) as (span, headers):
        if failover is None:
            async with client.stream(method, url, headers, body) as response:
                tracing.response_status(span, response.status_code)
                yield response
            return
        while (key := failover.next_key(trio.current_time())) is not None:
            async with client.stream(
                method, url, headers + failover.auth_headers(key), body
            ) as response:
                retry = failover.should_retry(
                    key, response.status_code, response.headers, trio.current_time(), time.time()
                )
                if not retry:
                    tracing.response_status(span, response.status_code)
                    yield response
                    return
                await response.aread()  # a small error body: read so the connection is reused
        yield failover.exhausted(trio.current_time())


def exhausted_headers(exhausted: Exhausted) -> Headers:
    if exhausted.retry_after is None:
        return []
    return [(b"retry-after", retry_after_header(exhausted.retry_after))]


class ResponseRelay(Protocol):
    """How one exchange's answer reaches the client, and what it is accounted as.

    The shell owns the exchange (the upstream call, key failover, the client's
    response start and end, cancellation, keepalive, the outcome); a relay
    says what differs by API and provider: whether the answer is a stream,
    its headers, what each upstream chunk becomes for the client (the chunk
    itself for SSE APIs; re-framed events for Bedrock's Anthropic clients) and
    how a failure mid-stream is told. ``SSERelay`` serves the SSE APIs;
    ``relay.intercept.bedrock.handler.BedrockRelay`` serves Bedrock.
    """

    # May the shell add an SSE comment (keepalive) between events?
    keepalive: bool

    @property
    def at_boundary(self) -> bool:
        """The client has whole events only (a keepalive or an error event may follow)."""
        ...

    @property
    def finished(self) -> bool:
        """Nothing more is relayed (the translation ended the stream): stop reading."""
        ...

    def facts(self) -> Facts: ...

    def streams(self, response: UpstreamResponse) -> bool:
        """Relay this successful answer as a stream (else whole, with ``whole``)."""
        ...

    def stream_headers(self, response: UpstreamResponse) -> Headers: ...

    def whole(self, response: UpstreamResponse, body: bytes) -> tuple[int, Headers, bytes]:
        """A whole answer (an error, or a blocking one): status, headers and body for the client.

        Accounts a successful one; an error's outcome is the shell's.
        """
        ...

    def feed(self, chunk: bytes) -> bytes:
        """One upstream read in (accounted for); the bytes to send the client now."""
        ...

    def end(self) -> bytes:
        """The upstream body ended: the bytes still owed to the client."""
        ...

    def stream_error(self, message: str) -> bytes | None:
        """The event that ends a stream whose upstream failed; None: leave it unfinished."""
        ...


class SSERelay:
    """An SSE API's answer: forwarded as it arrives, the same bytes decoded on the side.

    With ``drop_injected`` (the relay's own rewrite of the request caused
    events the client must not see) whole events are forwarded instead, so
    the injected ones can be left out and the others restored byte for byte.
    """

    __slots__ = ("_accumulator", "_decoder", "_drop", "_spec", "at_boundary")

    keepalive = True
    finished = False

    def __init__(self, spec: ApiSpec, *, drop_injected: bool = False) -> None:
        self._spec = spec
        self._drop = drop_injected
        self._accumulator = spec.new_accumulator()
        self._decoder = SSEDecoder(keep_raw=drop_injected)
        self.at_boundary = True

    def facts(self) -> Facts:
        return self._accumulator.facts

    def streams(self, response: UpstreamResponse) -> bool:
        return response.headers.get("content-type", "").startswith("text/event-stream")

    def stream_headers(self, response: UpstreamResponse) -> Headers:
        return forwardable_response_headers(response.headers.raw, streaming=True)

    def whole(self, response: UpstreamResponse, body: bytes) -> tuple[int, Headers, bytes]:
        headers = forwardable_response_headers(
            response.headers.raw, streaming=self.streams(response)
        )
        if response.status_code < 400:
            self._accumulator.feed_response(body)
        return response.status_code, headers, body

    def feed(self, chunk: bytes) -> bytes:
        feed = self._accumulator.feed
        if not self._drop:
            for event in self._decoder.feed(chunk):
                feed(event)
            self.at_boundary = self._decoder.pending == 0
            return chunk
        # Whole events, so that the one the relay caused can be left out.
        out: list[bytes] = []
        is_injected = self._spec.is_injected
        restore = self._spec.restore_raw
        for event in self._decoder.feed(chunk):
            if event.dispatch:
                feed(event)
                if is_injected is not None and is_injected(event):
                    continue
                if restore is not None:
                    out.append(restore(event.raw))
                    continue
            out.append(event.raw)
        return b"".join(out)

    def end(self) -> bytes:
        decoder = self._decoder
        # An unterminated tail still belongs to the client, byte for byte.
        tail = decoder.pending_raw if self._drop and decoder.pending else b""
        self.at_boundary = decoder.pending == 0
        for event in decoder.close():
            if event.dispatch:
                self._accumulator.feed(event)
        return tail

    def stream_error(self, message: str) -> bytes:
        """An error event the SDK raises on, never a silent truncation."""
        tail = b"" if self.at_boundary else b"\n\n"
        return tail + self._spec.stream_error("api_error", message)


@dataclass(frozen=True, slots=True)
class Exchange:
    """One prepared exchange: the upstream call, and the relay of its answer."""

    call: UpstreamCall
    relay: ResponseRelay


async def run_exchange(
    send: Send,
    receive: Receive,
    call: UpstreamCall,
    relay: ResponseRelay,
    style: ErrorStyle,
    outcome: Outcome,
    *,
    keepalive_interval: float,
) -> None:
    """Send the upstream request and relay its answer; fills ``outcome``.

    ``style`` is the error shape of what the relay itself answers (no
    upstream, every key refused).
    """

    async def work(state: StreamState, _nursery: trio.Nursery) -> None:
        await _Exchange(send, call, relay, style, outcome, state, keepalive_interval).run()

    await supervise(send, receive, outcome, work, relay.facts)


async def supervise(
    send: Send,
    receive: Receive,
    outcome: Outcome,
    work: Callable[[StreamState, trio.Nursery], Awaitable[None]],
    facts: Callable[[], Facts],
) -> None:
    """The shell around an exchange's work: ``watch_client`` beside it in one
    nursery (the client leaving cancels the work), and the outcome settled
    from ``facts()`` however it ends (``mark_interrupted`` when by an exception).
    ``run_exchange`` and the tool loop (``relay.intercept.injection``) both run in it.
    """
    state = StreamState()
    interrupted: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_client, receive, nursery.cancel_scope, outcome, send, state)
            try:
                await work(state, nursery)
            finally:
                nursery.cancel_scope.cancel()
    except BaseException as exc:
        interrupted = exc
        raise
    finally:
        settle_outcome(outcome, state, facts())
        if interrupted is not None:
            mark_interrupted(outcome, interrupted)


def mark_interrupted(outcome: Outcome, exc: BaseException) -> None:
    """An exception ended the interception: the record must not claim a completed exchange.

    Cancelled from outside (the shutdown grace period ran out): ``cancelled``
    in phase ``shutdown``. Anything else is a bug: ``failed``, ``relay_error``.
    An exchange that had already ended keeps its outcome.
    """
    if outcome.status != "completed" or outcome.upstream_complete:
        return
    if _is_cancellation(exc):
        outcome.status = "cancelled"
        outcome.disconnect_phase = outcome.disconnect_phase or "shutdown"
    else:
        outcome.status = "failed"
        outcome.error_type = "relay_error"
        outcome.error_message = f"{type(exc).__name__}: {exc}"[:2000]


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_cancellation(e) for e in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


def settle_outcome(outcome: Outcome, state: StreamState, facts: Facts) -> None:
    """Complete ``outcome`` once the exchange is over: facts, disconnect phase, stream errors."""
    outcome.facts = facts
    if outcome.status == "cancelled" and outcome.disconnect_phase is None:
        if not state.headers_sent:
            outcome.disconnect_phase = "before-response"
        elif outcome.first_byte_at is None:
            outcome.disconnect_phase = "before-first-byte"
        else:
            outcome.disconnect_phase = "mid-stream"
    if outcome.status == "completed" and facts.error_type:
        outcome.status = "failed"
        outcome.error_type = facts.error_type
        outcome.error_message = facts.error_message


@dataclass(slots=True)
class _Exchange:
    """One run of the shell: the upstream call, then the answer relayed through ``relay``."""

    send: Send
    call: UpstreamCall
    relay: ResponseRelay
    style: ErrorStyle
    outcome: Outcome
    state: StreamState
    keepalive_interval: float

    async def run(self) -> None:
        call, outcome = self.call, self.outcome
        outcome.sent_at = trio.current_time()
        try:
            async with send_upstream(
                call.client, call.method, call.url, call.headers, call.body, call.failover
            ) as answer:
                if isinstance(answer, Exhausted):
                    await answer_exhausted(self.send, self.style, outcome, call.failover, answer)
                    return
                await self._respond(answer)
        except UpstreamError as exc:
            if self.state.headers_sent:
                raise
            await fail_before_response(self.send, self.style, outcome, exc)

    async def _respond(self, response: UpstreamResponse) -> None:
        send, relay, outcome, state, dump = (
            self.send, self.relay, self.outcome, self.state, self.call.dump
        )  # fmt: skip
        outcome.upstream_status = response.status_code
        if dump is not None:
            dump.response_start(response.status_code, response.headers.raw)
        if response.status_code >= 400 or not relay.streams(response):
            await self._whole(response)
            return
        headers = relay.stream_headers(response)
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        state.headers_sent = True
        state.last_send = trio.current_time()
        if self.keepalive_interval > 0 and relay.keepalive:
            state.start_keepalive(self.keepalive_interval)
        try:
            await self._pump(response)
            outcome.upstream_complete = True
        except UpstreamError as exc:
            log.warning("upstream failed mid-stream: %s", type(exc).__name__)
            outcome.upstream_complete = True  # a client leaving now cancels nothing
            outcome.status = "failed"
            outcome.error_type = "upstream_stream_error"
            outcome.error_message = f"upstream connection failed mid-stream ({type(exc).__name__})"
            event = relay.stream_error(outcome.error_message)
            if event is None:
                # No event can be added (an AWS event stream, mid-frame): the response
                # is left unfinished, so the client's HTTP library reports a broken body.
                return
            await send_body(send, state, event)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _whole(self, response: UpstreamResponse) -> None:
        """A blocking answer, or an error before any stream: read whole, sent in one piece."""
        outcome, dump = self.outcome, self.call.dump
        body = await response.aread()
        if dump is not None:
            dump.response_chunk(body)
        outcome.upstream_complete = True
        if response.status_code >= 400:
            outcome.status = "failed"
            outcome.error_type = f"upstream_{response.status_code}"
            outcome.error_message = body[:2000].decode("utf-8", "replace")
        status, headers, out = self.relay.whole(response, body)
        self.state.headers_sent = True
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        outcome.first_byte_at = trio.current_time()
        await self.send({"type": "http.response.body", "body": out, "more_body": False})

    async def _pump(self, response: UpstreamResponse) -> None:
        send, relay, outcome, state, dump = (
            self.send, self.relay, self.outcome, self.state, self.call.dump
        )  # fmt: skip
        feed = relay.feed
        async for chunk in response.aiter_raw():
            if dump is not None:
                dump.response_chunk(chunk)
            if outcome.first_byte_at is None:
                outcome.first_byte_at = trio.current_time()
            out = feed(chunk)
            if out:
                await send_body(send, state, out)
            state.at_boundary = relay.at_boundary
            if relay.finished:
                return  # the relay ended the stream (an error event it translated)
        tail = relay.end()
        if tail:
            await send_body(send, state, tail)
        state.at_boundary = relay.at_boundary


async def send_body(send: Send, state: StreamState, data: bytes) -> None:
    state.sending = True
    try:
        await send({"type": "http.response.body", "body": data, "more_body": True})
    finally:
        state.sending = False
        state.last_send = trio.current_time()


async def fail_before_response(
    send: Send, style: ErrorStyle, outcome: Outcome, exc: UpstreamError
) -> None:
    """No upstream answer: 504 for a timeout, 502 otherwise, in the client's error shape."""
    timeout = isinstance(exc, UpstreamTimeout)
    status = 504 if timeout else 502
    message = "upstream timed out" if timeout else "upstream unreachable"
    outcome.upstream_complete = True  # the relay has answered; a client leaving cancels nothing
    outcome.status = "failed"
    outcome.upstream_status = None
    outcome.error_type = "upstream_timeout" if timeout else "upstream_unreachable"
    # The error names the provider's host and the cause (DNS, refused, TLS, timeout).
    outcome.error_message = f"{message}: {exc}" if str(exc) else message
    await send_response(send, status, error_body_for(style, status, outcome.error_message))


async def answer_exhausted(
    send: Send,
    style: ErrorStyle,
    outcome: Outcome,
    failover: Failover | None,
    exhausted: Exhausted,
) -> None:
    """Every key of the pool refused or resting: the pool's 429/502, recorded as failed."""
    outcome.upstream_complete = True  # the answer is final: leaving cancels nothing
    outcome.status = "failed"
    # The last refusal, if a key was tried at all (all may have been resting).
    outcome.upstream_status = failover.last_status if failover else None
    outcome.error_type = "key_pool_exhausted"
    outcome.error_message = exhausted.message
    await send_error(send, style, exhausted.status, exhausted.message, exhausted_headers(exhausted))


async def send_error(
    send: Send, style: ErrorStyle, status: int, message: str, extra_headers: Headers | None = None
) -> None:
    await send_response(
        send, status, error_body_for(style, status, message), extra_headers=extra_headers
    )


def describe(obj: Any) -> str:
    return type(obj).__name__
