"""Routes forwarded unparsed (models, count_tokens, stored responses, ...).

Both bodies stream through as they are, content-encoding included; the
provider key is injected as for intercepted routes. Nothing is recorded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import trio

from relay.asgi import HOP_BY_HOP, ClientDisconnected, Receive, Send, forwardable_response_headers
from relay.intercept.base import ErrorStyle, Outcome, send_error, watch_disconnect

_DROP = HOP_BY_HOP | {b"host", b"expect", b"content-length"}


async def relay_passthrough(
    send: Send,
    receive: Receive,
    client: httpx.AsyncClient,
    method: str,
    url: str,
    headers: list[tuple[bytes, bytes]],
    client_headers: list[tuple[bytes, bytes]],
    style: ErrorStyle,
) -> int | None:
    """Forward one request; returns the upstream status (None when unreachable).

    ``headers`` are the upstream headers (credentials already swapped);
    ``client_headers`` the client's own, for its accept-encoding and
    content-length (kept, so httpx streams the body as it is instead of
    re-framing it as chunked).

    The request body streams from the client to the provider as it arrives;
    the disconnect watcher starts once it has been read.
    """
    has_body = any(k in (b"content-length", b"transfer-encoding") for k, _ in client_headers)
    # Passthrough keeps the client's accept-encoding and relays bytes raw.
    out_headers = [(k, v) for k, v in headers if k not in _DROP and k != b"accept-encoding"]
    for k, v in client_headers:
        if k in (b"accept-encoding", b"content-length"):
            out_headers.append((k, v))
    request = client.build_request(
        method, url, headers=out_headers, content=_request_body(receive) if has_body else None
    )
    sent = {k for k, _ in out_headers}
    for name in ("user-agent", "accept", "accept-encoding"):
        if name.encode() not in sent and name in request.headers:
            del request.headers[name]
    try:
        response = await client.send(request, stream=True)
    except httpx.TimeoutException:
        await send_error(send, style, 504, "upstream timed out")
        return None
    except httpx.HTTPError as exc:
        await send_error(send, style, 502, f"upstream unreachable ({type(exc).__name__})")
        return None
    outcome = Outcome()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_disconnect, receive, nursery.cancel_scope, outcome)
        try:
            try:
                length = response.headers.get("content-length")
                headers_out = forwardable_response_headers(
                    response.headers.raw, streaming=length is None
                )
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status_code,
                        "headers": headers_out,
                    }
                )
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return response.status_code
            finally:
                await response.aclose()
        finally:
            nursery.cancel_scope.cancel()


async def _request_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return
