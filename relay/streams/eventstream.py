"""A sans-io decoder (and a small encoder) of AWS ``application/vnd.amazon.eventstream``.

Bedrock's InvokeModelWithResponseStream answers in this framing. One message::

    total length  u32 BE   (the whole message, these 4 bytes and the CRC included)
    headers length u32 BE
    prelude CRC32 u32 BE   (of the 8 bytes above)
    headers       name length u8, name (UTF-8), type u8, value
    payload
    message CRC32 u32 BE   (of every byte before it)

Header value types: 0 true, 1 false (no value bytes), 2 byte (i8), 3 short
(i16), 4 integer (i32), 5 long (i64), 6 byte array (u16 length), 7 string
(u16 length, UTF-8), 8 timestamp (i64 milliseconds since the epoch), 9 UUID
(16 bytes). Values come out as botocore's ``EventStreamBuffer`` gives them
(bools, ints, ``bytes``, ``str``; a timestamp as its int, a UUID as its 16 bytes).

botocore's buffer re-slices its whole buffer after every message, which is
quadratic when a chunk holds many messages. This decoder parses in place at
an offset (``struct.unpack_from``, ``memoryview`` slices for the CRCs), parses
straight from the caller's chunk when nothing is buffered, and keeps only an
incomplete message's bytes between calls.
"""

from __future__ import annotations

import datetime
import enum
import struct
import uuid
from binascii import crc32
from collections.abc import Mapping

import msgspec

__all__ = [
    "MAX_MESSAGE_LENGTH",
    "EventStreamDecoder",
    "EventStreamError",
    "EventStreamMessage",
    "HeaderType",
    "encode_message",
]

# AWS caps a message at 16 MiB; a larger length is corruption, and waiting
# for its bytes would hang the stream instead of failing it.
MAX_MESSAGE_LENGTH = 16 * 1024 * 1024
_PRELUDE = struct.Struct(">III")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_OVERHEAD = 16  # prelude (12) + message CRC (4)
_HEADER_CACHE_SIZE = 64
_CACHEABLE_HEADERS = 512  # bytes; Bedrock's three string headers are ~90


class HeaderType(enum.IntEnum):
    BOOL_TRUE = 0
    BOOL_FALSE = 1
    BYTE = 2
    SHORT = 3
    INTEGER = 4
    LONG = 5
    BYTE_ARRAY = 6
    STRING = 7
    TIMESTAMP = 8
    UUID = 9


_FIXED = {
    HeaderType.BYTE: struct.Struct(">b"),
    HeaderType.SHORT: struct.Struct(">h"),
    HeaderType.INTEGER: struct.Struct(">i"),
    HeaderType.LONG: struct.Struct(">q"),
    HeaderType.TIMESTAMP: struct.Struct(">q"),
}
# Indexed by type code for the hot loop.
_FIXED_BY_CODE: list[struct.Struct | None] = [_FIXED.get(HeaderType(code)) for code in range(10)]


class EventStreamError(Exception):
    """The bytes are not a valid event stream: the stream must end with an error."""


class EventStreamMessage(msgspec.Struct):
    headers: dict[str, object]
    payload: bytes


class EventStreamDecoder:
    """Feed bytes split anywhere; get the messages they complete.

    After an ``EventStreamError`` the decoder stays failed: every later call
    raises again, so a caller cannot go on reading a corrupt stream.
    """

    __slots__ = ("_buffer", "_error", "_header_cache", "_max_length")

    def __init__(self, *, max_message_length: int = MAX_MESSAGE_LENGTH) -> None:
        self._buffer = bytearray()  # an incomplete message, nothing else
        self._error: EventStreamError | None = None
        self._max_length = max_message_length
        # Streams repeat the same header section in every frame: decode it once.
        self._header_cache: dict[bytes, dict[str, object]] = {}

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message held until more arrive."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[EventStreamMessage]:
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        if buffer:
            buffer += data
            source: bytes | bytearray = buffer
        else:
            source = data
        try:
            with memoryview(source) as view:
                messages, consumed = self._parse(source, view)
                if source is data and consumed < len(data):
                    buffer += view[consumed:]
        except EventStreamError as error:
            self._error = error
            raise
        if source is buffer:
            del buffer[:consumed]  # CPython drops a bytearray's head in O(1)
        return messages

    def close(self) -> None:
        """End of stream: raise if it stopped inside a message."""
        if self._error is not None:
            raise self._error
        if self._buffer:
            self._error = EventStreamError(
                f"stream ended inside a message ({len(self._buffer)} bytes pending)"
            )
            raise self._error

    def _parse(
        self, source: bytes | bytearray, view: memoryview
    ) -> tuple[list[EventStreamMessage], int]:
        messages: list[EventStreamMessage] = []
        end_of_data = len(source)
        start = 0
        unpack_prelude = _PRELUDE.unpack_from
        while end_of_data - start >= 12:
            total, headers_length, prelude_crc = unpack_prelude(source, start)
            # The prelude is checked as soon as it is here: a corrupt length
            # must fail now, not after waiting for bytes that never come.
            if crc32(view[start : start + 8]) != prelude_crc:
                raise EventStreamError("prelude CRC mismatch")
            if total > self._max_length:
                raise EventStreamError(
                    f"message length {total} exceeds the {self._max_length} byte cap"
                )
            if total < _OVERHEAD or headers_length > total - _OVERHEAD:
                raise EventStreamError(f"bad lengths: total {total}, headers {headers_length}")
            end = start + total
            if end > end_of_data:
                break
            crc_at = end - 4
            if crc32(view[start + 8 : crc_at], prelude_crc) != _U32.unpack_from(source, crc_at)[0]:
                raise EventStreamError("message CRC mismatch")
            headers_end = start + 12 + headers_length
            messages.append(
                EventStreamMessage(
                    self._headers(view[start + 12 : headers_end]),
                    bytes(view[headers_end:crc_at]),
                )
            )
            start = end
        return messages, start

    def _headers(self, view: memoryview) -> dict[str, object]:
        if not view:
            return {}
        if len(view) > _CACHEABLE_HEADERS:
            return _decode_headers(view)
        key = view.tobytes()
        cached = self._header_cache.get(key)
        if cached is None:
            cached = _decode_headers(view)
            if len(self._header_cache) >= _HEADER_CACHE_SIZE:
                self._header_cache.clear()
            self._header_cache[key] = cached
        return dict(cached)  # callers may change theirs


def _decode_headers(view: memoryview) -> dict[str, object]:
    headers: dict[str, object] = {}
    end = len(view)
    at = 0
    try:
        while at < end:
            name_end = at + 1 + view[at]
            name = str(view[at + 1 : name_end], "utf-8")
            code = view[name_end]
            at = name_end + 1
            value: object
            if code == HeaderType.STRING or code == HeaderType.BYTE_ARRAY:
                value_end = at + 2 + _U16.unpack_from(view, at)[0]
                raw = view[at + 2 : value_end]
                value = str(raw, "utf-8") if code == HeaderType.STRING else raw.tobytes()
            elif code == HeaderType.BOOL_TRUE or code == HeaderType.BOOL_FALSE:
                value = code == HeaderType.BOOL_TRUE
                value_end = at
            elif code == HeaderType.UUID:
                value_end = at + 16
                value = view[at:value_end].tobytes()
            elif code < len(_FIXED_BY_CODE):
                fixed = _FIXED_BY_CODE[code]
                assert fixed is not None
                value = fixed.unpack_from(view, at)[0]
                value_end = at + fixed.size
            else:
                raise EventStreamError(f"unknown header value type {code} for {name!r}")
            if value_end > end:
                raise EventStreamError(f"header {name!r} runs past the header section")
            if name in headers:
                raise EventStreamError(f"duplicate header {name!r}")
            headers[name] = value
            at = value_end
    except (IndexError, struct.error, UnicodeDecodeError) as error:
        raise EventStreamError(f"malformed headers: {error}") from None
    return headers


HeaderValue = str | bytes | bool | int | uuid.UUID | datetime.datetime | tuple[int, object]


def encode_message(headers: Mapping[str, HeaderValue], payload: bytes = b"") -> bytes:
    """Encode one message (for mock upstreams and tests).

    A value's Python type picks its header type: ``str`` string, ``bytes``
    byte array, ``bool`` true/false, ``int`` long, ``uuid.UUID`` UUID,
    ``datetime`` timestamp. ``(HeaderType.X, value)`` picks the type
    explicitly (a timestamp as int milliseconds, a UUID as 16 bytes or UUID).
    """
    parts: list[bytes] = []
    for name, given in headers.items():
        encoded_name = name.encode()
        if len(encoded_name) > 255:
            raise ValueError(f"header name too long: {name!r}")
        code, value = _typed(given)
        parts += [bytes((len(encoded_name),)), encoded_name, bytes((code,)), _value(code, value)]
    header_bytes = b"".join(parts)
    total = _OVERHEAD + len(header_bytes) + len(payload)
    prelude = struct.pack(">II", total, len(header_bytes))
    message = b"".join([prelude, _U32.pack(crc32(prelude)), header_bytes, payload])
    return message + _U32.pack(crc32(message))


def _typed(given: HeaderValue) -> tuple[int, object]:
    if isinstance(given, tuple):
        return int(given[0]), given[1]
    if isinstance(given, bool):
        return (HeaderType.BOOL_TRUE if given else HeaderType.BOOL_FALSE), given
    if isinstance(given, str):
        return HeaderType.STRING, given
    if isinstance(given, bytes):
        return HeaderType.BYTE_ARRAY, given
    if isinstance(given, int):
        return HeaderType.LONG, given
    if isinstance(given, uuid.UUID):
        return HeaderType.UUID, given
    if isinstance(given, datetime.datetime):
        return HeaderType.TIMESTAMP, given
    raise TypeError(f"no event-stream header type for {type(given).__name__}")


def _value(code: int, value: object) -> bytes:
    if code in (HeaderType.BOOL_TRUE, HeaderType.BOOL_FALSE):
        return b""
    if code in (HeaderType.STRING, HeaderType.BYTE_ARRAY):
        data = value.encode() if isinstance(value, str) else bytes(value)  # type: ignore[call-overload]
        return _U16.pack(len(data)) + data
    if code == HeaderType.UUID:
        data = value.bytes if isinstance(value, uuid.UUID) else bytes(value)  # type: ignore[call-overload]
        if len(data) != 16:
            raise ValueError("a UUID header value is 16 bytes")
        return data
    if code == HeaderType.TIMESTAMP and isinstance(value, datetime.datetime):
        value = round(value.timestamp() * 1000)
    fixed = _FIXED.get(HeaderType(code))
    if fixed is None:
        raise ValueError(f"unknown header type {code}")
    return fixed.pack(value)
