"""Scripted tool calls: the mock calls the tools a test names, round after round.

A request with the header ``x-mock-tool-script`` (a JSON list of rounds, each
a list of ``{"name": ..., "input": {...}}``) is answered by where the
conversation is: after ``r`` rounds of tool results the mock calls the tools
of round ``r`` (stop reason ``tool_use`` / ``tool_calls`` / function calls),
and once the script is done it answers with text quoting the last tool
results (``Done: <result> | <result>``). Each round reports known usage
(``round_usage(r)``), so a test can check what was summed and recorded.
Sans-io: bytes only.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .scenarios import ID_PLACEHOLDER, sse

HEADER = "x-mock-tool-script"
PREAMBLE = "Checking."


class ScriptedCall(msgspec.Struct, frozen=True):
    name: str
    input: dict[str, Any] = msgspec.field(default_factory=dict)


_SCRIPT = msgspec.json.Decoder(list[list[ScriptedCall]])


def parse_script(text: str) -> list[list[ScriptedCall]]:
    return _SCRIPT.decode(text)


def round_usage(r: int) -> dict[str, int]:
    """Anthropic-shaped usage of round ``r`` (0-based)."""
    return {
        "input_tokens": 100 * (r + 1),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 7,
        "output_tokens": 10 * (r + 1),
    }


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def anthropic_progress(body: dict[str, Any]) -> tuple[int, list[str]]:
    """Rounds of tool results so far, and the last round's result texts."""
    rounds = 0
    last: list[str] = []
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if message.get("role") != "user" or not isinstance(content, list):
            continue
        results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
        if results:
            rounds += 1
            last = [
                ("ERROR " if b.get("is_error") else "") + _text_of(b.get("content"))
                for b in results
            ]
    return rounds, last


def _final_text(last: list[str]) -> str:
    return "Done: " + " | ".join(last) if last else "No tools."


def anthropic_blocks(
    script: list[list[ScriptedCall]], rounds: int, last: list[str]
) -> tuple[list[dict[str, Any]], str]:
    """This round's final content blocks and stop reason."""
    if rounds < len(script):
        blocks: list[dict[str, Any]] = [{"type": "text", "text": PREAMBLE}]
        for i, call in enumerate(script[rounds]):
            blocks.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_{ID_PLACEHOLDER}{rounds}{i}",
                    "name": call.name,
                    "input": call.input,
                }
            )
        return blocks, "tool_use"
    return [{"type": "text", "text": _final_text(last)}], "end_turn"


def anthropic_stream(
    script: list[list[ScriptedCall]], body: dict[str, Any], model: str
) -> list[bytes]:
    rounds, last = anthropic_progress(body)
    blocks, stop = anthropic_blocks(script, rounds, last)
    usage = round_usage(rounds)
    out = [
        sse(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": f"msg_{ID_PLACEHOLDER}",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {**usage, "output_tokens": 1},
                },
            },
        )
    ]
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            start: dict[str, Any] = {"type": "text", "text": ""}
            text = block["text"]
            half = len(text) // 2
            deltas = [{"type": "text_delta", "text": p} for p in (text[:half], text[half:])]
        else:
            start = {**block, "input": {}}
            arguments = msgspec.json.encode(block["input"]).decode()
            half = len(arguments) // 2
            deltas = [
                {"type": "input_json_delta", "partial_json": p}
                for p in ("", arguments[:half], arguments[half:])
            ]
        out.append(
            sse(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
        )
        for delta in deltas:
            out.append(
                sse(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            )
        out.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    out.append(
        sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": usage,
            },
        )
    )
    out.append(sse("message_stop", {"type": "message_stop"}))
    return out


def anthropic_message(script: list[list[ScriptedCall]], body: dict[str, Any], model: str) -> bytes:
    rounds, last = anthropic_progress(body)
    blocks, stop = anthropic_blocks(script, rounds, last)
    return msgspec.json.encode(
        {
            "id": f"msg_{ID_PLACEHOLDER}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": blocks,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": round_usage(rounds),
        }
    )


# --- OpenAI Chat Completions ------------------------------------------------------------------


def chat_progress(body: dict[str, Any]) -> tuple[int, list[str]]:
    """Runs of ``tool`` messages so far, and the last run's contents."""
    rounds, run = 0, False
    last: list[str] = []
    for message in body.get("messages") or ():
        if isinstance(message, dict) and message.get("role") == "tool":
            if not run:
                rounds, last, run = rounds + 1, [], True
            last.append(_text_of(message.get("content")))
        else:
            run = False
    return rounds, last


def chat_usage(r: int) -> dict[str, Any]:
    u = round_usage(r)
    prompt = u["input_tokens"] + u["cache_read_input_tokens"]
    return {
        "prompt_tokens": prompt,
        "completion_tokens": u["output_tokens"],
        "total_tokens": prompt + u["output_tokens"],
        "prompt_tokens_details": {"cached_tokens": u["cache_read_input_tokens"]},
    }


def _chat_round(
    script: list[list[ScriptedCall]], body: dict[str, Any]
) -> tuple[int, str, list[dict[str, Any]]]:
    rounds, last = chat_progress(body)
    if rounds < len(script):
        calls = [
            {
                "id": f"call_{ID_PLACEHOLDER}{rounds}{i}",
                "type": "function",
                "function": {"name": c.name, "arguments": msgspec.json.encode(c.input).decode()},
            }
            for i, c in enumerate(script[rounds])
        ]
        return rounds, PREAMBLE, calls
    return rounds, _final_text(last), []


def chat_stream(script: list[list[ScriptedCall]], body: dict[str, Any], model: str) -> list[bytes]:
    rounds, text, calls = _chat_round(script, body)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        out: dict[str, Any] = {
            "id": f"chatcmpl-{ID_PLACEHOLDER}",
            "object": "chat.completion.chunk",
            "created": 1_767_225_600,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            out["usage"] = None
        return sse(None, out)

    half = len(text) // 2
    events = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": text[:half]}),
        chunk({"content": text[half:]}),
    ]
    for i, call in enumerate(calls):
        arguments = call["function"]["arguments"]
        cut = len(arguments) // 2
        head = {**call, "index": i, "function": {"name": call["function"]["name"], "arguments": ""}}
        events.append(chunk({"tool_calls": [head]}))
        for piece in (arguments[:cut], arguments[cut:]):
            events.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
    events.append(chunk({}, "tool_calls" if calls else "stop"))
    if include_usage:
        events.append(
            sse(
                None,
                {
                    "id": f"chatcmpl-{ID_PLACEHOLDER}",
                    "object": "chat.completion.chunk",
                    "created": 1_767_225_600,
                    "model": model,
                    "choices": [],
                    "usage": chat_usage(rounds),
                },
            )
        )
    events.append(b"data: [DONE]\n\n")
    return events


def chat_completion(script: list[list[ScriptedCall]], body: dict[str, Any], model: str) -> bytes:
    rounds, text, calls = _chat_round(script, body)
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return msgspec.json.encode(
        {
            "id": f"chatcmpl-{ID_PLACEHOLDER}",
            "object": "chat.completion",
            "created": 1_767_225_600,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if calls else "stop",
                }
            ],
            "usage": chat_usage(rounds),
        }
    )


# --- OpenAI Responses -------------------------------------------------------------------------


def responses_progress(body: dict[str, Any]) -> tuple[int, list[str]]:
    """Runs of ``function_call_output`` items so far, and the last run's outputs."""
    items = body.get("input")
    rounds, run = 0, False
    last: list[str] = []
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict) and item.get("type") == "function_call_output":
            if not run:
                rounds, last, run = rounds + 1, [], True
            last.append(_text_of(item.get("output")))
        elif isinstance(item, dict) and item.get("type") == "function_call":
            continue  # the calls of the same round come before their outputs
        else:
            run = False
    return rounds, last


def responses_usage(r: int) -> dict[str, Any]:
    u = round_usage(r)
    prompt = u["input_tokens"] + u["cache_read_input_tokens"]
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": u["cache_read_input_tokens"]},
        "output_tokens": u["output_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + u["output_tokens"],
    }


def _responses_output(
    script: list[list[ScriptedCall]], body: dict[str, Any]
) -> tuple[int, list[dict[str, Any]]]:
    rounds, last = responses_progress(body)
    text = PREAMBLE if rounds < len(script) else _final_text(last)
    items: list[dict[str, Any]] = [
        {
            "id": f"msg_{ID_PLACEHOLDER}{rounds}",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "annotations": [], "text": text}],
        }
    ]
    if rounds < len(script):
        for i, c in enumerate(script[rounds]):
            items.append(
                {
                    "id": f"fc_{ID_PLACEHOLDER}{rounds}{i}",
                    "type": "function_call",
                    "status": "completed",
                    "arguments": msgspec.json.encode(c.input).decode(),
                    "call_id": f"call_{ID_PLACEHOLDER}{rounds}{i}",
                    "name": c.name,
                }
            )
    return rounds, items


def _response(model: str, status: str, output: list[Any], usage: Any) -> dict[str, Any]:
    return {
        "id": f"resp_{ID_PLACEHOLDER}",
        "object": "response",
        "created_at": 1_767_225_600,
        "status": status,
        "model": model,
        "output": output,
        "parallel_tool_calls": False,
        "usage": usage,
    }


def responses_stream(
    script: list[list[ScriptedCall]], body: dict[str, Any], model: str
) -> list[bytes]:
    rounds, items = _responses_output(script, body)
    out: list[bytes] = []

    def emit(kind: str, **fields: Any) -> None:
        out.append(sse(kind, {"type": kind, **fields, "sequence_number": len(out)}))

    emit("response.created", response=_response(model, "in_progress", [], None))
    emit("response.in_progress", response=_response(model, "in_progress", [], None))
    for index, item in enumerate(items):
        if item["type"] == "message":
            text = item["content"][0]["text"]
            emit(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "content": []},
            )
            common = {"item_id": item["id"], "output_index": index, "content_index": 0}
            emit(
                "response.content_part.added",
                **common,
                part={"type": "output_text", "annotations": [], "text": ""},
            )
            half = len(text) // 2
            for piece in (text[:half], text[half:]):
                emit("response.output_text.delta", **common, delta=piece)
            emit("response.output_text.done", **common, text=text)
            emit("response.content_part.done", **common, part=item["content"][0])
        else:
            emit(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "arguments": ""},
            )
            arguments = item["arguments"]
            half = len(arguments) // 2
            for piece in (arguments[:half], arguments[half:]):
                emit(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=piece,
                )
            emit(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                arguments=arguments,
            )
        emit("response.output_item.done", output_index=index, item=item)
    emit(
        "response.completed", response=_response(model, "completed", items, responses_usage(rounds))
    )
    return out


def responses_body(script: list[list[ScriptedCall]], body: dict[str, Any], model: str) -> bytes:
    rounds, items = _responses_output(script, body)
    return msgspec.json.encode(_response(model, "completed", items, responses_usage(rounds)))
