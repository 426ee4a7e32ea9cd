"""A mock of OpenAI's Responses API over WebSocket (``wss://…/v1/responses``).

As in OpenAI's WebSocket mode: the client sends ``response.create`` text
messages (the fields of a ``POST /v1/responses`` body, ``stream`` implied)
and receives the ``response.*`` events of the SSE stream, one JSON text
message each (the same events the HTTP mock streams:
``relay.testing.mock_upstream.openai_responses``). A turn that names a
``previous_response_id`` this socket did not produce is answered with an
``error`` event (``previous_response_not_found``, status 400), as the API
does; one response runs at a time, in order.

What it does is chosen like the HTTP mock's, by model name (``mock-text``,
``mock-tool``, ``mock-long``, ``mock-thinking``…) plus, for this transport:
``mock-ws-error`` (an ``error`` event), ``mock-ws-close-<code>`` (closes the
socket with that code mid-response), ``mock-ws-drop`` (drops the TCP
connection mid-response). Lanes, as OpenAI multiplexes a socket: with
``interleave`` set to N, the first N ``response.create`` messages that name a
``stream_id`` are gathered and then answered at once, their events interleaved
one for one, each echoing its lane's ``stream_id``. A turn that carries a ``function_call_output``
(a tool's result) is answered with text, so an agent's tool loop ends; one
with ``generate: false`` (a warm-up) gets ``response.created`` and
``response.completed`` with no output and no usage. An upgrade with ``x-mock-ws-reject: <status>`` is
refused with that status and an OpenAI error body; one without
``authorization: Bearer <key>`` (when ``key`` is set) with 401.

Everything it saw is kept for the tests: ``upgrades`` (the headers of each
accepted upgrade), ``received`` (each client message), ``closes`` (how each
socket ended: the client's close code, or None for a dropped connection).
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass, field

import msgspec
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    serve_websocket,
)

from relay.testing.mock_upstream.openai_responses import build_stream, response_object
from relay.testing.mock_upstream.scenarios import ID_PLACEHOLDER, MODEL_PREFIX

MAX_MESSAGE_SIZE = 16 * 1024 * 1024


class _Create(msgspec.Struct):
    type: str | None = None
    model: str | None = None
    previous_response_id: str | None = None
    generate: bool | None = None
    stream_id: str | None = None


_CREATE = msgspec.json.Decoder(_Create)


def events_of(
    scenario: str, model: str, response_id_token: str, long_events: int = 20
) -> list[str]:
    """The scenario's Responses events as WebSocket text messages (ids filled in)."""
    plan = build_stream(scenario, model, long_events)
    out: list[str] = []
    for block in plan.events:
        data = block.split(b"\ndata: ", 1)[1].rstrip(b"\n")
        out.append(data.decode().replace(ID_PLACEHOLDER, response_id_token))
    return out


def in_lane(event: str, stream_id: str) -> str:
    """An event as OpenAI sends it on a ``stream_id`` lane: with that ``stream_id`` echoed."""
    return event[:-1] + ',"stream_id":' + msgspec.json.encode(stream_id).decode() + "}"


def warmup_events(model: str, token: str) -> list[str]:
    """``generate: false``: ``response.created`` then ``response.completed``, no output, no usage."""
    out = []
    for n, (kind, status) in enumerate(
        (("response.created", "in_progress"), ("response.completed", "completed"))
    ):
        response = response_object(model, status, [], None, "resp_" + token)
        event = {"type": kind, "response": response, "sequence_number": n}
        out.append(msgspec.json.encode(event).decode())
    return out


def error_event(status: int, code: str, message: str, param: str | None = None) -> str:
    return msgspec.json.encode(
        {
            "type": "error",
            "status": status,
            "error": {
                "type": "invalid_request_error",
                "code": code,
                "message": message,
                "param": param,
            },
        }
    ).decode()


@dataclass
class MockResponsesSocket:
    key: str | None = None
    upgrades: list[dict[str, str]] = field(default_factory=list)
    received: list[str | bytes] = field(default_factory=list)
    closes: list[int | None] = field(default_factory=list)
    socket_closed: trio.Event = field(default_factory=trio.Event)
    port: int = 0
    # Pause before each event (a slow provider); 0: none.
    event_delay: float = 0.0
    # Text deltas of ``mock-long``, and bytes of padding added to each of them.
    long_events: int = 20
    event_padding: int = 0
    sent: int = 0  # events sent so far, every socket
    # Lanes (stream_id) gathered, then answered interleaved; 0: each answered alone.
    interleave: int = 0

    @property
    def base_url(self) -> str:
        """The provider base URL (http://…/v1): the relay turns it into ws://…/v1/responses."""
        return f"http://127.0.0.1:{self.port}/v1"

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                lambda task_status: serve_websocket(
                    self._handle,
                    "127.0.0.1",
                    0,
                    ssl_context=None,
                    max_message_size=MAX_MESSAGE_SIZE,
                    task_status=task_status,
                )
            )
            self.port = server.port
            task_status.started(self.port)

    async def _handle(self, request: WebSocketRequest) -> None:
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        reject = headers.get("x-mock-ws-reject")
        if reject:
            body = msgspec.json.encode({"error": {"message": "refused by the mock", "code": None}})
            await request.reject(
                int(reject), extra_headers=[(b"content-type", b"application/json")], body=body
            )
            return
        if self.key is not None and headers.get("authorization") != f"Bearer {self.key}":
            body = msgspec.json.encode(
                {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}
            )
            await request.reject(
                401, extra_headers=[(b"content-type", b"application/json")], body=body
            )
            return
        subprotocol = request.proposed_subprotocols[0] if request.proposed_subprotocols else None
        ws = await request.accept(subprotocol=subprotocol)
        self.upgrades.append(headers)
        try:
            with contextlib.suppress(ConnectionClosed):  # the client went mid-response
                await self._converse(ws)
            self.closes.append(ws.closed.code if ws.closed else None)
        except _Dropped:
            self.closes.append(None)
        finally:
            self.socket_closed.set()

    async def _converse(self, ws: WebSocketConnection) -> None:
        produced: set[str] = set()
        lanes: list[tuple[str, list[str]]] = []  # gathered (response id, events)
        while True:
            try:
                message = await ws.get_message()
            except ConnectionClosed:
                return
            self.received.append(message)
            if not isinstance(message, str):
                continue
            try:
                create = _CREATE.decode(message)
            except msgspec.DecodeError:
                await ws.send_message(error_event(400, "invalid_json", "not JSON"))
                continue
            if create.type != "response.create":
                continue
            previous = create.previous_response_id
            if previous is not None and previous not in produced:
                await ws.send_message(
                    error_event(
                        400,
                        "previous_response_not_found",
                        f"Previous response with id '{previous}' not found.",
                        "previous_response_id",
                    )
                )
                continue
            model = create.model or "mock-text"
            # Another model name (a real one, priced): the text scenario under that name.
            scenario = (
                model.removeprefix(MODEL_PREFIX) if model.startswith(MODEL_PREFIX) else "text"
            )
            if '"function_call_output"' in message:
                scenario = "text"  # a tool's result came back: the model answers it
            token = secrets.token_hex(len(ID_PLACEHOLDER) // 2)
            if create.generate is False:
                # A warm-up (Codex's prewarm): the response exists, nothing is generated.
                for event in warmup_events(model, token):
                    await ws.send_message(event)
                produced.add("resp_" + token)
                continue
            if scenario == "ws-error":
                await ws.send_message(error_event(400, "invalid_value", "the mock refuses this"))
                continue
            close_code = None
            drop = scenario == "ws-drop"
            if scenario.startswith("ws-close-"):
                close_code = int(scenario.removeprefix("ws-close-"))
            events = events_of(
                "text" if close_code or drop else scenario, model, token, self.long_events
            )
            if self.event_padding:
                pad = ',"mock_padding":"' + "p" * self.event_padding + '"}'
                events = [e[:-1] + pad if ".delta" in e[:60] else e for e in events]
            if create.stream_id is not None and self.interleave:
                lanes.append(("resp_" + token, [in_lane(e, create.stream_id) for e in events]))
                if len(lanes) == self.interleave:
                    longest = max(len(lane) for _, lane in lanes)
                    for n in range(longest):
                        for _, lane in lanes:
                            if n < len(lane):
                                await ws.send_message(lane[n])
                                self.sent += 1
                    produced.update(response_id for response_id, _ in lanes)
                    lanes.clear()
                continue
            for n, event in enumerate(events):
                if (close_code or drop) and n == 4:
                    if drop:
                        await ws._stream.aclose()  # the TCP connection, without a close frame
                        raise _Dropped
                    await ws.aclose(close_code or 1000)
                    return
                if self.event_delay:
                    await trio.sleep(self.event_delay)
                await ws.send_message(event)
                self.sent += 1
            produced.add("resp_" + token)


class _Dropped(Exception):
    pass
