"""Small ASGI helpers shared by the relay's handlers: headers, bodies, replies."""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

# RFC 9110 §7.6.1 hop-by-hop headers, plus ones the relay always sets itself.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)


class ClientDisconnected(Exception):
    """The client went away before the request body was read."""


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """First value of a header (``name`` in lower case), or None."""
    for k, v in headers:
        if k == name:
            return v
    return None


def header_str(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    v = header(headers, name)
    return v.decode("latin-1") if v is not None else None


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes.

    Chunks go into a ``BytesIO``, whose ``getvalue()`` hands its buffer over
    without a copy: a list joined at the end held the body twice.
    """
    first = b""  # a body of one chunk (the usual case) is returned as it came
    buffer: io.BytesIO | None = None
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            if buffer is None and not first:
                first = chunk
            else:
                if buffer is None:
                    buffer = io.BytesIO()
                    buffer.write(first)
                    first = b""
                buffer.write(chunk)
        if not message.get("more_body", False):
            break
    return buffer.getvalue() if buffer is not None else first


async def send_response(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: bytes = b"application/json",
    extra_headers: Headers | None = None,
) -> None:
    headers: Headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
    ]
    if extra_headers:
        headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def forwardable_response_headers(
    headers: Iterable[tuple[bytes, bytes]], *, streaming: bool
) -> Headers:
    """Upstream response headers minus hop-by-hop (and content-length for streams)."""
    out: Headers = []
    for k, v in headers:
        lk = k.lower()
        if lk in HOP_BY_HOP:
            continue
        if streaming and lk == b"content-length":
            continue
        out.append((lk, v))
    return out
