"""The SSE decoder against the WHATWG rules, provider streams, and any chunking.

The oracle below is a literal, slow transcription of the WHATWG "event stream
interpretation" over the whole decoded text; the decoder must agree with it
however the bytes are split.
"""

from __future__ import annotations

import json
import re

import openai._streaming
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.streams.sse import SSEDecoder, SSEEvent

# ---------------------------------------------------------------- the oracle


def whatwg_events(stream: bytes) -> list[tuple[str, str, str | None, int | None]]:
    """(event, data, id set by the block, retry) of every dispatched event."""
    text = stream.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = re.split(r"\r\n|\r|\n", text)
    lines.pop()  # text after the last line ending is an unterminated line
    out: list[tuple[str, str, str | None, int | None]] = []
    data, event_type, block_id, block_retry = "", "", None, None
    for line in lines:
        if line == "":
            if data:
                out.append((event_type or "message", data[:-1], block_id, block_retry))
            data, event_type, block_id, block_retry = "", "", None, None
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data += value + "\n"
        elif name == "event":
            event_type = value
        elif name == "id" and "\0" not in value:
            block_id = value
        elif name == "retry" and value and all(c in "0123456789" for c in value):
            block_retry = int(value)
    return out


def as_tuples(events: list[SSEEvent]) -> list[tuple[str, str, str | None, int | None]]:
    return [(e.event, e.data, e.id, e.retry) for e in events if e.dispatch]


def feed_chunks(stream: bytes, cuts: list[int], *, keep_raw: bool = False) -> list[SSEEvent]:
    decoder = SSEDecoder(keep_raw=keep_raw)
    events: list[SSEEvent] = []
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        events += decoder.feed(stream[start:cut])
        start = cut
    assert decoder.close() == []
    return events


def one_byte_at_a_time(stream: bytes, *, keep_raw: bool = False) -> tuple[list[SSEEvent], int]:
    decoder = SSEDecoder(keep_raw=keep_raw)
    events = [e for i in range(len(stream)) for e in decoder.feed(stream[i : i + 1])]
    return events, decoder.pending


# ---------------------------------------------------------- generated streams

# Any text but line breaks, including 4-byte characters (emoji, CJK ext. B).
line_text = st.text(
    st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12
) | st.sampled_from(["😀 ok", "𠜎𠜱", "naïve", '{"a": [1, 2]}', " lead", "a:b"])
line_end = st.sampled_from(["\n", "\r", "\r\n"])
field_line = st.one_of(
    st.builds(lambda v: f"data: {v}", line_text),
    st.builds(lambda v: f"data:{v}", line_text),
    st.just("data"),
    st.builds(lambda v: f"event: {v}", line_text),
    st.builds(lambda v: f"id: {v}", line_text | st.just("a\0b")),
    st.builds(lambda v: f"retry: {v}", st.integers(0, 10**6).map(str) | line_text),
    st.builds(lambda v: f":{v}", line_text),
    st.builds(lambda v: f"x-other: {v}", line_text),
)
block = st.lists(st.tuples(field_line, line_end), max_size=5).map(
    lambda lines: "".join(line + end for line, end in lines)
)


@st.composite
def event_streams(draw: st.DrawFn) -> bytes:
    blocks = draw(st.lists(st.tuples(block, line_end), max_size=6))
    text = "".join(body + end for body, end in blocks)
    if draw(st.booleans()):
        text += draw(block)  # an unterminated trailing block
    bom = draw(st.sampled_from(["", "", "\ufeff"]))
    return (bom + text).encode()


@st.composite
def streams_and_cuts(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    stream = draw(event_streams())
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=12))
    return stream, cuts


modest = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@modest
@given(streams_and_cuts())
def test_any_chunking_gives_the_whatwg_events(case: tuple[bytes, list[int]]) -> None:
    stream, cuts = case
    expected = whatwg_events(stream)
    assert as_tuples(feed_chunks(stream, [])) == expected
    assert as_tuples(feed_chunks(stream, cuts)) == expected
    assert as_tuples(one_byte_at_a_time(stream)[0]) == expected


@modest
@given(streams_and_cuts())
def test_keep_raw_reconstructs_the_input_exactly(case: tuple[bytes, list[int]]) -> None:
    stream, cuts = case
    decoder = SSEDecoder(keep_raw=True)
    events: list[SSEEvent] = []
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        events += decoder.feed(stream[start:cut])
        start = cut
    assert b"".join(e.raw for e in events) + decoder.pending_raw == stream
    # The LF of a CRLF split after the CR that ended a block begins no block.
    tail = decoder.pending_raw
    assert decoder.pending == len(tail) - tail.startswith(b"\n")
    # The same events as without raw, plus one non-dispatching event per other block.
    assert as_tuples(events) == whatwg_events(stream)
    for event in events:
        lines = event.raw.removeprefix(b"\xef\xbb\xbf").splitlines()
        assert lines[-1] == b""  # each block ends with its blank line
        assert event.dispatch == any(line.partition(b":")[0] == b"data" for line in lines)


@modest
@given(streams_and_cuts())
def test_pending_counts_the_unfinished_block(case: tuple[bytes, list[int]]) -> None:
    stream, cuts = case
    plain = SSEDecoder()
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        plain.feed(stream[start:cut])
        start = cut
    raw = SSEDecoder(keep_raw=True)
    raw.feed(stream)
    assert plain.pending == len(raw.pending_raw)


# ------------------------------------------------------------ WHATWG examples


def decode(stream: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    return decoder.feed(stream) + decoder.close()


def test_one_space_after_the_colon_is_stripped() -> None:
    # The spec's example: these two blocks dispatch the same data.
    assert [e.data for e in decode(b"data:test\n\ndata: test\n\ndata:  two\n\n")] == [
        "test",
        "test",
        " two",
    ]


def test_a_field_without_colon_is_the_whole_line_and_empty_value() -> None:
    # The spec's example: "data" alone gives one empty data line; two of them
    # give a single newline; "data:" with "data" joined.
    events = decode(b"data\n\ndata\ndata\n\ndata:\n\n")
    assert [e.data for e in events] == ["", "\n", ""]


def test_multiline_data_and_event_type() -> None:
    events = decode(b"event: add\ndata: 73857293\ndata: 2\n\n: test stream\n\ndata: x\n\n")
    assert events == [SSEEvent("add", "73857293\n2"), SSEEvent("message", "x")]


def test_block_with_only_an_id_dispatches_nothing_but_sets_last_event_id() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 7\n\n") == []
    assert decoder.last_event_id == "7"
    # The id persists across blocks, but the event carries only what its block set.
    assert decoder.feed(b"data: x\n\n") == [SSEEvent("message", "x", None)]
    assert decoder.last_event_id == "7"
    raw = SSEDecoder(keep_raw=True)
    assert raw.feed(b"id: 7\n\n") == [SSEEvent("message", "", "7", None, b"id: 7\n\n", False)]


def test_an_empty_id_resets_and_an_id_with_nul_is_ignored() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 1\ndata: a\n\nid: 2\0\ndata: b\n\n") == [
        SSEEvent("message", "a", "1"),
        SSEEvent("message", "b", None),
    ]
    assert decoder.last_event_id == "1"
    decoder.feed(b"id\n\n")
    assert decoder.last_event_id == ""


def test_retry_takes_only_ascii_digits() -> None:
    stream = b"".join(
        b"retry:" + value + b"\ndata: x\n\n"
        for value in [b" 1500", b"0", b" 15s", b"  15", b" 15 ", b" -1", b" \xd9\xa3", b""]
    )
    assert [e.retry for e in decode(stream)] == [1500, 0, None, None, None, None, None, None]


def test_a_leading_bom_is_stripped_once_even_when_split() -> None:
    stream = b"\xef\xbb\xbfdata: a\n\n\xef\xbb\xbfdata: b\n\n"
    decoder = SSEDecoder()
    events = decoder.feed(b"\xef") + decoder.feed(b"\xbb") + decoder.feed(stream[2:])
    # The second BOM is part of a field name ("\ufeffdata"), so that block is ignored.
    assert events == [SSEEvent("message", "a")]
    raw = SSEDecoder(keep_raw=True)
    assert raw.feed(stream)[0].raw == b"\xef\xbb\xbfdata: a\n\n"


def test_cr_at_chunk_end_then_lf_is_one_line_ending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    # Were the LF a second line ending, this would dispatch "a" now.
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"data: b\r") == []
    assert decoder.feed(b"\r") == [SSEEvent("message", "a\nb")]
    # A CR ended the block; the LF that follows opens the next block's raw bytes.
    raw = SSEDecoder(keep_raw=True)
    first = raw.feed(b"data: a\r\r")
    second = raw.feed(b"\ndata: b\n\n")
    assert [e.raw for e in first + second] == [b"data: a\r\r", b"\ndata: b\n\n"]
    assert [e.data for e in first + second] == ["a", "b"]


def test_a_utf8_character_split_across_chunks() -> None:
    stream = "data: 😀𠜎é\n\n".encode()
    for cut in range(len(stream) + 1):
        assert feed_chunks(stream, [cut]) == [SSEEvent("message", "😀𠜎é")]


def test_invalid_utf8_becomes_replacement_characters() -> None:
    assert decode(b"data: a\xffb\xe2\x82\n\n") == [SSEEvent("message", "a\ufffdb\ufffd")]


def test_unterminated_block_is_discarded_at_close_and_pending_says_so() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: done\n\ndata: half\ndata: a") == [SSEEvent("message", "done")]
    assert decoder.pending == len(b"data: half\ndata: a")
    assert decoder.close() == []
    assert decoder.pending == len(b"data: half\ndata: a")


def test_a_long_line_fed_one_byte_at_a_time() -> None:
    payload = "é" * 100_000
    stream = f"data: {payload}\n\n".encode()
    events, pending = one_byte_at_a_time(stream, keep_raw=True)
    assert [(e.data, e.raw) for e in events] == [(payload, stream)]
    assert pending == 0


# ------------------------------------------- streams as the providers send them

ANTHROPIC_TOOL_USE = b"""event: message_start
data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-sonnet-4-5","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay, let's check the weather for San Francisco:"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"location\\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \\"San Francisco, CA\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"""

OPENAI_CHAT = (
    b"".join(
        b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
        for chunk in [
            {
                "id": "chatcmpl-123",
                "object": "chat.completion.chunk",
                "created": 1694268190,
                "model": "gpt-4o-mini",
                "system_fingerprint": "fp_44709d6fcb",
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
            },
            *(
                {
                    "id": "chatcmpl-123",
                    "object": "chat.completion.chunk",
                    "created": 1694268190,
                    "model": "gpt-4o-mini",
                    "system_fingerprint": "fp_44709d6fcb",
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"content": word},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ],
                }
                for word in ["Hello", "!", " How", " can", " I", " help", "?"]
            ),
            {
                "id": "chatcmpl-123",
                "object": "chat.completion.chunk",
                "created": 1694268190,
                "model": "gpt-4o-mini",
                "system_fingerprint": "fp_44709d6fcb",
                "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
            },
        ]
    )
    + b"data: [DONE]\n\n"
)

OPENAI_RESPONSES = b"""event: response.created
data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654","object":"response","created_at":1741290958,"status":"in_progress","error":null,"model":"gpt-4.1-2025-04-14","output":[],"usage":null}}

event: response.in_progress
data: {"type":"response.in_progress","sequence_number":1,"response":{"id":"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654","object":"response","status":"in_progress","output":[]}}

event: response.output_item.added
data: {"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","type":"message","status":"in_progress","role":"assistant","content":[]}}

event: response.output_text.delta
data: {"type":"response.output_text.delta","sequence_number":3,"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":0,"content_index":0,"delta":"Hi there! \xf0\x9f\x91\x8b"}

event: response.completed
data: {"type":"response.completed","sequence_number":4,"response":{"id":"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654","object":"response","status":"completed","output":[],"usage":{"input_tokens":37,"input_tokens_details":{"cached_tokens":0},"output_tokens":11,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":48}}}

"""

PROVIDER_STREAMS = {
    "anthropic": ANTHROPIC_TOOL_USE,
    "openai-chat": OPENAI_CHAT,
    "openai-responses": OPENAI_RESPONSES,
}


@modest
@given(st.sampled_from(sorted(PROVIDER_STREAMS)), st.data())
def test_provider_streams_under_any_chunking(name: str, data: st.DataObject) -> None:
    stream = PROVIDER_STREAMS[name]
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    keep_raw = data.draw(st.booleans())
    events = feed_chunks(stream, cuts, keep_raw=keep_raw)
    # The official SDK's decoder reads the same events from the same bytes.
    sdk = openai._streaming.SSEDecoder().iter_bytes(iter([stream]))
    assert [(e.event, e.data) for e in events] == [(s.event or "message", s.data) for s in sdk]
    if keep_raw:
        assert b"".join(e.raw for e in events) == stream


def test_anthropic_stream_payloads() -> None:
    events = decode(ANTHROPIC_TOOL_USE)
    assert len(events) == 12
    for event in events:
        assert json.loads(event.data)["type"] == event.event
    partial = "".join(
        json.loads(e.data)["delta"]["partial_json"]
        for e in events
        if e.event == "content_block_delta" and '"input_json_delta"' in e.data
    )
    assert json.loads(partial) == {"location": "San Francisco, CA"}


def test_openai_chat_stream_ends_with_done() -> None:
    events = decode(OPENAI_CHAT)
    assert {e.event for e in events} == {"message"}
    assert events[-1].data == "[DONE]"
    text = "".join(
        json.loads(e.data)["choices"][0]["delta"].get("content", "") for e in events[:-1]
    )
    assert text == "Hello! How can I help?"


def test_responses_stream_event_names_match_payload_types() -> None:
    events = decode(OPENAI_RESPONSES)
    assert [e.event for e in events][0::4] == ["response.created", "response.completed"]
    assert all(json.loads(e.data)["type"] == e.event for e in events)
    assert "👋" in events[3].data


def test_keep_raw_lets_the_relay_drop_one_event_byte_for_byte() -> None:
    usage_chunk = b'data: {"id":"chatcmpl-123","choices":[],"usage":{"total_tokens":9}}\n\n'
    done = b"data: [DONE]\n\n"
    stream = OPENAI_CHAT[: -len(done)] + usage_chunk + done
    kept = [e.raw for e in feed_chunks(stream, list(range(0, len(stream), 7)), keep_raw=True)]
    assert usage_chunk in kept
    assert b"".join(raw for raw in kept if raw != usage_chunk) == OPENAI_CHAT
