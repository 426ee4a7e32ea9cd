"""What the load harness asks for, and the one stream shape the mock lacks.

A ``Scenario`` is one prepared request (API, path, body, extra headers); the
generator sends its bytes unchanged, so a scenario costs nothing per request.

LiteLLM's published proxy benchmark streams 31 ``chat.completion.chunk``
events, 13.4 KB in all. The bundled mock's ``long`` scenario has the right
event type but smaller events, so ``BenchResponder`` wraps the mock's
responder and answers models named ``bench-litellm-*`` with that exact shape
(one role chunk, 29 content chunks, one finish chunk, then ``[DONE]``). The
model name carries the pacing too, because LiteLLM does not forward the
mock's ``x-mock-*`` headers upstream. Everything else goes to the mock.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Literal

import msgspec

from relay.testing.mock_upstream import MockUpstream
from relay.testing.mock_upstream.framing import Writes, build_writes
from relay.testing.mock_upstream.routes import PLACEHOLDER, Reply, Responder, StreamReply
from relay.testing.mock_upstream.scenarios import CREATED_AT, ID_PLACEHOLDER, sse

Api = Literal["openai", "anthropic"]

LITELLM_EVENTS = 31  # chat.completion.chunk events per stream, [DONE] not counted
LITELLM_BYTES = 13_400  # the SSE bytes of those 31 events
BENCH_MODEL_PREFIX = "bench-litellm-"
_BENCH_MARK = b'"' + BENCH_MODEL_PREFIX.encode()


class Pacing(msgspec.Struct, frozen=True):
    headers_delay_s: float = 0.0
    first_token_s: float = 0.0
    gap_s: float = 0.0
    # All events in one socket write: an upstream far faster than the gateway,
    # whose events are all waiting by the time the gateway reads.
    one_write: bool = False


# Model name suffix -> pacing. "fast" is the throughput shape, "paced" the
# latency shape of LiteLLM's benchmark; "storm" adds a delay before the
# headers so that disconnects land in every phase of a stream.
PACINGS: dict[str, Pacing] = {
    "fast": Pacing(one_write=True),
    "paced": Pacing(first_token_s=0.010, gap_s=0.001),
    "storm": Pacing(headers_delay_s=0.005, first_token_s=0.005, gap_s=0.001),
    # Open streams: the first event at once, then one every 5 s (150 s in all).
    "hold": Pacing(gap_s=5.0),
}


def _chunk(model: str, delta: dict[str, object], finish: str | None, usage_null: bool) -> bytes:
    body: dict[str, object] = {
        "id": "chatcmpl-" + ID_PLACEHOLDER,
        "object": "chat.completion.chunk",
        "created": CREATED_AT,
        "model": model,
        "system_fingerprint": "fp_bench0001",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage_null:
        body["usage"] = None  # what OpenAI sends on every chunk under include_usage
    return sse(None, body)


def litellm_shaped_events(model: str, include_usage: bool = False) -> list[bytes]:
    """31 chunk events of about 13.4 KB in all (plus a usage chunk if asked), then [DONE]."""
    contents = LITELLM_EVENTS - 2

    def build(text_len: int) -> list[bytes]:
        words = ("lorem ipsum dolor sit amet consectetur adipiscing elit " * 8)[:text_len]
        return [
            _chunk(model, {"role": "assistant", "content": ""}, None, include_usage),
            *(_chunk(model, {"content": words}, None, include_usage) for _ in range(contents)),
            _chunk(model, {}, "stop", include_usage),
        ]

    overhead = sum(map(len, build(0)))
    events = build(max(1, round((LITELLM_BYTES - overhead) / contents)))
    if include_usage:
        usage = {"prompt_tokens": 12, "completion_tokens": contents, "total_tokens": 12 + contents}
        events.append(
            sse(
                None,
                {
                    "id": "chatcmpl-" + ID_PLACEHOLDER,
                    "object": "chat.completion.chunk",
                    "created": CREATED_AT,
                    "model": model,
                    "system_fingerprint": "fp_bench0001",
                    "choices": [],
                    "usage": usage,
                },
            )
        )
    events.append(b"data: [DONE]\n\n")
    return events


class _StreamOptions(msgspec.Struct):
    include_usage: bool = False


class _BenchRequest(msgspec.Struct):
    model: str = ""
    stream: bool = False
    stream_options: _StreamOptions | None = None


_decode_bench_request = msgspec.json.Decoder(_BenchRequest).decode


class BenchResponder:
    """The mock's responder plus the ``bench-litellm-{fast,paced,storm}`` streams."""

    def __init__(self, inner: Responder) -> None:
        self.inner = inner
        self._writes: dict[tuple[str, bool, bool], Writes] = {}

    def respond(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes,
        request_index: int,
        chunked: bool = True,
    ) -> Reply:
        if method == "POST" and _BENCH_MARK in body and target.startswith("/v1/chat/completions"):
            request = _decode_bench_request(body)
            pacing = PACINGS.get(request.model.removeprefix(BENCH_MODEL_PREFIX))
            if request.stream and pacing is not None:
                usage = bool(request.stream_options and request.stream_options.include_usage)
                return self._stream(request.model, pacing, usage, chunked)
        return self.inner.respond(method, target, headers, body, request_index, chunked)

    def _stream(self, model: str, pacing: Pacing, include_usage: bool, chunked: bool) -> Reply:
        key = (model, include_usage, chunked)
        writes = self._writes.get(key)
        if writes is None:
            writes = build_writes(litellm_shaped_events(model, include_usage), chunked)
            if pacing.one_write:
                writes = Writes(writes.wire, [0, len(writes.wire)])
            self._writes[key] = writes
        uid = secrets.token_hex(len(ID_PLACEHOLDER) // 2).encode()
        return StreamReply(
            headers=[
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"),
                (b"x-request-id", b"req_" + uid),
            ],
            writes=Writes(writes.wire.replace(PLACEHOLDER, uid), writes.bounds),
            ending="complete",
            headers_delay_s=pacing.headers_delay_s,
            first_token_s=pacing.first_token_s,
            gap_s=pacing.gap_s,
        )


def install_bench_responder(mock: MockUpstream) -> None:
    """Let ``mock`` also serve the bench-litellm-* streams."""
    if not isinstance(mock.responder, BenchResponder):
        mock.responder = BenchResponder(mock.responder)  # type: ignore[assignment]


# -- the requests --------------------------------------------------------------------------


class Scenario(msgspec.Struct, frozen=True):
    name: str
    api: Api
    path: str  # the provider API path, e.g. /v1/chat/completions
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    stream: bool = True


def _chat_body(model: str, stream: bool) -> bytes:
    return msgspec.json.encode(
        {
            "model": model,
            "stream": stream,
            "messages": [{"role": "user", "content": "Say something long enough to measure."}],
        }
    )


def blocking_chat() -> Scenario:
    """A non-streaming chat completion (the mock's text scenario, about 0.8 KB)."""
    return Scenario("blocking", "openai", "/v1/chat/completions", _chat_body("mock-text", False))


def litellm_stream(pacing: Literal["fast", "paced", "storm", "hold"]) -> Scenario:
    """LiteLLM's benchmark stream: 31 chunks, 13.4 KB; ``paced`` is 10 ms TTFB, 1 ms gaps."""
    return Scenario(
        f"openai-stream-{pacing}",
        "openai",
        "/v1/chat/completions",
        _chat_body(BENCH_MODEL_PREFIX + pacing, True),
    )


def anthropic_stream(events: int = 29) -> Scenario:
    """An Anthropic Messages stream from the mock's ``long`` scenario, as fast as possible."""
    body = msgspec.json.encode(
        {
            "model": "mock-long",
            "max_tokens": 1024,
            "stream": True,
            "messages": [{"role": "user", "content": "Say something long enough to measure."}],
        }
    )
    return Scenario(
        "anthropic-stream",
        "anthropic",
        "/v1/messages",
        body,
        headers=((b"anthropic-version", b"2023-06-01"), (b"x-mock-events", b"%d" % events)),
    )


def long_open_stream() -> Scenario:
    """A stream that stays open (one event every 5 s) while RSS is measured."""
    return Scenario(
        "open-stream",
        "openai",
        "/v1/chat/completions",
        _chat_body(BENCH_MODEL_PREFIX + "hold", True),
    )
