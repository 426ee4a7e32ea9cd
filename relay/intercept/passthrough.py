"""Routes forwarded unparsed (models, count_tokens, stored responses, ...).

Both bodies stream through as they are, content-encoding included; the
provider key is injected as for intercepted routes. Nothing is recorded.
With a centralized key pool the request body is read first, so it can be
replayed with the next key when the provider refuses one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import trio

from relay.asgi import (
    HOP_BY_HOP,
    BodyTooLarge,
    ClientDisconnected,
    Headers,
    Receive,
    Send,
    forwardable_response_headers,
    read_body,
)
from relay.dump import DumpHandle
from relay.intercept.base import (
    ErrorStyle,
    Outcome,
    answer_exhausted,
    fail_before_response,
    send_error,
    send_upstream,
    watch_disconnect,
)
from relay.upstream.errors import UpstreamError
from relay.upstream.http11 import HTTP11Client, RequestBody
from relay.upstream.keypool import Exhausted, Failover

log = logging.getLogger("relay.intercept")

_DROP = HOP_BY_HOP | {b"host", b"expect", b"content-length"}


async def relay_passthrough(
    send: Send,
    receive: Receive,
    client: HTTP11Client,
    method: str,
    url: str,
    headers: list[tuple[bytes, bytes]],
    client_headers: list[tuple[bytes, bytes]],
    style: ErrorStyle,
    *,
    failover: Failover | None = None,
    max_body: int = 32 * 1024 * 1024,
    dump: DumpHandle | None = None,
) -> int | None:
    """Forward one request; returns the upstream status (None when unreachable).

    ``headers`` are the upstream headers (credentials already swapped);
    ``client_headers`` the client's own, for its accept-encoding and
    content-length (kept, so the body streams as it is instead of being
    re-framed as chunked). ``failover``: the provider's key pool walk
    (then ``headers`` carry no credential and the body is buffered, up to
    ``max_body``).

    The request body streams from the client to the provider as it arrives;
    the disconnect watcher starts once it has been read.
    """
    has_body = any(k in (b"content-length", b"transfer-encoding") for k, _ in client_headers)
    # Passthrough keeps the client's accept-encoding and relays bytes raw.
    out_headers = [(k, v) for k, v in headers if k not in _DROP and k != b"accept-encoding"]
    for k, v in client_headers:
        if k in (b"accept-encoding", b"content-length"):
            out_headers.append((k, v))
    content: RequestBody = None
    if has_body and failover is not None:
        try:
            buffered = await read_body(receive, max_body)
        except BodyTooLarge as exc:
            await send_error(send, style, 413, str(exc))
            return None
        if dump is not None:
            dump.request_chunk(buffered)
        content = buffered
    elif has_body:
        content = _request_body(receive, dump)

    body_read = trio.Event()
    if isinstance(content, AsyncIterator):
        content = _request_body_then(content, body_read)
    else:
        body_read.set()
    try:
        return await _exchange(
            send,
            receive,
            client,
            method,
            url,
            out_headers,
            content,
            style,
            failover,
            dump,
            body_read,
        )
    finally:
        if dump is not None:
            dump.finish()


async def _exchange(
    send: Send,
    receive: Receive,
    client: HTTP11Client,
    method: str,
    url: str,
    headers: Headers,
    body: RequestBody,
    style: ErrorStyle,
    failover: Failover | None,
    dump: DumpHandle | None,
    body_read: trio.Event,
) -> int | None:
    """The upstream exchange inside the disconnect watcher's scope.

    The watcher starts as soon as the client's body is read (at once when
    there is none, or it was buffered): a client that leaves while the
    upstream has not answered yet cancels the upstream request.
    """
    outcome = Outcome()  # passthrough records nothing; the shell's helpers fill it anyway
    status: int | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_once_read, body_read, receive, nursery.cancel_scope, outcome)
        try:
            status = await _relay(
                send, client, method, url, headers, body, style, failover, dump, outcome
            )
        finally:
            nursery.cancel_scope.cancel()
    return status


async def _watch_once_read(
    body_read: trio.Event, receive: Receive, scope: trio.CancelScope, outcome: Outcome
) -> None:
    await body_read.wait()  # until then the body's reader is the one calling receive()
    await watch_disconnect(receive, scope, outcome)


async def _relay(
    send: Send,
    client: HTTP11Client,
    method: str,
    url: str,
    headers: Headers,
    body: RequestBody,
    style: ErrorStyle,
    failover: Failover | None,
    dump: DumpHandle | None,
    outcome: Outcome,
) -> int | None:
    started = False  # the response head went to the client: errors can only cut the body
    try:
        async with send_upstream(client, method, url, headers, body, failover) as answer:
            if isinstance(answer, Exhausted):
                await answer_exhausted(send, style, outcome, failover, answer)
                return None
            response = answer
            if dump is not None:
                dump.response_start(response.status_code, response.headers.raw)
            length = response.headers.get("content-length")
            headers_out = forwardable_response_headers(
                response.headers.raw, streaming=length is None
            )
            started = True
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": headers_out,
                }
            )
            async for chunk in response.aiter_raw():
                if dump is not None:
                    dump.response_chunk(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            outcome.upstream_complete = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return response.status_code
    except UpstreamError as exc:
        if not started:
            await fail_before_response(send, style, outcome, exc)
            return None
        # The head is out: the body can only be cut. The response is left
        # unfinished, so hypercorn closes the connection without a clean end
        # and the client sees a truncated body, not a complete one.
        outcome.upstream_complete = True  # a client leaving now cancels nothing
        log.warning("upstream failed mid-body (passthrough): %s", type(exc).__name__)
        return None


async def _request_body(receive: Receive, dump: DumpHandle | None) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            if dump is not None:
                dump.request_chunk(chunk)
            yield chunk
        if not message.get("more_body", False):
            return


async def _request_body_then(body: AsyncIterator[bytes], done: trio.Event) -> AsyncIterator[bytes]:
    """``body``, then ``done`` is set: from then on the disconnect watcher may receive()."""
    async for chunk in body:
        yield chunk
    done.set()
