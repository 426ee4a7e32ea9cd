"""OpenAI Chat Completions: the request fields the relay reads and the response chunk types.

Shapes follow OpenAI's public "Chat Completions" and "Streaming" references:
a stream is ``data: {chat.completion.chunk}`` lines ending with
``data: [DONE]``; with ``stream_options.include_usage`` every chunk carries
``"usage":null`` and one last chunk has ``"choices":[]`` and the usage.
Tool calls arrive as ``delta.tool_calls`` fragments keyed by ``index``; the
first fragment of an index carries ``id`` and ``function.name``.

Fields whose type varies between OpenAI-compatible providers (reasoning,
usage, error) are ``Any`` and checked by the reader, so one odd field cannot
make a whole chunk undecodable.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from relay.streams.sse import SSEEvent
from relay.wire.common import (
    RequestInfo,
    decode_part,
    decode_request,
    last_user_text,
)

__all__ = [
    "ChatChunk",
    "ChatCompletion",
    "CompletionChoice",
    "ensure_chat_include_usage",
    "is_injected_usage_chunk",
    "parse_chat_request",
]

# --- request ---------------------------------------------------------------


class _Tool(msgspec.Struct):
    type: Any = None
    function: Any = None  # {"name": ...} for type "function"
    custom: Any = None  # {"name": ...} for type "custom"


class _StreamOptions(msgspec.Struct):
    include_usage: Any = None


class _ChatRequest(msgspec.Struct):
    model: Any = None
    stream: Any = None
    messages: msgspec.Raw = msgspec.Raw()
    tools: msgspec.Raw = msgspec.Raw()
    stream_options: msgspec.Raw = msgspec.Raw()


_REQUEST = msgspec.json.Decoder(_ChatRequest)
_TOOLS = msgspec.json.Decoder(list[_Tool])
_STREAM_OPTIONS = msgspec.json.Decoder(_StreamOptions)


def _tool_name(tool: _Tool) -> str | None:
    for spec in (tool.function, tool.custom):
        name = spec.get("name") if isinstance(spec, dict) else None
        if isinstance(name, str):
            return name
    return None


def parse_chat_request(body: bytes) -> RequestInfo:
    """Read model, stream, last user prompt, tool names and whether usage was asked for.

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
        info.tool_names = [name for t in tools if (name := _tool_name(t)) is not None]
    options = decode_part(request.stream_options, _STREAM_OPTIONS)
    info.include_usage = options is not None and options.include_usage is True
    return info


def ensure_chat_include_usage(body: bytes) -> bytes | None:
    """A body asking for ``stream_options.include_usage``, or None when no change is needed.

    Only a streaming request (``"stream": true``) lacking ``include_usage: true``
    is changed; every other field is kept, in order. A ``stream_options`` that
    is present but not an object is left alone (the provider will judge it).
    """
    try:
        request = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    if not isinstance(request, dict) or request.get("stream") is not True:
        return None
    options = request.get("stream_options")
    if options is None:
        request["stream_options"] = {"include_usage": True}
    elif isinstance(options, dict):
        if options.get("include_usage") is True:
            return None
        request["stream_options"] = {**options, "include_usage": True}
    else:
        return None
    return msgspec.json.encode(request)


class _UsageProbe(msgspec.Struct, gc=False):
    choices: list[msgspec.Raw] | None = None  # Raw: the choices are not looked at
    usage: Any = None


_USAGE_PROBE = msgspec.json.Decoder(_UsageProbe)


def is_injected_usage_chunk(event: SSEEvent) -> bool:
    """Whether ``event`` is the usage-only chunk (``choices == []`` and a usage object).

    Call it only for streams where ``ensure_chat_include_usage`` changed the
    request: then this chunk exists because of the relay, and is dropped from
    what the client receives.
    """
    data = event.data
    # Cheap tests first: nearly every chunk has no usage object. Under
    # include_usage every chunk has ``"usage":null``, so the first test passes
    # on all of them; the pattern then finds no object after a usage key
    # (a JSON string cannot hold an unescaped quote, so it only matches a key).
    if '"usage"' not in data or '"choices"' not in data:
        return False
    if _USAGE_OBJECT.search(data) is None:
        return False
    try:
        probe = _USAGE_PROBE.decode(data)
    except msgspec.DecodeError:  # [DONE], an error payload of another shape, ...
        return False
    return probe.choices == [] and isinstance(probe.usage, dict)


_USAGE_OBJECT = re.compile(r'"usage"\s*:\s*\{')

# With include_usage, OpenAI adds ``"usage": null`` to every other chunk. A
# JSON string cannot hold an unescaped quote, so this pattern only matches the
# key itself.
_NULL_USAGE = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])|"usage"\s*:\s*null\s*,')


_SPACE = b" \t\n\r\x0b\x0c"  # what \s matches in a bytes pattern
_COMMA = 0x2C  # ord(",")
_USAGE_NULL = b'"usage":null'


def strip_null_usage(raw: bytes) -> bytes:
    """An SSE block without the ``"usage": null`` member that include_usage caused.

    Used only on streams where the relay asked for usage, so the client gets
    the bytes it would have received without asking.

    It runs on every event of such a stream, so it finds the first
    ``"usage"`` with ``bytes.find`` and looks only there: OpenAI's own form
    (``,"usage":null`` before ``}`` or ``,``) is cut at once; anything else
    goes to the pattern, searched from that first key on. Every match of the
    pattern holds a ``"usage"`` (with at most a comma and whitespace before
    it), so the result is the pattern's first match either way.
    """
    at = raw.find(b'"usage"')
    if at < 0:
        return raw
    end = at + len(_USAGE_NULL)
    if (
        at
        and raw[at - 1] == _COMMA
        and raw.startswith(_USAGE_NULL, at)
        and raw[end : end + 1] in (b"}", b",")
    ):
        return raw[: at - 1] + raw[end:]
    start = at
    while start and raw[start - 1] in _SPACE:
        start -= 1
    match = _NULL_USAGE.search(raw, max(start - 1, 0))
    if match is None:
        return raw
    return raw[: match.start()] + raw[match.end() :]


# --- response --------------------------------------------------------------


class _FunctionDelta(msgspec.Struct, gc=False):
    name: str | None = None
    arguments: str | None = None


class _ToolCallDelta(msgspec.Struct, gc=False):
    index: int = 0
    id: str | None = None
    function: _FunctionDelta | None = None


class _ChoiceDelta(msgspec.Struct, gc=False):
    tool_calls: list[_ToolCallDelta] | None = None
    # Not OpenAI's own: OpenAI-compatible providers stream reasoning under one of these.
    reasoning_content: Any = None
    reasoning: Any = None


class _ChunkChoice(msgspec.Struct, gc=False):
    index: int = 0
    delta: _ChoiceDelta | None = None
    finish_reason: str | None = None


class ChatChunk(msgspec.Struct, gc=False):
    """A ``chat.completion.chunk``, or a mid-stream ``{"error": {...}}`` payload."""

    id: str | None = None
    model: str | None = None
    choices: list[_ChunkChoice] | None = None
    usage: Any = None
    error: Any = None


class _FunctionCall(msgspec.Struct):
    name: Any = None
    arguments: Any = None


class _CompletionToolCall(msgspec.Struct):
    id: Any = None
    function: _FunctionCall | None = None


class _CompletionMessage(msgspec.Struct):
    tool_calls: list[_CompletionToolCall] | None = None
    reasoning_content: Any = None
    reasoning: Any = None


class CompletionChoice(msgspec.Struct):
    index: Any = 0
    message: _CompletionMessage | None = None
    finish_reason: Any = None


class ChatCompletion(msgspec.Struct):
    """A blocking ``chat.completion`` object, or an error body ``{"error": {...}}``."""

    id: Any = None
    model: Any = None
    # Choices are decoded one by one, so one odd choice cannot hide the others.
    choices: list[msgspec.Raw] | None = None
    usage: Any = None
    error: Any = None
