"""Request parsing, the include_usage rewrite and provider-shaped error bodies (relay/wire)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import ResponseErrorEvent

from relay.intercept.chatcompletions import ChatAccumulator
from relay.intercept.messages import MessagesAccumulator
from relay.intercept.responses import ResponsesAccumulator
from relay.streams.sse import SSEDecoder, SSEEvent
from relay.wire.anthropic import parse_messages_request
from relay.wire.common import InvalidRequestBody, RequestInfo
from relay.wire.errors import (
    anthropic_error_body,
    anthropic_sse_error,
    chat_sse_error,
    error_body_for,
    openai_error_body,
    responses_sse_error,
)
from relay.wire.openai_chat import (
    ensure_chat_include_usage,
    is_injected_usage_chunk,
    parse_chat_request,
)
from relay.wire.openai_responses import parse_responses_request

PARSERS = [parse_messages_request, parse_chat_request, parse_responses_request]


def body(obj: object) -> bytes:
    return json.dumps(obj).encode()


# --- Anthropic Messages requests ----------------------------------------------


def test_messages_string_content_and_everything_else():
    info = parse_messages_request(
        body(
            {
                "model": "claude-sonnet-4-5",
                "max_tokens": 1024,
                "stream": True,
                "metadata": {"user_id": "user_abc_account__session_123"},
                "tools": [
                    {"name": "get_weather", "input_schema": {"type": "object"}},
                    {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
                    {"type": "future_tool_without_name"},
                ],
                "messages": [
                    {"role": "user", "content": "first question"},
                    {"role": "assistant", "content": "an answer"},
                    {"role": "user", "content": "Quel temps fait-il à Paris ? ☀"},
                ],
            }
        )
    )
    assert info == RequestInfo(
        model="claude-sonnet-4-5",
        stream=True,
        last_user_prompt="Quel temps fait-il à Paris ? ☀",
        tool_names=["get_weather", "web_search", "future_tool_without_name"],
        metadata_user_id="user_abc_account__session_123",
    )


def test_messages_block_list_joins_text_blocks_and_skips_others():
    info = parse_messages_request(
        body(
            {
                "model": "m",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                            {"type": "image", "source": {"type": "base64", "data": "AAAA"}},
                            {"type": "text", "text": "fix the bug", "cache_control": {"type": "x"}},
                        ],
                    }
                ],
            }
        )
    )
    assert info.last_user_prompt == "<system-reminder>ctx</system-reminder>\nfix the bug"
    assert info.stream is False
    assert info.tool_names == []
    assert info.metadata_user_id is None


def test_messages_last_user_message_with_only_tool_results_has_no_prompt():
    info = parse_messages_request(
        body(
            {
                "model": "m",
                "messages": [
                    {"role": "user", "content": "run ls"},
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t1", "name": "bash", "input": {}}],
                    },
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "t1", "content": "a.txt"},
                        ],
                    },
                ],
            }
        )
    )
    assert info.last_user_prompt is None


def test_messages_prefilled_assistant_turn_is_skipped():
    info = parse_messages_request(
        body(
            {
                "messages": [
                    {"role": "user", "content": "count to 3"},
                    {"role": "assistant", "content": "1,"},
                ]
            }
        )
    )
    assert info.last_user_prompt == "count to 3"
    assert info.model is None  # missing model is "unknown", not an error


@pytest.mark.parametrize(
    "request_body",
    [
        {"model": 42, "stream": "yes", "messages": "not a list", "metadata": "x", "tools": {}},
        {"model": None, "stream": None, "messages": None, "tools": None, "metadata": None},
        {"messages": [1, "two", None]},
        {"messages": [{"role": "user", "content": 7}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
        {"metadata": {"user_id": 12}, "tools": [{"name": 1}, "x"]},
        {},
    ],
)
def test_messages_weird_but_valid_bodies_give_unknowns(request_body):
    info = parse_messages_request(body(request_body))
    assert info.model is None
    assert info.stream is False
    assert info.last_user_prompt is None
    assert info.metadata_user_id is None


# --- OpenAI Chat Completions requests -------------------------------------------


def test_chat_request():
    info = parse_chat_request(
        body(
            {
                "model": "gpt-4o",
                "stream": True,
                "stream_options": {"include_usage": True},
                "tools": [
                    {"type": "function", "function": {"name": "get_weather", "parameters": {}}},
                    {"type": "custom", "custom": {"name": "apply_patch"}},
                    {"type": "function", "function": "broken"},
                ],
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is in this image?"},
                            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                        ],
                    },
                    {"role": "assistant", "content": None, "tool_calls": []},
                    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                ],
            }
        )
    )
    assert info == RequestInfo(
        model="gpt-4o",
        stream=True,
        last_user_prompt="What is in this image?",
        tool_names=["get_weather", "apply_patch"],
        include_usage=True,
    )


@pytest.mark.parametrize(
    ("stream_options", "expected"),
    [(None, False), ({"include_usage": False}, False), ("weird", False), ({}, False)],
)
def test_chat_include_usage_only_when_true(stream_options, expected):
    request = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    if stream_options is not None:
        request["stream_options"] = stream_options
    info = parse_chat_request(body(request))
    assert info.include_usage is expected
    assert info.last_user_prompt == "hi"


# --- OpenAI Responses requests --------------------------------------------------


def test_responses_input_string():
    info = parse_responses_request(
        body({"model": "gpt-4.1", "input": "Tell me a story", "stream": True})
    )
    assert info == RequestInfo(model="gpt-4.1", stream=True, last_user_prompt="Tell me a story")


def test_responses_input_items():
    info = parse_responses_request(
        body(
            {
                "model": "gpt-5-codex",
                "instructions": "You are Codex",
                "tools": [
                    {"type": "function", "name": "shell", "parameters": {}},
                    {"type": "custom", "name": "apply_patch"},
                    {"type": "web_search"},
                ],
                "input": [
                    {"role": "user", "content": "easy message, no type"},
                    {
                        "type": "message",
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "<environment_context/>"},
                            {"type": "input_image", "image_url": "data:..."},
                            {"type": "input_text", "text": "add a test"},
                        ],
                    },
                    {"type": "function_call", "call_id": "c1", "name": "shell", "arguments": "{}"},
                    {"type": "function_call_output", "call_id": "c1", "output": "ok"},
                    {"type": "reasoning", "summary": []},
                ],
            }
        )
    )
    assert info.last_user_prompt == "<environment_context/>\nadd a test"
    assert info.tool_names == ["shell", "apply_patch", "web_search"]
    assert info.model == "gpt-5-codex"
    assert info.stream is False


def test_responses_weird_input_is_unknown():
    for odd in (None, 5, {"role": "user"}, [1, 2], [{"role": "user", "content": {"x": 1}}]):
        info = parse_responses_request(body({"model": "m", "input": odd}))
        assert info.last_user_prompt is None
        assert info.model == "m"


# --- refusing bodies, and never refusing a JSON object ---------------------------


@pytest.mark.parametrize("parse", PARSERS)
@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b'{"model": "m",}', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b"null", "not a JSON object"),
        (b'"model"', "not a JSON object"),
        (b"42", "not a JSON object"),
    ],
)
def test_invalid_bodies_are_refused_with_a_reason(parse, raw, reason):
    with pytest.raises(InvalidRequestBody, match=reason):
        parse(raw)


INTERESTING_KEYS = [
    *("model", "stream", "messages", "input", "tools", "role", "content", "type", "text"),
    *("name", "function", "custom", "metadata", "user_id", "stream_options", "include_usage"),
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(INTERESTING_KEYS) | st.text(max_size=5),
            children,
            max_size=5,
        )
    ),
    max_leaves=25,
)


@settings(max_examples=150, deadline=None)
@given(value=json_values)
def test_any_json_object_parses_and_anything_else_is_refused(value):
    raw = json.dumps(value).encode()
    for parse in PARSERS:
        if isinstance(value, dict):
            assert isinstance(parse(raw), RequestInfo)
        else:
            with pytest.raises(InvalidRequestBody):
                parse(raw)
    # The rewrite never fails either: it changes a streaming object or leaves it.
    ensure_chat_include_usage(raw)


# --- include_usage injection ----------------------------------------------------


def test_include_usage_added_and_every_other_field_kept():
    original = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": 'héllo \u2603 \\ "quoted"'}],
        "stream": True,
        "temperature": 0.7,
        "max_tokens": 123456789012345678901234567890,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "n": 1,
        "logit_bias": {"50256": -100},
        "unknown_future_field": [None, True, 1.5e-7],
    }
    rewritten = ensure_chat_include_usage(body(original))
    assert rewritten is not None
    decoded = json.loads(rewritten)
    assert decoded == {**original, "stream_options": {"include_usage": True}}
    assert list(decoded) == [*original, "stream_options"]  # order kept, the new key at the end
    info = parse_chat_request(rewritten)
    assert info.include_usage is True


def test_include_usage_set_inside_existing_stream_options():
    original = {
        "stream_options": {"include_obfuscation": False, "include_usage": False},
        "model": "m",
        "stream": True,
    }
    decoded = json.loads(ensure_chat_include_usage(body(original)) or b"null")
    assert decoded == {
        "stream_options": {"include_obfuscation": False, "include_usage": True},
        "model": "m",
        "stream": True,
    }
    assert list(decoded) == ["stream_options", "model", "stream"]


@pytest.mark.parametrize(
    "request_body",
    [
        {"model": "m", "stream": True, "stream_options": {"include_usage": True}},
        {"model": "m", "stream": False},
        {"model": "m"},
        {"model": "m", "stream": "true"},
        {"model": "m", "stream": True, "stream_options": "weird"},
    ],
)
def test_include_usage_left_alone(request_body):
    assert ensure_chat_include_usage(body(request_body)) is None


def test_include_usage_on_invalid_bodies_is_none():
    assert ensure_chat_include_usage(b"{broken") is None
    assert ensure_chat_include_usage(b"[1]") is None


def chat_event(data: str) -> SSEEvent:
    (event,) = SSEDecoder().feed(f"data: {data}\n\n".encode())
    return event


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            '{"id":"c","object":"chat.completion.chunk","choices":[],'
            '"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}',
            True,
        ),
        ('{"id": "c", "choices": [ ], "usage": {"prompt_tokens": 1}}', True),
        ('{"id":"c","choices":[{"index":0,"delta":{"content":"x"}}],"usage":null}', False),
        ('{"id":"c","choices":[{"index":0,"delta":{}}],"usage":{"prompt_tokens":1}}', False),
        ('{"id":"c","choices":[],"usage":null}', False),
        ('{"id":"c","choices":[]}', False),
        ('{"error":{"message":"x","type":"server_error"}}', False),
        ('{"id":"c","choices":[{"index":0,"delta":{"content":"\\"usage\\": {}"}}]}', False),
        ("[DONE]", False),
        ("{not json", False),
    ],
)
def test_is_injected_usage_chunk(data, expected):
    assert is_injected_usage_chunk(chat_event(data)) is expected


# --- error shapes -------------------------------------------------------------------


def test_anthropic_error_body_shape():
    assert json.loads(anthropic_error_body("authentication_error", "invalid x-api-key")) == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
    }


def test_openai_error_body_shape():
    assert json.loads(openai_error_body("bad key", "invalid_request_error", "invalid_api_key")) == {
        "error": {
            "message": "bad key",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert json.loads(openai_error_body("m", "t", param="model")) == {
        "error": {"message": "m", "type": "t", "param": "model", "code": None}
    }


@pytest.mark.parametrize(
    ("status", "anthropic_type", "openai_type", "openai_code"),
    [
        (400, "invalid_request_error", "invalid_request_error", None),
        (401, "authentication_error", "invalid_request_error", "invalid_api_key"),
        (403, "permission_error", "invalid_request_error", None),
        (404, "not_found_error", "invalid_request_error", None),
        (409, "invalid_request_error", "invalid_request_error", None),
        (413, "request_too_large", "invalid_request_error", None),
        (429, "rate_limit_error", "requests", "rate_limit_exceeded"),
        (500, "api_error", "server_error", None),
        (502, "api_error", "server_error", None),
        (503, "overloaded_error", "server_error", None),
        (504, "api_error", "server_error", None),
        (529, "overloaded_error", "server_error", None),
        (599, "api_error", "server_error", None),
    ],
)
def test_error_body_for(status, anthropic_type, openai_type, openai_code):
    assert json.loads(error_body_for("anthropic", status, "why")) == {
        "type": "error",
        "error": {"type": anthropic_type, "message": "why"},
    }
    assert json.loads(error_body_for("openai", status, "why")) == {
        "error": {"message": "why", "type": openai_type, "param": None, "code": openai_code}
    }


def only_event(raw: bytes) -> SSEEvent:
    events = SSEDecoder().feed(raw)
    assert len(events) == 1
    return events[0]


def test_anthropic_sse_error_is_an_error_event_the_accumulator_reads():
    raw = anthropic_sse_error("overloaded_error", "Overloaded")
    assert raw.startswith(b"event: error\ndata: ") and raw.endswith(b"\n\n")
    event = only_event(raw)
    assert event.event == "error"
    assert json.loads(event.data) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    accumulator = MessagesAccumulator()
    accumulator.feed(event)
    assert (accumulator.facts.error_type, accumulator.facts.error_message) == (
        "overloaded_error",
        "Overloaded",
    )


def test_chat_sse_error_is_a_data_only_error_payload():
    raw = chat_sse_error("upstream went away", "server_error")
    assert raw.startswith(b"data: ") and raw.endswith(b"\n\n")
    event = only_event(raw)
    assert event.event == "message"
    # openai-python's Stream raises APIError for any payload with a truthy "error".
    assert json.loads(event.data) == {
        "error": {
            "message": "upstream went away",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    accumulator = ChatAccumulator()
    accumulator.feed(event)
    assert accumulator.facts.error_type == "server_error"
    assert accumulator.facts.error_message == "upstream went away"


def test_responses_sse_error_has_the_documented_fields_and_an_error_object():
    raw = responses_sse_error("server_error", "upstream went away", 7)
    event = only_event(raw)
    assert event.event == "error"
    payload = json.loads(event.data)
    documented = ResponseErrorEvent.model_validate(payload)
    assert (documented.type, documented.code, documented.message, documented.param) == (
        "error",
        "server_error",
        "upstream went away",
        None,
    )
    assert documented.sequence_number == 7
    assert payload["error"] == {
        "type": "server_error",
        "code": "server_error",
        "message": "upstream went away",
        "param": None,
    }
    accumulator = ResponsesAccumulator()
    accumulator.feed(event)
    assert accumulator.facts.error_type == "server_error"
    assert accumulator.facts.error_message == "upstream went away"


def test_error_bodies_escape_messages():
    message = 'quote " backslash \\ newline \n unicode é'
    assert json.loads(anthropic_error_body("api_error", message))["error"]["message"] == message
    assert json.loads(openai_error_body(message, "server_error"))["error"]["message"] == message
    event = only_event(chat_sse_error(message, "server_error"))
    assert json.loads(event.data)["error"]["message"] == message
    event = only_event(anthropic_sse_error("api_error", message))
    assert json.loads(event.data)["error"]["message"] == message
