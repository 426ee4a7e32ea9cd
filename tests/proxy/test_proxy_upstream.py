"""PROXY_UPSTREAM: tunneled traffic through a corporate proxy, by CONNECT.

The corporate proxy is a tiny CONNECT proxy of the test's own on loopback: it
records every CONNECT head it was sent, "resolves" every name to 127.0.0.1
(as a real one would resolve it again) and copies bytes.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from relay.options import OptionError, load_options
from relay.proxy.guard import IPAddress
from relay.proxy.upstream import UpstreamProxy, parse_upstream_url, upstream_from_options
from tests.proxy.test_proxy_listener import auth, connect, proxy, read_answer
from tests.proxy.test_proxy_tls_listener import listener_files

SECRET = "s3cret-corp-pass"


@dataclass
class CorpProxy:
    port: int = 0
    heads: list[bytes] = field(default_factory=list)
    answer: bytes = b"HTTP/1.1 200 Connection established\r\n\r\n"

    async def handle(self, stream: trio.abc.Stream) -> None:
        with contextlib.suppress(trio.BrokenResourceError):  # a client that refused our TLS
            await self._handle(stream)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        async with stream:
            head = await read_answer(stream)  # type: ignore[arg-type]
            self.heads.append(head)
            if not self.answer.startswith(b"HTTP/1.1 200"):
                await stream.send_all(self.answer)
                return
            authority = head.split(b" ")[1].decode()
            port = int(authority.rsplit(":", 1)[1])
            async with await trio.open_tcp_stream("127.0.0.1", port) as dest:
                await stream.send_all(self.answer)

                async def copy(a: trio.abc.Stream, b: trio.abc.Stream) -> None:
                    try:
                        while data := await a.receive_some(65536):
                            await b.send_all(data)
                    except trio.BrokenResourceError:
                        pass
                    nursery.cancel_scope.cancel()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(copy, stream, dest)
                    nursery.start_soon(copy, dest, stream)


class NoNames:
    """A resolver of a network that resolves no outside name (why there is an upstream)."""

    def __init__(self, known: dict[str, str] | None = None) -> None:
        self.known = known or {}
        self.calls: list[str] = []

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        import ipaddress

        self.calls.append(host)
        if host in self.known:
            return [ipaddress.ip_address(self.known[host])]
        raise OSError(f"cannot resolve {host}")


@asynccontextmanager
async def corp_proxy(tls: object = None) -> AsyncIterator[CorpProxy]:
    corp = CorpProxy()
    async with trio.open_nursery() as nursery:
        if tls is None:
            serve = partial(trio.serve_tcp, corp.handle, 0, host="127.0.0.1")
        else:
            serve = partial(trio.serve_ssl_over_tcp, corp.handle, 0, tls, host="127.0.0.1")
        listeners = await nursery.start(serve)
        sock = listeners[0].socket if tls is None else listeners[0].transport_listener.socket
        corp.port = sock.getsockname()[1]
        yield corp
        nursery.cancel_scope.cancel()


async def test_tunnels_go_through_the_upstream_with_its_credentials(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with corp_proxy() as corp:
        upstream = parse_upstream_url(f"http://corp-user:{SECRET}@127.0.0.1:{corp.port}")
        assert SECRET not in repr(upstream)
        async with proxy(upstream=upstream) as h:
            resolver = NoNames({"inside.test": "10.0.0.5"})
            h.server.resolver = resolver
            # CONNECT by name: the upstream gets the name (it resolves it again).
            async with await h.connect() as stream:
                await stream.send_all(connect(f"dest.test:{h.dest_port}", auth()))
                assert await read_answer(stream) == b"HTTP/1.1 200 Connection Established\r\n\r\n"
                await stream.send_all(b"hello")
                assert await read_answer(stream, b"hello") == b"echo:hello"
            head = corp.heads[0]
            assert head.startswith(f"CONNECT dest.test:{h.dest_port} HTTP/1.1\r\n".encode())
            basic = base64.b64encode(f"corp-user:{SECRET}".encode())
            assert b"Proxy-Authorization: Basic " + basic + b"\r\n" in head
            # The relay's own Proxy-Authorization never goes upstream.
            assert b"relay-token" not in head
            # An absolute-form request goes as CONNECT host:80-style, then origin form.
            proxy_url = f"http://alice:relay-token-alice@127.0.0.1:{h.port}"
            async with httpx.AsyncClient(proxy=proxy_url) as client:
                response = await client.get(f"http://web.test:{h.http_port}/path")
            assert response.status_code == 200
            assert response.content.startswith(b"GET /path HTTP/1.1\r\n")
            assert corp.heads[1].startswith(f"CONNECT web.test:{h.http_port} ".encode())
            # Still refused before the upstream: a blocked literal, and a name the
            # relay's resolver answers with a blocked address.
            for target in ("169.254.169.254:443", "inside.test:443"):
                answer = await h.exchange(connect(target, auth()))
                assert answer.startswith(b"HTTP/1.1 403 "), answer
            assert len(corp.heads) == 2
            # The upstream refusing the relay's credentials: 502, saying so.
            corp.answer = b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"
            answer = await h.exchange(connect(f"dest.test:{h.dest_port}", auth()))
            assert answer.startswith(b"HTTP/1.1 502 "), answer
            assert b"upstream proxy refused the relay's credentials" in answer
            corp.answer = b"HTTP/1.1 403 Forbidden\r\n\r\n"
            answer = await h.exchange(connect(f"dest.test:{h.dest_port}", auth()))
            assert answer.startswith(b"HTTP/1.1 403 "), answer
    assert SECRET not in caplog.text
    assert basic.decode() not in caplog.text


async def test_an_unreachable_upstream_is_502() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: refused
        upstream = parse_upstream_url(f"http://u:{SECRET}@127.0.0.1:{port}")
        async with proxy(upstream=upstream) as h:
            h.server.resolver = NoNames()
            answer = await h.exchange(connect(f"dest.test:{h.dest_port}", auth()))
    assert answer.startswith(b"HTTP/1.1 502 "), answer
    assert f"upstream proxy http://127.0.0.1:{port}".encode() in answer
    assert SECRET.encode() not in answer


async def test_an_https_upstream_trusting_proxy_upstream_ca(tmp_path: Path) -> None:
    import ssl

    cert, key, ca_file = listener_files(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    async with corp_proxy(server_tls) as corp:
        env = {
            "CODER_AI_GATEWAY_DATA_DIR": str(tmp_path),
            "CODER_AIBRIDGE_PROXY_UPSTREAM": f"https://u:{SECRET}@127.0.0.1:{corp.port}",
            "CODER_AI_GATEWAY_PROXY_UPSTREAM_CA": str(ca_file),
        }
        upstream = upstream_from_options(load_options(env, warn=lambda line: None))
        assert isinstance(upstream, UpstreamProxy) and upstream.tls is not None
        async with proxy(upstream=upstream) as h:
            h.server.resolver = NoNames()
            async with await h.connect() as stream:
                await stream.send_all(connect(f"dest.test:{h.dest_port}", auth()))
                assert await read_answer(stream) == b"HTTP/1.1 200 Connection Established\r\n\r\n"
                await stream.send_all(b"over tls")
                assert await read_answer(stream, b"over tls") == b"echo:over tls"
            assert corp.heads[0].startswith(b"CONNECT dest.test:")
            # Without the CA the upstream's certificate is refused: 502.
            untrusting = UpstreamProxy(
                "https", "127.0.0.1", corp.port, None, ssl.create_default_context()
            )
            h.server.settings = dataclasses.replace(h.server.settings, upstream=untrusting)
            answer = await h.exchange(connect(f"dest.test:{h.dest_port}", auth()))
            assert answer.startswith(b"HTTP/1.1 502 "), answer
            assert b"TLS to the upstream proxy failed" in answer


@pytest.mark.parametrize(
    "value",
    [
        f"socks5://u:{SECRET}@corp:1080",
        f"http://u:{SECRET}@corp",
        f"http://u:{SECRET}@corp:3128/path",
        f"http://u:{SECRET}@corp:99999",
    ],
)
def test_a_malformed_upstream_is_refused_without_its_secret(value: str) -> None:
    with pytest.raises(OptionError) as refused:
        load_options({"CODER_AI_GATEWAY_PROXY_UPSTREAM": value})
    assert "PROXY_UPSTREAM" in str(refused.value)
    assert SECRET not in str(refused.value)


async def test_an_unreadable_upstream_ca_stops_relay_proxy_before_it_binds(
    tmp_path: Path,
) -> None:
    from relay.errors import StartupError
    from relay.proxy.service import run_proxy

    env = {
        "CODER_AI_GATEWAY_DATA_DIR": str(tmp_path),
        "CODER_AI_GATEWAY_PROXY_UPSTREAM": f"https://u:{SECRET}@127.0.0.1:3128",
        "CODER_AI_GATEWAY_PROXY_UPSTREAM_CA": str(tmp_path / "missing.pem"),
        "CODER_AI_GATEWAY_PROXY_LISTEN_ADDR": "127.0.0.1:0",
    }
    with pytest.raises(StartupError, match="cannot load PROXY_UPSTREAM_CA") as refused:
        await run_proxy(load_options(env, warn=lambda line: None), env=env)
    assert SECRET not in str(refused.value)
