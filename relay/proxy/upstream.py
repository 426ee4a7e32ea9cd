"""``PROXY_UPSTREAM``: tunneled traffic through a corporate proxy, by ``CONNECT``.

``http(s)://[user:pass@]host:port``. Every tunnel that is not decrypted (a
``CONNECT``, or an absolute-form ``http://`` request, sent as ``CONNECT
host:80``) is opened by a ``CONNECT host:port`` to that proxy, over TLS when
its scheme is ``https`` (trusting ``PROXY_UPSTREAM_CA`` when given, else the
system's CAs), with ``Proxy-Authorization: Basic`` when it has user:pass.
The name goes to the upstream proxy, which resolves it again: the guarantee
against DNS rebinding is then that proxy's to keep (the relay still refuses
literal addresses and names its own resolver answers with a blocked
address). The credentials are never in a log line, an error or a repr.
"""

from __future__ import annotations

import base64
import dataclasses
import ssl
from dataclasses import dataclass, field

import trio

HEAD_LIMIT = 16 * 1024


class UpstreamError(Exception):
    """The upstream proxy did not open the tunnel: ``status`` is the answer to the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class UpstreamProxy:
    scheme: str
    host: str
    port: int
    authorization: bytes | None = field(default=None, repr=False)  # the Basic header value
    tls: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    @property
    def where(self) -> str:
        """What a log line or an error may name: never the credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_upstream_url(text: str) -> UpstreamProxy:
    """``PROXY_UPSTREAM`` as a value (ValueError, never quoting the credentials)."""
    from relay.options import split_proxy_upstream

    scheme, host, port, credentials = split_proxy_upstream(text)
    authorization = None
    if credentials is not None:
        authorization = b"Basic " + base64.b64encode(":".join(credentials).encode())
    return UpstreamProxy(scheme, host, port, authorization)


def upstream_from_options(options: object) -> UpstreamProxy | None:
    """``PROXY_UPSTREAM`` with its TLS context (``PROXY_UPSTREAM_CA``), or None."""
    from relay.errors import StartupError
    from relay.options import Options

    assert isinstance(options, Options)
    if not options.proxy_upstream:
        return None
    upstream = parse_upstream_url(options.proxy_upstream)
    if upstream.scheme != "https":
        return upstream
    try:  # PROXY_UPSTREAM_CA, or else the system's CAs
        context = ssl.create_default_context(cafile=options.proxy_upstream_ca or None)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(
            f"cannot load PROXY_UPSTREAM_CA ({options.proxy_upstream_ca}): {exc}"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return dataclasses.replace(upstream, tls=context)


def connect_request(upstream: UpstreamProxy, authority: str) -> bytes:
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    head = "\r\n".join(lines).encode("ascii") + b"\r\n"
    if upstream.authorization is not None:
        head += b"Proxy-Authorization: " + upstream.authorization + b"\r\n"
    return head + b"\r\n"


def parse_connect_answer(head: bytes) -> int:
    """The status of the upstream proxy's answer head (ValueError when it is not HTTP)."""
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError("not an HTTP answer")
    return int(parts[1])


async def open_via(upstream: UpstreamProxy, authority: str) -> tuple[trio.abc.Stream, bytes]:
    """A tunnel to ``authority`` through ``upstream``: the stream, and bytes read past the head.

    Raises ``UpstreamError`` (the client's answer) or ``OSError`` (no connection).
    """
    tcp = await trio.open_tcp_stream(upstream.host, upstream.port)
    stream: trio.abc.Stream = tcp
    try:
        if upstream.tls is not None:
            tls = trio.SSLStream(tcp, upstream.tls, server_hostname=upstream.host)
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError as exc:
                cause = exc.__cause__ or exc
                raise UpstreamError(502, f"TLS to the upstream proxy failed: {cause}") from None
            stream = tls
        await stream.send_all(connect_request(upstream, authority))
        data = b""
        while b"\r\n\r\n" not in data:
            if len(data) > HEAD_LIMIT:
                raise UpstreamError(502, "the upstream proxy's answer head is too large")
            chunk = await stream.receive_some(HEAD_LIMIT)
            if not chunk:
                raise UpstreamError(502, "the upstream proxy closed the connection")
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        try:
            status = parse_connect_answer(head)
        except ValueError:
            raise UpstreamError(502, "the upstream proxy's answer is not HTTP") from None
        if status == 407:
            raise UpstreamError(502, "the upstream proxy refused the relay's credentials (407)")
        if status == 403:
            raise UpstreamError(403, f"the upstream proxy refused {authority} (403)")
        if not 200 <= status < 300:
            raise UpstreamError(502, f"the upstream proxy answered {status} for {authority}")
        return stream, rest
    except BaseException:
        with trio.CancelScope(shield=True):
            await stream.aclose()
        raise
