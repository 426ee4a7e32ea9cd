"""The interception shell's outcome transitions, with no server.

``run_exchange`` (the shell) is driven with a fake upstream client and fake ASGI
``send``/``receive``, once for a plain SSE API (Anthropic Messages through
``SSERelay``) and once for Bedrock through the same shell (``BedrockRelay``,
an Anthropic client translated from Bedrock's event stream). Each transition:
completed, failed before the first byte (no upstream, an upstream error
status), failed after the first byte, cancelled before the upstream answered,
cancelled mid-stream, and shutdown (cancelled from outside).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from relay.intercept.apis import MESSAGES
from relay.intercept.base import (
    Outcome,
    ResponseRelay,
    SSERelay,
    UpstreamCall,
    mark_interrupted,
    run_exchange,
)
from relay.intercept.bedrock.handler import BedrockRelay, BedrockRequest
from relay.streams.eventstream import encode_message
from relay.streams.sse import SSEDecoder, encode_event
from relay.upstream.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from relay.upstream.http11 import ResponseHeaders

# --- the answer, as each upstream sends it -------------------------------------------

EVENTS = [
    ("message_start", b'{"type":"message_start","message":{"id":"msg_1","model":"m",'
     b'"usage":{"input_tokens":3,"output_tokens":1}}}'),
    ("content_block_start", b'{"type":"content_block_start","index":0,'
     b'"content_block":{"type":"text","text":""}}'),
    ("content_block_delta", b'{"type":"content_block_delta","index":0,'
     b'"delta":{"type":"text_delta","text":"Hi"}}'),
    ("content_block_stop", b'{"type":"content_block_stop","index":0}'),
    ("message_delta", b'{"type":"message_delta","delta":{"stop_reason":"end_turn"},'
     b'"usage":{"output_tokens":5}}'),
    ("message_stop", b'{"type":"message_stop"}'),
]  # fmt: skip
SSE_FRAMES = [encode_event(data, name) for name, data in EVENTS]
SSE_STREAM = b"".join(SSE_FRAMES)


def bedrock_frame(data: bytes) -> bytes:
    payload = json.dumps({"bytes": base64.b64encode(data).decode()}).encode()
    headers = {
        ":event-type": "chunk",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode_message(headers, payload)


BEDROCK_FRAMES = [bedrock_frame(data) for _name, data in EVENTS]

SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"request-id", b"req_1")]
EVENTSTREAM_HEADERS = [
    (b"content-type", b"application/vnd.amazon.eventstream"),
    (b"x-amzn-requestid", b"aws-1"),
]


# --- fakes: the upstream client, the client's ASGI channel ------------------------------

STALL = object()  # in a body: the upstream goes quiet for good
FAIL = object()  # in a body: the upstream connection breaks


class FakeResponse:
    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: list[Any]) -> None:
        self.status_code = status
        self.headers = ResponseHeaders(headers)
        self._body = body
        self.yielded = 0  # parts read so far

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        for part in self._body:
            if part is STALL:
                await trio.sleep_forever()
            if part is FAIL:
                raise UpstreamProtocolError("connection reset mid-body")
            self.yielded += 1
            yield part

    async def aread(self) -> bytes:
        return b"".join([part async for part in self.aiter_raw()])


class FakeClient:
    """``HTTP11Client.stream``'s shape: an answer, a stall, or an error before any head."""

    def __init__(self, answer: FakeResponse | BaseException | object) -> None:
        self.answer = answer
        self.requests: list[tuple[str, str]] = []

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, headers: Any, body: Any
    ) -> AsyncIterator[FakeResponse]:
        self.requests.append((method, url))
        if self.answer is STALL:
            await trio.sleep_forever()
        if isinstance(self.answer, BaseException):
            raise self.answer
        assert isinstance(self.answer, FakeResponse)
        yield self.answer


@dataclass
class Client:
    """The ASGI side: what was sent, and a disconnect sent on demand."""

    sent: list[dict[str, Any]] = field(default_factory=list)
    leave: trio.Event = field(default_factory=trio.Event)
    leave_after_body_bytes: int | None = None  # leave once this much body has arrived

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if (
            self.leave_after_body_bytes is not None
            and len(self.body) >= self.leave_after_body_bytes
        ):
            self.leave.set()

    async def receive(self) -> dict[str, Any]:
        await self.leave.wait()
        return {"type": "http.disconnect"}

    @property
    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        return starts[0]["status"] if starts else None

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    @property
    def finished(self) -> bool:
        last = self.sent[-1] if self.sent else {}
        return last.get("type") == "http.response.body" and not last.get("more_body", False)


# --- the two paths through the one shell -------------------------------------------------


@dataclass(frozen=True)
class Path:
    name: str
    new_relay: Callable[[], ResponseRelay]
    headers: list[tuple[bytes, bytes]]
    frames: list[bytes]
    expected_stream: bytes  # what the client receives of a complete answer


def _bedrock_relay() -> ResponseRelay:
    request = BedrockRequest("model-id", "/model/model-id/invoke-with-response-stream", b"{}",
                             {}, streaming=True, native=False)  # fmt: skip
    return BedrockRelay(request)


PATHS = [
    Path("sse", lambda: SSERelay(MESSAGES), SSE_HEADERS, SSE_FRAMES, SSE_STREAM),
    Path("bedrock", _bedrock_relay, EVENTSTREAM_HEADERS, BEDROCK_FRAMES, SSE_STREAM),
]


@pytest.fixture(params=PATHS, ids=[p.name for p in PATHS])
def path(request: pytest.FixtureRequest) -> Path:
    return request.param


async def run(
    path: Path, answer: FakeResponse | BaseException | object, client: Client | None = None
) -> tuple[Outcome, Client]:
    client = client or Client()
    call = UpstreamCall(FakeClient(answer), "POST", "http://upstream/x", [], b"{}")  # type: ignore[arg-type]
    outcome = Outcome()
    await run_exchange(
        client.send, client.receive, call, path.new_relay(), "anthropic", outcome,
        keepalive_interval=0,
    )  # fmt: skip
    return outcome, client


def error_events(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in SSEDecoder().feed(body) if e.event == "error"]


# --- the transitions ---------------------------------------------------------------------


async def test_completed(path: Path):
    outcome, client = await run(path, FakeResponse(200, path.headers, path.frames))
    assert outcome.status == "completed"
    assert outcome.upstream_complete and outcome.upstream_status == 200
    assert outcome.first_byte_at is not None and outcome.sent_at is not None
    assert outcome.disconnect_phase is None and outcome.error_type is None
    assert client.status == 200 and client.finished
    assert client.body == path.expected_stream
    assert outcome.facts.usage is not None and outcome.facts.usage.output_tokens == 5


@pytest.mark.parametrize(
    ("error", "status", "error_type"),
    [
        (UpstreamConnectError("connection refused"), 502, "upstream_unreachable"),
        (UpstreamTimeout("read timed out"), 504, "upstream_timeout"),
    ],
)
async def test_failed_before_the_first_byte_without_an_upstream_answer(
    path: Path, error: Exception, status: int, error_type: str
):
    outcome, client = await run(path, error)
    assert outcome.status == "failed" and outcome.error_type == error_type
    assert outcome.upstream_complete and outcome.upstream_status is None
    assert outcome.first_byte_at is None
    assert client.status == status and client.finished
    assert json.loads(client.body)["type"] == "error"  # Anthropic's shape, from the shell


async def test_failed_before_the_first_byte_with_an_upstream_error_status(path: Path):
    body = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    outcome, client = await run(path, FakeResponse(529, [(b"content-type", b"application/json")],
                                                   [body]))  # fmt: skip
    assert outcome.status == "failed" and outcome.error_type == "upstream_529"
    assert outcome.upstream_status == 529 and outcome.upstream_complete
    assert outcome.error_message == body.decode()
    assert client.status == 529 and client.finished
    assert json.loads(client.body)["error"]["type"] == "overloaded_error"


async def test_failed_after_the_first_byte(path: Path):
    outcome, client = await run(path, FakeResponse(200, path.headers, [*path.frames[:3], FAIL]))
    assert outcome.status == "failed" and outcome.error_type == "upstream_stream_error"
    assert outcome.first_byte_at is not None and outcome.upstream_complete
    assert outcome.disconnect_phase is None
    assert client.status == 200 and client.finished
    # What had arrived, then an error event the SDK raises on.
    assert client.body.startswith(b"".join(SSE_FRAMES[:3]))
    [error] = error_events(client.body)
    assert error["error"]["type"] == "api_error"
    assert "mid-stream" in error["error"]["message"]


async def test_cancelled_before_the_upstream_answered(path: Path):
    client = Client()
    client.leave.set()  # gone at once: the upstream has not answered yet
    outcome, client = await run(path, STALL, client)
    assert outcome.status == "cancelled" and outcome.disconnect_phase == "before-response"
    assert not outcome.upstream_complete and outcome.upstream_status is None
    assert client.sent == []


async def test_cancelled_mid_stream(path: Path):
    client = Client(leave_after_body_bytes=len(SSE_FRAMES[0]))
    outcome, client = await run(path, FakeResponse(200, path.headers, [path.frames[0], STALL]),
                                client)  # fmt: skip
    assert outcome.status == "cancelled" and outcome.disconnect_phase == "mid-stream"
    assert outcome.first_byte_at is not None and not outcome.upstream_complete
    assert client.body == SSE_FRAMES[0] and not client.finished
    assert outcome.facts.response_id == "msg_1"  # what had arrived is accounted for


async def test_cancelled_after_the_head_before_the_first_byte(path: Path):
    client = Client()
    # The client leaves once the response has started, before any body.
    real_send = client.send

    async def send(message: dict[str, Any]) -> None:
        await real_send(message)
        if message["type"] == "http.response.start":
            client.leave.set()

    client.send = send  # type: ignore[method-assign]
    outcome, client = await run(path, FakeResponse(200, path.headers, [STALL]), client)
    assert outcome.status == "cancelled" and outcome.disconnect_phase == "before-first-byte"
    assert outcome.first_byte_at is None


async def test_a_client_leaving_after_the_answer_cancels_nothing(path: Path):
    client = Client(leave_after_body_bytes=len(SSE_STREAM))
    outcome, client = await run(path, FakeResponse(200, path.headers, path.frames), client)
    assert outcome.status == "completed" and outcome.disconnect_phase is None


async def test_shutdown_cancels_mid_stream_and_says_so(path: Path):
    client = Client()
    outcome = Outcome()
    call = UpstreamCall(FakeClient(FakeResponse(200, path.headers, [path.frames[0], STALL])),  # type: ignore[arg-type]
                        "POST", "http://upstream/x", [], b"{}")  # fmt: skip
    with trio.move_on_after(0.05) as grace:  # the shutdown grace period ran out
        await run_exchange(
            client.send, client.receive, call, path.new_relay(), "anthropic", outcome,
            keepalive_interval=0,
        )  # fmt: skip
    assert grace.cancelled_caught
    assert outcome.status == "cancelled" and outcome.disconnect_phase == "shutdown"
    assert outcome.first_byte_at is not None and not outcome.upstream_complete


def test_an_error_outside_the_relay_is_a_relay_error_and_cancellation_a_shutdown():
    outcome = Outcome()
    mark_interrupted(outcome, RuntimeError("boom"))
    assert (outcome.status, outcome.error_type) == ("failed", "relay_error")
    assert outcome.error_message == "RuntimeError: boom"
    finished = Outcome(upstream_complete=True)
    mark_interrupted(finished, RuntimeError("late"))
    assert finished.status == "completed"  # the exchange had ended: the record says so


def exception_frame(exception_type: str, message: str) -> bytes:
    headers = {
        ":message-type": "exception",
        ":exception-type": exception_type,
        ":content-type": "application/json",
    }
    return encode_message(headers, json.dumps({"message": message}).encode())


async def test_bedrock_exception_frame_ends_the_stream_and_the_shell_stops_reading():
    path = PATHS[1]
    body = [BEDROCK_FRAMES[0], exception_frame("throttlingException", "Slow down"),
            *BEDROCK_FRAMES[1:]]  # fmt: skip
    response = FakeResponse(200, path.headers, body)
    outcome, client = await run(path, response)
    assert response.yielded == 2  # the shell stopped reading at the error
    assert outcome.status == "failed" and outcome.error_type == "rate_limit_error"
    assert outcome.upstream_complete and client.finished
    [error] = error_events(client.body)
    assert error["error"] == {"type": "rate_limit_error", "message": "Slow down"}
    # Nothing after the error event: the rest of the upstream body is not relayed.
    assert client.body.startswith(SSE_FRAMES[0])
    assert b"message_stop" not in client.body


def _native_relay() -> ResponseRelay:
    request = BedrockRequest("m", "/model/m/invoke-with-response-stream", b"{}", {},
                             streaming=True, native=True)  # fmt: skip
    return BedrockRelay(request)


async def test_bedrock_native_stream_is_relayed_unchanged_and_left_unfinished_on_failure():
    native = Path("native", _native_relay, EVENTSTREAM_HEADERS, BEDROCK_FRAMES,
                  b"".join(BEDROCK_FRAMES))  # fmt: skip
    outcome, client = await run(native, FakeResponse(200, native.headers, native.frames))
    assert outcome.status == "completed" and client.finished
    assert client.body == native.expected_stream
    assert outcome.facts.usage is not None and outcome.facts.usage.output_tokens == 5

    outcome, client = await run(native, FakeResponse(200, native.headers,
                                                     [*BEDROCK_FRAMES[:2], FAIL]))  # fmt: skip
    assert outcome.status == "failed" and outcome.error_type == "upstream_stream_error"
    # No frame can be added to an event stream: the client's body stays unfinished.
    assert client.body == b"".join(BEDROCK_FRAMES[:2]) and not client.finished
