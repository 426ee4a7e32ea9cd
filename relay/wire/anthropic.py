"""Anthropic Messages API: the request fields the relay reads and the response event types.

Shapes follow Anthropic's public "Messages" and "Streaming Messages" docs:
a stream is ``message_start``, then per content block ``content_block_start``
/ ``content_block_delta``* / ``content_block_stop``, then ``message_delta``
(stop reason and cumulative usage) and ``message_stop``; ``ping`` and
``error`` may come at any time. Only the fields the accumulator reads are
declared; unknown fields are ignored and block/delta ``type`` is a plain
string, so a new block or delta type never fails decoding.
"""

from __future__ import annotations

from typing import Any

import msgspec

from relay.wire.common import (
    RequestInfo,
    decode_part,
    decode_request,
    last_user_text,
)

__all__ = [
    "BlockDeltaEvent",
    "BlockStartEvent",
    "ContentBlock",
    "ErrorEvent",
    "MessageDeltaEvent",
    "MessageResponse",
    "MessageStartEvent",
    "parse_messages_request",
]

# --- request ---------------------------------------------------------------


class _Tool(msgspec.Struct):
    name: Any = None
    type: Any = None


class _Metadata(msgspec.Struct):
    user_id: Any = None


class _MessagesRequest(msgspec.Struct):
    model: Any = None
    stream: Any = None
    messages: msgspec.Raw = msgspec.Raw()
    tools: msgspec.Raw = msgspec.Raw()
    metadata: msgspec.Raw = msgspec.Raw()


_REQUEST = msgspec.json.Decoder(_MessagesRequest)
_TOOLS = msgspec.json.Decoder(list[_Tool])
_METADATA = msgspec.json.Decoder(_Metadata)


def parse_messages_request(body: bytes) -> RequestInfo:
    """Read model, stream, last user prompt, tool names and metadata.user_id.

    Raises ``InvalidRequestBody`` only for invalid JSON or a non-object body.
    """
    request = decode_request(body, _REQUEST)
    info = RequestInfo(
        model=request.model if isinstance(request.model, str) else None,
        stream=request.stream is True,
    )
    info.last_user_prompt = last_user_text(request.messages)
    tools = decode_part(request.tools, _TOOLS)
    if tools:
        # Server tools (web_search, ...) have a name too; fall back to the type.
        info.tool_names = [
            t.name if isinstance(t.name, str) else t.type
            for t in tools
            if isinstance(t.name, str) or isinstance(t.type, str)
        ]
    metadata = decode_part(request.metadata, _METADATA)
    if metadata is not None and isinstance(metadata.user_id, str):
        info.metadata_user_id = metadata.user_id
    return info


# --- response (streaming events and the blocking message) -------------------


class ContentBlock(msgspec.Struct):
    """A content block: in ``content_block_start`` or in a blocking message's ``content``."""

    type: str = ""
    id: str | None = None  # tool_use, server_tool_use, mcp_tool_use
    name: str | None = None
    input: msgspec.Raw = msgspec.Raw()  # kept as the exact JSON text the model produced
    thinking: str | None = None


class _StartMessage(msgspec.Struct):
    id: str | None = None
    model: str | None = None
    stop_reason: str | None = None
    usage: dict[str, Any] | None = None


class MessageStartEvent(msgspec.Struct):
    message: _StartMessage


class BlockStartEvent(msgspec.Struct):
    index: int
    content_block: ContentBlock


class _Delta(msgspec.Struct, gc=False):
    type: str = ""
    partial_json: str | None = None
    thinking: str | None = None


class BlockDeltaEvent(msgspec.Struct, gc=False):
    index: int
    delta: _Delta


class _MessageDeltaBody(msgspec.Struct):
    stop_reason: str | None = None


class MessageDeltaEvent(msgspec.Struct):
    delta: _MessageDeltaBody | None = None
    # Cumulative in Anthropic's streams; a field may be null or absent.
    usage: dict[str, Any] | None = None


class _ErrorBody(msgspec.Struct):
    type: Any = None
    message: Any = None


class ErrorEvent(msgspec.Struct):
    """An ``error`` stream event, and also the body of an HTTP error response."""

    error: _ErrorBody | None = None


class MessageResponse(msgspec.Struct):
    """A blocking response: a message, or an error body (``type`` is then ``"error"``)."""

    type: Any = None
    id: Any = None
    model: Any = None
    # Blocks are decoded one by one, so one odd block cannot hide the others.
    content: list[msgspec.Raw] | None = None
    stop_reason: Any = None
    usage: dict[str, Any] | None = None
    error: _ErrorBody | None = None
