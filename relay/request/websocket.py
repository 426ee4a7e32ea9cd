"""A WebSocket upgrade, as named steps: route → authenticate → caps → upstream socket → accept.

hypercorn's trio worker hands an upgrade to the app as a ``websocket``
scope. On ``…/<provider>/v1/responses`` of a provider whose kind bridges the
Responses API over WebSocket (``ProviderKind.responses_websocket``: openai),
the upgrade is authenticated like an HTTP request (relay token or BYOK),
checked against the socket caps, and the upstream socket is opened
(``relay.upstream.websocket``) BEFORE the client is accepted: a provider that
refuses is a refused upgrade with the provider's status and body, never an
accepted socket that dies. Then ``relay.intercept.responses.websocket.bridge``
pumps the two.

Refusals use hypercorn's ``websocket.http.response`` extension (a real HTTP
answer with a body in OpenAI's error shape). Codex falls back to HTTP at once
on 426 (any other refusal costs it retries), so whatever the relay will not
bridge answers 426: another provider type or path, the feature off
(``RESPONSES_WEBSOCKET``), a socket cap reached.
"""

from __future__ import annotations

import logging

import trio

from relay.access import upstream_request_headers
from relay.asgi import Headers, Receive, Scope, Send
from relay.intercept.responses.websocket import SocketContext, TurnRefusal, bridge
from relay.limits import RequestGuards
from relay.observe.context import RequestIds, bind_ids, current_ids, send_with_ids
from relay.providers.kinds import kind_for
from relay.providers.types import Provider
from relay.record.events import new_id
from relay.request.admit import UNRECORDABLE_MESSAGE, limit_headers
from relay.request.authenticate import Caller, check_caller
from relay.request.context import Gateway, Refused, Request, refuse
from relay.request.dispatch import interception_ports
from relay.request.route import find_provider
from relay.request.upstream import provider_auth_headers
from relay.routes import join_url
from relay.services import Services
from relay.upstream.errors import UpstreamError, UpstreamTimeout
from relay.upstream.keypool import retry_after_header
from relay.upstream.websocket import UpstreamRefused, open_upstream_socket
from relay.wire.errors import error_body_for

log = logging.getLogger("relay.app")

NOT_BRIDGED = "this route is not served over WebSocket by the relay; use HTTP"
# Upstream refusal headers worth passing on to the client.
_REFUSAL_HEADERS = frozenset({b"content-type", b"retry-after", b"x-request-id", b"openai-model"})


async def serve_websocket(gateway: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    """Serve one ``websocket`` scope of the ASGI app."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    raw_path: bytes | None = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else scope["path"]
    # One request id for the socket: on its 101 (or its refusal), its log lines,
    # and every turn's interception row and span.
    ids = RequestIds(str(new_id()))
    unbind = bind_ids(ids)
    send = send_with_ids(send, ids)
    req = Request(scope, receive, send, gateway, path=path, method="GET", style="openai")
    reason = "refused"
    try:
        if gateway.failure is not None:
            reason = "failing"
            refuse(503, "the relay is restarting; retry shortly")
        provider, api_path = find_provider(req)
        ids.provider = provider.name
        limit_headers(req)  # as over HTTP, before a header is read or sent upstream
        req.style = "openai"
        reason = "not_bridged"
        kind = kind_for(provider.type)
        services, guards = req.services, req.guards
        if kind.responses_websocket is None or api_path != kind.responses_websocket:
            refuse(426, NOT_BRIDGED)
        if not (services.options.responses_websocket and provider.responses_websocket):
            reason = "disabled"
            refuse(426, "the relay does not bridge the Responses API over WebSocket; use HTTP")
        reason = "auth"
        caller = await check_caller(req, services.tokens, allow_byok=services.options.allow_byok)
        if services.options.require_recording and services.recorder.cannot_record:
            reason = "unrecordable"
            refuse(503, UNRECORDABLE_MESSAGE, [(b"retry-after", b"5")])
        user = ids.user_id = caller.principal.user_id
        cap = guards.sockets.try_open(user)
        if cap is not None:
            reason = cap
            refuse(426, f"too many open Responses WebSockets ({cap.replace('_', ' ')}); use HTTP")
        try:
            await _bridge(req, services, guards, provider, api_path, caller)
        finally:
            guards.sockets.close(user)
    except Refused as refusal:
        if req.gateway.services is not None:
            req.gateway.services.metrics.websocket_refused(reason)
        await deny(send, refusal.status, _refusal_body(refusal, req), refusal.headers)
    finally:
        unbind()


async def _bridge(
    req: Request,
    services: Services,
    guards: RequestGuards,
    provider: Provider,
    api_path: str,
    caller: Caller,
) -> None:
    options = services.options
    kind = kind_for(provider.type)
    headers = upstream_request_headers(
        req.headers,
        byok=caller.byok,
        provider_auth=[] if caller.byok else provider_auth_headers(provider),
    )
    actor_names = guards.actor_header_names
    principal = caller.principal
    headers = [(k, v) for k, v in headers if k not in actor_names]
    headers += guards.actor_headers(principal.user_id, principal.user_name)
    url = join_url(provider.base_url, kind.upstream_path(api_path), req.query_string)
    subprotocols: list[str] = list(req.scope.get("subprotocols") or ())

    def admit_turn(model: str) -> TurnRefusal | None:
        """The guards of one turn, in the HTTP order (the body is decoded already)."""
        if guards.rate is not None:
            wait = guards.rate.check(principal.api_key_id, trio.current_time())
            if wait is not None:
                retry = retry_after_header(wait).decode()
                return TurnRefusal(429, f"relay rate limit exceeded; retry after {retry} s")
        if options.require_recording and services.recorder.cannot_record:
            return TurnRefusal(503, UNRECORDABLE_MESSAGE)
        budgets = services.budgets
        if budgets is not None and budgets.budgets and not caller.byok:
            exceeded = budgets.check(principal.user_id, principal.api_key_id, model)
            if exceeded is not None:
                # As over HTTP: OpenAI's insufficient_quota (it will not pass this period).
                return TurnRefusal(
                    429, exceeded.message(), "insufficient_quota", record_as="budget_exceeded"
                )
        minute = services.minute_limits
        if minute is not None and not caller.byok:
            over = minute.admit(principal.user_id, principal.api_key_id)
            if over is not None:
                services.metrics.minute_limit_refused(over.what)
                return TurnRefusal(
                    429, over.message(), "rate_limit_exceeded", record_as="rate_limited"
                )
        return None

    ctx = SocketContext(
        ports=interception_ports(services),
        provider=provider,
        api_path=api_path,
        principal=principal,
        credential=caller.credential,
        headers=req.headers,
        upstream_headers=headers,
        instance_id=services.instance.id if services.instance is not None else None,
        max_stored_prompt=options.max_stored_prompt or None,
        fold_model=services.metrics.models.fold,
        admit_turn=admit_turn,
        lifetime=options.responses_websocket_lifetime,
        ping_interval=options.responses_websocket_ping_interval,
        request_id=ids.request_id if (ids := current_ids()) is not None else None,
    )
    accepted = False
    metrics = services.metrics
    try:
        async with open_upstream_socket(
            url,
            headers,
            subprotocols,
            max_message_size=MAX_MESSAGE_SIZE,
            connect_timeout=options.upstream_connect_timeout,
        ) as upstream:
            accept: dict[str, object] = {"type": "websocket.accept"}
            if upstream.subprotocol is not None:
                accept["subprotocol"] = upstream.subprotocol
            await req.send(accept)
            accepted = True
            metrics.websocket_opened(provider.name)
            end = None
            try:
                end = await bridge(ctx, req.receive, req.send, upstream)
            finally:
                metrics.websocket_closed(provider.name, end.turns if end is not None else 0)
    except UpstreamRefused as exc:
        if accepted:
            raise
        metrics.websocket_refused("upstream")
        # The provider's own answer (401 bad key, 429, 5xx…), passed on as it came.
        kept = [(k, v) for k, v in exc.headers if k.lower() in _REFUSAL_HEADERS]
        await deny(req.send, exc.status, exc.body, kept, raw=True)
    except UpstreamError as exc:
        if accepted:
            raise
        metrics.websocket_refused("upstream_unreachable")
        status = 504 if isinstance(exc, UpstreamTimeout) else 502
        log.warning("Responses WebSocket to %s: %s", provider.name, exc)
        await deny(req.send, status, error_body_for("openai", status, f"upstream: {exc}"), None)


# The largest message either side may send: hypercorn's own limit on the
# client side (websocket_max_message_size), the same on the upstream side
# (trio-websocket's default is 1 MiB; a Codex response.create carries the
# whole conversation and passes 5 MB).
MAX_MESSAGE_SIZE = 16 * 1024 * 1024


def _refusal_body(refusal: Refused, req: Request) -> bytes:
    if refusal.body is not None:
        return refusal.body
    return error_body_for(req.style, refusal.status, refusal.message)


async def deny(
    send: Send, status: int, body: bytes, headers: Headers | None, *, raw: bool = False
) -> None:
    """Refuse the upgrade with an HTTP answer (hypercorn's ``websocket.http.response``)."""
    given = list(headers or ())
    typed = raw and any(k.lower() == b"content-type" for k, _ in given)
    out: Headers = [] if typed else [(b"content-type", b"application/json")]
    out += given
    out.append((b"content-length", str(len(body)).encode()))
    await send({"type": "websocket.http.response.start", "status": status, "headers": out})
    await send({"type": "websocket.http.response.body", "body": body})
