"""The relay's ASGI application.

``create_app()`` is the factory for hypercorn (``hypercorn -k trio -w N
'relay.app:create_app()'``); ``relay serve`` runs the same app in-process.
The lifespan task owns every long-lived service (database bridge, provider
registry, token cache, recorder nursery, upstream pools), so each hypercorn
worker migrates, seeds and serves on its own and they all share PostgreSQL.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping

import trio

from relay.access import (
    BYOK_DISABLED_BODY,
    read_client_credential,
    upstream_request_headers,
)
from relay.asgi import (
    BodyTimeout,
    BodyTooLarge,
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    read_body,
    send_response,
)
from relay.db.bridge import UNAVAILABLE_ERRORS
from relay.intercept.apis import SPECS
from relay.intercept.base import send_error
from relay.intercept.bedrock.handler import BedrockAuths
from relay.intercept.passthrough import relay_passthrough
from relay.intercept.session import RequestContext, run_interception, with_query
from relay.limits import (
    MAX_HEADER_BLOCK,
    RequestGuards,
    ambiguous_framing,
    has_body,
    header_block_size,
)
from relay.metrics import Metrics
from relay.options import Options, load_options
from relay.providers.types import Provider
from relay.record.admin import handle_admin
from relay.routes import (
    ErrorStyle,
    PathRefused,
    RouteKind,
    check_passthrough_path,
    error_style_for,
    join_url,
    match_route,
    normalise_api_path,
    split_gateway_path,
    upstream_path,
)
from relay.services import Services, open_services
from relay.upstream.breaker import BreakerState, CircuitBreaker
from relay.upstream.keypool import Failover, KeyPool, retry_after_header

log = logging.getLogger("relay.app")


def key_auth_headers(provider_type: str, key: str) -> list[tuple[bytes, bytes]]:
    """One provider key, in the header its API expects (a Bedrock API key is a Bearer token)."""
    raw = key.encode("latin-1")
    if provider_type == "anthropic":
        return [(b"x-api-key", raw)]
    return [(b"authorization", b"Bearer " + raw)]


def provider_auth_headers(provider: Provider) -> list[tuple[bytes, bytes]]:
    """The provider's first key, in the header its API expects."""
    if not provider.keys:
        return []
    return key_auth_headers(provider.type, provider.keys[0])


def key_failover(guards: RequestGuards, provider: Provider, byok: bool) -> Failover | None:
    """The walk through the provider's key pool, or None: BYOK never fails over; a
    single key has nothing to fail over to (its answers pass through unchanged, and
    resting it would only refuse requests the provider might take). For bedrock
    the pool is of Bedrock API keys (access keys are one pair, signed instead)."""
    if byok or len(provider.keys) < 2:
        return None
    pool = guards.key_pools.get(provider.name, provider.keys)
    return Failover(pool, lambda key: key_auth_headers(provider.type, key), trio.current_time())


class RelayApp:
    def __init__(
        self, options: Options | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        self.options = options
        self.env = env
        self.services: Services | None = None
        # Limits, circuit breakers and key pools of this process (built at startup).
        self.guards: RequestGuards | None = None
        # One BedrockAuth per bedrock provider: it holds the resolved AWS credentials.
        self.bedrock_auths = BedrockAuths(env)
        self._ready = trio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        env = self.env if self.env is not None else os.environ
        options = self.options or load_options(env)
        try:
            self.guards = RequestGuards.from_options(options)
            async with open_services(options, env) as services:
                # A bedrock provider that cannot work (no region) stops the start, saying why.
                await self.bedrock_auths.prepare(services.providers.all())
                attach_guard_metrics(self.guards, services.metrics)
                self.services = services
                self._ready.set()
                await send({"type": "lifespan.startup.complete"})
                await receive()  # lifespan.shutdown: hypercorn has drained the requests
                self.services = None
        except Exception as exc:
            log.exception("relay failed to start")
            if not self._ready.is_set():
                await send({"type": "lifespan.startup.failed", "message": _startup_error(exc)})
                return
            raise
        await send({"type": "lifespan.shutdown.complete"})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Route on the path as sent: an escaped "/" (a Bedrock inference
        # profile ARN's %2F) stays inside its segment, and escapes reach the
        # provider unchanged.
        raw_path: bytes | None = scope.get("raw_path")
        path: str = raw_path.decode("latin-1") if raw_path else scope["path"]
        method: str = scope["method"]
        if ambiguous_framing(scope["headers"]):
            # A front end may frame this request by Content-Length, hypercorn frames
            # it by Transfer-Encoding: what one takes for the body the other runs as
            # the next request. Refused, and the connection with it. The body (as
            # hypercorn frames it) is read first: answering mid-body races
            # hypercorn's own close of the connection, and the answer is lost.
            with contextlib.suppress(BodyTooLarge, BodyTimeout, ClientDisconnected):
                await read_body(receive, 64 * 1024, total=2.0, idle=1.0)
            style = self._error_style(path)
            close = [(b"connection", b"close")]
            await send_error(send, style, 400, AMBIGUOUS_FRAMING, close)
            return
        if path == "/healthz":
            await send_response(send, 200, b'{"status":"ok"}')
            return
        services = self.services
        if path == "/metrics" and services is not None and not services.options.metrics_address:
            await services.metrics.metrics_endpoint(scope, receive, send)
            return
        split = split_gateway_path(path)
        if split is None or services is None:
            style = error_style_for(None, path)
            status = 404 if services is not None else 503
            await send_error(send, style, status, f"route not supported: {method} {path}")
            return
        name, api_path = split
        if name == "admin":  # reserved: the admin API, not a provider
            await handle_admin(scope, receive, send, services.db, services.options.admin_token)
            return
        provider = services.providers.get(name)
        style = error_style_for(provider.type if provider else None, api_path)
        if provider is None:
            await send_error(send, style, 404, f"unknown provider: {name}")
            return
        try:
            # Matched, forwarded and dumped as normalised: what matched is what runs upstream.
            api_path = normalise_api_path(api_path)
            kind = match_route(provider.type, method, api_path)
            if kind is RouteKind.PASSTHROUGH:
                check_passthrough_path(api_path)
        except PathRefused as exc:
            await send_error(send, style, 400, str(exc))
            return
        if kind is None:
            await send_error(send, style, 404, f"route not supported: {method} {api_path}")
            return
        headers = scope["headers"]
        if header_block_size(headers) > MAX_HEADER_BLOCK:
            await send_error(send, style, 431, "request header fields too large")
            return
        credential = read_client_credential(headers)
        try:
            principal = (
                await services.tokens.verify(credential.relay_token)
                if credential.relay_token
                else None
            )
        except UNAVAILABLE_ERRORS:
            # A token not in the cache cannot be checked while PostgreSQL is away.
            log.warning("cannot verify a token: the database is unavailable")
            await send_error(send, style, 503, "the relay cannot verify tokens right now")
            return
        if principal is None:
            await send_error(send, style, 401, "invalid or missing relay API token")
            return
        if credential.byok and not services.options.allow_byok:
            await send_response(send, 403, BYOK_DISABLED_BODY)
            return
        guards = self.guards
        assert guards is not None
        if guards.rate is not None:
            wait = guards.rate.check(principal.api_key_id, trio.current_time())
            if wait is not None:
                retry = [(b"retry-after", retry_after_header(wait))]
                await send_error(send, style, 429, "relay rate limit exceeded", retry)
                return
        failover = key_failover(guards, provider, credential.byok)
        upstream_headers = upstream_request_headers(
            headers,
            byok=credential.byok,
            provider_auth=[] if failover else provider_auth_headers(provider),
        )
        # Actor headers are the relay's word: a client may not supply its own.
        actor_names = guards.actor_header_names
        upstream_headers = [(k, v) for k, v in upstream_headers if k not in actor_names]
        # provider.endpoint: base_url, or for bedrock the runtime endpoint (the handler's pool).
        client = services.upstreams.get(provider.name, provider.endpoint)
        url = join_url(
            provider.base_url,
            upstream_path(provider.type, api_path),
            scope.get("query_string", b""),
        )
        # The body is read before a concurrency slot is taken, against a deadline:
        # a client trickling its body holds its connection, not a slot.
        options = services.options
        body: bytes | None = None
        if kind is not RouteKind.PASSTHROUGH or has_body(headers):
            try:
                body = await read_body(
                    receive,
                    options.max_request_body,
                    total=options.request_body_timeout,
                    idle=options.request_body_idle_timeout,
                )
            except BodyTooLarge as exc:
                await send_error(send, style, 413, str(exc))
                return
            except BodyTimeout as exc:
                await send_error(send, style, 408, str(exc), [(b"connection", b"close")])
                return
            except ClientDisconnected:
                return
        if not guards.concurrency.try_acquire():
            message = f"too many concurrent requests (at most {guards.concurrency.limit})"
            await send_error(send, style, 503, message)
            return
        try:
            if kind is RouteKind.PASSTHROUGH:
                services.metrics.passthrough(provider.name, api_path, method)
                dump = services.dumps.begin_passthrough(
                    provider.name,
                    method,
                    with_query(api_path, scope.get("query_string", b"")),
                    upstream_headers,
                )
                await relay_passthrough(
                    send,
                    receive,
                    client,
                    method,
                    url,
                    upstream_headers,
                    headers,
                    style,
                    body,
                    failover=failover,
                    dump=dump,
                )
                return
            spec = SPECS.get(kind)
            if spec is None:
                await send_error(
                    send, style, 501, f"route not implemented yet: {method} {api_path}"
                )
                return
            assert body is not None
            ctx = RequestContext(
                scope=scope,
                receive=receive,
                send=send,
                services=services,
                guards=guards,
                provider=provider,
                kind=kind,
                api_path=api_path,
                principal=principal,
                credential=credential,
                upstream_headers=upstream_headers,
                client=client,
                url=url,
                failover=failover,
                body=body,
            )
            await run_interception(ctx, spec, self.bedrock_auths)
        except ClientDisconnected:
            return
        finally:
            guards.concurrency.release()

    def _error_style(self, path: str) -> ErrorStyle:
        """The error shape for ``path`` before it is routed (its provider's, when known)."""
        split = split_gateway_path(path)
        provider = None
        if split is not None and self.services is not None:
            provider = self.services.providers.get(split[0])
        return error_style_for(provider.type if provider else None, split[1] if split else path)


AMBIGUOUS_FRAMING = "a request may not have both Content-Length and Transfer-Encoding"


def attach_guard_metrics(guards: RequestGuards, metrics: Metrics) -> None:
    """Circuit and key-pool state changes, reported to metrics as they happen."""

    def on_circuit(key: tuple[str, str, str], breaker: CircuitBreaker) -> None:
        provider, route, model = key
        metrics.circuit_breaker_state(provider, route, model, breaker.state)

        def changed(_old: BreakerState, new: BreakerState) -> None:
            metrics.circuit_breaker_state(provider, route, model, new)
            if new is BreakerState.OPEN:
                metrics.circuit_breaker_trip(provider, route, model)

        breaker.on_state_change = changed

    def on_pool(name: str, pool: KeyPool) -> None:
        metrics.key_pool_state(name, pool.counts(trio.current_time()))

        def transition(reason: str) -> None:
            metrics.key_pool_transition(name, reason)
            metrics.key_pool_state(name, pool.counts(trio.current_time()))

        pool.on_transition = transition
        pool.on_exhausted = lambda outcome: metrics.key_pool_exhausted(name, outcome)

    if guards.breakers is not None:
        guards.breakers.on_new_circuit = on_circuit
    guards.key_pools.on_new_pool = on_pool


def _startup_error(exc: BaseException) -> str:
    """The message of what stopped the start, out of the nurseries' exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return str(exc)
