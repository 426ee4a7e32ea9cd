"""Anthropic Messages API wire format: SSE events, Message JSON, error bodies.

Shapes follow the public docs (docs.anthropic.com "Streaming Messages"):
``message_start`` (Message with empty content and the input usage), per
content block ``content_block_start`` / ``content_block_delta``\\* /
``content_block_stop``, a ``ping``, ``message_delta`` (stop reason and
cumulative usage), ``message_stop``; mid-stream failures are an
``event: error`` with ``overloaded_error``. Sans-io: returns bytes only.
"""

from __future__ import annotations

import msgspec

from relay.wire.errors import anthropic_type_for_status

from .scenarios import (
    ID_PLACEHOLDER,
    MODEL_IDS,
    PARALLEL_TOOL_CALLS,
    THINKING_ANSWER_DELTAS,
    THINKING_DELTAS,
    THINKING_SIGNATURE,
    TOOL_CALL,
    TOOL_PREAMBLE,
    StreamPlan,
    ToolCallSpec,
    sse,
    text_deltas,
    usage_for,
)

MESSAGE_ID = "msg_" + ID_PLACEHOLDER

ERROR_MESSAGES = {
    "invalid_request_error": "Invalid request",
    "authentication_error": "invalid x-api-key",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "Not found",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit",
    "api_error": "Internal server error",
    "overloaded_error": "Overloaded",
}


def error_body(status: int, message: str | None = None) -> bytes:
    kind = anthropic_type_for_status(status)  # the relay's table: one per provider
    return msgspec.json.encode(
        {
            "type": "error",
            "error": {"type": kind, "message": message or ERROR_MESSAGES[kind]},
            "request_id": "req_" + ID_PLACEHOLDER,
        }
    )


def _tool_id(index: int) -> str:
    return f"toolu_{ID_PLACEHOLDER}{index}"


class _Block(msgspec.Struct):
    """One content block: its start shape, its deltas, its final shape."""

    start: dict[str, object]
    deltas: list[dict[str, object]]
    final: dict[str, object]


def _text_block(deltas: tuple[str, ...] | list[str]) -> _Block:
    return _Block(
        {"type": "text", "text": ""},
        [{"type": "text_delta", "text": d} for d in deltas],
        {"type": "text", "text": "".join(deltas)},
    )


def _tool_block(call: ToolCallSpec, index: int) -> _Block:
    tool_id = _tool_id(index)
    # The API opens every tool input with an empty partial_json.
    pieces = ("", *call.fragments)
    return _Block(
        {"type": "tool_use", "id": tool_id, "name": call.name, "input": {}},
        [{"type": "input_json_delta", "partial_json": p} for p in pieces],
        {"type": "tool_use", "id": tool_id, "name": call.name, "input": call.input},
    )


def _thinking_block() -> _Block:
    deltas: list[dict[str, object]] = [
        {"type": "thinking_delta", "thinking": d} for d in THINKING_DELTAS
    ]
    deltas.append({"type": "signature_delta", "signature": THINKING_SIGNATURE})
    return _Block(
        {"type": "thinking", "thinking": "", "signature": ""},
        deltas,
        {"type": "thinking", "thinking": "".join(THINKING_DELTAS), "signature": THINKING_SIGNATURE},
    )


def _blocks(scenario: str, events: int) -> tuple[list[_Block], str]:
    """The content blocks of a scenario and its stop reason."""
    if scenario == "tool":
        return [_text_block((TOOL_PREAMBLE,)), _tool_block(TOOL_CALL, 1)], "tool_use"
    if scenario == "parallel-tools":
        return [_tool_block(c, i) for i, c in enumerate(PARALLEL_TOOL_CALLS)], "tool_use"
    if scenario == "thinking":
        return [_thinking_block(), _text_block(THINKING_ANSWER_DELTAS)], "end_turn"
    return [_text_block(text_deltas(scenario, events))], "end_turn"


def _message(
    model: str, content: list[object], stop_reason: str | None, usage: object
) -> dict[str, object]:
    return {
        "id": MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


def build_stream(scenario: str, model: str, events: int) -> StreamPlan:
    blocks, stop_reason = _blocks(scenario, events)
    usage = usage_for(scenario, events)
    out = [
        sse(
            "message_start",
            {
                "type": "message_start",
                "message": _message(model, [], None, usage.anthropic(output_tokens=1)),
            },
        )
    ]
    cut = scenario in ("error-midstream", "drop")
    for index, block in enumerate(blocks):
        out.append(
            sse(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block.start},
            )
        )
        if index == 0:
            out.append(sse("ping", {"type": "ping"}))
        for delta in block.deltas:
            out.append(
                sse(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            )
        if cut:
            break
        out.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    if scenario == "drop":
        return StreamPlan(out, "drop")
    if scenario == "error-midstream":
        out.append(
            sse(
                "error",
                {
                    "type": "error",
                    "error": {"type": "overloaded_error", "message": "Overloaded"},
                    "request_id": "req_" + ID_PLACEHOLDER,
                },
            )
        )
        return StreamPlan(out)
    # message_delta usage is cumulative; the API repeats the input figures there.
    final_usage = usage.anthropic()
    final_usage.pop("cache_creation")
    final_usage.pop("service_tier")
    out.append(
        sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": final_usage,
            },
        )
    )
    out.append(sse("message_stop", {"type": "message_stop"}))
    return StreamPlan(out)


def build_message(scenario: str, model: str, events: int) -> bytes:
    """The blocking (non-stream) Message JSON with the same content and usage."""
    blocks, stop_reason = _blocks(scenario, events)
    usage = usage_for(scenario, events)
    return msgspec.json.encode(
        _message(model, [b.final for b in blocks], stop_reason, usage.anthropic())
    )


def count_tokens_body(scenario: str, events: int) -> bytes:
    usage = usage_for(scenario, events)
    total = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
    return msgspec.json.encode({"input_tokens": total})


def model_object(model_id: str) -> dict[str, object]:
    return {
        "type": "model",
        "id": model_id,
        "display_name": model_id.replace("-", " ").title(),
        "created_at": "2026-01-01T00:00:00Z",
    }


def models_body() -> bytes:
    return msgspec.json.encode(
        {
            "data": [model_object(m) for m in MODEL_IDS],
            "has_more": False,
            "first_id": MODEL_IDS[0],
            "last_id": MODEL_IDS[-1],
        }
    )


def model_body(model_id: str) -> bytes:
    return msgspec.json.encode(model_object(model_id))
