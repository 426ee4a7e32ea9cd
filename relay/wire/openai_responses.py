"""OpenAI Responses API: the request fields the relay reads and the response event types.

Shapes follow OpenAI's public "Responses" and "Responses streaming events"
references: ``response.created`` / ``response.in_progress`` carry the
response object; each output item comes as ``response.output_item.added``,
its deltas (``response.output_text.delta``,
``response.function_call_arguments.delta``/``.done``,
``response.reasoning_summary_text.delta``/``.done``), then
``response.output_item.done``; the stream ends with ``response.completed``,
``response.incomplete`` or ``response.failed`` (usage is on the response
object), or an ``error`` event. There is no ``[DONE]``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from relay.wire.common import (
    CONTENT_DECODER,
    RequestInfo,
    decode_part,
    decode_request,
    text_of_content,
)

__all__ = [
    "ArgumentsDeltaEvent",
    "ArgumentsDoneEvent",
    "ErrorEvent",
    "OutputItem",
    "OutputItemEvent",
    "ResponseEvent",
    "ResponseObject",
    "SummaryTextDeltaEvent",
    "SummaryTextDoneEvent",
    "parse_responses_request",
]

# --- request ---------------------------------------------------------------


class _InputItem(msgspec.Struct):
    type: Any = None  # "message" or absent for messages; function_call_output etc. otherwise
    role: Any = None
    content: msgspec.Raw = msgspec.Raw()


class _Tool(msgspec.Struct):
    type: Any = None
    name: Any = None  # function and custom tools; built-in tools have only a type


class _ResponsesRequest(msgspec.Struct):
    model: Any = None
    stream: Any = None
    input: msgspec.Raw = msgspec.Raw()
    tools: msgspec.Raw = msgspec.Raw()


_REQUEST = msgspec.json.Decoder(_ResponsesRequest)
_INPUT = msgspec.json.Decoder(str | list[_InputItem])
_TOOLS = msgspec.json.Decoder(list[_Tool])
_TEXT_TYPES = frozenset({"input_text", "text"})


def parse_responses_request(body: bytes) -> RequestInfo:
    """Read model, stream, last user prompt (``input`` as a string or a list of items), tools.

    Raises ``InvalidRequestBody`` only for invalid JSON or a non-object body.
    """
    request = decode_request(body, _REQUEST)
    info = RequestInfo(
        model=request.model if isinstance(request.model, str) else None,
        stream=request.stream is True,
    )
    items = decode_part(request.input, _INPUT)
    if isinstance(items, str):
        info.last_user_prompt = items
    elif items:
        for item in reversed(items):
            if item.role == "user" and item.type in (None, "message"):
                content = decode_part(item.content, CONTENT_DECODER)
                info.last_user_prompt = text_of_content(content, _TEXT_TYPES)
                break
    tools = decode_part(request.tools, _TOOLS)
    if tools:
        info.tool_names = [
            t.name if isinstance(t.name, str) else t.type
            for t in tools
            if isinstance(t.name, str) or isinstance(t.type, str)
        ]
    return info


# --- response --------------------------------------------------------------


class ResponseObject(msgspec.Struct):
    """The response object: in lifecycle events, as a blocking body, or an error body."""

    id: Any = None
    model: Any = None
    status: Any = None
    usage: Any = None
    error: Any = None  # {"code", "message"} on a failed response; {"message", "type", ...} alone
    incomplete_details: Any = None
    # Items are decoded one by one, so one odd item cannot hide the others.
    output: list[msgspec.Raw] | None = None


class ResponseEvent(msgspec.Struct):
    """``response.created`` / ``in_progress`` / ``completed`` / ``incomplete`` / ``failed``."""

    response: ResponseObject


class _SummaryPart(msgspec.Struct):
    type: Any = None
    text: Any = None


class OutputItem(msgspec.Struct):
    type: str = ""
    id: str | None = None
    call_id: str | None = None  # function_call: the id the client answers with
    name: str | None = None
    arguments: str | None = None  # function_call, mcp_call
    input: str | None = None  # custom_tool_call (free-form input, e.g. Codex's apply_patch)
    summary: list[_SummaryPart] | None = None  # reasoning


class OutputItemEvent(msgspec.Struct):
    """``response.output_item.added`` and ``response.output_item.done``."""

    item: OutputItem
    output_index: int = 0


class ArgumentsDeltaEvent(msgspec.Struct, gc=False):
    """``response.{function_call_arguments,custom_tool_call_input,mcp_call_arguments}.delta``."""

    item_id: str | None = None
    output_index: int = 0
    delta: str = ""


class ArgumentsDoneEvent(msgspec.Struct, gc=False):
    """The matching ``.done`` events: the full text in ``arguments`` (``input`` for custom tools)."""

    item_id: str | None = None
    output_index: int = 0
    arguments: str | None = None
    input: str | None = None


class SummaryTextDeltaEvent(msgspec.Struct, gc=False):
    item_id: str | None = None
    summary_index: int = 0
    delta: str = ""


class SummaryTextDoneEvent(msgspec.Struct, gc=False):
    item_id: str | None = None
    summary_index: int = 0
    text: str | None = None


class ErrorEvent(msgspec.Struct):
    """An ``error`` stream event: ``code``/``message`` at the top, or inside ``error``."""

    code: Any = None
    message: Any = None
    error: Any = None
