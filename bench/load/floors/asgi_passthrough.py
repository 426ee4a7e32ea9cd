"""The floor of our stack: a minimal pass-through ASGI app for ``hypercorn -k trio``.

The same parts the relay stands on and nothing else: hypercorn's trio
worker and the relay's own upstream client (``relay.upstream.http11``,
pooled by ``relay.upstream.clients.UpstreamClients`` with the relay's
settings: the same pool, the same socket read size, one yield per socket
read). No routing, no authentication, no parsing, no recording. Each request
goes upstream with the same method, path, query, headers and body; the
upstream's status, headers and body bytes come back as they are read. Like
the relay, it watches ``receive()`` for ``http.disconnect`` (hypercorn does
not cancel the app when the client leaves), so the upstream connection
closes as soon as the client is gone. So "relay ÷ this floor" is the cost of
the relay's own work.

    BENCH_UPSTREAM=http://127.0.0.1:9000 \\
        hypercorn -k trio -b 127.0.0.1:8002 bench.load.floors.asgi_passthrough:app
"""

from __future__ import annotations

import os
import sys

import trio

from relay.asgi import (
    HOP_BY_HOP,
    ClientDisconnected,
    Message,
    Receive,
    Send,
    forwardable_response_headers,
)
from relay.asgi import read_body as relay_read_body
from relay.upstream.clients import UpstreamClients
from relay.upstream.errors import UpstreamError

# The relay's defaults (CODER_AI_GATEWAY_UPSTREAM_CONNECT_TIMEOUT / _READ_TIMEOUT).
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 600.0
_DROP = HOP_BY_HOP | {b"host", b"content-length"}


async def read_body(receive: Receive) -> bytes:
    """The whole request body, as the relay reads it (its own ``read_body``, no limit)."""
    try:
        return await relay_read_body(receive, sys.maxsize)
    except ClientDisconnected:
        raise trio.BrokenResourceError("client left before the request body ended") from None


async def cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


class PassThrough:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.clients: UpstreamClients | None = None

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.clients = UpstreamClients(
                    connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.clients is not None:
                    await self.clients.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Message, receive: Receive, send: Send) -> None:
        assert self.clients is not None, "lifespan startup did not run"
        client = self.clients.get("floor", self.upstream)
        try:
            body = await read_body(receive)
        except trio.BrokenResourceError:
            return
        url = self.upstream + scope["raw_path"].decode("latin-1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        headers = [(n, v) for n, v in scope["headers"] if n not in _DROP]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_on_disconnect, receive, nursery.cancel_scope)
            try:
                async with client.stream(scope["method"], url, headers, body) as response:
                    length = response.headers.get("content-length")
                    await send(
                        {
                            "type": "http.response.start",
                            "status": response.status_code,
                            "headers": forwardable_response_headers(
                                response.headers.raw, streaming=length is None
                            ),
                        }
                    )
                    async for chunk in response.aiter_raw():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b""})
            except UpstreamError:
                await send({"type": "http.response.start", "status": 502, "headers": []})
                await send({"type": "http.response.body", "body": b""})
            nursery.cancel_scope.cancel()


app = PassThrough(os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:9000"))
