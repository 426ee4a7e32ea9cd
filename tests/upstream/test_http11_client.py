"""The relay's HTTP/1.1 upstream client against the mock upstream and small trio servers."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path

import h11
import msgspec
import pytest
import trio

from relay.testing.mock_upstream import MockUpstream
from relay.upstream.errors import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamReadTimeout,
    UpstreamTimeout,
)
from relay.upstream.http11 import HTTP11Client

KEY_HEADER = (b"x-api-key", b"sk-ant-test-0001")
JSON = (b"content-type", b"application/json")


def messages_body(scenario: str = "long", stream: bool = True) -> bytes:
    return msgspec.json.encode(
        {
            "model": f"mock-{scenario}",
            "max_tokens": 64,
            "stream": stream,
            "messages": [{"role": "user", "content": "hi"}],
        }
    )


def knobs(**values: str) -> list[tuple[bytes, bytes]]:
    return [(f"x-mock-{k.replace('_', '-')}".encode(), v.encode()) for k, v in values.items()]


@pytest.fixture
def client() -> HTTP11Client:
    return HTTP11Client(connect_timeout=2.0, read_timeout=5.0)


async def start_mock(nursery: trio.Nursery, **kwargs: object) -> MockUpstream:
    mock = MockUpstream(**kwargs)  # type: ignore[arg-type]
    await nursery.start(mock.serve, 0)
    return mock


Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def start_server(nursery: trio.Nursery, handler: Handler) -> str:
    """A raw trio TCP server on an ephemeral loopback port; returns its base URL."""
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def read_request(stream: trio.SocketStream, conn: h11.Connection) -> h11.Request | None:
    """Read one whole request (body discarded); None if the client closed first."""
    request = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed):
            return None


def ok_response(body: bytes, *, chunked: bool = False) -> bytes:
    if not chunked:
        return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body)
    return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (
        len(body),
        body,
    )


# -- bytes relayed exactly ------------------------------------------------------


@pytest.mark.parametrize("chunking", ["event", "random", "coalesce", "bytes1"])
async def test_body_bytes_identical_for_every_chunking(
    nursery: trio.Nursery, client: HTTP11Client, chunking: str
) -> None:
    mock = await start_mock(nursery, chunking=chunking, seed=3)
    headers = [KEY_HEADER, JSON, *knobs(events="120")]
    received = []
    async with client.stream("POST", mock.base_url + "/v1/messages", headers, messages_body()) as r:
        assert r.status_code == 200
        assert r.headers.get("content-type", "").startswith("text/event-stream")
        assert (b"transfer-encoding", b"chunked") in r.headers.raw
        async for piece in r.aiter_raw():
            assert piece  # never an empty yield
            received.append(piece)
    assert b"".join(received) == mock.requests[0].response_body
    assert mock.requests[0].response_body.count(b"event: content_block_delta") == 120


async def test_blocking_answer_read_whole_and_request_headers_as_given(
    nursery: trio.Nursery, client: HTTP11Client
) -> None:
    mock = await start_mock(nursery)
    body = messages_body("text", stream=False)
    headers = [KEY_HEADER, JSON, (b"accept-encoding", b"identity")]
    async with client.stream("POST", mock.base_url + "/v1/messages?beta=true", headers, body) as r:
        answer = await r.aread()
    assert r.status_code == 200
    assert msgspec.json.decode(answer)["type"] == "message"
    assert await r.aread() == b""  # read once: the body is not kept
    assert r.headers["Content-Type"] == "application/json"
    assert ("content-length", str(len(answer))) in r.headers.multi_items()
    assert "request-id" in r.headers and r.headers.get("x-absent") is None
    recorded = mock.requests[0]
    assert recorded.path == "/v1/messages?beta=true"
    assert recorded.body == body
    sent = [name.lower() for name, _ in recorded.headers]
    # Only host and framing are added: no user-agent, accept or connection defaults.
    assert sorted(sent) == sorted(
        ["host", "x-api-key", "content-type", "accept-encoding", "content-length"]
    )
    assert recorded.header("host") == f"127.0.0.1:{mock.port}"
    assert recorded.header("content-length") == str(len(body))


async def test_one_yield_per_socket_read(nursery: trio.Nursery, client: HTTP11Client) -> None:
    events = [b'data: {"n": %d}\n\n' % i for i in range(31)]
    wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    wire += b"".join(b"%x\r\n%b\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"

    async def handler(stream: trio.SocketStream) -> None:
        if await read_request(stream, h11.Connection(h11.SERVER)) is not None:
            await stream.send_all(wire)  # one write: 31 HTTP chunks, one loopback segment
        await stream.receive_some(1)

    url = await start_server(nursery, handler)
    async with client.stream("GET", url + "/", []) as r:
        pieces = [piece async for piece in r.aiter_raw()]
    assert pieces == [b"".join(events)]


async def test_bytes_are_never_held_back(nursery: trio.Nursery, client: HTTP11Client) -> None:
    """The server sends the second chunk only once the client has yielded the first."""
    first_seen = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        if await read_request(stream, h11.Connection(h11.SERVER)) is None:
            return
        await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await stream.send_all(b"6\r\nfirst\n\r\n")
        await first_seen.wait()
        await stream.send_all(b"7\r\nsecond\n\r\n0\r\n\r\n")

    url = await start_server(nursery, handler)
    pieces = []
    with trio.fail_after(5):  # a held-back first chunk would wait here for ever
        async with client.stream("GET", url + "/", []) as r:
            async for piece in r.aiter_raw():
                pieces.append(piece)
                first_seen.set()
    assert b"".join(pieces) == b"first\nsecond\n"
    assert pieces[0] == b"first\n"


# -- connection reuse and early exit -----------------------------------------------


async def test_complete_exchanges_reuse_one_connection(
    nursery: trio.Nursery, client: HTTP11Client
) -> None:
    mock = await start_mock(nursery)
    for _ in range(3):
        async with client.stream(
            "POST", mock.base_url + "/v1/messages", [KEY_HEADER, JSON], messages_body("text")
        ) as r:
            await r.aread()
        assert client.idle_connections() == 1
    assert len({request.conn_id for request in mock.requests}) == 1
    assert mock.open_connections == 1
    await client.aclose()
    # The phase is not asserted: the mock may still be inside its last write's checkpoint.
    assert (await mock.wait_for_close(request_index=2)).kind == "closed-by-peer"


async def test_leaving_mid_stream_closes_upstream_at_once(
    nursery: trio.Nursery, client: HTTP11Client
) -> None:
    mock = await start_mock(nursery)
    headers = [KEY_HEADER, JSON, *knobs(events="1000", gap_ms="20")]
    async with client.stream("POST", mock.base_url + "/v1/messages", headers, messages_body()) as r:
        async for _ in r.aiter_raw():
            break
    event = await mock.wait_for_close(request_index=0)
    assert (event.kind, event.phase) == ("closed-by-peer", "mid-stream")
    assert client.idle_connections() == 0


async def test_cancelled_before_the_response_closes_upstream(
    nursery: trio.Nursery, client: HTTP11Client
) -> None:
    mock = await start_mock(nursery)
    headers = [KEY_HEADER, JSON, *knobs(headers_delay_ms="10000")]
    with trio.CancelScope() as scope:

        async def cancel_once_received() -> None:
            await mock.wait_for_request(0)
            scope.cancel()

        nursery.start_soon(cancel_once_received)
        async with client.stream("POST", mock.base_url + "/v1/messages", headers, messages_body()):
            pytest.fail("the response head never came")
    assert scope.cancelled_caught
    event = await mock.wait_for_close(request_index=0)
    assert (event.kind, event.phase) == ("closed-by-peer", "before-response")
    assert client.idle_connections() == 0


# -- errors ---------------------------------------------------------------------


async def test_read_timeout_before_and_during_the_body(nursery: trio.Nursery) -> None:
    mock = await start_mock(nursery)
    client = HTTP11Client(connect_timeout=2.0, read_timeout=0.2)
    url = mock.base_url + "/v1/messages"
    with pytest.raises(UpstreamReadTimeout):
        headers = [KEY_HEADER, JSON, *knobs(headers_delay_ms="5000")]
        async with client.stream("POST", url, headers, messages_body()):
            pass
    headers = [KEY_HEADER, JSON, *knobs(first_token_ms="5000")]
    async with client.stream("POST", url, headers, messages_body()) as r:
        assert r.status_code == 200
        with pytest.raises(UpstreamReadTimeout) as caught:
            await r.aread()
    assert isinstance(caught.value, UpstreamTimeout)
    for index in (0, 1):
        assert (await mock.wait_for_close(request_index=index)).kind == "closed-by-peer"


async def test_connect_refused_is_a_connect_error(client: HTTP11Client) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(UpstreamConnectError):
            async with client.stream("GET", f"http://127.0.0.1:{port}/", []):
                pass


async def test_connect_timeout() -> None:
    # A listener whose accept queue is full: the kernel drops further SYNs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                fillers.append(filler)
                try:
                    filler.connect(("127.0.0.1", port))
                except BlockingIOError:
                    pass
            client = HTTP11Client(connect_timeout=0.3, read_timeout=5.0)
            with pytest.raises(UpstreamConnectTimeout) as caught:
                async with client.stream("GET", f"http://127.0.0.1:{port}/", []):
                    pass
            assert isinstance(caught.value, UpstreamTimeout)
        finally:
            for filler in fillers:
                filler.close()


async def test_malformed_response_and_eof_mid_body(
    nursery: trio.Nursery, client: HTTP11Client
) -> None:
    async def garbage(stream: trio.SocketStream) -> None:
        if await read_request(stream, h11.Connection(h11.SERVER)) is not None:
            await stream.send_all(b"HTTP/1.1 two hundred\r\n\r\n")

    url = await start_server(nursery, garbage)
    with pytest.raises(UpstreamProtocolError):
        async with client.stream("GET", url + "/", []):
            pass

    mock = await start_mock(nursery)
    async with client.stream(
        "POST", mock.base_url + "/v1/messages", [KEY_HEADER, JSON], messages_body("drop")
    ) as r:
        with pytest.raises(UpstreamProtocolError) as caught:
            await r.aread()
    assert isinstance(caught.value, UpstreamError)
    assert client.idle_connections() == 0


async def test_server_closing_after_response_is_not_pooled(
    nursery: trio.Nursery, client: HTTP11Client
) -> None:
    async def close_after(stream: trio.SocketStream) -> None:
        if await read_request(stream, h11.Connection(h11.SERVER)) is not None:
            await stream.send_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil eof")

    url = await start_server(nursery, close_after)
    async with client.stream("GET", url + "/", []) as r:
        assert await r.aread() == b"until eof"
    assert client.idle_connections() == 0


# -- stale pooled connections -----------------------------------------------------


class FlakyServer:
    """Answers the first request of each connection; the first connection then drops the next."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[tuple[int, bytes]] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn_number = self.connections
        conn = h11.Connection(h11.SERVER)
        while True:
            request = await read_request(stream, conn)
            if request is None:
                return
            self.requests.append((conn_number, request.target))
            if conn_number == 1 and len(self.requests) > 1:
                return  # closed with the request unanswered, as a server timing out idle ones
            await stream.send_all(ok_response(b"conn %d" % conn_number, chunked=True))
            conn = h11.Connection(h11.SERVER)  # the answer went out raw, not through h11


async def test_stale_pooled_connection_is_retried_once(
    nursery: trio.Nursery, client: HTTP11Client
) -> None:
    server = FlakyServer()
    url = await start_server(nursery, server.handle)
    async with client.stream("POST", url + "/a", [], b"one") as r:
        assert await r.aread() == b"conn 1"
    assert client.idle_connections() == 1
    async with client.stream("POST", url + "/b", [], b"two") as r:
        assert await r.aread() == b"conn 2"
    assert server.requests == [(1, b"/a"), (1, b"/b"), (2, b"/b")]


async def test_started_streamed_body_is_not_retried(
    nursery: trio.Nursery, client: HTTP11Client
) -> None:
    server = FlakyServer()
    url = await start_server(nursery, server.handle)
    async with client.stream("POST", url + "/a", [], b"one") as r:
        await r.aread()

    async def body() -> AsyncIterator[bytes]:
        yield b"streamed"

    with pytest.raises(UpstreamProtocolError):
        async with client.stream("POST", url + "/b", [], body()):
            pass
    assert server.connections == 1


async def test_connection_closed_while_idle_is_not_reused(
    nursery: trio.Nursery, client: HTTP11Client
) -> None:
    closed = trio.Event()
    connections = 0

    async def answer_once(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        if await read_request(stream, h11.Connection(h11.SERVER)) is not None:
            await stream.send_all(ok_response(b"fine"))
        await stream.aclose()
        closed.set()

    url = await start_server(nursery, answer_once)
    for _ in range(2):
        async with client.stream("GET", url + "/", []) as r:
            assert await r.aread() == b"fine"
        await closed.wait()
        closed = trio.Event()
    assert connections == 2


# -- request bodies ---------------------------------------------------------------


async def test_streamed_request_body_chunked_or_with_length(
    nursery: trio.Nursery, client: HTTP11Client
) -> None:
    mock = await start_mock(nursery)
    payload = messages_body("text", stream=False)

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 7):
            yield payload[start : start + 7]
            await trio.lowlevel.checkpoint()

    url = mock.base_url + "/v1/messages"
    async with client.stream("POST", url, [KEY_HEADER, JSON], pieces()) as r:
        assert r.status_code == 200
        await r.aread()
    length = (b"content-length", str(len(payload)).encode())
    async with client.stream("POST", url, [KEY_HEADER, JSON, length], pieces()) as r:
        assert r.status_code == 200
        await r.aread()
    chunked, framed = mock.requests
    assert chunked.body == framed.body == payload
    assert chunked.header("transfer-encoding") == "chunked"
    assert chunked.header("content-length") is None
    assert framed.header("content-length") == str(len(payload))
    assert framed.header("transfer-encoding") is None
    assert chunked.conn_id == framed.conn_id


# -- TLS ------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files), made by the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command to make a test certificate")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-days", "1", "-subj", "/CN=relay test", "-keyout", str(key)),
            *("-out", str(cert), "-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_round_trip_and_reuse(nursery: trio.Nursery, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    connections = 0

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        nonlocal connections
        connections += 1
        while True:
            conn = h11.Connection(h11.SERVER)
            try:
                request = await read_request(stream, conn)  # type: ignore[arg-type]
            except trio.BrokenResourceError:
                return
            if request is None:
                return
            await stream.send_all(ok_response(b"secure " + request.target, chunked=True))

    listeners = await nursery.start(
        partial(trio.serve_ssl_over_tcp, handler, 0, server_context, host="127.0.0.1")
    )
    port = listeners[0].transport_listener.socket.getsockname()[1]
    trusting = ssl.create_default_context(cafile=cert)
    client = HTTP11Client(connect_timeout=2.0, read_timeout=5.0, ssl_context=trusting)
    for path in (b"/one", b"/two"):
        async with client.stream("GET", f"https://127.0.0.1:{port}{path.decode()}", []) as r:
            assert await r.aread() == b"secure " + path
    assert connections == 1
    await client.aclose()

    untrusting = HTTP11Client(connect_timeout=2.0, read_timeout=5.0)  # certifi's CAs only
    with pytest.raises(UpstreamConnectError):
        async with untrusting.stream("GET", f"https://127.0.0.1:{port}/", []):
            pass


async def test_the_ca_named_by_ssl_cert_file_is_trusted(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A corporate CA (or an egress proxy's) is handed to clients as SSL_CERT_FILE.
    cert, key = self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        conn = h11.Connection(h11.SERVER)
        with contextlib.suppress(trio.BrokenResourceError):
            if await read_request(stream, conn) is not None:  # type: ignore[arg-type]
                await stream.send_all(ok_response(b"trusted", chunked=False))

    listeners = await nursery.start(
        partial(trio.serve_ssl_over_tcp, handler, 0, server_context, host="127.0.0.1")
    )
    port = listeners[0].transport_listener.socket.getsockname()[1]
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    client = HTTP11Client(connect_timeout=2.0, read_timeout=5.0)  # the default context
    try:
        async with client.stream("GET", f"https://127.0.0.1:{port}/", []) as r:
            assert await r.aread() == b"trusted"
    finally:
        await client.aclose()


async def test_the_ca_bundle_is_loaded_off_the_event_loop(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reading certifi's bundle is blocking file I/O: never on the trio thread.
    import threading

    loop_thread = threading.current_thread()
    loaded_in: list[threading.Thread] = []
    create = ssl.create_default_context

    def recording(*args: object, **kwargs: object) -> ssl.SSLContext:
        loaded_in.append(threading.current_thread())
        return create(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl, "create_default_context", recording)

    async def close_at_once(stream: trio.SocketStream) -> None:
        await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, close_at_once, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    client = HTTP11Client(connect_timeout=2.0, read_timeout=5.0)
    for _ in range(2):
        with pytest.raises(UpstreamConnectError):  # no TLS there; the bundle was loaded first
            async with client.stream("GET", f"https://127.0.0.1:{port}/", []):
                pass
    assert len(loaded_in) == 1 and loaded_in[0] is not loop_thread
