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
    rounds, last = 0, []
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
