"""The Responses API over one WebSocket: the bridge between an accepted client and the provider.

The request's steps (``relay.request.websocket``) authenticate the upgrade,
take the socket caps and open the upstream socket before the client is
accepted; ``bridge`` then pumps both directions in one nursery, message for
message (text stays text, bytes stay bytes), until either side closes:

- client → upstream: each message is forwarded as it came; a
  ``response.create`` first starts a turn (``SocketTurns``), or is answered
  with an ``error`` event in OpenAI's shape when its body cannot be decoded
  or its per-turn guards refuse it (the rate limit, a spent budget), and is not forwarded:
  the socket stays open, as Coder's bridge does.
- upstream → client: each text message is accounted to its turn (the same
  ``ResponsesAccumulator`` the SSE path feeds, one event per message) before
  it is sent on. ``send`` waits for the client's socket and trio-websocket's
  queue holds one message, so a slow client slows the upstream read.
- a close on either side closes the other with its code (1005, 1006 and
  1015 cannot be sent in a close frame: 1011 instead); the client leaving
  closes the upstream at once.
- the lifetime cap ends the socket with OpenAI's
  ``websocket_connection_limit_reached`` error event, then close 1001; a
  shutdown whose grace period ran out closes both sides with 1001, and the
  turns it cut are recorded ``cancelled`` (phase ``shutdown``).

Each ``response.create`` is its own interception, recorded like an HTTP
Responses request (``relay.intercept.session.record_interception``): its
prompt, tool calls, reasoning, usage from the terminal event, the socket's
client and session id. Turns in flight at once are told apart as OpenAI
multiplexes them: a ``response.create`` may name a ``stream_id`` (a lane;
each lane is served in order, the lanes at once, and every event of a
response echoes its lane's ``stream_id``), and the ``response.*`` events
carry the response id. An event goes to its lane's turns (all open turns when
it names no lane, or one no turn opened), then to the turn of its response id,
else to the oldest of them (the one the provider serves first): a
``response.created`` gives its id to the oldest turn that has none.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from relay.access import ClientCredential
from relay.asgi import Headers, Receive, Send, header_str
from relay.clients import client_session_id, detect_client
from relay.dump import DumpHandle
from relay.facts import Facts
from relay.identity import Principal
from relay.intercept.apis import RESPONSES
from relay.intercept.base import Accumulator, _is_cancellation, mark_interrupted
from relay.intercept.ports import InterceptionPorts
from relay.intercept.session import Prepared, end_trace, prepare, record_interception
from relay.observe import tracing
from relay.providers.types import Provider, mask_secret
from relay.record.events import InterceptionMeta, interception_started, new_id, records_for
from relay.routes import RouteKind
from relay.streams.sse import SSEEvent
from relay.wire.common import InvalidRequestBody
from relay.wire.errors import responses_websocket_error

if TYPE_CHECKING:
    from relay.metrics import InterceptionTimer

# Close codes a close frame may not carry (RFC 6455 §7.4.1): the other side gets 1011.
_UNSENDABLE = frozenset({1005, 1006, 1015})
INTERNAL_ERROR = 1011
GOING_AWAY = 1001
LIFETIME_CODE = "websocket_connection_limit_reached"
_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
# The bulk of a stream: no accounting needs them, so they are not decoded.
_SKIPPED_PREFIX = '{"type":"response.output_text.delta"'


def sendable_close_code(code: int | None) -> int:
    """The code to close the other side with: the same, unless no close frame may carry it."""
    if code is None or code in _UNSENDABLE or not (1000 <= code <= 4999):
        return INTERNAL_ERROR
    return code


class _ResponseRef(msgspec.Struct):
    id: Any = None


class _EventProbe(msgspec.Struct):
    type: Any = None
    response: _ResponseRef | None = None
    stream_id: Any = None


_PROBE = msgspec.json.Decoder(_EventProbe)


class _CreateProbe(msgspec.Struct):
    type: Any = None
    stream_id: Any = None


_CREATE_PROBE = msgspec.json.Decoder(_CreateProbe)


@dataclass(frozen=True, slots=True)
class TurnRefusal:
    """A ``response.create`` the guards turned away: the ``error`` event it gets, and,
    for the refusals an HTTP request is recorded for (a spent budget, a per-minute
    limit), the ``error_type`` of its ``refused`` row."""

    status: int
    message: str
    code: str | None = None
    record_as: str | None = None


@dataclass(frozen=True, slots=True)
class SocketContext:
    """What the request's steps established about an accepted Responses WebSocket."""

    ports: InterceptionPorts
    provider: Provider
    api_path: str
    principal: Principal
    credential: ClientCredential
    headers: Headers  # the client's upgrade headers (client, session id)
    upstream_headers: Headers  # what went upstream (dumps)
    instance_id: uuid.UUID | None
    max_stored_prompt: int | None
    fold_model: Callable[[str], str]
    # Per turn, with the model it names: None to let a response.create through,
    # else its refusal.
    admit_turn: Callable[[str], TurnRefusal | None]
    lifetime: float  # seconds; then websocket_connection_limit_reached and close 1001
    ping_interval: float  # an upstream ping this often (0: none)
    request_id: str | None = None  # the socket's (relay.observe.context), on every turn


@dataclass(slots=True, eq=False)
class Turn:
    """One ``response.create`` on the socket: one interception."""

    prepared: Prepared
    meta: InterceptionMeta
    accumulator: Accumulator
    timer: InterceptionTimer | None
    dumps: list[DumpHandle] = field(default_factory=list)
    response_id: str | None = None
    stream_id: str | None = None  # the lane the client named, if any
    trace: tracing.Trace | None = None  # its Intercept span (tracing on)


class SocketTurns:
    """The turns of one socket: started by the client's messages, fed the upstream's, recorded.

    No I/O: the bridge hands it each text message and sends what it returns.
    """

    def __init__(self, ctx: SocketContext) -> None:
        self._ctx = ctx
        self._open: deque[Turn] = deque()  # in the order they were created
        self.count = 0  # turns started on this socket

    @property
    def open_turns(self) -> int:
        return len(self._open)

    # --- client messages -------------------------------------------------

    def client_text(self, text: str) -> str | None:
        """A client text message; the ``error`` event to answer instead of forwarding it, if any."""
        if '"response.create"' not in text:
            return None
        try:
            probe = _CREATE_PROBE.decode(text)
        except msgspec.DecodeError:
            return None  # not JSON: the provider answers it
        if probe.type != "response.create":
            return None
        stream_id = probe.stream_id if isinstance(probe.stream_id, str) else None
        ctx = self._ctx
        try:
            prepared = prepare(
                RESPONSES,
                ctx.provider.type,
                RouteKind.RESPONSES,
                ctx.api_path,
                text.encode(),
                max_stored_prompt=ctx.max_stored_prompt,
                hold_rewrite=lambda size: None,  # the Responses API has no rewrite
                fold_model=ctx.fold_model,
            )
        except InvalidRequestBody as exc:
            return responses_websocket_error(400, str(exc))
        refusal = ctx.admit_turn(prepared.info.model or "")
        if refusal is not None:
            if refusal.record_as is not None:  # as over HTTP: a refused row, never upstream
                meta = self._meta(prepared)
                ctx.ports.records.record(
                    records_for(
                        meta,
                        Facts(),
                        prepared.prompt,
                        "refused",
                        (refusal.record_as, refusal.message),
                    )
                )
            code = refusal.code
            return responses_websocket_error(refusal.status, refusal.message, code=code, type_=code)
        self._start(prepared, text, stream_id)
        return None

    def _meta(self, prepared: Prepared) -> InterceptionMeta:
        """The request side of a turn's interception."""
        ctx = self._ctx
        provider, principal, credential = ctx.provider, ctx.principal, ctx.credential
        info = prepared.info
        return InterceptionMeta(
            id=new_id(),
            initiator_id=uuid.UUID(principal.user_id),
            api_key_id=principal.api_key_id,
            provider_name=provider.name,
            provider_type=str(provider.type),
            model=info.model or "",
            route=ctx.api_path,
            started_at=datetime.now(UTC),
            client=detect_client(ctx.headers),
            client_session_id=client_session_id(ctx.headers, info.metadata_user_id),
            user_agent=header_str(ctx.headers, b"user-agent"),
            credential_kind="byok" if credential.byok else "centralized",
            credential_hint=self._credential_hint(),
            instance_id=ctx.instance_id,
            request_id=ctx.request_id,
        )

    def _start(self, prepared: Prepared, text: str, stream_id: str | None) -> None:
        ctx = self._ctx
        ports, provider, info = ctx.ports, ctx.provider, prepared.info
        meta = self._meta(prepared)
        # Its Intercept span: begun here, ended where the upstream's task records it.
        trace = (
            tracing.begin_detached(
                "Intercept",
                ctx.headers,
                {
                    **tracing.interception_attributes(str(provider.type), info.model),
                    "relay.interception_id": str(meta.id),
                    "relay.transport": "websocket",
                },
            )
            if tracing.enabled()
            else None
        )
        with tracing.within(trace), tracing.span("Intercept.RecordInterception"):
            ports.records.record([interception_started(meta)])
        timer = ports.metrics.interception_started(
            provider.name, prepared.model_label, prepared.route
        )
        turn = Turn(
            prepared, meta, RESPONSES.new_accumulator(), timer, stream_id=stream_id, trace=trace
        )
        dump = ports.dumps.begin(
            provider.name,
            info.model,
            meta.id,
            "GET",
            ctx.api_path,
            ctx.upstream_headers,
            text.encode(),
            request_id=ctx.request_id,
        )
        if dump is not None:
            dump.response_start(101, [])
            turn.dumps.append(dump)
        prepared.outcome.sent_at = trio.current_time()
        self._open.append(turn)
        self.count += 1

    def _credential_hint(self) -> str | None:
        ctx = self._ctx
        secret = ctx.credential.byok_secret or (ctx.provider.keys[0] if ctx.provider.keys else "")
        return mask_secret(secret) or None

    # --- upstream messages -----------------------------------------------

    def upstream_text(self, text: str) -> None:
        """An upstream text message: accounted to its turn; a terminal event records the turn."""
        if not self._open:
            return
        skipped = text.startswith(_SKIPPED_PREFIX)
        if skipped and len(self._open) == 1:
            self._first_byte(self._open[0])
            return
        try:
            probe = _PROBE.decode(text)
        except msgspec.DecodeError:
            return
        name = probe.type
        if not isinstance(name, str):
            return
        response_id = probe.response.id if probe.response is not None else None
        stream_id = probe.stream_id if isinstance(probe.stream_id, str) else None
        turn = self._turn_for(
            name, response_id if isinstance(response_id, str) else None, stream_id
        )
        if turn is None:
            return
        self._first_byte(turn)
        if skipped:
            return
        for handle in turn.dumps:
            handle.response_chunk(text.encode() + b"\n")
        turn.accumulator.feed(SSEEvent(event=name, data=text))
        if name in _TERMINAL or (name == "error" and turn.response_id is None):
            # An error before response.created refused this create (previous_response_not_found…).
            self._finish(turn)

    def _turn_for(self, name: str, response_id: str | None, stream_id: str | None) -> Turn | None:
        lane = [t for t in self._open if t.stream_id == stream_id] if stream_id else []
        candidates = lane or list(self._open)
        if response_id is not None:
            for turn in candidates:
                if turn.response_id == response_id:
                    return turn
            for turn in candidates:  # response.created: the oldest turn without one
                if turn.response_id is None:
                    turn.response_id = response_id
                    return turn
            return None
        if name == "error":  # before response.created: it refused that create
            for turn in candidates:
                if turn.response_id is None:
                    return turn
        return candidates[0]  # each lane is served in order: its oldest open turn

    @staticmethod
    def _first_byte(turn: Turn) -> None:
        outcome = turn.prepared.outcome
        if outcome.first_byte_at is None:
            outcome.first_byte_at = trio.current_time()

    def _finish(self, turn: Turn) -> None:
        self._open.remove(turn)
        outcome = turn.prepared.outcome
        outcome.upstream_complete = True
        self._record(turn)

    def _record(self, turn: Turn) -> None:
        prepared, outcome = turn.prepared, turn.prepared.outcome
        facts = turn.accumulator.facts
        outcome.facts = facts
        if outcome.status == "completed" and facts.error_type:
            outcome.status = "failed"
            outcome.error_type = facts.error_type
            outcome.error_message = facts.error_message
        meta = msgspec.structs.replace(turn.meta, model=facts.model or turn.meta.model)
        try:
            with tracing.within(turn.trace):
                record_interception(
                    self._ctx.ports,
                    meta,
                    self._ctx.principal.user_id,
                    outcome,
                    prepared.prompt,
                    turn.timer,
                    turn.dumps,
                )
        finally:
            end_trace(turn.trace, outcome)

    # --- the socket ends -------------------------------------------------

    def end_open(
        self,
        status: str,
        *,
        error_type: str | None = None,
        message: str | None = None,
        phase: str | None = None,
        exc: BaseException | None = None,
    ) -> None:
        """The socket ended: every turn still open is recorded as ``status``."""
        while self._open:
            turn = self._open.popleft()
            outcome = turn.prepared.outcome
            if exc is not None:
                mark_interrupted(outcome, exc)
            elif status == "cancelled":
                outcome.status = "cancelled"
                outcome.disconnect_phase = phase or (
                    "mid-stream" if outcome.first_byte_at is not None else "before-first-byte"
                )
            elif status == "failed":
                outcome.status = "failed"
                outcome.error_type = error_type
                outcome.error_message = message
            self._record(turn)


@dataclass(slots=True)
class BridgeEnd:
    """How a socket ended: who closed it, and with which code."""

    closed_by: str = ""  # client, upstream, lifetime, relay
    code: int | None = None
    turns: int = 0


async def bridge(
    ctx: SocketContext, receive: Receive, send: Send, upstream: WebSocketConnection
) -> BridgeEnd:
    """Pump an accepted client socket and an open upstream socket until either closes."""
    turns = SocketTurns(ctx)
    end = BridgeEnd()
    failure: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            pumps = _Pumps(ctx, receive, send, upstream, turns, end, nursery.cancel_scope)
            nursery.start_soon(pumps.client_to_upstream)
            nursery.start_soon(pumps.upstream_to_client)
            if ctx.ping_interval > 0:
                nursery.start_soon(pumps.ping_upstream)
            nursery.start_soon(pumps.lifetime)
    except BaseException as exc:
        failure = exc
        if _is_cancellation(exc):
            # Cancelled from outside: the shutdown's grace period ran out. Both sides
            # are told (1001, going away) before the connections are dropped.
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                with contextlib.suppress(Exception):
                    await send({"type": "websocket.close", "code": GOING_AWAY})
                with contextlib.suppress(Exception):
                    await upstream.aclose(GOING_AWAY)
        raise
    finally:
        end.turns = turns.count
        if failure is not None:
            end.closed_by = end.closed_by or "relay"
            turns.end_open("cancelled", exc=failure)
        else:
            turns.end_open("completed")  # nothing can be open here: every path ended them
    return end


@dataclass(slots=True)
class _Pumps:
    ctx: SocketContext
    receive: Receive
    send: Send
    upstream: WebSocketConnection
    turns: SocketTurns
    end: BridgeEnd
    scope: trio.CancelScope

    async def client_to_upstream(self) -> None:
        receive, upstream, turns = self.receive, self.upstream, self.turns
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                code = message.get("code")
                self.end.closed_by, self.end.code = "client", code
                turns.end_open("cancelled")
                await self._close_upstream(sendable_close_code(code))
                return
            if kind != "websocket.receive":
                continue
            text = message.get("text")
            try:
                if text is not None:
                    refusal = turns.client_text(text)
                    if refusal is not None:
                        await self.send({"type": "websocket.send", "text": refusal})
                        continue
                    await upstream.send_message(text)
                else:
                    await upstream.send_message(message.get("bytes") or b"")
            except ConnectionClosed:
                return  # upstream_to_client sees the close and ends the socket

    async def upstream_to_client(self) -> None:
        upstream, send, turns = self.upstream, self.send, self.turns
        while True:
            try:
                message = await upstream.get_message()
            except ConnectionClosed as exc:
                reason = exc.reason
                code = reason.code if reason is not None else None
                self.end.closed_by, self.end.code = "upstream", code
                turns.end_open(
                    "failed",
                    error_type="upstream_closed",
                    message=f"the provider closed the socket mid-response (code {code})",
                )
                close: dict[str, Any] = {
                    "type": "websocket.close",
                    "code": sendable_close_code(code),
                }
                if reason is not None and reason.reason:
                    close["reason"] = reason.reason
                await send(close)
                self.scope.cancel()
                return
            if isinstance(message, str):
                turns.upstream_text(message)
                await send({"type": "websocket.send", "text": message})
            else:
                await send({"type": "websocket.send", "bytes": message})

    async def lifetime(self) -> None:
        await trio.sleep(self.ctx.lifetime)
        self.end.closed_by, self.end.code = "lifetime", GOING_AWAY
        message = (
            f"Responses websocket connection limit reached ({self.ctx.lifetime / 60:g} minutes). "
            "Create a new websocket connection to continue."
        )
        self.turns.end_open("failed", error_type=LIFETIME_CODE, message=message)
        event = responses_websocket_error(400, message, code=LIFETIME_CODE)
        await self.send({"type": "websocket.send", "text": event})
        await self.send({"type": "websocket.close", "code": GOING_AWAY})
        await self._close_upstream(GOING_AWAY)

    async def ping_upstream(self) -> None:
        interval = self.ctx.ping_interval
        while True:
            await trio.sleep(interval)
            with trio.move_on_after(interval):
                try:
                    await self.upstream.ping()
                except ConnectionClosed:
                    return

    async def _close_upstream(self, code: int) -> None:
        # The close frame goes at once; its answer is waited for briefly only.
        with trio.move_on_after(1.0):
            await self.upstream.aclose(code)
        self.scope.cancel()
