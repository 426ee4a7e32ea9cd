"""The interception shell: one upstream request, relayed and accounted for.

Every upstream chunk goes to the client as it arrives, unchanged, and the
same bytes are fed to the API's sans-io decoder and accumulator. The shell is
thin: all parsing lives in ``relay.streams`` and the accumulators.

Cancellation: hypercorn does not cancel the app when the client leaves, so a
watcher task waits on ``receive()`` for ``http.disconnect`` and cancels the
request's scope. Leaving the upstream response's ``async with`` then closes
the upstream connection at once (``relay.upstream.http11`` closes, never
pools, a connection whose response was not read to the end).

Backpressure: ``send`` blocks while the client is slow, so the upstream read
waits too; the relay holds at most one socket read per stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import trio

from relay.asgi import Headers, Receive, Send, forwardable_response_headers, send_response
from relay.dump import DumpHandle
from relay.facts import Facts
from relay.routes import ErrorStyle
from relay.streams.sse import SSEDecoder, SSEEvent
from relay.upstream.errors import UpstreamError, UpstreamTimeout
from relay.upstream.http11 import HTTP11Client, RequestBody, UpstreamResponse
from relay.upstream.keypool import Exhausted, Failover, retry_after_header
from relay.wire.common import RequestInfo
from relay.wire.errors import error_body_for

log = logging.getLogger("relay.intercept")

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
    """The client side of one stream, as ``send_body`` and ``keepalive`` share it."""

    __slots__ = ("at_boundary", "headers_sent", "last_send", "sending")

    def __init__(self) -> None:
        self.last_send = trio.current_time()
        self.sending = False
        self.headers_sent = False
        self.at_boundary = True


async def watch_disconnect(receive: Receive, scope: trio.CancelScope, outcome: Outcome) -> None:
    """Cancel ``scope`` as soon as the client goes away.

    A client that leaves after the upstream answer was complete (SDKs close
    on the last event, before the final empty chunk) did not cancel anything.
    """
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not outcome.upstream_complete:
                outcome.status = "cancelled"
                scope.cancel()
            return


@asynccontextmanager
async def send_upstream(
    client: HTTP11Client,
    method: str,
    url: str,
    headers: Headers,
    body: RequestBody,
    failover: Failover | None,
) -> AsyncIterator[UpstreamResponse | Exhausted]:
    """Send a request, walking the key pool while the provider refuses a key.

    Each attempt adds one key's auth headers to ``headers`` and sends the
    body again (with a key pool it is bytes). Nothing has reached the client
    yet: a refused key's answer (429, 401, 403) is read and dropped and the
    next key is tried. Yields the response to relay, or ``Exhausted`` when no
    key is left. ``UpstreamError`` propagates: a timeout or an unreachable
    provider is not a key's fault.
    """
    if failover is None:
        async with client.stream(method, url, headers, body) as response:
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
                yield response
                return
            await response.aread()  # a small error body: read so the connection is reused
    yield failover.exhausted(trio.current_time())


def exhausted_headers(exhausted: Exhausted) -> Headers:
    if exhausted.retry_after is None:
        return []
    return [(b"retry-after", retry_after_header(exhausted.retry_after))]


async def relay_interception(
    send: Send,
    receive: Receive,
    call: UpstreamCall,
    spec: ApiSpec,
    info: RequestInfo,
    outcome: Outcome,
    *,
    drop_injected: bool,
    keepalive_interval: float,
) -> None:
    """Send the upstream request and relay its answer; fills ``outcome``."""
    accumulator = spec.new_accumulator()
    state = StreamState()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_disconnect, receive, nursery.cancel_scope, outcome)
            try:
                await _exchange(
                    send,
                    call,
                    spec,
                    accumulator,
                    outcome,
                    state,
                    drop_injected,
                    keepalive_interval,
                    nursery,
                )
            finally:
                nursery.cancel_scope.cancel()
    finally:
        settle_outcome(outcome, state, accumulator.facts)


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


async def _exchange(
    send: Send,
    call: UpstreamCall,
    spec: ApiSpec,
    accumulator: Accumulator,
    outcome: Outcome,
    state: StreamState,
    drop_injected: bool,
    keepalive_interval: float,
    nursery: trio.Nursery,
) -> None:
    outcome.sent_at = trio.current_time()
    try:
        async with send_upstream(
            call.client, call.method, call.url, call.headers, call.body, call.failover
        ) as answer:
            if isinstance(answer, Exhausted):
                await answer_exhausted(send, spec.error_style, outcome, call.failover, answer)
                return
            await _relay_response(
                send,
                call,
                answer,
                spec,
                accumulator,
                outcome,
                state,
                drop_injected,
                keepalive_interval,
                nursery,
            )
    except UpstreamError as exc:
        if state.headers_sent:
            raise
        await fail_before_response(send, spec.error_style, outcome, exc)


async def _relay_response(
    send: Send,
    call: UpstreamCall,
    response: UpstreamResponse,
    spec: ApiSpec,
    accumulator: Accumulator,
    outcome: Outcome,
    state: StreamState,
    drop_injected: bool,
    keepalive_interval: float,
    nursery: trio.Nursery,
) -> None:
    outcome.upstream_status = response.status_code
    if call.dump is not None:
        call.dump.response_start(response.status_code, response.headers.raw)
    content_type = response.headers.get("content-type", "")
    streaming = content_type.startswith("text/event-stream")
    headers = forwardable_response_headers(response.headers.raw, streaming=streaming)
    if response.status_code >= 400 or not streaming:
        body = await response.aread()
        if call.dump is not None:
            call.dump.response_chunk(body)
        outcome.upstream_complete = True
        state.headers_sent = True
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        outcome.first_byte_at = trio.current_time()
        await send({"type": "http.response.body", "body": body, "more_body": False})
        if response.status_code >= 400:
            outcome.status = "failed"
            outcome.error_type = f"upstream_{response.status_code}"
            outcome.error_message = body[:2000].decode("utf-8", "replace")
        else:
            accumulator.feed_response(body)
        return
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    state.headers_sent = True
    state.last_send = trio.current_time()
    decoder = SSEDecoder(keep_raw=drop_injected)
    if keepalive_interval > 0:
        nursery.start_soon(keepalive, send, state, keepalive_interval)
    try:
        await _pump(
            send, response, decoder, accumulator, spec, outcome, state, drop_injected, call.dump
        )
        outcome.upstream_complete = True
    except UpstreamError as exc:
        # Upstream failed mid-stream: end the stream with an error event the
        # SDK raises on, never a silent truncation.
        log.warning("upstream failed mid-stream: %s", type(exc).__name__)
        outcome.upstream_complete = True  # a client leaving now cancels nothing
        outcome.status = "failed"
        outcome.error_type = "upstream_stream_error"
        outcome.error_message = f"upstream connection failed mid-stream ({type(exc).__name__})"
        tail = b"" if state.at_boundary else b"\n\n"
        await send_body(send, state, tail + spec.stream_error("api_error", outcome.error_message))
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _pump(
    send: Send,
    response: UpstreamResponse,
    decoder: SSEDecoder,
    accumulator: Accumulator,
    spec: ApiSpec,
    outcome: Outcome,
    state: StreamState,
    drop_injected: bool,
    dump: DumpHandle | None = None,
) -> None:
    feed = accumulator.feed
    async for chunk in response.aiter_raw():
        if dump is not None:
            dump.response_chunk(chunk)
        if outcome.first_byte_at is None:
            outcome.first_byte_at = trio.current_time()
        if drop_injected:
            # Forward whole events so the one the relay caused can be left out.
            out: list[bytes] = []
            is_injected = spec.is_injected
            restore = spec.restore_raw
            for event in decoder.feed(chunk):
                if event.dispatch:
                    feed(event)
                    if is_injected is not None and is_injected(event):
                        continue
                    if restore is not None:
                        out.append(restore(event.raw))
                        continue
                out.append(event.raw)
            if out:
                await send_body(send, state, b"".join(out))
        else:
            await send_body(send, state, chunk)
            for event in decoder.feed(chunk):
                feed(event)
            state.at_boundary = decoder.pending == 0
    if drop_injected and decoder.pending:
        # An unterminated tail still belongs to the client, byte for byte.
        await send_body(send, state, decoder.pending_raw)
    state.at_boundary = decoder.pending == 0
    for event in decoder.close():
        if event.dispatch:
            feed(event)


async def send_body(send: Send, state: StreamState, data: bytes) -> None:
    state.sending = True
    try:
        await send({"type": "http.response.body", "body": data, "more_body": True})
    finally:
        state.sending = False
        state.last_send = trio.current_time()


async def keepalive(send: Send, state: StreamState, interval: float) -> None:
    """An SSE comment after ``interval`` of silence, only between events.

    One timer per interval: a send that is blocked (a slow client) or a
    decoder in the middle of an event (an upstream pausing mid-event) puts the
    next look a whole interval later, never into a loop that wakes at once.
    """
    deadline = state.last_send + interval
    while True:
        await trio.sleep_until(deadline)
        now = trio.current_time()
        due = state.last_send + interval
        if now < due:
            deadline = due  # something was sent meanwhile
        elif state.sending or not state.at_boundary:
            deadline = now + interval
        else:
            await send_body(send, state, KEEPALIVE_COMMENT)
            deadline = state.last_send + interval


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
