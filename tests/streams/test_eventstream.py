"""The AWS event-stream decoder against botocore, under any chunking and any corruption.

botocore's ``EventStreamBuffer`` is the reference: for the same bytes, split
any way, our decoder must give the same headers and payloads.
"""

from __future__ import annotations

import base64
import json
import struct
import uuid
from binascii import crc32

import botocore.exceptions
import botocore.parsers
import botocore.session
import pytest
from botocore.eventstream import EventStream, EventStreamBuffer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.streams.eventstream import (
    MAX_MESSAGE_LENGTH,
    EventStreamDecoder,
    EventStreamError,
    EventStreamMessage,
    HeaderType,
    encode_message,
)

modest = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def botocore_messages(stream: bytes) -> list[tuple[dict[str, object], bytes]]:
    buffer = EventStreamBuffer()
    buffer.add_data(stream)
    return [(m.headers, m.payload) for m in buffer]


def decode_in_chunks(stream: bytes, cuts: list[int]) -> list[EventStreamMessage]:
    decoder = EventStreamDecoder()
    messages: list[EventStreamMessage] = []
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        messages += decoder.feed(stream[start:cut])
        start = cut
    decoder.close()
    return messages


# ------------------------------------------------------------ generated messages

header_names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20).filter(
    lambda name: len(name.encode()) <= 255
)
header_values = st.one_of(
    st.booleans(),
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.binary(max_size=40),
    st.tuples(st.just(HeaderType.BYTE), st.integers(-(2**7), 2**7 - 1)),
    st.tuples(st.just(HeaderType.SHORT), st.integers(-(2**15), 2**15 - 1)),
    st.tuples(st.just(HeaderType.INTEGER), st.integers(-(2**31), 2**31 - 1)),
    st.tuples(st.just(HeaderType.LONG), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just(HeaderType.TIMESTAMP), st.integers(-(2**63), 2**63 - 1)),
    st.uuids(),
)
messages = st.tuples(
    st.dictionaries(header_names, header_values, max_size=6), st.binary(max_size=300)
).map(lambda message: encode_message(*message))


@st.composite
def streams_and_cuts(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    stream = b"".join(draw(st.lists(messages, max_size=8)))
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=16))
    return stream, cuts


@modest
@given(streams_and_cuts())
def test_same_messages_as_botocore_under_any_chunking(case: tuple[bytes, list[int]]) -> None:
    stream, cuts = case
    expected = botocore_messages(stream)
    assert [(m.headers, m.payload) for m in decode_in_chunks(stream, [])] == expected
    assert [(m.headers, m.payload) for m in decode_in_chunks(stream, cuts)] == expected


@settings(max_examples=30, deadline=None)
@given(st.lists(messages, min_size=1, max_size=3))
def test_one_byte_at_a_time(frames: list[bytes]) -> None:
    stream = b"".join(frames)
    decoder = EventStreamDecoder()
    decoded = [m for i in range(len(stream)) for m in decoder.feed(stream[i : i + 1])]
    decoder.close()
    assert [(m.headers, m.payload) for m in decoded] == botocore_messages(stream)


def test_every_header_type_decodes_to_what_botocore_gives() -> None:
    frame = encode_message(
        {
            "true": True,
            "false": False,
            "byte": (HeaderType.BYTE, -5),
            "short": (HeaderType.SHORT, -300),
            "integer": (HeaderType.INTEGER, 70_000),
            "long": 2**40,
            "bytes": b"\x00\xff",
            "string": "héllo",
            "timestamp": (HeaderType.TIMESTAMP, 1_700_000_000_000),
            "uuid": uuid.UUID(int=5),
        },
        b"payload",
    )
    (message,) = EventStreamDecoder().feed(frame)
    assert message.headers == {
        "true": True,
        "false": False,
        "byte": -5,
        "short": -300,
        "integer": 70_000,
        "long": 2**40,
        "bytes": b"\x00\xff",
        "string": "héllo",
        "timestamp": 1_700_000_000_000,
        "uuid": uuid.UUID(int=5).bytes,
    }
    assert [(message.headers, message.payload)] == botocore_messages(frame)


def test_headers_from_the_cache_are_each_callers_own() -> None:
    frame = encode_message({":event-type": "chunk"}, b"{}")
    first, second = EventStreamDecoder().feed(frame * 2)
    first.headers["changed"] = True
    assert second.headers == {":event-type": "chunk"}


# ------------------------------------------------------------------- corruption


@modest
@given(st.lists(messages, min_size=1, max_size=3), st.data())
def test_any_changed_byte_is_an_error_never_a_hang(
    frames: list[bytes], data: st.DataObject
) -> None:
    stream = bytearray(b"".join(frames))
    at = data.draw(st.integers(0, len(stream) - 1))
    stream[at] ^= data.draw(st.integers(1, 255))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    # CRC32 catches every single-byte change; a corrupt length fails at once
    # on its prelude CRC instead of waiting for bytes that will never come.
    with pytest.raises(EventStreamError):
        decode_in_chunks(bytes(stream), cuts)


def prelude(total: int, headers_length: int) -> bytes:
    lengths = struct.pack(">II", total, headers_length)
    return lengths + struct.pack(">I", crc32(lengths))


@pytest.mark.parametrize(
    ("total", "headers_length"),
    [(MAX_MESSAGE_LENGTH + 1, 0), (2**32 - 1, 0), (15, 0), (100, 85), (16, 1)],
)
def test_impossible_lengths_fail_as_soon_as_the_prelude_is_in(
    total: int, headers_length: int
) -> None:
    decoder = EventStreamDecoder()
    with pytest.raises(EventStreamError):
        decoder.feed(prelude(total, headers_length))
    # The decoder stays failed.
    with pytest.raises(EventStreamError):
        decoder.feed(b"")
    with pytest.raises(EventStreamError):
        decoder.close()


def test_the_length_cap_is_an_option() -> None:
    frame = encode_message({}, b"x" * 100)
    assert EventStreamDecoder(max_message_length=len(frame)).feed(frame)[0].payload == b"x" * 100
    with pytest.raises(EventStreamError, match="cap"):
        EventStreamDecoder(max_message_length=len(frame) - 1).feed(frame)


def test_corrupt_prelude_and_message_crc() -> None:
    frame = bytearray(encode_message({":message-type": "event"}, b"{}"))
    bad_prelude = bytes(frame[:8]) + b"\0\0\0\0" + bytes(frame[12:])
    with pytest.raises(EventStreamError, match="prelude CRC"):
        EventStreamDecoder().feed(bad_prelude)
    frame[-1] ^= 1
    with pytest.raises(EventStreamError, match="message CRC"):
        EventStreamDecoder().feed(bytes(frame))


def reframe(headers: bytes, payload: bytes = b"") -> bytes:
    """A message with valid CRCs around whatever header bytes are given."""
    body = prelude(16 + len(headers) + len(payload), len(headers)) + headers + payload
    return body + struct.pack(">I", crc32(body))


@pytest.mark.parametrize(
    "headers",
    [
        b"\x04name\x0a",  # unknown value type 10
        b"\x04name\x07\x00\x09short",  # string longer than the header section
        b"\x04name\x05\x00\x01",  # long cut short
        b"\x09name",  # name longer than the header section
        b"\x02\xff\xfe\x07\x00\x00",  # name not UTF-8
        b"\x01a\x00\x01a\x01",  # duplicate header
    ],
)
def test_malformed_headers_inside_valid_crcs(headers: bytes) -> None:
    decoder = EventStreamDecoder()
    with pytest.raises(EventStreamError):
        decoder.feed(reframe(headers, b"{}"))
    with pytest.raises(EventStreamError):
        decoder.feed(reframe(b""))


def test_close_inside_a_message_is_an_error() -> None:
    frame = encode_message({":message-type": "event"}, b"{}")
    decoder = EventStreamDecoder()
    assert decoder.feed(frame + frame[:5]) != []
    assert decoder.pending == 5
    with pytest.raises(EventStreamError, match="5 bytes"):
        decoder.close()
    clean = EventStreamDecoder()
    clean.feed(frame)
    clean.close()


# ---------------------------------------------------------- Bedrock as it streams

ANTHROPIC_EVENTS: list[dict[str, object]] = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_bdrk_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 12,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 2048,
                "output_tokens": 1,
            },
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "Hello 👋"},
    },
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 5},
    },
    {
        "type": "message_stop",
        "amazon-bedrock-invocationMetrics": {
            "inputTokenCount": 12,
            "outputTokenCount": 5,
            "invocationLatency": 512,
            "firstByteLatency": 301,
            "cacheReadInputTokenCount": 2048,
            "cacheWriteInputTokenCount": 0,
        },
    },
]
CHUNK_HEADERS = {
    ":event-type": "chunk",
    ":content-type": "application/json",
    ":message-type": "event",
}


def chunk_frame(event: dict[str, object]) -> bytes:
    data = base64.b64encode(json.dumps(event).encode()).decode()
    return encode_message(CHUNK_HEADERS, json.dumps({"bytes": data}).encode())


THROTTLED = encode_message(
    {
        ":exception-type": "throttlingException",
        ":content-type": "application/json",
        ":message-type": "exception",
    },
    b'{"message":"Too many requests, please wait before trying again."}',
)


def botocore_parsed(frames: list[bytes]) -> list[dict[str, object]]:
    """What boto3's own InvokeModelWithResponseStream reader makes of the frames."""
    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    operation = model.operation_model("InvokeModelWithResponseStream")

    class Body:
        def stream(self) -> list[bytes]:
            return frames

    shape = operation.output_shape.members["body"]
    parser = botocore.parsers.EventStreamJSONParser()
    return list(EventStream(Body(), shape, parser, operation.name))


@modest
@given(st.data())
def test_a_bedrock_stream_under_any_chunking(data: st.DataObject) -> None:
    frames = [chunk_frame(event) for event in ANTHROPIC_EVENTS]
    stream = b"".join(frames)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    decoded = decode_in_chunks(stream, cuts)
    assert all(m.headers == CHUNK_HEADERS for m in decoded)
    events = [json.loads(base64.b64decode(json.loads(m.payload)["bytes"])) for m in decoded]
    assert events == ANTHROPIC_EVENTS
    # The frames are what boto3 itself accepts as a Bedrock response stream.
    assert [json.loads(e["chunk"]["bytes"]) for e in botocore_parsed(frames)] == ANTHROPIC_EVENTS  # type: ignore[index]


def test_a_bedrock_exception_frame() -> None:
    stream = chunk_frame(ANTHROPIC_EVENTS[0]) + THROTTLED
    first, exception = decode_in_chunks(stream, [len(stream) - 7])
    assert first.headers[":message-type"] == "event"
    assert exception.headers == {
        ":exception-type": "throttlingException",
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    assert json.loads(exception.payload)["message"].startswith("Too many requests")
    # boto3 raises this frame as the service's throttlingException.
    with pytest.raises(botocore.exceptions.EventStreamError, match="throttlingException"):
        botocore_parsed([stream])


def test_encode_message_rejects_what_it_cannot_encode() -> None:
    with pytest.raises(TypeError):
        encode_message({"x": 1.5}, b"")  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        encode_message({"x" * 256: "long name"}, b"")
    with pytest.raises(ValueError):
        encode_message({"id": (HeaderType.UUID, b"short")}, b"")
