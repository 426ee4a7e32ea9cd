"""The upstream side of a WebSocket bridge: one trio-websocket client connection.

``open_upstream_socket`` opens ``ws(s)://<base URL>/<path>`` with the
provider's credential and the client's forwarded headers and subprotocols,
and yields the open connection; a provider that refuses the upgrade raises
``UpstreamRefused`` with its status, headers and body (the relay answers the
client's upgrade with them), one that cannot be reached ``UpstreamError``
(``relay.upstream.errors``), as the HTTP client does.

trio-websocket offers no permessage-deflate to the provider: the upstream
leg is uncompressed (the client's leg is hypercorn's, which accepts it).
Its receive queue holds one message (``message_queue_size=1``), so a client
that reads slowly stops the reader task, and so the provider's TCP window.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    open_websocket,
)

from relay.upstream.errors import UpstreamConnectError, UpstreamConnectTimeout
from relay.upstream.http11 import _default_tls_context

# Headers trio-websocket (wsproto) writes itself on the upgrade request.
_HANDSHAKE_HEADERS = frozenset(
    {
        b"host",
        b"upgrade",
        b"connection",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
        b"content-length",
        b"transfer-encoding",
    }
)


READ_SIZE = 64 * 1024


class UpstreamRefused(Exception):
    """The provider answered the upgrade with an HTTP response instead of a socket."""

    def __init__(self, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.headers = list(headers)
        self.body = body


def websocket_url(http_url: str) -> str:
    """``https://host/v1/responses`` → ``wss://host/v1/responses`` (``http`` → ``ws``)."""
    scheme, rest = http_url.split(":", 1)
    return {"https": "wss", "http": "ws"}.get(scheme.lower(), scheme) + ":" + rest


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # The HTTP client's trust (certifi and the machine's store), without its
    # ALPN list: a WebSocket upgrade is HTTP/1.1 either way.
    return _default_tls_context()


def upgrade_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The client's upgrade headers minus those the handshake writes itself."""
    return [(k, v) for k, v in headers if k.lower() not in _HANDSHAKE_HEADERS]


@asynccontextmanager
async def open_upstream_socket(
    url: str,
    headers: Sequence[tuple[bytes, bytes]],
    subprotocols: Sequence[str],
    *,
    max_message_size: int,
    connect_timeout: float,
    disconnect_timeout: float = 2.0,
) -> AsyncIterator[WebSocketConnection]:
    """An open client connection to ``url`` (``http(s)://`` or ``ws(s)://``)."""
    parts = urlsplit(websocket_url(url))
    secure = parts.scheme == "wss"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    use_ssl: ssl.SSLContext | bool = False
    if secure:
        use_ssl = await trio.to_thread.run_sync(_tls_context)
    try:
        async with open_websocket(
            host,
            port,
            resource,
            use_ssl=use_ssl,
            subprotocols=list(subprotocols) or None,
            extra_headers=upgrade_headers(headers),
            message_queue_size=1,
            max_message_size=max_message_size,
            # trio-websocket reads 4 KiB at a time by default; the HTTP client reads 64 KiB.
            receive_buffer_size=READ_SIZE,
            connect_timeout=connect_timeout,
            disconnect_timeout=disconnect_timeout,
        ) as connection:
            yield connection
    except ConnectionRejected as exc:
        raise UpstreamRefused(exc.status_code, exc.headers, exc.body or b"") from None
    except ConnectionTimeout:
        raise UpstreamConnectTimeout(
            f"cannot connect to {host}:{port}: no WebSocket within {connect_timeout:g} s"
        ) from None
    except HandshakeError as exc:
        cause = exc.__cause__ or exc
        raise UpstreamConnectError(f"cannot connect to {host}:{port}: {cause}") from None
