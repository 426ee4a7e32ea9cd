"""A lean HTTP/1.1 upstream client for relaying: trio sockets, h11 as the protocol core.

Why not httpx on the hot path: a provider stream frames every event as its
own HTTP chunk, and httpx (through httpcore and anyio) yields one piece per
chunk at a high per-piece cost, so 31 events read in one socket read cost 31
iterations and 31 ASGI sends. Here each socket read is fed to h11 and every
body byte that read completed comes out as one ``bytes``: one yield per read,
never later than the read that brought it.

Connections are pooled per (scheme, host, port). A response left before its
end (cancellation, a client gone, an error) closes its connection at once and
is never pooled; a complete exchange returns it to the pool. Timeouts are
cancel scopes around each connect, read and write.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import h11
import trio

from relay.upstream.errors import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamReadTimeout,
    UpstreamWriteTimeout,
)

__all__ = ["HTTP11Client", "RequestBody", "ResponseHeaders", "UpstreamResponse"]

READ_SIZE = 64 * 1024
# A request body up to this size goes out in one write with its head.
_COALESCE_BODY = 64 * 1024

# Methods that always carry a body length, as httpx sends them (content-length: 0).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]  # scheme, host, port
RequestBody = bytes | AsyncIterable[bytes] | None


class ResponseHeaders(Mapping[str, str]):
    """The response's headers: ``raw`` as received (names lower-case), read as a mapping.

    Lookups are case-insensitive and give the first value of a name.
    """

    __slots__ = ("raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw

    def __getitem__(self, name: str) -> str:
        key = name.lower().encode("latin-1")
        for k, v in self.raw:
            if k == key:
                return v.decode("latin-1")
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(k.decode("latin-1") for k, _ in self.raw))

    def __len__(self) -> int:
        return len({k for k, _ in self.raw})

    def multi_items(self) -> list[tuple[str, str]]:
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw]


class _ConnectionLost(UpstreamProtocolError):
    """The socket failed or reached EOF where a response was expected."""


class _Stale(Exception):
    """A pooled connection the server had closed: the request may go again on a fresh one."""


class _Connection:
    __slots__ = ("h11", "idle_since", "received_any", "reused", "stream")

    def __init__(self, stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0
        self.reused = False
        self.received_any = False  # a byte of the current response arrived

    def is_readable(self) -> bool:
        """An idle connection with something to read was closed (or spoiled) by the server."""
        stream = self.stream
        if isinstance(stream, trio.SSLStream):
            return stream.transport_stream.socket.is_readable()
        return stream.socket.is_readable()


class UpstreamResponse:
    """A response whose head has arrived; the body is read with ``aiter_raw`` or ``aread``."""

    __slots__ = ("_client", "_conn", "complete", "headers", "reason", "status_code")

    def __init__(self, client: HTTP11Client, conn: _Connection, head: h11.Response) -> None:
        self._client = client
        self._conn = conn
        self.status_code: int = head.status_code
        self.reason: bytes = head.reason
        self.headers = ResponseHeaders(list(head.headers))
        self.complete = False  # the whole body was read

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body as it arrives: per socket read, every body byte it completed, joined."""
        if self.complete:
            return  # read already: nothing more will come
        conn = self._conn
        protocol = conn.h11
        read = self._client._read
        Data, NEED_DATA, EndOfMessage = h11.Data, h11.NEED_DATA, h11.EndOfMessage
        while True:
            parts: list[bytes] = []
            try:
                event = protocol.next_event()
                while type(event) is Data:
                    parts.append(event.data)
                    event = protocol.next_event()
            except h11.RemoteProtocolError as exc:
                raise UpstreamProtocolError(f"malformed response body: {exc}") from exc
            if type(event) is EndOfMessage:
                self.complete = True  # before the last yield: a consumer may stop there
            elif event is not NEED_DATA:
                raise UpstreamProtocolError(f"unexpected {type(event).__name__} in response body")
            if parts:
                # h11 hands out bytearrays: one bytes object per read for the consumer.
                yield b"".join(parts)
            if self.complete:
                return
            protocol.receive_data(await read(conn))

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_raw()])


class HTTP11Client:
    """Pooled HTTP/1.1 connections to any number of origins.

    ``connect_timeout`` bounds TCP connect and TLS handshake; ``read_timeout``
    bounds each read (silence, not the whole response) and each write.
    """

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_idle_per_origin: int = 1000,
        idle_expiry: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_idle = max_idle_per_origin
        self._idle_expiry = idle_expiry
        self._ssl_context = ssl_context
        self._idle: dict[Origin, deque[_Connection]] = {}

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        headers: list[tuple[bytes, bytes]],
        body: RequestBody = None,
    ) -> AsyncIterator[UpstreamResponse]:
        """Send a request; the response's head is in, its body is read inside the block.

        A ``host`` header is added if absent, and the body's framing:
        content-length for bytes, chunked for an iterable unless ``headers``
        give a content-length. Nothing else is added.
        """
        origin, target, host = _split_url(url)
        try:
            request = h11.Request(
                method=method, target=target, headers=_framed(method, headers, body, host)
            )
        except h11.LocalProtocolError as exc:
            raise UpstreamProtocolError(f"invalid request: {exc}") from exc
        conn, response = await self._start(origin, request, body)
        try:
            yield response
        finally:
            await self._finish(origin, conn, response)

    async def aclose(self) -> None:
        """Close every idle connection; exchanges in flight close their own."""
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for conn in connections:
                await trio.aclose_forcefully(conn.stream)

    def idle_connections(self) -> int:
        return sum(len(c) for c in self._idle.values())

    async def _start(
        self, origin: Origin, request: h11.Request, body: RequestBody
    ) -> tuple[_Connection, UpstreamResponse]:
        conn = await self._acquire(origin)
        while True:
            answered = False
            try:
                response = await self._request(conn, request, body)
                answered = True
                return conn, response
            except _Stale:
                pass  # the request goes once more, on a fresh connection
            finally:
                if not answered:
                    await trio.aclose_forcefully(conn.stream)
            conn = await self._connect(origin)

    async def _request(
        self, conn: _Connection, request: h11.Request, body: RequestBody
    ) -> UpstreamResponse:
        protocol = conn.h11
        body_started = False
        try:
            try:
                head = protocol.send(request)
                if isinstance(body, bytes) and len(body) > _COALESCE_BODY:
                    # Written as it is: joining it to the head would copy it twice.
                    await self._write(conn, head)
                    for piece in protocol.send_with_data_passthrough(h11.Data(data=body)) or ():
                        await self._write(conn, piece)
                    await self._write(conn, protocol.send(h11.EndOfMessage()))
                elif isinstance(body, bytes):
                    if body:
                        head += protocol.send(h11.Data(data=body))
                    await self._write(conn, head + protocol.send(h11.EndOfMessage()))
                elif body is None:
                    await self._write(conn, head + protocol.send(h11.EndOfMessage()))
                else:
                    await self._write(conn, head)
                    body_started = True
                    async for piece in body:
                        if piece:
                            await self._write(conn, protocol.send(h11.Data(data=piece)))
                    await self._write(conn, protocol.send(h11.EndOfMessage()))
            except h11.LocalProtocolError as exc:
                raise UpstreamProtocolError(
                    f"request body does not match its framing: {exc}"
                ) from exc
            return await self._receive_head(conn)
        except _ConnectionLost as exc:
            if conn.reused and not conn.received_any and not body_started:
                raise _Stale from exc
            raise

    async def _receive_head(self, conn: _Connection) -> UpstreamResponse:
        protocol = conn.h11
        while True:
            try:
                event = protocol.next_event()
            except h11.RemoteProtocolError as exc:
                raise UpstreamProtocolError(f"malformed response: {exc}") from exc
            if event is h11.NEED_DATA:
                data = await self._read(conn)
                if not data and not conn.received_any:
                    raise _ConnectionLost("connection closed before the response")
                conn.received_any = True
                protocol.receive_data(data)
            elif isinstance(event, h11.Response):
                return UpstreamResponse(self, conn, event)
            elif not isinstance(event, h11.InformationalResponse):  # 1xx: the answer follows
                raise UpstreamProtocolError(f"unexpected {type(event).__name__} before response")

    async def _read(self, conn: _Connection) -> bytes:
        with trio.move_on_after(self._read_timeout) as scope:
            try:
                # bytes from a plain socket; h11 takes a bytearray from TLS just as well.
                return await conn.stream.receive_some(READ_SIZE)  # type: ignore[return-value]
            except (trio.BrokenResourceError, OSError) as exc:
                raise _ConnectionLost(f"connection lost: {_reason(exc)}") from exc
        assert scope.cancelled_caught
        raise UpstreamReadTimeout(f"no data from upstream for {self._read_timeout:g} s")

    async def _write(self, conn: _Connection, data: bytes) -> None:
        with trio.move_on_after(self._read_timeout) as scope:
            try:
                await conn.stream.send_all(data)
            except (trio.BrokenResourceError, OSError) as exc:
                raise _ConnectionLost(f"connection lost: {_reason(exc)}") from exc
        if scope.cancelled_caught:
            raise UpstreamWriteTimeout(f"upstream took no data for {self._read_timeout:g} s")

    async def _acquire(self, origin: Origin) -> _Connection:
        idle = self._idle.get(origin)
        now = trio.current_time()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed
            if now - conn.idle_since < self._idle_expiry and not conn.is_readable():
                conn.reused = True
                conn.received_any = False
                return conn
            await trio.aclose_forcefully(conn.stream)
        return await self._connect(origin)

    async def _finish(self, origin: Origin, conn: _Connection, response: UpstreamResponse) -> None:
        protocol = conn.h11
        if not (
            response.complete
            and protocol.our_state is h11.DONE
            and protocol.their_state is h11.DONE
        ):
            # Unfinished, or the server closes after it: the only safe way out is to close.
            await trio.aclose_forcefully(conn.stream)
            return
        protocol.start_next_cycle()
        now = trio.current_time()
        conn.idle_since = now
        idle = self._idle.setdefault(origin, deque())
        idle.append(conn)
        while idle and (
            len(idle) > self._max_idle or now - idle[0].idle_since >= self._idle_expiry
        ):
            await trio.aclose_forcefully(idle.popleft().stream)

    async def _connect(self, origin: Origin) -> _Connection:
        scheme, host, port = origin
        tcp: trio.SocketStream | None = None
        opened = False
        try:
            with trio.move_on_after(self._connect_timeout):
                try:
                    tcp = await trio.open_tcp_stream(host, port)
                except OSError as exc:
                    raise UpstreamConnectError(
                        f"cannot connect to {host}:{port}: {connect_reason(exc)}"
                    ) from exc
                if scheme != "https":
                    opened = True
                    return _Connection(tcp)
                context = self._ssl_context or await self._load_tls_context()
                tls = trio.SSLStream(tcp, context, server_hostname=host, https_compatible=True)
                try:
                    await tls.do_handshake()
                except trio.BrokenResourceError as exc:
                    cause = exc.__cause__ or exc
                    raise UpstreamConnectError(
                        f"TLS handshake with {host}:{port} failed: {_tls_reason(cause)}"
                    ) from exc
                opened = True
                return _Connection(tls)
            raise UpstreamConnectTimeout(
                f"cannot connect to {host}:{port}: no connection within "
                f"{self._connect_timeout:g} s (timeout)"
            )
        finally:
            if tcp is not None and not opened:
                await trio.aclose_forcefully(tcp)

    async def _load_tls_context(self) -> ssl.SSLContext:
        # Reading and parsing the CA bundle takes milliseconds of blocking
        # file I/O and CPU: a worker thread's job, once per client.
        if self._ssl_context is None:
            self._ssl_context = await trio.to_thread.run_sync(_default_tls_context)
        return self._ssl_context


def _default_tls_context() -> ssl.SSLContext:
    import certifi

    context = ssl.create_default_context(cafile=certifi.where())
    # And the machine's own trust: its CA store, or what SSL_CERT_FILE /
    # SSL_CERT_DIR name (a corporate CA or TLS-inspecting egress proxy), as
    # OpenSSL tools and Go clients such as Coder's honour them.
    context.load_default_certs()
    context.set_alpn_protocols(["http/1.1"])
    return context


def _split_url(url: str) -> tuple[Origin, bytes, bytes]:
    """(origin, request target, host header) of an absolute http(s) URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise UpstreamError(f"not an http(s) URL: {scheme}://{parts.hostname or ''}")
    port = parts.port or _DEFAULT_PORTS[scheme]
    host = parts.hostname
    bracketed = f"[{host}]" if ":" in host else host
    host_header = bracketed if port == _DEFAULT_PORTS[scheme] else f"{bracketed}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (scheme, host, port), target.encode("latin-1"), host_header.encode("latin-1")


def _framed(
    method: str, headers: list[tuple[bytes, bytes]], body: RequestBody, host: bytes
) -> list[tuple[bytes, bytes]]:
    """The caller's headers, plus host and body framing where the caller gave none."""
    names = {k.lower() for k, _ in headers}
    out = headers if b"host" in names else [(b"host", host), *headers]
    if b"content-length" in names or b"transfer-encoding" in names:
        return out
    if isinstance(body, bytes):
        if body or method in _BODY_METHODS:
            return [*out, (b"content-length", b"%d" % len(body))]
        return out
    if body is None:
        return [*out, (b"content-length", b"0")] if method in _BODY_METHODS else out
    return [*out, (b"transfer-encoding", b"chunked")]


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _attempts(exc: BaseException) -> list[BaseException]:
    """The errors behind ``exc``: trio's "all attempts to connect failed" keeps one
    per address in an exception group as its cause."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        return [exc, *cause.exceptions]
    return [exc] if cause is None else [exc, cause]


def connect_reason(exc: BaseException) -> str:
    """Why a TCP connection failed, in the words a person can act on."""
    errors = _attempts(exc)
    for error in errors:
        if isinstance(error, socket.gaierror):
            return f"unknown host (DNS: {error.strerror or error})"
    for error in errors:
        if isinstance(error, ConnectionRefusedError):
            return "connection refused (nothing listens on that port)"
    for error in errors:
        if isinstance(error, TimeoutError):
            return "timed out"
        if isinstance(error, OSError) and error.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return f"unreachable ({error.strerror})"
    return _reason(errors[-1])


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{exc.reason} (is it an https server?)"
    return _reason(exc)
