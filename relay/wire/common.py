"""What every API's request parsing shares: the facts taken from a request body.

Request parsing is lenient by design. Only a body that is not JSON (invalid
UTF-8 anywhere in it included, RFC 8259 §8.1), nested too deeply to decode,
or not a JSON object, is refused (the provider would refuse it too, and the relay
answers 400 without calling upstream). Any other oddity (a field of an
unexpected type, a message that is not an object) makes the affected fact
"unknown" (``None`` or empty), never an exception: the relay must forward
every request the provider might accept.

To stay cheap on multi-megabyte agent conversations, the top-level Structs
keep the big parts (``messages``, ``input``, ``tools``) as ``msgspec.Raw``
and decode them separately, each in its own ``try``.
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

__all__ = [
    "CONTENT_DECODER",
    "ChatMessage",
    "ContentPart",
    "InvalidRequestBody",
    "RequestInfo",
    "decode_part",
    "decode_request",
    "get_int",
    "last_user_text",
    "openai_error_fields",
    "text_of_content",
]

T = TypeVar("T")

# Bodies are checked for UTF-8 in slices of this size, so the check never holds
# a decoded copy of a whole multi-megabyte body.
_UTF8_SLICE = 1 << 20


class InvalidRequestBody(Exception):
    """The request body is not JSON, or not a JSON object. The message says which."""


class RequestInfo(msgspec.Struct, kw_only=True):
    """What the relay needs to know about one request body."""

    model: str | None = None
    stream: bool = False
    # The text of the last message whose role is "user" (None when it has no text,
    # e.g. a message holding only tool results).
    last_user_prompt: str | None = None
    tool_names: list[str] = msgspec.field(default_factory=list)
    # Chat completions only: the client itself asked for stream_options.include_usage.
    include_usage: bool = False
    # Anthropic only: metadata.user_id (Claude Code puts its session there).
    metadata_user_id: str | None = None


def decode_request(body: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    """Decode a request body with a top-level Struct whose fields accept anything.

    Because every field is ``Any`` or ``Raw``, a ``ValidationError`` can only
    mean the top level is not an object. msgspec checks UTF-8 only in the
    strings it decodes, not in the ``Raw`` parts it skips, so the whole body
    is checked first: the provider must never get a body the relay could not
    read. Nesting deeper than the interpreter's recursion limit raises
    ``RecursionError`` in msgspec; that is a refused body too.
    """
    check_utf8(body)
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidRequestBody(f"request body is not a JSON object: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidRequestBody(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequestBody("request body is not valid JSON: nested too deeply") from None


def check_utf8(body: bytes) -> None:
    """Raise ``InvalidRequestBody`` unless ``body`` is valid UTF-8."""
    if body.isascii():  # no copy, and the common case
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(body)
    try:
        for start in range(0, len(view), _UTF8_SLICE):
            decoder.decode(view[start : start + _UTF8_SLICE])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise InvalidRequestBody("request body is not valid JSON: invalid UTF-8") from None


def decode_part(raw: msgspec.Raw, decoder: msgspec.json.Decoder[T]) -> T | None:
    """Decode one ``Raw`` part of a body; ``None`` when absent or of an unexpected shape."""
    if not raw:
        return None
    try:
        return decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a subclass
        return None


class ChatMessage(msgspec.Struct):
    """A message of Anthropic's ``messages`` or OpenAI chat's: role and raw content."""

    role: Any = None
    content: msgspec.Raw = msgspec.Raw()


_CHAT_MESSAGES = msgspec.json.Decoder(list[ChatMessage])
_TEXT = frozenset({"text"})


def last_user_text(messages: msgspec.Raw) -> str | None:
    """The text of the last ``user`` message (None: no such message, or no text in it)."""
    decoded = decode_part(messages, _CHAT_MESSAGES)
    for message in reversed(decoded or ()):
        if message.role == "user":
            content = decode_part(message.content, CONTENT_DECODER)
            return text_of_content(content, _TEXT)
    return None


def text_of_content(content: object, text_types: frozenset[str]) -> str | None:
    """The text of a message's content: a string, or the text parts of a list of blocks.

    Several text parts are joined with a newline. ``None`` when there is no text.
    """
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    texts = [
        block.text
        for block in content
        if block.type in text_types and isinstance(block.text, str)  # blocks are ContentPart
    ]
    return "\n".join(texts) if texts else None


class ContentPart(msgspec.Struct):
    """A content block of a message; only text blocks matter here."""

    type: Any = None
    text: Any = None


CONTENT_DECODER = msgspec.json.Decoder(str | list[ContentPart])


def get_int(mapping: Mapping[str, Any] | None, *path: str) -> int | None:
    """An integer at ``path`` inside a decoded usage object; ``None`` when absent or not an int."""
    value: Any = mapping
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def openai_error_fields(error: Any) -> tuple[str | None, str | None]:
    """``(type, message)`` of an OpenAI-style error object.

    The type is the error's ``code`` when it has one (the more specific, e.g.
    ``context_length_exceeded``), else its ``type``. OpenAI-compatible
    providers sometimes send the error as a bare string.
    """
    if isinstance(error, str):
        return "error", error
    if not isinstance(error, Mapping):
        return None, None
    code, type_, message = error.get("code"), error.get("type"), error.get("message")
    kind = code if isinstance(code, str) and code else type_ if isinstance(type_, str) else None
    return kind or "error", message if isinstance(message, str) else None
