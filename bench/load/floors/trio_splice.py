"""The floor of Python on trio: a bare trio + h11 byte-splice proxy.

No ASGI server, no HTTP client library, no parsing of the payload: per client
connection it reads each request with h11, forwards it on one upstream
keep-alive connection of its own, and copies the upstream's response bytes to
the client exactly as they arrive. h11 watches the copied bytes only to find
where the response ends, so the connection can be reused.

A reader task per client connection keeps reading the client while the
response streams: when the client leaves, the connection's scope is cancelled
and the upstream connection closed at once (what the relay must do too), so
the harness's upstream-close delays compare fairly.

HTTP/1.1 clients only (responses are spliced as the upstream framed them).

    python -m bench.load.floors.trio_splice --port 8001 --upstream http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import functools
import urllib.parse

import h11
import trio

RECEIVE_SIZE = 65536
MAX_BUFFERED = 1 << 20  # unread client bytes (pipelining) before we hang up
_DROPPED_REQUEST_HEADERS = frozenset(
    {
        b"host",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"transfer-encoding",
        b"content-length",  # set again from the body read
    }
)


class _ClientReader:
    """Everything the client sends, buffered; the end of the client cancels ``scope``."""

    def __init__(self, stream: trio.SocketStream, scope: trio.CancelScope) -> None:
        self.stream = stream
        self.scope = scope
        self.buffer = bytearray()
        self.eof = False
        self._arrived = trio.Event()

    async def run(self) -> None:
        try:
            while data := await self.stream.receive_some(RECEIVE_SIZE):
                self.buffer += data
                if len(self.buffer) > MAX_BUFFERED:
                    break
                self._arrived.set()
        except trio.BrokenResourceError:
            pass
        self.eof = True
        self.scope.cancel()  # the client is gone: stop whatever is in flight

    async def next_request(self) -> tuple[h11.Request, bytes] | None:
        """The next whole request, or None when the client closed between requests."""
        parser = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                if not self.buffer:
                    if self.eof:
                        return None
                    self._arrived = trio.Event()
                    await self._arrived.wait()
                parser.receive_data(bytes(self.buffer))
                self.buffer.clear()
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                # Bytes after this request (pipelining) go back for the next one.
                self.buffer[:0] = parser.trailing_data[0]
                return request, bytes(body)
            else:
                return None


class SpliceProxy:
    def __init__(self, upstream: str) -> None:
        url = urllib.parse.urlsplit(upstream)
        self.upstream_host = url.hostname or "127.0.0.1"
        self.upstream_port = url.port or 80
        self.host_header = url.netloc.encode()
        self.port: int | None = None

    async def serve(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host, backlog=4096)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, client: trio.SocketStream) -> None:
        upstream: trio.SocketStream | None = None
        try:
            async with trio.open_nursery() as nursery:
                reader = _ClientReader(client, nursery.cancel_scope)
                nursery.start_soon(reader.run)
                while (received := await reader.next_request()) is not None:
                    if upstream is None:
                        upstream = await trio.open_tcp_stream(
                            self.upstream_host, self.upstream_port
                        )
                    request, body = received
                    if not await self._exchange(request, body, client, upstream):
                        break
                nursery.cancel_scope.cancel()
        except* (OSError, trio.BrokenResourceError, h11.ProtocolError):
            pass  # either side vanished: close both
        finally:
            with trio.CancelScope(shield=True):
                if upstream is not None:
                    await upstream.aclose()
                await client.aclose()

    async def _exchange(
        self,
        request: h11.Request,
        body: bytes,
        client: trio.SocketStream,
        upstream: trio.SocketStream,
    ) -> bool:
        """Forward one request, splice its response; True if both sides stay open."""
        headers = [(b"host", self.host_header), (b"content-length", b"%d" % len(body))]
        headers += [(n, v) for n, v in request.headers if n not in _DROPPED_REQUEST_HEADERS]
        framer = h11.Connection(h11.CLIENT)
        head = framer.send(
            h11.Request(method=request.method, target=request.target, headers=headers)
        )
        await upstream.send_all(head + body)
        framer.send(h11.Data(data=body))
        framer.send(h11.EndOfMessage())
        client_wants_close = any(
            n == b"connection" and b"close" in v.lower() for n, v in request.headers
        )
        while True:
            data = await upstream.receive_some(RECEIVE_SIZE)
            framer.receive_data(data)
            if data:
                await client.send_all(data)  # the splice: bytes exactly as received
            while (event := framer.next_event()) is not h11.NEED_DATA:
                if isinstance(event, h11.EndOfMessage):
                    reusable = framer.our_state is h11.DONE and framer.their_state is h11.DONE
                    return reusable and not client_wants_close
                if isinstance(event, h11.ConnectionClosed):
                    return False


async def _main(port: int, host: str, upstream: str) -> None:
    proxy = SpliceProxy(upstream)
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(proxy.serve, port, host))
        print(f"trio splice floor on http://{host}:{proxy.port} -> {upstream}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load.floors.trio_splice")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9000")
    args = parser.parse_args(argv)
    try:
        trio.run(_main, args.port, args.host, args.upstream)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
