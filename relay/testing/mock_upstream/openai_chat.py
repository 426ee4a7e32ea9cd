"""OpenAI Chat Completions wire format: chunks, completion JSON, error bodies.

Shapes follow the public API reference: every chunk is a data-only SSE event
holding a ``chat.completion.chunk``; the stream ends with ``data: [DONE]``.
With ``stream_options.include_usage`` every chunk carries ``"usage": null``
and one extra chunk with ``"choices": []`` and the usage comes just before
``[DONE]``; without it neither appears. Tool-call deltas are keyed by
``index``; parallel calls are interleaved here to exercise accumulators.
OpenAI has no mid-stream error event, so a failing stream is a dropped
connection. Also home of the OpenAI-shaped bodies shared with the Responses
module (errors, models). Sans-io: returns bytes only.
"""

from __future__ import annotations

import msgspec

from .scenarios import (
    CREATED_AT,
    ID_PLACEHOLDER,
    MODEL_IDS,
    PARALLEL_TOOL_CALLS,
    THINKING_ANSWER_DELTAS,
    TOOL_CALL,
    StreamPlan,
    ToolCallSpec,
    sse,
    text_deltas,
    usage_for,
)

COMPLETION_ID = "chatcmpl-" + ID_PLACEHOLDER
SYSTEM_FINGERPRINT = "fp_mock00001"

# (type, code) of OpenAI's error object per status.
ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "unknown_url"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", "service_unavailable"),
}
ERROR_MESSAGES = {
    400: "Invalid request.",
    401: "Incorrect API key provided.",
    403: "Forbidden.",
    404: "Not found.",
    413: "Request too large.",
    429: "Rate limit reached for requests. Please try again in 1s.",
    500: "The server had an error while processing your request. Sorry about that!",
    503: "The engine is currently overloaded, please try again later.",
}


def error_body(status: int, message: str | None = None) -> bytes:
    kind, code = ERROR_KINDS.get(status, ("server_error", None))
    text = message or ERROR_MESSAGES.get(status, "The server had an error.")
    return msgspec.json.encode(
        {"error": {"message": text, "type": kind, "param": None, "code": code}}
    )


def _call_id(index: int) -> str:
    return f"call_{ID_PLACEHOLDER}{index}"


def _tool_calls(scenario: str) -> tuple[ToolCallSpec, ...]:
    if scenario == "tool":
        return (TOOL_CALL,)
    if scenario == "parallel-tools":
        return PARALLEL_TOOL_CALLS
    return ()


def _answer_deltas(scenario: str, events: int) -> tuple[str, ...] | list[str]:
    if scenario == "thinking":
        return THINKING_ANSWER_DELTAS
    return text_deltas(scenario, events)


def _interleaved_tool_deltas(calls: tuple[ToolCallSpec, ...]) -> list[dict[str, object]]:
    """Tool-call deltas, round-robin across calls; each call's header precedes its pieces."""
    per_call: list[list[dict[str, object]]] = []
    for index, call in enumerate(calls):
        pieces: list[dict[str, object]] = [
            {
                "index": index,
                "id": _call_id(index),
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
        ]
        pieces += [{"index": index, "function": {"arguments": f}} for f in call.fragments]
        per_call.append(pieces)
    out: list[dict[str, object]] = []
    for step in range(max(len(p) for p in per_call)):
        out += [p[step] for p in per_call if step < len(p)]
    return out


def build_stream(
    scenario: str, model: str, events: int, include_usage: bool, *, usage_on_finish: bool = False
) -> StreamPlan:
    """``usage_on_finish``: the usage rides on the finish chunk (non-empty
    ``choices``) instead of a ``choices: []`` chunk of its own."""

    def chunk(
        delta: dict[str, object],
        finish_reason: str | None = None,
        usage: dict[str, object] | None = None,
    ) -> bytes:
        body: dict[str, object] = {
            "id": COMPLETION_ID,
            "object": "chat.completion.chunk",
            "created": CREATED_AT,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if include_usage:
            body["usage"] = usage
        return sse(None, body)

    calls = _tool_calls(scenario)
    out = [
        chunk({"role": "assistant", "content": None if calls else "", "refusal": None}),
    ]
    if calls:
        out += [chunk({"tool_calls": [d]}) for d in _interleaved_tool_deltas(calls)]
    else:
        out += [chunk({"content": d}) for d in _answer_deltas(scenario, events)]
    if scenario == "drop":
        return StreamPlan(out, "drop")
    if scenario == "error-midstream":
        return StreamPlan(out, "reset")
    finish = "tool_calls" if calls else "stop"
    if include_usage and usage_on_finish:
        out.append(chunk({}, finish, usage_for(scenario, events).openai_chat()))
        out.append(b"data: [DONE]\n\n")
        return StreamPlan(out)
    out.append(chunk({}, finish))
    if include_usage:
        out.append(
            sse(
                None,
                {
                    "id": COMPLETION_ID,
                    "object": "chat.completion.chunk",
                    "created": CREATED_AT,
                    "model": model,
                    "service_tier": "default",
                    "system_fingerprint": SYSTEM_FINGERPRINT,
                    "choices": [],
                    "usage": usage_for(scenario, events).openai_chat(),
                },
            )
        )
    out.append(b"data: [DONE]\n\n")
    return StreamPlan(out)


def build_completion(scenario: str, model: str, events: int) -> bytes:
    """The blocking ``chat.completion`` JSON with the same content and usage."""
    calls = _tool_calls(scenario)
    message: dict[str, object] = {
        "role": "assistant",
        "content": None if calls else "".join(_answer_deltas(scenario, events)),
        "refusal": None,
        "annotations": [],
    }
    if calls:
        message["tool_calls"] = [
            {
                "id": _call_id(i),
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for i, c in enumerate(calls)
        ]
    return msgspec.json.encode(
        {
            "id": COMPLETION_ID,
            "object": "chat.completion",
            "created": CREATED_AT,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if calls else "stop",
                }
            ],
            "usage": usage_for(scenario, events).openai_chat(),
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
    )


def model_object(model_id: str) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": CREATED_AT, "owned_by": "mock-upstream"}


def models_body() -> bytes:
    return msgspec.json.encode({"object": "list", "data": [model_object(m) for m in MODEL_IDS]})


def model_body(model_id: str) -> bytes:
    return msgspec.json.encode(model_object(model_id))
