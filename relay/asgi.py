"""Small ASGI helpers shared by the relay's handlers: headers, bodies, replies."""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from math import inf
from typing import Any

import trio

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: The messages that open a response: an HTTP head, a WebSocket's accept (its 101)
#: and the HTTP answer that refuses an upgrade. Headers added to a response go there.
RESPONSE_STARTS = frozenset(
    {"http.response.start", "websocket.accept", "websocket.http.response.start"}
)
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


class BodyTimeout(Exception):
    """The client did not send its request body in time."""


async def read_body(
    receive: Receive, limit: int, *, total: float = inf, idle: float = inf
) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes.

    ``total``: seconds the whole body may take; ``idle``: seconds of silence
    allowed between two parts (either 0 or inf: no limit). ``BodyTimeout``
    when one runs out: a client that declares a body and trickles it must
    not hold the request (and what it holds) open.

    Chunks go into a ``BytesIO``, whose ``getvalue()`` hands its buffer over
    without a copy: a list joined at the end held the body twice.

    Both deadlines are one cancel scope, whose deadline is moved before each
    part to whichever comes first (``trio.fail_after`` twice, and once more
    per part, cost a generator-based context manager and a scope each, on
    every request).
    """
    first = b""  # a body of one chunk (the usual case) is returned as it came
    buffer: io.BytesIO | None = None
    size = 0
    total = total or inf
    idle = idle or inf
    whole_by = trio.current_time() + total
    with trio.CancelScope() as deadline:
        while True:
            deadline.deadline = min(whole_by, trio.current_time() + idle)
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
    if deadline.cancelled_caught:
        raise BodyTimeout(
            f"request body not received in time ({size} bytes arrived; "
            f"at most {_seconds(total)} in all, {_seconds(idle)} without data)"
        )
    return buffer.getvalue() if buffer is not None else first


def _seconds(value: float) -> str:
    return "no limit" if value == inf else f"{value:g}s"


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
