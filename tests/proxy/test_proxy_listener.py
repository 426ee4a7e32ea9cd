"""The proxy's listener on real loopback sockets: auth, CONNECT rules, the guard, limits.

No database: the token verifier is a stub, the resolver one the test controls,
and the tunnel's destination a small echo server on loopback (its range
allowed by the test's policy, as ``PROXY_ALLOWED_PRIVATE_CIDRS`` would).
"""

from __future__ import annotations

import base64
import ipaddress
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import httpx
import pytest
import trio

from relay.identity import Principal, Refusal
from relay.proxy.guard import IPAddress, Policy, parse_networks
from relay.proxy.server import ProxyServer, ProxySettings, SystemResolver

GOOD = "relay-token-alice"
BOB = "relay-token-bob"


class StubTokens:
    async def check(self, token: str) -> Principal | Refusal:
        if token == GOOD:
            return Principal("u-alice", "alice", "k1")
        if token == BOB:
            return Principal("u-bob", "bob", "k2")
        return "unknown"


@dataclass
class ScriptedResolver:
    """Answers from a table; ``calls`` counts lookups (a second lookup is a rebinding window)."""

    answers: dict[str, list[list[str]]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append(host)
        script = self.answers.get(host)
        if not script:
            return await SystemResolver().resolve(host, port)
        answer = script.pop(0) if len(script) > 1 else script[0]
        return [ipaddress.ip_address(a) for a in answer]


def auth(token: str = GOOD, user: str = "x") -> bytes:
    return b"Proxy-Authorization: Basic " + base64.b64encode(f"{user}:{token}".encode()) + b"\r\n"


async def echo_handler(stream: trio.SocketStream) -> None:
    async with stream:
        while data := await stream.receive_some(65536):
            await stream.send_all(b"echo:" + data)


async def http_handler(stream: trio.SocketStream) -> None:
    async with stream:
        head = b""
        while b"\r\n\r\n" not in head:
            data = await stream.receive_some(65536)
            if not data:
                return
            head += data
        body = head.split(b"\r\n\r\n", 1)[0]
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (len(body), body)
        )


@dataclass
class Harness:
    port: int
    dest_port: int
    http_port: int
    resolver: ScriptedResolver
    server: ProxyServer

    async def connect(self) -> trio.SocketStream:
        return await trio.open_tcp_stream("127.0.0.1", self.port)

    async def exchange(self, head: bytes, *, read_all: bool = True) -> bytes:
        async with await self.connect() as stream:
            await stream.send_all(head)
            return await read_answer(stream)


async def read_answer(stream: trio.SocketStream, until: bytes = b"\r\n\r\n") -> bytes:
    data = b""
    with trio.fail_after(5):
        while until not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    return data


@asynccontextmanager
async def proxy(**changes: object) -> AsyncIterator[Harness]:
    async with trio.open_nursery() as nursery:
        echo = (await nursery.start(partial(trio.serve_tcp, echo_handler, 0, host="127.0.0.1")))[0]
        web = (await nursery.start(partial(trio.serve_tcp, http_handler, 0, host="127.0.0.1")))[0]
        dest_port = echo.socket.getsockname()[1]
        http_port = web.socket.getsockname()[1]
        resolver = ScriptedResolver()
        tls: ssl.SSLContext | None = changes.pop("tls", None)  # type: ignore[assignment]
        settings = ProxySettings(
            policy=changes.pop("policy", Policy(allowed=parse_networks("127.0.0.1/32"))),  # type: ignore[arg-type]
            ports=frozenset({443, 80, dest_port, http_port}),
            header_timeout=changes.pop("header_timeout", 2.0),  # type: ignore[arg-type]
            **changes,  # type: ignore[arg-type]
        )
        server = ProxyServer(settings, lambda: StubTokens(), resolver=resolver, tls=tls)
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(server.serve, listeners)
        port = listeners[0].socket.getsockname()[1]
        yield Harness(port, dest_port, http_port, resolver, server)
        nursery.cancel_scope.cancel()


def connect(target: str, *extra: bytes) -> bytes:
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n".encode() + b"".join(extra) + b"\r\n"


async def test_missing_garbled_and_wrong_credentials_get_407() -> None:
    async with proxy() as h:
        target = f"127.0.0.1:{h.dest_port}"
        for extra in (
            b"",
            b"Proxy-Authorization: Basic !!!\r\n",
            b"Proxy-Authorization: Bearer " + GOOD.encode() + b"\r\n",
            auth("wrong-token"),
            auth(""),
        ):
            answer = await h.exchange(connect(target, extra))
            assert answer.startswith(b"HTTP/1.1 407 "), (extra, answer)
            assert b'proxy-authenticate: Basic realm="relay AI Gateway Proxy"' in answer
            # Never a hint of which part was wrong.
            assert b"proxy authentication required" in answer
        assert h.resolver.calls == []  # nothing resolved before authentication


async def test_a_tunnel_carries_bytes_both_ways_to_the_checked_address() -> None:
    async with proxy() as h:
        h.resolver.answers["dest.test"] = [["127.0.0.1"], ["127.0.0.2"]]
        async with await h.connect() as stream:
            await stream.send_all(connect(f"dest.test:{h.dest_port}", auth()))
            answer = await read_answer(stream)
            assert answer == b"HTTP/1.1 200 Connection Established\r\n\r\n"
            await stream.send_all(b"hello")
            assert await read_answer(stream, b"hello") == b"echo:hello"
            await stream.send_eof()
            assert await stream.receive_some(100) == b""
        # Resolved once: the second (rebinding) answer was never asked for.
        assert h.resolver.calls == ["dest.test"]


async def test_bytes_sent_with_the_connect_head_reach_the_destination() -> None:
    async with proxy() as h:
        async with await h.connect() as stream:
            await stream.send_all(connect(f"127.0.0.1:{h.dest_port}", auth()) + b"early")
            answer = await read_answer(stream, b"early")
            assert answer == b"HTTP/1.1 200 Connection Established\r\n\r\necho:early"


@pytest.mark.parametrize(
    "target",
    [
        "127.0.0.2:443",
        "[::ffff:127.0.0.1]:443",
        "[::1]:443",
        "2130706433:443",
        "0x7f.1:443",
        "0177.0.0.1:443",
        "127.1:443",
        "localhost:443",  # the system resolver's loopback answer
        "LOCALHOST.:443",
        "169.254.169.254:80",
    ],
)
async def test_blocked_destinations_get_403(target: str) -> None:
    async with proxy(policy=Policy()) as h:
        answer = await h.exchange(connect(target, auth()))
        assert answer.startswith(b"HTTP/1.1 403 "), answer
        assert b"addresses are not reachable" in answer


async def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    async with proxy() as h:
        h.resolver.answers["internal.test"] = [["10.1.2.3"]]
        h.resolver.answers["mixed.test"] = [["127.0.0.1", "10.0.0.1"]]
        answer = await h.exchange(connect("internal.test:443", auth()))
        assert answer.startswith(b"HTTP/1.1 403 ")
        assert b"internal.test resolves to 10.1.2.3: private addresses are not reachable" in answer
        # One answer allowed (127.0.0.1 is, in this policy), one not: refused (fail closed).
        answer = await h.exchange(connect(f"mixed.test:{h.dest_port}", auth()))
        assert answer.startswith(b"HTTP/1.1 403 ")


@pytest.mark.parametrize("port", [22, 8443, 5432, 4001])
async def test_connect_to_other_ports_gets_403(port: int) -> None:
    async with proxy() as h:
        answer = await h.exchange(connect(f"api.openai.com:{port}", auth()))
        assert answer.startswith(b"HTTP/1.1 403 ")
        assert b"not allowed (only 443 and 80)" in answer
        assert h.resolver.calls == []


async def test_absolute_form_requests_follow_the_same_rules() -> None:
    async with proxy(policy=Policy()) as h:
        for url in ("http://127.0.0.1/", "http://[::1]/x", "http://localhost/", "http://0x7f.1/"):
            head = f"GET {url} HTTP/1.1\r\nHost: example.com\r\n".encode() + auth() + b"\r\n"
            answer = await h.exchange(head)
            assert answer.startswith(b"HTTP/1.1 403 "), (url, answer)
        head = b"GET http://localhost:6379/ HTTP/1.1\r\nHost: x\r\n" + auth() + b"\r\n"
        assert (await h.exchange(head)).startswith(b"HTTP/1.1 403 ")
        head = b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: x\r\n\r\n"
        assert (await h.exchange(head)).startswith(b"HTTP/1.1 407 ")


async def test_httpx_through_the_proxy_plain_http() -> None:
    """A real client: the absolute-form request goes out in origin form, credentials stripped."""
    async with proxy() as h:
        h.resolver.answers["web.test"] = [["127.0.0.1"]]
        proxy_url = f"http://alice:{GOOD}@127.0.0.1:{h.port}"
        async with httpx.AsyncClient(proxy=proxy_url) as client:
            response = await client.get(f"http://web.test:{h.http_port}/path?q=1")
        assert response.status_code == 200
        seen = response.content
        assert seen.startswith(b"GET /path?q=1 HTTP/1.1\r\n")
        assert f"Host: web.test:{h.http_port}".encode() in seen
        assert b"proxy-authorization" not in seen.lower()
        assert b"Connection: close" in seen


async def test_curl_through_the_proxy_is_refused_without_credentials() -> None:
    curl = pytest.importorskip("shutil").which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    async with proxy() as h:
        h.resolver.answers["web.test"] = [["127.0.0.1"]]
        url = f"http://web.test:{h.http_port}/hello"
        args = [
            curl,
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-x",
            f"http://127.0.0.1:{h.port}",
        ]
        refused = await trio.run_process([*args, url], capture_stdout=True, check=False)
        assert refused.stdout == b"407"
        allowed = await trio.run_process(
            [*args, "-U", f"me:{GOOD}", url], capture_stdout=True, check=False
        )
        assert allowed.stdout == b"200"


async def test_huge_heads_get_431_and_the_listener_goes_on() -> None:
    async with proxy() as h:
        head = connect("a.test:443", auth(), b"X-Pad: " + b"a" * 20_000 + b"\r\n")
        async with await h.connect() as stream:
            try:
                await stream.send_all(head)
            except trio.BrokenResourceError:
                pass
            answer = await read_answer(stream)
        assert answer.startswith(b"HTTP/1.1 431 ")
        answer = await h.exchange(connect(f"127.0.0.1:{h.dest_port}", auth()))
        assert answer.startswith(b"HTTP/1.1 200 ")


async def test_garbage_gets_400() -> None:
    async with proxy() as h:
        assert (await h.exchange(b"\x16\x03\x01\x00\xa5\x01\x00\r\n\r\n")).startswith(
            b"HTTP/1.1 400 "
        )
        assert (await h.exchange(b"CONNECT [::1 HTTP/1.1\r\n" + auth() + b"\r\n")).startswith(
            b"HTTP/1.1 400 "
        )


async def test_a_slow_head_is_cut_off() -> None:
    async with proxy(header_timeout=0.2) as h:
        async with await h.connect() as stream:
            await stream.send_all(b"CONNECT a.test:443 HTTP/1.1\r\n")
            with trio.fail_after(2):
                answer = await read_answer(stream)
        assert answer.startswith(b"HTTP/1.1 408 ")


async def test_connection_cap_and_per_user_cap() -> None:
    async with proxy(max_connections=3, max_tunnels_per_user=1) as h:
        first = await h.connect()
        await first.send_all(connect(f"127.0.0.1:{h.dest_port}", auth()))
        assert (await read_answer(first)).startswith(b"HTTP/1.1 200 ")
        # alice has her one tunnel: a second is 429; bob's is fine.
        answer = await h.exchange(connect(f"127.0.0.1:{h.dest_port}", auth()))
        assert answer.startswith(b"HTTP/1.1 429 ")
        second = await h.connect()
        await second.send_all(connect(f"127.0.0.1:{h.dest_port}", auth(BOB)))
        assert (await read_answer(second)).startswith(b"HTTP/1.1 200 ")
        idle = await h.connect()  # unauthenticated, but holding a connection
        await trio.sleep(0.05)
        assert (await h.exchange(b"")).startswith(b"HTTP/1.1 503 ")
        for stream in (first, second, idle):
            await stream.aclose()
        with trio.fail_after(2):
            while h.server.open or h.server.per_user:
                await trio.sleep(0.01)


async def test_an_idle_tunnel_is_closed() -> None:
    async with proxy(idle_timeout=0.2) as h:
        async with await h.connect() as stream:
            await stream.send_all(connect(f"127.0.0.1:{h.dest_port}", auth()))
            assert (await read_answer(stream)).startswith(b"HTTP/1.1 200 ")
            with trio.fail_after(2):
                assert await stream.receive_some(10) == b""


async def test_dial_failure_is_502() -> None:
    async with proxy() as h:
        # A port nothing listens on (the echo port of a closed listener).
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        await listener.aclose()
        h.server.settings = ProxySettings(policy=h.server.settings.policy, ports=frozenset({port}))
        answer = await h.exchange(connect(f"127.0.0.1:{port}", auth()))
        assert answer.startswith(b"HTTP/1.1 502 ")


async def test_dial_timeout_is_504() -> None:
    class Slow:
        async def resolve(self, host: str, port: int) -> list[IPAddress]:
            await trio.sleep(10)
            return []

    async with proxy(dial_timeout=0.1) as h:
        h.server.resolver = Slow()
        answer = await h.exchange(connect("slow.test:443", auth()))
        assert answer.startswith(b"HTTP/1.1 504 ")


async def test_a_name_with_no_address_is_refused() -> None:
    async with proxy() as h:
        h.resolver.answers["empty.test"] = [[]]
        answer = await h.exchange(connect("empty.test:443", auth()))
        assert answer.startswith(b"HTTP/1.1 403 "), answer
        assert b"empty.test has no address" in answer


async def test_the_exemptions_through_the_listener() -> None:
    """Through a real CONNECT: with no range allowed, loopback is refused except at the
    relay's own access URL (host and port); an allowed range opens only itself."""
    from relay.proxy.guard import exempt_from_url

    async with proxy(policy=Policy()) as h:
        exempt = exempt_from_url(f"http://relay.test:{h.dest_port}")
        h.server.settings = ProxySettings(
            policy=Policy(exempt=exempt), ports=h.server.settings.ports, header_timeout=2.0
        )
        h.resolver.answers["relay.test"] = [["127.0.0.1"]]
        h.resolver.answers["other.test"] = [["127.0.0.1"]]
        async with await h.connect() as stream:
            await stream.send_all(connect(f"relay.test:{h.dest_port}", auth()))
            assert (await read_answer(stream)).startswith(b"HTTP/1.1 200 ")
            await stream.send_all(b"ping")
            assert await read_answer(stream, b"ping") == b"echo:ping"
        for target in (f"other.test:{h.dest_port}", f"relay.test:{h.http_port}"):
            answer = await h.exchange(connect(target, auth()))
            assert answer.startswith(b"HTTP/1.1 403 "), (target, answer)
        # An allowed range: 127.0.0.1/32 opens 127.0.0.1, not the rest of loopback.
        h.server.settings = ProxySettings(
            policy=Policy(allowed=parse_networks("127.0.0.1/32")),
            ports=h.server.settings.ports,
            header_timeout=2.0,
        )
        h.resolver.answers["near.test"] = [["127.0.0.2"]]
        answer = await h.exchange(connect(f"other.test:{h.dest_port}", auth()))
        assert answer.startswith(b"HTTP/1.1 200 ")
        answer = await h.exchange(connect(f"near.test:{h.dest_port}", auth()))
        assert answer.startswith(b"HTTP/1.1 403 ")
