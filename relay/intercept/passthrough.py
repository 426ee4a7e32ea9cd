"""Routes forwarded unparsed (models, count_tokens, stored responses, ...).

The request body arrives already read (the dispatcher reads it, within
its deadline, before taking a concurrency slot), so it can be replayed with
the next key of a key pool; the response body streams through as it arrives,
content-encoding included. The provider key is injected as for intercepted
routes. Nothing is recorded.
"""

from __future__ import annotations

import logging

import trio

from relay.asgi import (
    HOP_BY_HOP,
    Headers,
    Receive,
    Send,
    forwardable_response_headers,
)
from relay.dump import DumpHandle
from relay.intercept.base import (
    Outcome,
    answer_exhausted,
    fail_before_response,
    send_upstream,
    watch_disconnect,
)
from relay.observe import tracing
from relay.routes import ErrorStyle
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
    body: bytes | None,
    *,
    failover: Failover | None = None,
    dump: DumpHandle | None = None,
) -> int | None:
    """Forward one request; returns the upstream status (None when unreachable).

    ``headers`` are the upstream headers (credentials already swapped);
    ``client_headers`` the client's own, for its accept-encoding and
    accept-encoding; ``body``: the request body (None: the request had
    none). ``failover``: the provider's key pool walk (then ``headers``
    carry no credential).
    """
    # Passthrough keeps the client's accept-encoding and relays bytes raw.
    out_headers = [(k, v) for k, v in headers if k not in _DROP and k != b"accept-encoding"]
    for k, v in client_headers:
        if k == b"accept-encoding":
            out_headers.append((k, v))
    # Framed by its length upstream (the client's framing is dropped with _DROP).
    if body is not None and dump is not None:
        dump.request_chunk(body)
    trace = (
        tracing.begin("Passthrough", client_headers, tracing.passthrough_attributes(method, url))
        if tracing.enabled()
        else None
    )
    status: int | None = None
    try:
        status = await _exchange(
            send, receive, client, method, url, out_headers, body, style, failover, dump
        )
        return status
    finally:
        if dump is not None:
            dump.finish()
        if trace is not None:
            tracing.end_passthrough(trace, status)


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
) -> int | None:
    """The upstream exchange inside the disconnect watcher's scope.

    The body was read before, so the watcher starts at once: a client that
    leaves while the upstream has not answered yet cancels the upstream request.
    """
    outcome = Outcome()  # passthrough records nothing; the shell's helpers fill it anyway
    status: int | None = None  # stays None when the client's leaving cancels the exchange
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_disconnect, receive, nursery.cancel_scope, outcome)
        try:
            status = await _relay(
                send, client, method, url, headers, body, style, failover, dump, outcome
            )
        finally:
            nursery.cancel_scope.cancel()
    return status


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
        async with send_upstream(
            client, method, url, headers, body, failover, span_name="Passthrough.Upstream"
        ) as answer:
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
