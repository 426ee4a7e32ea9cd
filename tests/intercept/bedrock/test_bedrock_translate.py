"""Bedrock request translation and stream re-emission (pure, sans-io: no network)."""

from __future__ import annotations

import base64
import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.intercept.bedrock.stream import (
    AnthropicEvent,
    BedrockStreamTranslator,
    map_bedrock_error,
)
from relay.intercept.bedrock.translate import (
    BEDROCK_ANTHROPIC_VERSION,
    InvalidAnthropicBody,
    invoke_path,
    invoke_stream_path,
    map_model,
    to_bedrock_body,
)
from relay.streams.eventstream import encode_message
from relay.wire.errors import error_body_for

MAIN = "global.anthropic.claude-sonnet-4-5-20250929-v1:0"
SMALL = "global.anthropic.claude-haiku-4-5-20251001-v1:0"


# --- model mapping and paths -------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("claude-haiku-4-5-20251001", SMALL),
        ("claude-3-5-haiku-latest", SMALL),
        ("Claude-3-HAIKU", SMALL),
        ("claude-sonnet-4-5", MAIN),
        ("claude-opus-4-1", MAIN),
        ("", MAIN),
        (None, MAIN),
    ],
)
def test_model_mapping(requested: str | None, expected: str) -> None:
    assert map_model(requested, model=MAIN, small_fast_model=SMALL) == expected


def test_paths_percent_encode_the_model_id() -> None:
    assert invoke_path(MAIN) == ("/model/global.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke")
    assert invoke_stream_path(MAIN) == (
        "/model/global.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream"
    )
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-x-v1:0"
    assert invoke_path(arn) == (
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2F"
        "us.anthropic.claude-x-v1%3A0/invoke"
    )


# --- body translation ----------------------------------------------------------

CLIENT_BODY = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 1024,
    "stream": True,
    "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
    "messages": [{"role": "user", "content": "Grüß dich — 你好 🚀"}],
    "tools": [{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}],
    "tool_choice": {"type": "auto"},
    "thinking": {"type": "enabled", "budget_tokens": 2048},
    "temperature": 0.7,
    "stop_sequences": ["\n\nHuman:"],
    "metadata": {"user_id": "u-1"},
    "service_tier": "auto",
    "container": {"type": "ephemeral"},
    "inference_geo": {"allow": ["us"]},
    "output_config": {"effort": "medium"},
    "context_management": {"edits": [{"type": "clear_thinking_20251015"}]},
}


def test_body_translation() -> None:
    header = (
        "claude-code-20250219, interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14,"
        "context-management-2025-06-27,interleaved-thinking-2025-05-14"
    )
    out = msgspec.json.decode(to_bedrock_body(json.dumps(CLIENT_BODY).encode(), header))
    assert list(out)[:2] == ["anthropic_version", "anthropic_beta"]
    assert out["anthropic_version"] == BEDROCK_ANTHROPIC_VERSION
    # Only accepted betas, in header order, once each.
    assert out["anthropic_beta"] == [
        "interleaved-thinking-2025-05-14",
        "context-management-2025-06-27",
    ]
    for gone in ("model", "stream", "metadata", "service_tier", "container", "inference_geo"):
        assert gone not in out
    # output_config needs the effort beta, which was not sent; context_management's was.
    assert "output_config" not in out
    assert out["context_management"] == CLIENT_BODY["context_management"]
    kept = [k for k in CLIENT_BODY if k in out]
    assert kept == [k for k in out if k not in ("anthropic_version", "anthropic_beta")]
    for key in kept:
        assert out[key] == CLIENT_BODY[key], key


def test_body_without_betas_has_no_anthropic_beta() -> None:
    body = b'{"model":"m","max_tokens":5,"messages":[],"output_config":{"effort":"low"}}'
    assert to_bedrock_body(body, None) == (
        b'{"anthropic_version":"bedrock-2023-05-31","max_tokens":5,"messages":[]}'
    )
    assert to_bedrock_body(body, "claude-code-20250219") == (
        b'{"anthropic_version":"bedrock-2023-05-31","max_tokens":5,"messages":[]}'
    )
    with_effort = to_bedrock_body(body, "effort-2025-11-24")
    assert msgspec.json.decode(with_effort)["output_config"] == {"effort": "low"}


def test_betas_already_in_the_body_are_filtered_and_merged() -> None:
    body = b'{"max_tokens":5,"messages":[],"anthropic_beta":["bogus-1","output-128k-2025-02-19"]}'
    out = msgspec.json.decode(to_bedrock_body(body, "context-1m-2025-08-07"))
    assert out["anthropic_beta"] == ["context-1m-2025-08-07", "output-128k-2025-02-19"]


@pytest.mark.parametrize("body", [b"", b"{", b"[1,2]", b'"text"', b"null"])
def test_body_must_be_a_json_object(body: bytes) -> None:
    with pytest.raises(InvalidAnthropicBody):
        to_bedrock_body(body, None)


# --- stream translation ----------------------------------------------------------

METRICS = (
    b'{"inputTokenCount":25,"outputTokenCount":12,"invocationLatency":812,'
    b'"firstByteLatency":305,"cacheReadInputTokenCount":3400,"cacheWriteInputTokenCount":1200}'
)
# Anthropic events exactly as Bedrock sends them (after base64): compact JSON,
# non-ASCII left raw, key order Anthropic's.
EVENTS = [
    b'{"type":"message_start","message":{"id":"msg_bdrk_01X","type":"message","role":"assistant",'
    b'"model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,'
    b'"usage":{"input_tokens":25,"cache_creation_input_tokens":1200,'
    b'"cache_read_input_tokens":3400,"output_tokens":1}}}',
    b'{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
    '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Grüß — 你好 🚀"}}'.encode(),
    b'{"type":"ping"}',
    b'{"type":"content_block_stop","index":0}',
    b'{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
    b'"usage":{"output_tokens":12}}',
    b'{"type":"message_stop","amazon-bedrock-invocationMetrics":' + METRICS + b"}",
]
CHUNK_HEADERS = {
    ":event-type": "chunk",
    ":content-type": "application/json",
    ":message-type": "event",
}


def chunk_frame(event_json: bytes, padding: str = "abcdefgh") -> bytes:
    payload = json.dumps({"bytes": base64.b64encode(event_json).decode(), "p": padding})
    return encode_message(CHUNK_HEADERS, payload.encode())


def exception_frame(exception_type: str, message: str) -> bytes:
    headers = {
        ":message-type": "exception",
        ":exception-type": exception_type,
        ":content-type": "application/json",
    }
    return encode_message(headers, json.dumps({"message": message}).encode())


STREAM = b"".join(chunk_frame(e, "abcdefghijklmnop"[: 4 + i]) for i, e in enumerate(EVENTS))
EXPECTED_SSE = (
    b"".join(
        b"event: " + json.loads(e)["type"].encode() + b"\ndata: " + e + b"\n\n" for e in EVENTS[:-1]
    )
    + b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)


def translate(data: bytes, cuts: list[int]) -> tuple[list[AnthropicEvent], BedrockStreamTranslator]:
    translator = BedrockStreamTranslator()
    events: list[AnthropicEvent] = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        events += translator.feed(data[start:cut])
        start = cut
    events += translator.end()
    return events, translator


def test_stream_is_reemitted_byte_for_byte_with_metrics_taken_out() -> None:
    events, translator = translate(STREAM, [])
    assert b"".join(e.sse for e in events) == EXPECTED_SSE
    assert [e.data for e in events[:-1]] == EVENTS[:-1]
    assert [e.type for e in events] == [json.loads(e)["type"] for e in EVENTS]
    assert events[-1].data == b'{"type":"message_stop"}'  # what Anthropic itself sends
    assert not any(e.is_error for e in events)
    assert translator.metrics is not None
    assert translator.metrics.first_byte_latency == 305
    usage = translator.usage()
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (25, 12)
    assert (usage.cache_read_tokens, usage.cache_write_tokens) == (3400, 1200)
    assert not translator.failed and translator.finished


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=30))
def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    one_shot, _ = translate(STREAM, [])
    chunked, translator = translate(STREAM, cuts)
    assert chunked == one_shot
    assert translator.usage() == translate(STREAM, [])[1].usage()


def test_one_byte_at_a_time() -> None:
    assert translate(STREAM, list(range(len(STREAM))))[0] == translate(STREAM, [])[0]


@pytest.mark.parametrize(
    ("exception_type", "error_type"),
    [
        ("throttlingException", "rate_limit_error"),
        ("serviceUnavailableException", "overloaded_error"),
        ("validationException", "invalid_request_error"),
        ("internalServerException", "api_error"),
        ("modelStreamErrorException", "api_error"),
        ("modelTimeoutException", "api_error"),
        ("someFutureException", "api_error"),
    ],
)
def test_exception_frames_become_anthropic_error_events(
    exception_type: str, error_type: str
) -> None:
    data = chunk_frame(EVENTS[0]) + exception_frame(exception_type, "Slow down — bitte.")
    data += chunk_frame(EVENTS[1])  # nothing after the error reaches the client
    events, translator = translate(data, [len(data) // 3])
    assert [e.type for e in events] == ["message_start", "error"]
    error = events[-1]
    assert error.is_error
    assert error.sse == (
        b'event: error\ndata: {"type":"error","error":{"type":"'
        + error_type.encode()
        + b'","message":"'
        + "Slow down — bitte.".encode()
        + b'"}}\n\n'
    )
    assert translator.failed and translator.finished
    assert (translator.error_type, translator.error_message) == (error_type, "Slow down — bitte.")
    assert translator.feed(chunk_frame(EVENTS[2])) == []
    assert translator.end() == []


def test_error_message_frame() -> None:
    frame = encode_message(
        {":message-type": "error", ":error-code": "InternalFailure", ":error-message": "boom"}
    )
    events, translator = translate(frame, [])
    assert [(e.type, e.is_error) for e in events] == [("error", True)]
    assert translator.error_message == "boom"


FIRST_FRAME_LENGTH = len(chunk_frame(EVENTS[0], "abcd"))
CORRUPT = bytearray(STREAM)
CORRUPT[FIRST_FRAME_LENGTH + 40] ^= 0x01  # inside the second frame
CORRUPT_STREAM = bytes(CORRUPT)


def test_anthropic_error_event_inside_a_chunk_is_passed_on_and_ends_the_stream() -> None:
    error = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    data = chunk_frame(EVENTS[0]) + chunk_frame(error) + chunk_frame(EVENTS[1])
    events, translator = translate(data, [])
    assert [e.type for e in events] == ["message_start", "error"]
    assert events[-1].sse == b"event: error\ndata: " + error + b"\n\n"
    assert events[-1].is_error
    assert (translator.error_type, translator.error_message) == ("overloaded_error", "Overloaded")


def test_corrupt_frame_ends_the_stream_with_an_error_event() -> None:
    events, translator = translate(CORRUPT_STREAM, [FIRST_FRAME_LENGTH])
    assert [e.type for e in events] == ["message_start", "error"]
    assert events[-1].is_error and translator.error_type == "api_error"
    assert "corrupt event stream" in (translator.error_message or "")
    assert translator.feed(STREAM) == []


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(CORRUPT_STREAM)), max_size=10))
def test_corrupt_stream_under_any_chunking(cuts: list[int]) -> None:
    # Good events may arrive before the error (depending on where the chunks
    # fall), then exactly one error event, then nothing: never a hang or a gap.
    events, translator = translate(CORRUPT_STREAM, cuts)
    assert events[-1].is_error and translator.finished
    assert [e.data for e in events[:-1]] == EVENTS[: len(events) - 1]
    assert len(events) <= 2


@pytest.mark.parametrize("keep", [len(STREAM) - 1, len(STREAM) - len(chunk_frame(EVENTS[-1]))])
def test_a_stream_cut_short_ends_with_an_error_event(keep: int) -> None:
    events, translator = translate(STREAM[:keep], [])
    assert events[-1].type == "error" and events[-1].is_error
    assert translator.failed
    assert translator.usage() is None  # the metrics never came


def test_malformed_chunk_payload() -> None:
    frame = encode_message(CHUNK_HEADERS, b'{"bytes":"not base64!"}')
    events, translator = translate(frame, [])
    assert [e.type for e in events] == ["error"]
    assert translator.failed


def test_unknown_event_types_are_ignored() -> None:
    other = encode_message({":event-type": "metadata", ":message-type": "event"}, b"{}")
    events, _ = translate(other + STREAM, [])
    assert b"".join(e.sse for e in events) == EXPECTED_SSE


# --- errors before the stream ------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "aws_type", "expected_status", "expected_type"),
    [
        (400, "ValidationException", 400, "invalid_request_error"),
        (403, "InvalidSignatureException", 403, "permission_error"),
        (403, "AccessDeniedException", 403, "permission_error"),
        (403, "UnrecognizedClientException", 403, "permission_error"),
        (404, "ResourceNotFoundException", 404, "not_found_error"),
        (408, "ModelTimeoutException", 408, "api_error"),
        (429, "ThrottlingException", 429, "rate_limit_error"),
        (429, "ModelNotReadyException", 429, "rate_limit_error"),
        (400, "ServiceQuotaExceededException", 429, "rate_limit_error"),
        (424, "ModelErrorException", 500, "api_error"),
        (500, "InternalServerException", 500, "api_error"),
        (503, "ServiceUnavailableException", 529, "overloaded_error"),
        (413, "", 413, "request_too_large"),
        (418, "", 418, "invalid_request_error"),
        (502, "", 502, "api_error"),
    ],
)
def test_http_errors_are_mapped(
    status: int, aws_type: str, expected_status: int, expected_type: str
) -> None:
    headers = {
        "X-Amzn-ErrorType": f"{aws_type}:http://internal.amazon.com/coral/com.amazon.bedrock/"
    }
    mapped_status, body = map_bedrock_error(
        status, b'{"message":"Nope."}', headers if aws_type else {}
    )
    assert mapped_status == expected_status
    assert msgspec.json.decode(body) == {
        "type": "error",
        "error": {"type": expected_type, "message": "Nope."},
    }


def test_an_unknown_bedrock_503_is_overloaded_like_every_other_anthropic_503() -> None:
    # One status table for every Anthropic-shaped error: an AWS 503 of a type the
    # map does not know says what the relay's own 503s say (it was api_error).
    status, body = map_bedrock_error(503, b'{"message":"Busy."}', {})
    assert status == 503
    assert msgspec.json.decode(body)["error"] == {"type": "overloaded_error", "message": "Busy."}
    assert msgspec.json.decode(error_body_for("anthropic", 503, "x"))["error"]["type"] == (
        "overloaded_error"
    )


def test_http_error_without_json_body_keeps_the_text() -> None:
    status, body = map_bedrock_error(
        403, b"<html>denied</html>", [("x-amzn-errortype", "AccessDeniedException")]
    )
    assert status == 403
    assert msgspec.json.decode(body)["error"] == {
        "type": "permission_error",
        "message": "AccessDeniedException: <html>denied</html>",
    }
    _, body = map_bedrock_error(500, b"", [])
    assert msgspec.json.decode(body)["error"]["message"] == "Bedrock answered HTTP 500"
