"""An extra, not a floor: the ASGI pass-through app reading its upstream through httpx.

Kept as the labelled target ``asgi-httpx`` for comparison only. httpx yields
one piece (and so one ASGI send) per HTTP chunk, i.e. per provider event,
where the relay's own client yields once per socket read: this target
measures httpx, not the stack. The floor is ``asgi_passthrough``.

Hypercorn's trio worker and one pooled httpx client, nothing else: no routing, no authentication, no parsing, no
recording. Each request goes upstream with the same method, path, query,
headers and body; the upstream's status, headers and raw body chunks come
back as they arrive. Like the relay, it watches ``receive()`` for
``http.disconnect`` (hypercorn does not cancel the app when the client
leaves) so the upstream connection closes as soon as the client is gone.

    BENCH_UPSTREAM=http://127.0.0.1:9000 \\
        hypercorn -k trio -b 127.0.0.1:8002 bench.load.floors.asgi_httpx:app
"""

from __future__ import annotations

import os

import httpx
import trio

from relay.asgi import Message, Receive, Send

from .asgi_passthrough import cancel_on_disconnect, read_body

_HOP_BY_HOP = frozenset(
    {
        b"host",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


class PassThrough:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.client: httpx.AsyncClient | None = None

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.client = httpx.AsyncClient(
                    timeout=httpx.Timeout(60.0, connect=5.0),
                    limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Message, receive: Receive, send: Send) -> None:
        assert self.client is not None, "lifespan startup did not run"
        try:
            body = await read_body(receive)
        except trio.BrokenResourceError:
            return
        url = self.upstream + scope["raw_path"].decode("latin-1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        headers = [(n, v) for n, v in scope["headers"] if n not in _HOP_BY_HOP]
        request = self.client.build_request(scope["method"], url, headers=headers, content=body)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_on_disconnect, receive, nursery.cancel_scope)
            try:
                response = await self.client.send(request, stream=True)
            except httpx.HTTPError:
                await send({"type": "http.response.start", "status": 502, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                nursery.cancel_scope.cancel()
                return
            try:
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status_code,
                        "headers": [
                            (n, v) for n, v in response.headers.raw if n.lower() not in _HOP_BY_HOP
                        ],
                    }
                )
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            finally:
                # Closing a response that was not read to its end closes its connection.
                with trio.CancelScope(shield=True):
                    await response.aclose()
            nursery.cancel_scope.cancel()


app = PassThrough(os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:9000"))
