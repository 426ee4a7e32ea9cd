"""The three accumulators against the fixture streams and bodies, fed through the real SSEDecoder.

Every fixture file has its exact expected facts below. Streams must give the
same facts however their bytes are split, and whatever unknown or broken
events are slipped between their events.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.facts import RESPONSE_PARSE_ERROR, Facts, ToolCall, Usage
from relay.intercept.chatcompletions import ChatAccumulator
from relay.intercept.messages import MessagesAccumulator
from relay.intercept.responses import ResponsesAccumulator
from relay.streams.sse import SSEDecoder

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ACCUMULATORS: dict[str, Any] = {
    "messages": MessagesAccumulator,
    "chatcompletions": ChatAccumulator,
    "responses": ResponsesAccumulator,
}


def U(i: int, o: int, read: int = 0, write: int = 0, **extra: int) -> Usage:
    return Usage(
        input_tokens=i,
        output_tokens=o,
        cache_read_tokens=read,
        cache_write_tokens=write,
        extra=extra,
    )


def T(id_: str, name: str, arguments: str, index: int) -> ToolCall:
    return ToolCall(id=id_, name=name, arguments=arguments, index=index)


SONNET = "claude-sonnet-4-5-20250929"
MINI = "gpt-4o-mini-2024-07-18"
GPT41 = "gpt-4.1-2025-04-14"

EXPECTED: dict[str, Facts] = {
    # --- Anthropic Messages -------------------------------------------------------
    "messages/text.sse": Facts(
        response_id="msg_01XFDUDYJgAACzvnptvVoYEL",
        model=SONNET,
        usage=U(25, 15),
        stop_reason="end_turn",
    ),
    "messages/tool_use.sse": Facts(
        response_id="msg_014p7gG3wDgGV9EUtLvnow3U",
        model=SONNET,
        usage=U(472, 89, read=1800),
        tool_calls=[
            T(
                "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                "get_weather",
                '{"location": "San Francisco, CA", "unit": "fahrenheit"}',
                1,
            )
        ],
        stop_reason="tool_use",
    ),
    "messages/parallel_tools.sse": Facts(
        response_id="msg_01Bq9w938a90dw8q",
        model=SONNET,
        usage=U(1024, 77, write=2048, cache_creation_5m=2048),
        tool_calls=[
            T("toolu_01A09q90qw90lq917835lq9", "get_weather", '{"location": "Paris, France"}', 0),
            T("toolu_01B09q90qw90lq917835lq8", "get_time", "{}", 1),
        ],
        stop_reason="tool_use",
    ),
    "messages/thinking.sse": Facts(
        response_id="msg_01Ys4rHqVPn3bx3dmZ8Jc5Pk",
        model="claude-opus-4-1-20250805",
        usage=U(
            12,
            215,
            read=500,
            write=3000,
            cache_creation_5m=1000,
            cache_creation_1h=2000,
            reasoning=180,
        ),
        thoughts=[
            "Let me solve this step by step:\n\n1. First break down 27 * 453"
            "\n2. 453 = 400 + 50 + 3 → 10800 + 1350 + 81 = 12231"
        ],
        stop_reason="end_turn",
    ),
    "messages/web_search.sse": Facts(
        response_id="msg_01G5uGbhFmrH7pS4DaE7c3kt",
        model=SONNET,
        usage=U(10682, 510, web_search_requests=1),
        tool_calls=[
            T(
                "srvtoolu_014hJH82Qum7Td6UV8gDXThB",
                "web_search",
                '{"query": "weather NYC today"}',
                1,
            )
        ],
        stop_reason="end_turn",
    ),
    "messages/error.sse": Facts(
        response_id="msg_01Ae9TtJzXgX4g5Hq2nKz8Rr",
        model=SONNET,
        usage=U(30, 1),
        error_type="overloaded_error",
        error_message="Overloaded",
    ),
    "messages/unknown_events.sse": Facts(
        response_id="msg_01Unk0wnEv3nts0000000000",
        model=SONNET,
        usage=U(40, 9),
        stop_reason="end_turn",
    ),
    "messages/text.json": Facts(
        response_id="msg_013Zva2CMHLNnXjNJJKqJ2EF",
        model=SONNET,
        usage=U(2095, 503),
        stop_reason="end_turn",
    ),
    "messages/tool_use.json": Facts(
        response_id="msg_01Aq9w938a90dw8q",
        model=SONNET,
        usage=U(384, 92, read=4000, write=1200, cache_creation_1h=1200),
        tool_calls=[
            T(
                "toolu_01A09q90qw90lq917835lq9",
                "get_weather",
                '{"location":"San Francisco, CA","unit":"celsius"}',
                2,
            )
        ],
        thoughts=["The user wants the weather; call get_weather."],
        stop_reason="tool_use",
    ),
    "messages/error.json": Facts(
        error_type="not_found_error", error_message="model: claude-nonexistent"
    ),
    # --- OpenAI Chat Completions ----------------------------------------------------
    "chatcompletions/text.sse": Facts(
        response_id="chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        model=MINI,
        usage=U(19, 28),
        stop_reason="stop",
    ),
    "chatcompletions/tool_calls.sse": Facts(
        response_id="chatcmpl-BPq7zN1cKFf2ZcUq0xkV8gQm3bT4r",
        model=MINI,
        # prompt_tokens 1390 of which 1024 cached
        usage=U(366, 51, read=1024, cached=1024),
        tool_calls=[
            T("call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_weather", '{"location": "Paris, France"}', 0),
            T(
                "call_ABCD9pD3xa9XTPNJ32zg2xyz",
                "get_weather",
                '{"location": "Bogotá, Colombia"}',
                1,
            ),
        ],
        stop_reason="tool_calls",
    ),
    "chatcompletions/no_usage.sse": Facts(
        response_id="chatcmpl-AZQ9k2a1l0NoUsage00000000000", model=MINI, stop_reason="stop"
    ),
    "chatcompletions/reasoning.sse": Facts(
        response_id="0f3c1d2e-7b8a-4c5d-9e6f-1a2b3c4d5e6f",
        model="deepseek-reasoner",
        usage=U(18, 240, reasoning=226),
        thoughts=["The user asks 9.11 vs 9.9. Compare decimals: 0.90 > 0.11."],
        stop_reason="stop",
    ),
    "chatcompletions/error.sse": Facts(
        response_id="chatcmpl-C1Err0rMidStream000000000000",
        model=MINI,
        error_type="server_error",
        error_message="The server had an error while processing your request. Sorry about that!",
    ),
    "chatcompletions/text.json": Facts(
        response_id="chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        model="gpt-4o-2024-08-06",
        usage=U(1117, 46),
        stop_reason="stop",
    ),
    "chatcompletions/tool_calls.json": Facts(
        response_id="chatcmpl-abc123",
        model="o4-mini-2025-04-16",
        usage=U(
            162,
            317,
            read=1920,
            cached=1920,
            input_audio=12,
            reasoning=256,
            output_audio=7,
            accepted_prediction=3,
            rejected_prediction=2,
        ),
        tool_calls=[
            T("call_abc123", "get_current_weather", '{\n"location": "Boston, MA"\n}', 0),
            T("call_def456", "get_current_time", "{}", 1),
        ],
        stop_reason="tool_calls",
    ),
    "chatcompletions/error.json": Facts(
        error_type="invalid_api_key",
        error_message="Incorrect API key provided: sk-abc***********wxyz. "
        "You can find your API key at https://platform.openai.com/account/api-keys.",
    ),
    # --- OpenAI Responses -----------------------------------------------------------
    "responses/text.sse": Facts(
        response_id="resp_67c9fdcecf488190bdd9a0a7ef9e3d3b0d8e5a4e0f5a6e9c",
        model=GPT41,
        usage=U(37, 11),
        stop_reason="completed",
    ),
    "responses/function_call.sse": Facts(
        response_id="resp_68a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f607",
        model=GPT41,
        usage=U(162, 22, read=2048, cached=2048),
        tool_calls=[
            T("call_9aTgZ1kCIFvKc3cS6e0l1QhD", "get_weather", '{"location":"Paris, France"}', 0)
        ],
        stop_reason="completed",
    ),
    "responses/reasoning.sse": Facts(
        response_id="resp_689f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f",
        model="o4-mini-2025-04-16",
        usage=U(348, 812, read=3072, cached=3072, reasoning=768),
        thoughts=[
            "**Comparing numbers**\n\n9.9 = 9.90, which is larger than 9.11.",
            "**Answer**\n\nSay 9.9 is bigger.",
        ],
        stop_reason="completed",
    ),
    "responses/custom_tool.sse": Facts(
        response_id="resp_6901c0de7001c0de7001c0de7001c0de7001c0de7001c0de",
        model="gpt-5-codex",
        usage=U(440, 140, read=15360, cached=15360, reasoning=64),
        tool_calls=[
            T(
                "call_Zp3Kq8mW2nV7xR4tY1uB6cE9",
                "apply_patch",
                '*** Begin Patch\n*** Update File: src/app.py\n@@\n-print("hi")\n'
                '+print("héllo")\n*** End Patch',
                0,
            )
        ],
        stop_reason="completed",
    ),
    "responses/failed.sse": Facts(
        response_id="resp_6a00fa11ed00fa11ed00fa11ed00fa11ed00fa11ed00fa11",
        model=GPT41,
        stop_reason="failed",
        error_type="server_error",
        error_message="The model produced invalid content.",
    ),
    "responses/incomplete.sse": Facts(
        response_id="resp_6b00inc0mp1e7e00inc0mp1e7e00inc0mp1e7e00inc0mp1e",
        model=GPT41,
        usage=U(25, 16),
        stop_reason="max_output_tokens",
        error_type="incomplete",
        error_message="max_output_tokens",
    ),
    "responses/error.sse": Facts(
        response_id="resp_6c00e770r0e770r0e770r0e770r0e770r0e770r0e770r0e7",
        model=GPT41,
        error_type="rate_limit_exceeded",
        error_message="Rate limit reached for gpt-4.1 on tokens per min (TPM).",
    ),
    "responses/text.json": Facts(
        response_id="resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
        model=GPT41,
        usage=U(36, 87),
        stop_reason="completed",
    ),
    "responses/function_call.json": Facts(
        response_id="resp_67ca09c5efe0819096d0511c92b8c890096610f474011cc0",
        model="o3-2025-04-16",
        usage=U(163, 123, read=128, cached=128, reasoning=64),
        tool_calls=[
            T(
                "call_unLAR8MvFNptuiZK6K6HCy5k",
                "get_current_weather",
                '{"location":"Boston, MA","unit":"celsius"}',
                1,
            )
        ],
        thoughts=["**Choosing the tool**\n\nThe user wants weather; call get_current_weather."],
        stop_reason="completed",
    ),
    "responses/error.json": Facts(
        error_type="model_not_found",
        error_message="The model `gpt-9` does not exist or you do not have access to it.",
    ),
}

ALL_FIXTURES = sorted(EXPECTED)
STREAM_FIXTURES = [name for name in ALL_FIXTURES if name.endswith(".sse")]


# --- helpers ------------------------------------------------------------------------


def comparable(facts: Facts) -> dict[str, Any]:
    """Facts as plain data, without the raw usage object (checked on its own below)."""
    data = msgspec.to_builtins(facts)
    if data["usage"] is not None:
        del data["usage"]["raw"]
    return data


def new_accumulator(name: str) -> Any:
    return ACCUMULATORS[name.split("/")[0]]()


def feed_chunks(name: str, data: bytes, cuts: list[int]) -> Facts:
    accumulator = new_accumulator(name)
    decoder = SSEDecoder()
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        for event in decoder.feed(data[start:cut]):
            accumulator.feed(event)
        start = cut
    for event in decoder.close():
        accumulator.feed(event)
    return accumulator.facts


def facts_of(name: str, data: bytes | None = None) -> Facts:
    data = (FIXTURES / name).read_bytes() if data is None else data
    if name.endswith(".sse"):
        return feed_chunks(name, data, [])
    accumulator = new_accumulator(name)
    accumulator.feed_response(data)
    return accumulator.facts


def blocks(name: str) -> list[bytes]:
    """The fixture's events, each with its blank line (fixtures use LF line endings)."""
    data = (FIXTURES / name).read_bytes()
    parts = [part + b"\n\n" for part in data.split(b"\n\n") if part]
    assert b"".join(parts) == data
    return parts


# --- every fixture, exact figures ------------------------------------------------------


def test_every_fixture_has_expected_facts():
    on_disk = {f"{path.parent.name}/{path.name}" for path in FIXTURES.glob("*/*") if path.is_file()}
    assert on_disk == set(EXPECTED)


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_fixture_facts(name):
    assert comparable(facts_of(name)) == comparable(EXPECTED[name])


@pytest.mark.parametrize("name", STREAM_FIXTURES)
def test_fixture_one_byte_at_a_time(name):
    data = (FIXTURES / name).read_bytes()
    assert comparable(feed_chunks(name, data, list(range(1, len(data))))) == comparable(
        EXPECTED[name]
    )


@pytest.mark.parametrize("name", STREAM_FIXTURES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_fixture_any_chunking(name, data):
    raw = (FIXTURES / name).read_bytes()
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=40))
    assert comparable(feed_chunks(name, raw, cuts)) == comparable(EXPECTED[name])


# --- unknown and broken events never break accounting --------------------------------

JUNK: dict[str, list[bytes]] = {
    "messages": [
        b'event: brand_new_event\ndata: {"type":"brand_new_event","x":1}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"future_delta","value":"x"}}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":99,'
        b'"delta":{"type":"input_json_delta","partial_json":"{\\"a\\":1}"}}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":99,'
        b'"delta":{"type":"thinking_delta","thinking":"stray"}}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":\n\n',
        b'event: content_block_start\ndata: {"type":"content_block_start","index":98,'
        b'"content_block":{"type":"future_block"}}\n\n',
        b'event: content_block_start\ndata: {"type":"content_block_start","index":"x"}\n\n',
        b'event: message_delta\ndata: {"type":"message_delta","usage":"weird"}\n\n',
        b"event: message_start\ndata: [1, 2]\n\n",
        b"event: message_stop\ndata: not json at all\n\n",
        b'data: {"type":"future_unframed"}\n\n',
        b"data: null\n\n",
        b": a comment\n\n",
        b"event: ping\ndata: {}\n\n",
    ],
    "chatcompletions": [
        b"data: not json\n\n",
        b"data: [1, 2]\n\n",
        b"data: null\n\n",
        b'data: {"choices":"weird"}\n\n',
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":"weird"}}]}\n\n',
        b'data: {"choices":[{"index":0,"delta":{"future":{"x":[1]}},"finish_reason":null}]}\n\n',
        b'data: {"object":"chat.completion.chunk","future_field":true}\n\n',
        b'event: future\ndata: {"choices":[]}\n\n',
        b": keepalive\n\n",
        b"retry: 1000\n\n",
    ],
    "responses": [
        b'event: response.future_event\ndata: {"type":"response.future_event","sequence_number":1}\n\n',
        b"event: response.output_item.added\ndata: {broken\n\n",
        b'event: response.output_item.added\ndata: {"type":"response.output_item.added",'
        b'"output_index":5,"item":{"type":"future_item","id":"x_1"}}\n\n',
        b'event: response.function_call_arguments.delta\ndata: {"type":'
        b'"response.function_call_arguments.delta","item_id":"fc_unknown","delta":"x"}\n\n',
        b'event: response.function_call_arguments.done\ndata: {"item_id":"fc_unknown",'
        b'"arguments":"{}"}\n\n',
        b'event: response.completed\ndata: {"type":"response.completed","response":"weird"}\n\n',
        b'event: response.output_text.delta\ndata: {"delta":\n\n',
        b'data: {"type":"response.unframed_future"}\n\n',
        b"data: [1]\n\n",
        b": comment\n\n",
    ],
}


@pytest.mark.parametrize("name", STREAM_FIXTURES)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_unknown_and_broken_events_are_skipped(name, data):
    events = blocks(name)
    junk = JUNK[name.split("/")[0]]
    insertions = data.draw(
        st.lists(st.tuples(st.integers(0, len(events)), st.sampled_from(junk)), max_size=8)
    )
    for position, event in sorted(insertions, key=lambda item: -item[0]):
        events.insert(position, event)
    raw = b"".join(events)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=10))
    assert comparable(feed_chunks(name, raw, cuts)) == comparable(EXPECTED[name])


@pytest.mark.parametrize("name", STREAM_FIXTURES)
def test_a_malformed_event_loses_only_itself(name):
    """Truncate the JSON of each event in turn: the same facts as without that event at all."""
    events = blocks(name)
    for position, event in enumerate(events):
        if b"data: {" not in event:
            continue
        broken = [*events]
        broken[position] = event[: event.index(b"data: {") + 10] + b"\n\n"
        without = events[:position] + events[position + 1 :]
        assert comparable(facts_of(name, b"".join(broken))) == comparable(
            facts_of(name, b"".join(without))
        ), position


# --- particular behaviours -----------------------------------------------------------------


def test_messages_same_facts_without_sse_event_lines():
    """Events framed without "event:" (as Bedrock carries them) are read by their type."""
    for name in [n for n in STREAM_FIXTURES if n.startswith("messages/")]:
        data = b"".join(
            line
            for line in (FIXTURES / name).read_bytes().splitlines(keepends=True)
            if not line.startswith(b"event:")
        )
        assert comparable(facts_of(name, data)) == comparable(EXPECTED[name]), name


def test_responses_same_facts_without_sse_event_lines():
    for name in [n for n in STREAM_FIXTURES if n.startswith("responses/")]:
        data = b"".join(
            line
            for line in (FIXTURES / name).read_bytes().splitlines(keepends=True)
            if not line.startswith(b"event:")
        )
        assert comparable(facts_of(name, data)) == comparable(EXPECTED[name]), name


def test_messages_feed_payload():
    accumulator = MessagesAccumulator()
    for event in SSEDecoder().feed((FIXTURES / "messages/tool_use.sse").read_bytes()):
        accumulator.feed_payload(event.data.encode())
    assert comparable(accumulator.facts) == comparable(EXPECTED["messages/tool_use.sse"])


def test_messages_usage_merges_field_by_field_and_keeps_raw():
    facts = facts_of("messages/tool_use.sse")
    assert facts.usage is not None
    assert facts.usage.raw == {
        "input_tokens": 472,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 1800,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 89,
        "service_tier": "standard",
    }
    stream = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","model":"c",'
        b'"usage":{"input_tokens":10,"cache_read_input_tokens":5,"output_tokens":1}}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"input_tokens":null,"output_tokens":40}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":null},'
        b'"usage":{"output_tokens":42,"server_tool_use":{"web_search_requests":2}}}\n\n'
    )
    facts = facts_of("messages/x.sse", stream)
    assert (
        comparable(facts)["usage"]
        == comparable(Facts(usage=U(10, 42, read=5, web_search_requests=2)))["usage"]
    )
    assert facts.stop_reason == "end_turn"


def test_messages_markers_inside_strings_do_not_skip_needed_deltas():
    """Text that looks like a text_delta marker, inside tool input or thinking, still counts."""
    fragment = '{"snippet": "{\\"delta\\":{\\"type\\":\\"text_delta'
    thought = 'the wire says "delta":{"type":"text_delta" here'
    stream = "".join(
        f"event: {name}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"
        for name, payload in [
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "thinking", "thinking": ""},
                },
            ),
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "thinking_delta", "thinking": thought},
                },
            ),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 1,
                    "content_block": {"type": "tool_use", "id": "t", "name": "n", "input": {}},
                },
            ),
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": fragment},
                },
            ),
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": '"}'},
                },
            ),
        ]
    ).encode()
    facts = facts_of("messages/x.sse", stream)
    assert facts.thoughts == [thought]
    assert facts.tool_calls == [T("t", "n", fragment + '"}', 1)]
    for as_bytes in (False, True):
        accumulator = MessagesAccumulator()
        for event in SSEDecoder().feed(stream):
            accumulator.feed_payload(event.data.encode() if as_bytes else event.data)
        assert comparable(accumulator.facts) == comparable(facts)


def test_chat_new_id_at_a_reused_index_starts_a_new_call():
    """Some OpenAI-compatible providers send every call at index 0, each with its own id."""
    chunks = [
        {"index": 0, "id": "call_1", "function": {"name": "a", "arguments": '{"x":'}},
        {"index": 0, "function": {"arguments": "1}"}},
        {"index": 0, "id": "call_2", "function": {"name": "b", "arguments": "{}"}},
        # Others repeat the same id on every fragment: still one call.
        {"index": 1, "id": "call_3", "function": {"name": "c", "arguments": "[1,"}},
        {"index": 1, "id": "call_3", "function": {"arguments": "2]"}},
    ]
    stream = b"".join(
        b"data: "
        + json.dumps({"id": "x", "choices": [{"index": 0, "delta": {"tool_calls": [c]}}]}).encode()
        + b"\n\n"
        for c in chunks
    )
    facts = facts_of("chatcompletions/x.sse", stream + b"data: [DONE]\n\n")
    assert facts.tool_calls == [
        T("call_1", "a", '{"x":1}', 0),
        T("call_2", "b", "{}", 0),
        T("call_3", "c", "[1,2]", 1),
    ]


def test_chat_usage_keeps_raw_and_subtracts_cache_writes():
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 7,
        "total_tokens": 107,
        "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 30},
    }
    stream = b'data: {"id":"c","choices":[],"usage":' + json.dumps(usage).encode() + b"}\n\n"
    facts = facts_of("chatcompletions/x.sse", stream)
    assert facts.usage == Usage(
        input_tokens=10,
        output_tokens=7,
        cache_read_tokens=60,
        cache_write_tokens=30,
        extra={"cached": 60},
        raw=usage,
    )


def test_chat_blocking_skips_an_odd_choice():
    body = {
        "id": "c",
        "model": "m",
        "choices": [
            "odd",
            {
                "index": 1,
                "message": {
                    "tool_calls": [{"id": "k", "function": {"name": "f", "arguments": "{}"}}]
                },
                "finish_reason": "tool_calls",
            },
        ],
    }
    facts = facts_of("chatcompletions/x.json", json.dumps(body).encode())
    assert facts.tool_calls == [T("k", "f", "{}", 0)]
    assert facts.stop_reason == "tool_calls"


def test_responses_stream_cut_short_keeps_the_call_begun():
    events = blocks("responses/function_call.sse")
    cut = next(i for i, e in enumerate(events) if b"function_call_arguments.done" in e)
    facts = facts_of("responses/x.sse", b"".join(events[: cut - 2]))
    assert facts.usage is None
    assert facts.stop_reason is None
    assert facts.tool_calls == [
        T("call_9aTgZ1kCIFvKc3cS6e0l1QhD", "get_weather", '{"location":"Paris', 0)
    ]


def test_cancelled_anthropic_stream_reports_usage_so_far():
    events = blocks("messages/tool_use.sse")
    facts = facts_of("messages/x.sse", b"".join(events[:8]))
    assert facts.usage is not None
    assert (facts.usage.input_tokens, facts.usage.output_tokens) == (472, 2)
    assert facts.tool_calls == [
        T("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather", '{"location":', 1)
    ]


@pytest.mark.parametrize("body", [b"<html>502 Bad Gateway</html>", b"[]", b'{"id":"x","usa'])
def test_blocking_bodies_that_are_not_the_apis_json_are_a_parse_error(body):
    """Fed only for 2xx answers: a body that is not the API's JSON (cut short, another
    format) did not complete the exchange; the shell records it as failed."""
    for accumulator_type in ACCUMULATORS.values():
        accumulator = accumulator_type()
        accumulator.feed_response(body)
        facts = accumulator.facts
        assert facts.error_type == RESPONSE_PARSE_ERROR
        assert facts.usage is None and facts.tool_calls == []


def test_responses_summary_done_replaces_its_deltas():
    """Cut before the reasoning item is done: each summary part counted once, from .done."""
    events = blocks("responses/reasoning.sse")
    cut = next(i for i, e in enumerate(events) if b'"type":"reasoning","encrypted_content"' in e)
    facts = facts_of("responses/x.sse", b"".join(events[:cut]))
    assert facts.thoughts == EXPECTED["responses/reasoning.sse"].thoughts
    assert facts.usage is None
