"""Errors rendered in each provider's own shape, so the official SDKs raise their own exceptions.

HTTP error bodies:

- Anthropic ("Errors" page): ``{"type":"error","error":{"type":…,"message":…}}``
  with the types ``invalid_request_error`` (400, and other 4xx),
  ``authentication_error`` (401), ``permission_error`` (403),
  ``not_found_error`` (404), ``request_too_large`` (413),
  ``rate_limit_error`` (429), ``api_error`` (500), ``overloaded_error`` (529).
- OpenAI: ``{"error":{"message":…,"type":…,"param":…,"code":…}}``; a bad key is
  type ``invalid_request_error`` with code ``invalid_api_key``.

Errors after a stream has begun (status 200 already sent) are SSE events:

- Anthropic: ``event: error`` with the same body as above; the SDK raises on
  any ``error`` event.
- Chat Completions: ``data: {"error":{…}}``; openai-python's ``Stream`` raises
  ``APIError`` for any data payload with a truthy ``error`` key.
- Responses: ``event: error`` with the documented ``ResponseErrorEvent``
  fields (``type: "error"``, ``code``, ``message``, ``param``,
  ``sequence_number``). openai-python yields that event without raising, so
  the payload also carries the error object under ``error`` (an extra field
  strict clients ignore), which is what makes its ``Stream`` raise ``APIError``.

One renderer per error style (``ANTHROPIC_ERRORS``, ``OPENAI_ERRORS``;
``renderer_for(style)``) and one status→type table per style: every error the
relay itself sends a client is rendered here (the Bedrock handler's mapped AWS
errors and its stream errors included), and SSE frames come from
``relay.streams.sse.encode_event``.

HTTP 503 is not on Anthropic's list. The relay renders it ``overloaded_error``
(what Anthropic documents for "temporarily overloaded", its 529): a 503 the
relay sends is a capacity refusal (too many requests, circuit open, restarting)
and Bedrock's ServiceUnavailableException is mapped to 529 ``overloaded_error``
too, so a Bedrock 503 of an unknown AWS type says the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec

from relay.streams.sse import encode_event

__all__ = [
    "ANTHROPIC_ERRORS",
    "OPENAI_ERRORS",
    "AnthropicErrorType",
    "ErrorRenderer",
    "ErrorStyle",
    "anthropic_error_body",
    "anthropic_sse_error",
    "anthropic_type_for_status",
    "chat_sse_error",
    "error_body_for",
    "openai_error_body",
    "openai_type_for_status",
    "renderer_for",
    "responses_sse_error",
    "responses_websocket_error",
]

# The error body shape a client expects: Anthropic's or OpenAI's.
ErrorStyle = Literal["anthropic", "openai"]

AnthropicErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
]

# Anthropic's documented statuses, and the relay's own 502/503/504 (see above).
_ANTHROPIC_TYPES: dict[int, AnthropicErrorType] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
    529: "overloaded_error",
}

# status -> (type, code) as OpenAI sends them.
_OPENAI_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", None),
    404: ("invalid_request_error", None),
    413: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}

_encode = msgspec.json.encode


def anthropic_type_for_status(status: int) -> AnthropicErrorType:
    """Anthropic's error type for an HTTP status (other 4xx: invalid_request_error; 5xx: api_error)."""
    if status in _ANTHROPIC_TYPES:
        return _ANTHROPIC_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def openai_type_for_status(status: int) -> tuple[str, str | None]:
    """OpenAI's ``(type, code)`` for an HTTP status (any 5xx: server_error)."""
    if status in _OPENAI_TYPES:
        return _OPENAI_TYPES[status]
    return ("server_error", None) if status >= 500 else ("invalid_request_error", None)


def anthropic_error_body(type_: str, message: str) -> bytes:
    """``{"type":"error","error":{"type":…,"message":…}}``."""
    return _encode({"type": "error", "error": {"type": type_, "message": message}})


def openai_error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> bytes:
    """``{"error":{"message":…,"type":…,"param":…,"code":…}}``."""
    return _encode({"error": {"message": message, "type": type_, "param": param, "code": code}})


@dataclass(frozen=True, slots=True)
class ErrorRenderer:
    """The client error bodies of one error style.

    ``body(status, message)`` takes the type (and OpenAI's code) from the
    style's status table; ``type_`` and ``code`` override it when the relay
    knows better (a mapped AWS error, a disabled provider).
    """

    style: ErrorStyle

    def body(
        self, status: int, message: str, *, type_: str | None = None, code: str | None = None
    ) -> bytes:
        if self.style == "anthropic":
            return anthropic_error_body(type_ or anthropic_type_for_status(status), message)
        table_type, table_code = openai_type_for_status(status)
        return openai_error_body(message, type_ or table_type, code or table_code)


ANTHROPIC_ERRORS = ErrorRenderer("anthropic")
OPENAI_ERRORS = ErrorRenderer("openai")


def renderer_for(style: ErrorStyle) -> ErrorRenderer:
    return ANTHROPIC_ERRORS if style == "anthropic" else OPENAI_ERRORS


def error_body_for(api: ErrorStyle, status: int, message: str) -> bytes:
    """The error body a provider of kind ``api`` would send with ``status``."""
    return renderer_for(api).body(status, message)


def anthropic_sse_error(type_: str, message: str) -> bytes:
    """An Anthropic ``error`` stream event."""
    return encode_event(anthropic_error_body(type_, message), b"error")


def chat_sse_error(message: str, type_: str) -> bytes:
    """A Chat Completions mid-stream error: ``data: {"error":{…}}``."""
    return encode_event(openai_error_body(message, type_))


def responses_sse_error(code: str, message: str, sequence_number: int) -> bytes:
    """A Responses ``error`` stream event (see the module docstring for the ``error`` field)."""
    payload = {
        "type": "error",
        "code": code,
        "message": message,
        "param": None,
        "sequence_number": sequence_number,
        "error": {"type": code, "code": code, "message": message, "param": None},
    }
    return encode_event(_encode(payload), b"error")


def responses_websocket_error(
    status: int, message: str, *, code: str | None = None, type_: str | None = None
) -> str:
    """An ``error`` event of the Responses WebSocket (a text message, not SSE).

    ``{"type":"error","status":…,"error":{"type":…,"code":…,"message":…,"param":null}}``,
    the type and code from OpenAI's status table unless given; the socket stays open.
    """
    table_type, table_code = openai_type_for_status(status)
    error = {"type": type_ or table_type, "code": code or table_code, "message": message}
    payload = {"type": "error", "status": status, "error": {**error, "param": None}}
    return _encode(payload).decode()
