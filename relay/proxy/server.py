"""The AI Gateway Proxy's listener: authenticate, then decrypt, tunnel or refuse.

With ``PROXY_TLS_CERT_FILE`` the connection is TLS first (``ProxyServer.tls``;
the handshake runs on the first read, under the head's deadline). One
connection, one request head (``relay.proxy.head``), read within
``PROXY_HEADER_TIMEOUT`` and at most 16 KiB. ``Proxy-Authorization: Basic``
carries a relay token as its password (407 otherwise, with
``Proxy-Authenticate``, never saying which part was wrong). Then:

- ``CONNECT host:443`` to a host of the decrypted set (``relay.proxy.hosts``):
  the ``Interceptor`` terminates TLS and serves the requests inside as relay
  requests (``relay.proxy.mitm``);
- any other ``CONNECT`` to port 443 or 80 (403 for other ports), and an
  absolute-form ``http://`` request: the destination is resolved once, every
  answer checked by the guard (``relay.proxy.guard``), and exactly the checked
  address dialled; the bytes are then copied both ways until either side
  closes or the tunnel is idle for ``PROXY_IDLE_TIMEOUT``. With
  ``PROXY_UPSTREAM`` the connection is a ``CONNECT`` by name through that
  proxy instead (``relay.proxy.upstream``), after the same checks.

Refused: 403 with a one-line reason; a dial failure 502; a timeout 504;
over ``PROXY_MAX_TUNNELS`` connections 503, over a user's
``PROXY_MAX_TUNNELS_PER_USER`` 429. Whatever happens on one connection, the
listener goes on.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from relay.db.bridge import UNAVAILABLE_ERRORS
from relay.identity import Principal, TokenVerifier
from relay.proxy.guard import (
    ALLOWED_PORTS,
    Blocked,
    IPAddress,
    Policy,
    PortNotAllowed,
    Target,
    TargetRefused,
    exempt_from_url,
    parse_networks,
    parse_target,
    unique,
)
from relay.proxy.head import (
    BadHead,
    HeadReader,
    HeadTooLarge,
    ProxyRequest,
    basic_credentials,
    parse_absolute_url,
)
from relay.proxy.upstream import UpstreamError, UpstreamProxy, open_via, upstream_from_options

log = logging.getLogger("relay.proxy")

REALM = "relay AI Gateway Proxy"
READ_SIZE = 64 * 1024  # one read of either side of a tunnel: the most a tunnel buffers per way
_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
# Hop-by-hop headers of an absolute-form request that are not forwarded.
_NOT_FORWARDED = frozenset(
    {
        b"proxy-authorization",
        b"proxy-connection",
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"upgrade",
        b"host",
    }
)


class ProxyRefusal(Exception):
    """The proxy's answer to a request it will not carry."""

    def __init__(
        self, status: int, message: str, *, reason: str = "", headers: bytes = b""
    ) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.reason = reason or str(status)  # the metric label
        self.headers = headers


def response_bytes(status: int, message: str = "", headers: bytes = b"") -> bytes:
    body = (message + "\n").encode("utf-8") if message else b""
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n".encode("ascii")
    head += b"content-type: text/plain; charset=utf-8\r\n" if body else b""
    head += f"content-length: {len(body)}\r\n".encode("ascii")
    return head + headers + b"connection: close\r\n\r\n" + body


class Resolver(Protocol):
    """Names → addresses, asked once per tunnel (tests give one they control)."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]: ...


class SystemResolver:
    """The operating system's resolver (``getaddrinfo``), in trio's thread pool."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise OSError(f"cannot resolve {host}: {exc.strerror}") from None
        found: list[IPAddress] = []
        for _family, _type, _proto, _canon, sockaddr in infos:
            text = str(sockaddr[0]).split("%", 1)[0]
            found.append(ipaddress.ip_address(text))
        return unique(found)


class Interceptor(Protocol):
    """What decrypts: the decrypted host set and the TLS-terminating server (``relay.proxy.mitm``)."""

    def provider_for(self, host: str) -> str | None: ...

    async def serve(
        self, stream: trio.abc.Stream, target: Target, token: str, principal: Principal
    ) -> None: ...


class ProxyMetrics(Protocol):
    def proxy_session(self, kind: str) -> None: ...

    def proxy_refused(self, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ProxySettings:
    policy: Policy = field(default_factory=Policy)
    max_connections: int = 1000  # 0: unlimited
    max_tunnels_per_user: int = 100  # 0: unlimited
    header_timeout: float = 10.0
    dial_timeout: float = 10.0
    idle_timeout: float = 300.0
    head_limit: int = 16 * 1024
    upstream: UpstreamProxy | None = None  # PROXY_UPSTREAM
    # Not an option: tests add the port of their loopback destination.
    ports: frozenset[int] = ALLOWED_PORTS

    @classmethod
    def from_options(cls, options: object) -> ProxySettings:
        from relay.options import Options

        assert isinstance(options, Options)
        return cls(
            policy=Policy(
                allowed=parse_networks(options.proxy_allowed_private_cidrs),
                exempt=exempt_from_url(options.access_url),
            ),
            max_connections=options.proxy_max_tunnels,
            max_tunnels_per_user=options.proxy_max_tunnels_per_user,
            header_timeout=options.proxy_header_timeout,
            dial_timeout=options.proxy_dial_timeout,
            idle_timeout=options.proxy_idle_timeout,
            upstream=upstream_from_options(options),
        )


class ProxyServer:
    """The proxy of one process. ``tokens()`` is the verifier, or None while the relay starts."""

    def __init__(
        self,
        settings: ProxySettings,
        tokens: Callable[[], TokenVerifier | None],
        *,
        resolver: Resolver | None = None,
        interceptor: Interceptor | None = None,
        metrics: Callable[[], ProxyMetrics | None] = lambda: None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings
        self.tls = tls  # PROXY_TLS_CERT_FILE: clients speak TLS to the proxy itself
        self._tokens = tokens
        self.resolver: Resolver = resolver or SystemResolver()
        self.interceptor = interceptor
        self._metrics = metrics
        self.open = 0
        self.per_user: dict[str, int] = {}

    async def serve(
        self,
        listeners: Sequence[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            task_status.started()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # EMFILE and friends: back off instead of spinning; the listener stays.
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("proxy: cannot accept a connection: %s", exc)
                    await trio.sleep(0.1)
                    continue
                raise
            nursery.start_soon(self.handle, stream)

    def _count_refusal(self, reason: str) -> None:
        metrics = self._metrics()
        if metrics is not None:
            metrics.proxy_refused(reason)

    async def handle(self, stream: trio.abc.Stream) -> None:
        """One client connection, start to end; nothing it does escapes to the listener."""
        if self.tls is not None:
            # TLS to the proxy itself: the handshake happens on the first read, under
            # the head's deadline; a failed one is a connection that sent nothing.
            stream = trio.SSLStream(stream, self.tls, server_side=True)
        try:
            limit = self.settings.max_connections
            if limit and self.open >= limit:
                self._count_refusal("connection_limit")
                await _send_quietly(stream, response_bytes(503, "too many proxy connections"))
                return
            self.open += 1
            try:
                await self._handle(stream)
            finally:
                self.open -= 1
        except Exception:
            log.exception("proxy: a connection failed")
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _handle(self, stream: trio.abc.Stream) -> None:
        try:
            request = await self._read_head(stream)
            if request is None:
                return
            principal, token = await self._authenticate(request)
            await self._with_user_slot(stream, request, principal, token)
        except ProxyRefusal as refusal:
            self._count_refusal(refusal.reason)
            await _send_quietly(
                stream, response_bytes(refusal.status, refusal.message, refusal.headers)
            )

    async def _read_head(self, stream: trio.abc.Stream) -> ProxyRequest | None:
        reader = HeadReader(self.settings.head_limit)
        with trio.move_on_after(self.settings.header_timeout):
            try:
                while True:
                    data = await stream.receive_some(READ_SIZE)
                    if not data:
                        return None
                    request = reader.feed(bytes(data))
                    if request is not None:
                        return request
            except HeadTooLarge as exc:
                raise ProxyRefusal(431, str(exc), reason="bad_request") from None
            except BadHead as exc:
                raise ProxyRefusal(400, str(exc), reason="bad_request") from None
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
        raise ProxyRefusal(408, "the request head took too long", reason="timeout")

    async def _authenticate(self, request: ProxyRequest) -> tuple[Principal, str]:
        challenge = f'proxy-authenticate: Basic realm="{REALM}"\r\n'.encode("ascii")
        refused = ProxyRefusal(
            407, "proxy authentication required", reason="auth", headers=challenge
        )
        credentials = basic_credentials(request)
        if credentials is None or not credentials[1]:
            raise refused
        token = credentials[1]
        tokens = self._tokens()
        if tokens is None:
            raise ProxyRefusal(503, "the relay is starting or shutting down", reason="unavailable")
        try:
            checked = await tokens.check(token)
        except UNAVAILABLE_ERRORS:
            raise ProxyRefusal(
                503, "the relay cannot verify tokens right now", reason="unavailable"
            ) from None
        if not isinstance(checked, Principal):
            raise refused
        return checked, token

    async def _with_user_slot(
        self, stream: trio.abc.Stream, request: ProxyRequest, principal: Principal, token: str
    ) -> None:
        limit = self.settings.max_tunnels_per_user
        user = principal.user_id
        if limit and self.per_user.get(user, 0) >= limit:
            raise ProxyRefusal(429, "too many open tunnels for this user", reason="user_limit")
        self.per_user[user] = self.per_user.get(user, 0) + 1
        try:
            await self._carry(stream, request, principal, token)
        finally:
            left = self.per_user[user] - 1
            if left:
                self.per_user[user] = left
            else:
                del self.per_user[user]

    async def _carry(
        self, stream: trio.abc.Stream, request: ProxyRequest, principal: Principal, token: str
    ) -> None:
        metrics = self._metrics()
        if request.method == "CONNECT":
            target = _target(request.target, self.settings.ports)
            interceptor = self.interceptor
            if (
                interceptor is not None
                and target.port == 443
                and interceptor.provider_for(target.host) is not None
            ):
                if request.rest:
                    raise ProxyRefusal(400, "data sent before the tunnel was established")
                await stream.send_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                if metrics is not None:
                    metrics.proxy_session("mitm")
                await interceptor.serve(stream, target, token, principal)
                return
            upstream, early = await self._dial(target)
            async with upstream:
                await stream.send_all(b"HTTP/1.1 200 Connection Established\r\n\r\n" + early)
                if metrics is not None:
                    metrics.proxy_session("tunneled")
                if request.rest:
                    await upstream.send_all(request.rest)
                await self._pipe(stream, upstream)
            return
        try:
            url = parse_absolute_url(request.target)
        except BadHead as exc:
            raise ProxyRefusal(400, str(exc), reason="bad_request") from None
        target = _target(url.authority, self.settings.ports, default_port=80)
        upstream, early = await self._dial(target)
        async with upstream:
            if metrics is not None:
                metrics.proxy_session("tunneled")
            if early:
                await stream.send_all(early)
            await upstream.send_all(_origin_form_head(request, url.path, target) + request.rest)
            await self._pipe(stream, upstream)

    async def _dial(self, target: Target) -> tuple[trio.abc.Stream, bytes]:
        """A connection for ``target`` and the bytes it already sent (refusals as ``ProxyRefusal``).

        Direct: to the one checked address. Through ``PROXY_UPSTREAM``: a
        ``CONNECT`` by name to that proxy, which resolves the name again; a
        literal address, and every answer of the relay's own resolver when it
        has one, are still checked first.
        """
        policy = self.settings.policy
        upstream = self.settings.upstream
        try:
            with trio.fail_after(self.settings.dial_timeout):
                answers: list[IPAddress] = []
                if target.address is not None:
                    answers = [target.address]
                else:
                    try:
                        answers = unique(await self.resolver.resolve(target.host, target.port))
                    except OSError as exc:
                        if upstream is None:
                            raise ProxyRefusal(502, str(exc), reason="dial") from None
                        # (The relay's network may resolve no outside name: the upstream's job.)
                try:
                    # (No answer at all: refused when direct, the upstream's to resolve if not.)
                    checked = answers or upstream is None
                    address = policy.check(target, answers) if checked else None
                except Blocked as exc:
                    log.info("proxy: refused %s: %s", target.authority, exc.reason)
                    raise ProxyRefusal(403, exc.reason, reason="blocked") from None
                if upstream is not None:
                    return await self._via_upstream(upstream, target)
                assert address is not None
                return await connect_to(address, target.port), b""
        except trio.TooSlowError:
            raise ProxyRefusal(
                504, f"{target.authority} did not answer in time", reason="timeout"
            ) from None
        except OSError as exc:
            raise ProxyRefusal(
                502, f"cannot connect to {target.authority}: {exc.strerror or exc}", reason="dial"
            ) from None

    async def _via_upstream(
        self, upstream: UpstreamProxy, target: Target
    ) -> tuple[trio.abc.Stream, bytes]:
        try:
            return await open_via(upstream, target.authority)
        except UpstreamError as exc:
            log.info("proxy: %s via %s: %s", target.authority, upstream.where, exc.message)
            raise ProxyRefusal(exc.status, exc.message, reason="upstream") from None
        except OSError as exc:
            raise ProxyRefusal(
                502,
                f"cannot connect to the upstream proxy {upstream.where}: {exc.strerror or exc}",
                reason="upstream",
            ) from None

    async def _pipe(self, client: trio.abc.Stream, upstream: trio.abc.Stream) -> None:
        """Copy both ways, one read at a time, until both ends are done or the tunnel idles."""
        idle = self.settings.idle_timeout
        with trio.CancelScope() as scope:

            def touched() -> None:
                scope.deadline = trio.current_time() + idle if idle > 0 else math.inf

            touched()

            async def copy(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
                try:
                    while True:
                        data = await source.receive_some(READ_SIZE)
                        if not data:
                            break
                        touched()
                        await sink.send_all(data)
                        touched()
                    if isinstance(sink, trio.abc.HalfCloseableStream):
                        await sink.send_eof()
                    else:
                        scope.cancel()  # a TLS client cannot be half-closed: the tunnel ends
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    # One side is gone: so is the tunnel.
                    scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(copy, client, upstream)
                nursery.start_soon(copy, upstream, client)


def _target(text: str, ports: frozenset[int], *, default_port: int | None = None) -> Target:
    try:
        return parse_target(text, default_port=default_port, ports=ports)
    except PortNotAllowed as exc:
        raise ProxyRefusal(403, str(exc), reason="port") from None
    except TargetRefused as exc:
        raise ProxyRefusal(400, str(exc), reason="bad_request") from None


async def connect_to(address: IPAddress, port: int) -> trio.SocketStream:
    """A TCP connection to exactly ``address`` (no name is resolved here)."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((str(address), port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


def _origin_form_head(request: ProxyRequest, path: str, target: Target) -> bytes:
    host = target.host if target.port == 80 else target.authority
    if ":" in target.host and target.port == 80:
        host = f"[{target.host}]"
    lines = [f"{request.method} {path} HTTP/{request.version}".encode("latin-1")]
    lines.append(b"Host: " + host.encode("ascii"))
    for name, value in request.raw_headers:
        if name.lower() in _NOT_FORWARDED:
            continue
        lines.append(name + b": " + value)
    # One request per connection: what follows it goes to the same checked address.
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def _send_quietly(stream: trio.abc.Stream, data: bytes) -> None:
    try:
        with trio.move_on_after(1.0):
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


async def open_proxy_listeners(address: str) -> list[trio.SocketListener]:
    """The proxy's listening sockets for ``HOST:PORT`` (``ListenError`` when it cannot)."""
    from relay.errors import listen_error

    host, _, port = address.rpartition(":")
    host = host.strip("[]") or None  # type: ignore[assignment]
    try:
        return await trio.open_tcp_listeners(int(port), host=host, backlog=1024)
    except OSError as exc:
        raise listen_error(address, exc, "the AI Gateway Proxy") from None
