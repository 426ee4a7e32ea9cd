"""Bedrock responses → what an Anthropic client expects (sans-io).

InvokeModelWithResponseStream answers with an AWS event stream. Each
``chunk`` event carries ``{"bytes": "<base64>"}`` whose decoded bytes are one
Anthropic streaming event (``message_start`` … ``message_stop``).
``BedrockStreamTranslator`` turns those into Anthropic SSE, byte for byte the
JSON Bedrock sent, and keeps what accounting needs.

The last event (``message_stop``) also carries
``amazon-bedrock-invocationMetrics`` (token counts, cache tokens included, and
latencies). Anthropic's own ``message_stop`` is ``{"type":"message_stop"}``,
so that key is removed from what the client sees (the event is re-encoded
compactly without it, which gives exactly Anthropic's bytes) and exposed as
``translator.metrics`` instead: cache read/write counts must reach the
recorder, or a Bedrock request is under-billed.

Exception frames and a corrupt frame (CRC mismatch) become an Anthropic SSE
``error`` event and end the stream; so does a stream that stops before
``message_stop``. Errors before the stream (HTTP 4xx/5xx with an AWS JSON
body) are mapped by :func:`map_bedrock_error`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping

import msgspec

from relay.facts import Usage
from relay.streams.eventstream import EventStreamDecoder, EventStreamError, EventStreamMessage
from relay.streams.sse import encode_event
from relay.wire.errors import anthropic_error_body, anthropic_type_for_status

METRICS_KEY = "amazon-bedrock-invocationMetrics"
_METRICS_KEY_BYTES = METRICS_KEY.encode()

# Exception frames of InvokeModelWithResponseStream (botocore's ResponseStream
# members) → the Anthropic error type a client would get for the same cause.
STREAM_EXCEPTION_ERROR_TYPES: dict[str, str] = {
    "throttlingException": "rate_limit_error",
    "serviceUnavailableException": "overloaded_error",
    "validationException": "invalid_request_error",
    "internalServerException": "api_error",
    "modelStreamErrorException": "api_error",
    "modelTimeoutException": "api_error",
}

# Bedrock errors before the stream (x-amzn-ErrorType) → Anthropic status and type.
HTTP_ERROR_MAP: dict[str, tuple[int, str]] = {
    "ValidationException": (400, "invalid_request_error"),
    "AccessDeniedException": (403, "permission_error"),
    # The relay's own AWS credentials were refused: not the client's key.
    "InvalidSignatureException": (403, "permission_error"),
    "UnrecognizedClientException": (403, "permission_error"),
    "ExpiredTokenException": (403, "permission_error"),
    "IncompleteSignatureException": (403, "permission_error"),
    "MissingAuthenticationTokenException": (403, "permission_error"),
    "ResourceNotFoundException": (404, "not_found_error"),
    "ModelTimeoutException": (408, "api_error"),
    "ThrottlingException": (429, "rate_limit_error"),
    "ModelNotReadyException": (429, "rate_limit_error"),
    "ServiceQuotaExceededException": (429, "rate_limit_error"),
    "ModelErrorException": (500, "api_error"),
    "ModelStreamErrorException": (500, "api_error"),
    "InternalServerException": (500, "api_error"),
    "ServiceUnavailableException": (529, "overloaded_error"),
}


class InvocationMetrics(msgspec.Struct, kw_only=True, rename="camel"):
    """``amazon-bedrock-invocationMetrics`` of the last stream event."""

    input_token_count: int = 0
    output_token_count: int = 0
    invocation_latency: int = 0
    first_byte_latency: int = 0
    cache_read_input_token_count: int = 0
    cache_write_input_token_count: int = 0

    def usage(self) -> Usage:
        # inputTokenCount excludes cache reads and writes, like Anthropic's input_tokens.
        return Usage(
            input_tokens=self.input_token_count,
            output_tokens=self.output_token_count,
            cache_read_tokens=self.cache_read_input_token_count,
            cache_write_tokens=self.cache_write_input_token_count,
            raw={
                "inputTokenCount": self.input_token_count,
                "outputTokenCount": self.output_token_count,
                "cacheReadInputTokenCount": self.cache_read_input_token_count,
                "cacheWriteInputTokenCount": self.cache_write_input_token_count,
            },
        )


class AnthropicEvent(msgspec.Struct, frozen=True):
    """One Anthropic streaming event, ready for the client and for accounting."""

    type: str  # message_start, content_block_delta, ..., error
    data: bytes  # the event's JSON, as sent to the client
    sse: bytes  # b"event: <type>\ndata: <data>\n\n"
    is_error: bool = False


class _Chunk(msgspec.Struct):
    bytes: str


class _EventType(msgspec.Struct):
    type: str = ""


class _AwsError(msgspec.Struct):
    message: str | None = None
    Message: str | None = None


class _ErrorDetail(msgspec.Struct):
    type: str | None = None
    message: str | None = None


class _ErrorEvent(msgspec.Struct):
    error: _ErrorDetail | None = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)
_error_decoder = msgspec.json.Decoder(_ErrorEvent)
_type_decoder = msgspec.json.Decoder(_EventType)
_aws_error_decoder = msgspec.json.Decoder(_AwsError)


def anthropic_error_event(error_type: str, message: str) -> AnthropicEvent:
    """An Anthropic SSE ``error`` event."""
    data = anthropic_error_body(error_type, message)
    return AnthropicEvent("error", data, encode_event(data, b"error"), is_error=True)


class BedrockStreamTranslator:
    """Feed it the response body of InvokeModelWithResponseStream in any chunks.

    ``feed`` returns the Anthropic events completed by those bytes; call ``end``
    when the upstream body ends. After an error event nothing more is
    returned (``finished`` is true). ``metrics``, ``error_type`` and
    ``error_message`` are what the recorder needs.
    """

    def __init__(self) -> None:
        self._decoder = EventStreamDecoder()
        self.metrics: InvocationMetrics | None = None
        self.error_type: str | None = None
        self.error_message: str | None = None
        self.finished = False
        self._saw_message_stop = False

    @property
    def failed(self) -> bool:
        return self.error_type is not None

    def usage(self) -> Usage | None:
        """Usage from the invocation metrics (None when the stream did not carry them)."""
        return self.metrics.usage() if self.metrics is not None else None

    def feed(self, data: bytes) -> list[AnthropicEvent]:
        if self.finished:
            return []
        try:
            messages = self._decoder.feed(data)
        except EventStreamError as exc:
            return [self._fail("api_error", f"corrupt event stream from Bedrock: {exc}")]
        out: list[AnthropicEvent] = []
        for message in messages:
            event = self.feed_message(message)
            if event is not None:
                out.append(event)
            if self.finished:
                break
        return out

    def end(self) -> list[AnthropicEvent]:
        """The upstream body ended: an error event if the stream stopped early."""
        if self.finished:
            return []
        try:
            self._decoder.close()
        except EventStreamError as exc:
            return [self._fail("api_error", f"Bedrock stream ended early: {exc}")]
        self.finished = True
        if self._saw_message_stop:
            return []
        return [self._fail("api_error", "Bedrock stream ended before message_stop")]

    def feed_message(self, message: EventStreamMessage) -> AnthropicEvent | None:
        """Translate one decoded event-stream message (for callers that decode themselves)."""
        if self.finished:
            return None
        headers = message.headers
        message_type = headers.get(":message-type")
        if message_type == "exception":
            exception_type = str(headers.get(":exception-type", ""))
            error_type = STREAM_EXCEPTION_ERROR_TYPES.get(exception_type, "api_error")
            return self._fail(error_type, _aws_message(message.payload) or exception_type)
        if message_type == "error":
            text = headers.get(":error-message") or headers.get(":error-code") or "Bedrock error"
            return self._fail("api_error", str(text))
        if headers.get(":event-type") != "chunk":
            return None  # an event type this code does not know: nothing for the client
        try:
            raw = base64.b64decode(_chunk_decoder.decode(message.payload).bytes, validate=True)
            event_type = _type_decoder.decode(raw).type
        except (msgspec.DecodeError, binascii.Error) as exc:
            return self._fail("api_error", f"malformed chunk from Bedrock: {exc}")
        if _METRICS_KEY_BYTES in raw:
            raw = self._take_metrics(raw)
        if event_type == "message_stop":
            self._saw_message_stop = True
        elif event_type == "error":  # Anthropic's own in-band error: passed on, ends the stream
            try:
                error = _error_decoder.decode(raw).error
            except msgspec.DecodeError:
                error = None
            self.finished = True
            self.error_type = (error.type if error else None) or "api_error"
            self.error_message = error.message if error else None
            return AnthropicEvent(event_type, raw, encode_event(raw, b"error"), is_error=True)
        return AnthropicEvent(event_type, raw, encode_event(raw, event_type))

    def _take_metrics(self, raw: bytes) -> bytes:
        event = msgspec.json.decode(raw)
        if not isinstance(event, dict) or METRICS_KEY not in event:
            return raw  # the key text was inside a string value
        try:
            self.metrics = msgspec.convert(event.pop(METRICS_KEY), InvocationMetrics)
        except msgspec.ValidationError:
            pass  # unusable metrics: the events' own usage still counts
        return msgspec.json.encode(event)

    def _fail(self, error_type: str, message: str) -> AnthropicEvent:
        self.finished = True
        self.error_type = error_type
        self.error_message = message
        return anthropic_error_event(error_type, message)


def _aws_message(body: bytes) -> str | None:
    try:
        parsed = _aws_error_decoder.decode(body)
    except msgspec.DecodeError:
        return None
    return parsed.message or parsed.Message


def map_bedrock_error(
    status: int, body: bytes, headers: Mapping[str, str] | Iterable[tuple[str, str]]
) -> tuple[int, bytes]:
    """An Anthropic-shaped error (status, JSON body) for a Bedrock error response.

    The AWS error type comes from ``x-amzn-ErrorType`` (``Name:namespace``);
    the message from the JSON body's ``message``, kept as AWS wrote it.
    """
    items = headers.items() if isinstance(headers, Mapping) else headers
    aws_type = ""
    for name, value in items:
        if name.lower() == "x-amzn-errortype":
            aws_type = value.split(":", 1)[0].strip()
            break
    mapped = HTTP_ERROR_MAP.get(aws_type)
    if mapped is None:
        mapped = (status, anthropic_type_for_status(status))
    message = _aws_message(body)
    if not message:
        text = body.decode("utf-8", "replace").strip()
        message = text[:500] if text else f"Bedrock answered HTTP {status}"
        if aws_type:
            message = f"{aws_type}: {message}"
    return mapped[0], anthropic_error_body(mapped[1], message)
