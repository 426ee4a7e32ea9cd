"""OpenAI Responses API wire format: semantic SSE events and Response JSON.

Shapes follow the public API reference: ``event: <type>`` + ``data: {...}``
where every payload carries a ``sequence_number`` counting from 0;
``response.created`` and ``response.in_progress`` carry the Response object,
each output item (reasoning, message, function_call) opens with
``response.output_item.added`` and closes with ``response.output_item.done``,
``response.completed`` carries the final output and the usage. There is no
``[DONE]``. A failing stream is a dropped connection (as for chat). Also the
bodies of the passthrough routes (retrieve, delete, cancel, input_items,
conversations). Sans-io: returns bytes only.
"""

from __future__ import annotations

import msgspec

from .scenarios import (
    CREATED_AT,
    ID_PLACEHOLDER,
    PARALLEL_TOOL_CALLS,
    REASONING_SUMMARY_DELTAS,
    THINKING_ANSWER_DELTAS,
    TOOL_CALL,
    StreamPlan,
    ToolCallSpec,
    sse,
    text_deltas,
    usage_for,
)

RESPONSE_ID = "resp_" + ID_PLACEHOLDER


def response_object(
    model: str,
    status: str,
    output: list[object],
    usage: object,
    response_id: str = RESPONSE_ID,
) -> dict[str, object]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": CREATED_AT,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


class _Events:
    """Collects events, numbering them as the API does."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def emit(self, kind: str, **fields: object) -> None:
        self.out.append(sse(kind, {"type": kind, **fields, "sequence_number": len(self.out)}))


def _message_item(
    ev: _Events | None, index: int, deltas: tuple[str, ...] | list[str], cut: bool
) -> dict[str, object]:
    item_id = f"msg_{ID_PLACEHOLDER}"
    text = "".join(deltas)
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    done: dict[str, object] = {
        "id": item_id,
        "type": "message",
        "status": "completed",
        "content": [part],
        "role": "assistant",
    }
    if ev is None:
        return done
    opened = {**done, "status": "in_progress", "content": []}
    ev.emit("response.output_item.added", output_index=index, item=opened)
    ev.emit(
        "response.content_part.added",
        item_id=item_id,
        output_index=index,
        content_index=0,
        part={**part, "text": ""},
    )
    for d in deltas:
        ev.emit(
            "response.output_text.delta",
            item_id=item_id,
            output_index=index,
            content_index=0,
            delta=d,
            logprobs=[],
        )
    if cut:
        return done
    ev.emit(
        "response.output_text.done",
        item_id=item_id,
        output_index=index,
        content_index=0,
        text=text,
        logprobs=[],
    )
    ev.emit(
        "response.content_part.done",
        item_id=item_id,
        output_index=index,
        content_index=0,
        part=part,
    )
    ev.emit("response.output_item.done", output_index=index, item=done)
    return done


def _function_call_item(
    ev: _Events | None, index: int, call_index: int, call: ToolCallSpec
) -> dict[str, object]:
    item_id = f"fc_{ID_PLACEHOLDER}{call_index}"
    done: dict[str, object] = {
        "id": item_id,
        "type": "function_call",
        "status": "completed",
        "arguments": call.arguments,
        "call_id": f"call_{ID_PLACEHOLDER}{call_index}",
        "name": call.name,
    }
    if ev is None:
        return done
    ev.emit(
        "response.output_item.added",
        output_index=index,
        item={**done, "status": "in_progress", "arguments": ""},
    )
    for f in call.fragments:
        ev.emit(
            "response.function_call_arguments.delta", item_id=item_id, output_index=index, delta=f
        )
    ev.emit(
        "response.function_call_arguments.done",
        item_id=item_id,
        output_index=index,
        arguments=call.arguments,
    )
    ev.emit("response.output_item.done", output_index=index, item=done)
    return done


def _reasoning_item(ev: _Events | None, index: int) -> dict[str, object]:
    item_id = f"rs_{ID_PLACEHOLDER}"
    summary = {"type": "summary_text", "text": "".join(REASONING_SUMMARY_DELTAS)}
    done: dict[str, object] = {"id": item_id, "type": "reasoning", "summary": [summary]}
    if ev is None:
        return done
    ev.emit("response.output_item.added", output_index=index, item={**done, "summary": []})
    common = {"item_id": item_id, "output_index": index, "summary_index": 0}
    ev.emit("response.reasoning_summary_part.added", **common, part={**summary, "text": ""})
    for d in REASONING_SUMMARY_DELTAS:
        ev.emit("response.reasoning_summary_text.delta", **common, delta=d)
    ev.emit("response.reasoning_summary_text.done", **common, text=summary["text"])
    ev.emit("response.reasoning_summary_part.done", **common, part=summary)
    ev.emit("response.output_item.done", output_index=index, item=done)
    return done


def _output(ev: _Events | None, scenario: str, events: int) -> list[object]:
    """Emit (when ``ev`` is given) and return the output items of a scenario."""
    cut = scenario in ("error-midstream", "drop")
    if scenario == "tool":
        return [_function_call_item(ev, 0, 0, TOOL_CALL)]
    if scenario == "parallel-tools":
        return [_function_call_item(ev, i, i, c) for i, c in enumerate(PARALLEL_TOOL_CALLS)]
    if scenario == "thinking":
        return [_reasoning_item(ev, 0), _message_item(ev, 1, THINKING_ANSWER_DELTAS, False)]
    return [_message_item(ev, 0, text_deltas(scenario, events), cut)]


def build_stream(scenario: str, model: str, events: int) -> StreamPlan:
    ev = _Events()
    opening = response_object(model, "in_progress", [], None)
    ev.emit("response.created", response=opening)
    ev.emit("response.in_progress", response=opening)
    output = _output(ev, scenario, events)
    if scenario == "drop":
        return StreamPlan(ev.out, "drop")
    if scenario == "error-midstream":
        return StreamPlan(ev.out, "reset")
    usage = usage_for(scenario, events).openai_responses()
    ev.emit("response.completed", response=response_object(model, "completed", output, usage))
    return StreamPlan(ev.out)


def build_response(scenario: str, model: str, events: int) -> bytes:
    """The blocking Response JSON with the same output and usage."""
    output = _output(None, scenario, events)
    usage = usage_for(scenario, events).openai_responses()
    return msgspec.json.encode(response_object(model, "completed", output, usage))


def retrieved_body(response_id: str, model: str, status: str = "completed") -> bytes:
    """GET /v1/responses/{id} and POST .../cancel: a stored text response."""
    output = _output(None, "text", 0)
    usage = usage_for("text").openai_responses()
    return msgspec.json.encode(response_object(model, status, output, usage, response_id))


def deleted_body(object_id: str, kind: str) -> bytes:
    return msgspec.json.encode({"id": object_id, "object": kind, "deleted": True})


def items_body() -> bytes:
    """input_items of a response, or items of a conversation: one user message."""
    item_id = f"msg_{ID_PLACEHOLDER}in"
    item = {
        "id": item_id,
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_text", "text": "Hello from the mock"}],
    }
    return msgspec.json.encode(
        {
            "object": "list",
            "data": [item],
            "first_id": item_id,
            "last_id": item_id,
            "has_more": False,
        }
    )


def conversation_body(conversation_id: str) -> bytes:
    return msgspec.json.encode(
        {"id": conversation_id, "object": "conversation", "created_at": CREATED_AT, "metadata": {}}
    )
