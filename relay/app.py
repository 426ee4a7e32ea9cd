"""The relay's ASGI application.

``create_app()`` is the factory for hypercorn (``hypercorn -k trio -w N
'relay.app:create_app()'``); ``relay serve`` runs the same app in-process.
Under hypercorn each worker prints, once, what ``relay serve`` prints at
start: its listening addresses, the database and the providers.
The lifespan task owns every long-lived service (database bridge, provider
registry, token cache, recorder nursery, upstream pools), so each hypercorn
worker migrates, seeds and serves on its own and they all share PostgreSQL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Mapping

import trio

from relay import client_errors
from relay.access import (
    BYOK_DISABLED_BODY,
    ClientCredential,
    read_client_credential,
    upstream_request_headers,
)
from relay.admin.api import handle_admin
from relay.asgi import (
    BodyTimeout,
    BodyTooLarge,
    ClientDisconnected,
    Headers,
    Receive,
    Scope,
    Send,
    read_body,
    send_response,
)
from relay.auth import Principal
from relay.db.bridge import UNAVAILABLE_ERRORS
from relay.errors import sole_exception
from relay.intercept.base import send_error
from relay.intercept.passthrough import relay_passthrough
from relay.intercept.session import RequestContext, run_interception
from relay.limits import (
    MAX_HEADER_BLOCK,
    BodyBudgetExceeded,
    BodyClaim,
    RequestGuards,
    ambiguous_framing,
    has_body,
    header_block_size,
)
from relay.metrics import Metrics
from relay.options import Options, load_options
from relay.providers.kinds import all_kinds, error_style_for, kind_for
from relay.providers.types import Provider
from relay.readiness import readiness
from relay.routes import (
    ErrorStyle,
    PathRefused,
    RouteKind,
    check_passthrough_path,
    join_url,
    normalise_api_path,
    split_gateway_path,
    with_query,
)
from relay.services import Services, open_services, startup_failure
from relay.upstream.breaker import BreakerState, CircuitBreaker
from relay.upstream.http11 import HTTP11Client
from relay.upstream.keypool import Failover, KeyPool, retry_after_header

log = logging.getLogger("relay.app")

UNRECORDABLE_MESSAGE = (
    "the relay cannot record usage right now (database and spool unavailable); try again later"
)


def provider_auth_headers(provider: Provider) -> list[tuple[bytes, bytes]]:
    """The provider's first key, in the header its API expects (its kind's ``key_auth_headers``)."""
    if not provider.keys:
        return []
    return kind_for(provider.type).key_auth_headers(provider.keys[0])


def key_failover(guards: RequestGuards, provider: Provider, byok: bool) -> Failover | None:
    """The walk through the provider's key pool, or None: BYOK never fails over; a
    single key has nothing to fail over to (its answers pass through unchanged, and
    resting it would only refuse requests the provider might take). For bedrock
    the pool is of Bedrock API keys (access keys are one pair, signed instead)."""
    if byok or len(provider.keys) < 2:
        return None
    pool = guards.key_pools.get(provider.name, provider.keys)
    return Failover(pool, kind_for(provider.type).key_auth_headers, trio.current_time())


class RelayApp:
    def __init__(
        self,
        options: Options | None = None,
        env: Mapping[str, str] | None = None,
        *,
        announce: Callable[[str], None] | None = None,
    ) -> None:
        self.options = options
        self.env = env
        # Where to print the start-up description (hypercorn mode); ``relay
        # serve`` prints it itself, with the addresses hypercorn bound.
        self._announce = announce
        self.services: Services | None = None
        # Limits, circuit breakers and key pools of this process (built at startup).
        self.guards: RequestGuards | None = None
        # Each provider kind's per-process state (bedrock: one BedrockAuth per
        # provider, holding the AWS credentials it resolved).
        self.kind_states = {kind.type: kind.new_state(env) for kind in all_kinds()}
        self._ready = trio.Event()
        # What stopped the start, for ``relay serve`` to report (hypercorn only
        # sees the message); with ``report_startup_failure`` it is also logged.
        self.startup_error: BaseException | None = None
        self.report_startup_failure = True
        # Set when a background service failed while serving: the server shuts
        # down (``relay serve`` waits on ``failed``) and new requests get a 503.
        self.failure: str | None = None
        self.failed = trio.Event()

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
        # Before open_services: the metrics listener is not one of ours to announce.
        binds = listening_addresses() if self._announce is not None else []
        try:
            # Under hypercorn the options are read here: a bad one fails the start.
            options = self.options or load_options(env)
            self.guards = RequestGuards.from_options(options)
            async with open_services(options, env, self._service_failed) as services:
                # A provider that cannot work (bedrock: no region) stops the start, saying why.
                for kind in all_kinds():
                    await kind.startup(self.kind_states[kind.type], services.providers.all())
                attach_guard_metrics(self.guards, services.metrics)
                self.services = services
                if self._announce is not None:
                    describe(self, binds, self._announce, worker=os.getpid())
                self._ready.set()
                await send({"type": "lifespan.startup.complete"})
                await receive()  # lifespan.shutdown: hypercorn has drained the requests
                self.services = None
        except Exception as exc:
            if self._ready.is_set():
                log.exception("relay failed")
                raise
            expected = startup_failure(exc)
            self.startup_error = expected or exc
            if expected is None:
                log.exception("relay failed to start")
            elif self.report_startup_failure:
                log.error("relay failed to start: %s", expected)
            text = str(expected) if expected is not None else _startup_error(exc)
            await send({"type": "lifespan.startup.failed", "message": text})
            return
        await send({"type": "lifespan.shutdown.complete"})

    def _service_failed(self, name: str, exc: BaseException) -> None:
        log.critical("the %s failed; the relay shuts down", name, exc_info=exc)
        if self.failure is None:
            self.failure = f"the {name} failed: {type(exc).__name__}: {_startup_error(exc)}"
        self.failed.set()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Route on the path as sent: an escaped "/" (a Bedrock inference
        # profile ARN's %2F) stays inside its segment, and escapes reach the
        # provider unchanged.
        raw_path: bytes | None = scope.get("raw_path")
        path: str = raw_path.decode("latin-1") if raw_path else scope["path"]
        method: str = scope["method"]
        if self.failure is not None:
            # Shutting down after a service failed: nothing new is taken on.
            if path == "/healthz":
                await send_response(send, 503, b'{"status":"failing"}')
                return
            style = error_style_for(None, path)
            await send_error(send, style, 503, "the relay is restarting; retry shortly")
            return
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
        if path == "/readyz":
            status, body = await readiness(services)
            await send_response(send, status, body)
            return
        if path == "/metrics" and services is not None and not services.options.metrics_address:
            await services.metrics.metrics_endpoint(scope, receive, send)
            return
        split = split_gateway_path(path)
        if split is None or services is None:
            style = error_style_for(None, path)
            if services is None:
                await send_error(send, style, 503, "the relay is starting or shutting down")
            else:
                message = client_errors.outside_the_gateway(method, path, services.providers.all())
                await send_error(send, style, 404, message)
            return
        name, api_path = split
        if name == "admin":  # reserved: the admin API, not a provider
            await handle_admin(scope, receive, send, services.db, services.options.admin_token)
            return
        provider = services.providers.get(name)
        style = error_style_for(provider.type if provider else None, api_path)
        if provider is None:
            if name in services.providers.disabled:
                body = client_errors.disabled_provider_body(style, name)
                await send_response(send, 503, body)
                return
            message = client_errors.unknown_provider(name, services.providers.all())
            await send_error(send, style, 404, message)
            return
        try:
            # Matched, forwarded and dumped as normalised: what matched is what runs upstream.
            api_path = normalise_api_path(api_path)
            kind = kind_for(provider.type).match(method, api_path)
            if kind is RouteKind.PASSTHROUGH:
                check_passthrough_path(api_path)
        except PathRefused as exc:
            await send_error(send, style, 400, str(exc))
            return
        if kind is None:
            message = client_errors.route_not_supported(provider, method, api_path)
            await send_error(send, style, 404, message)
            return
        headers = scope["headers"]
        if header_block_size(headers) > MAX_HEADER_BLOCK:
            await send_error(send, style, 431, "request header fields too large")
            return
        credential = read_client_credential(headers)
        try:
            checked = (
                await services.tokens.check(credential.relay_token)
                if credential.relay_token
                else None
            )
        except UNAVAILABLE_ERRORS:
            # A token not in the cache cannot be checked while PostgreSQL is away.
            log.warning("cannot verify a token: the database is unavailable")
            await send_error(send, style, 503, "the relay cannot verify tokens right now")
            return
        if not isinstance(checked, Principal):
            await send_error(send, style, 401, client_errors.token_refused(credential, checked))
            return
        principal = checked
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
            kind_for(provider.type).upstream_path(api_path),
            scope.get("query_string", b""),
        )
        if (
            kind is not RouteKind.PASSTHROUGH
            and services.options.require_recording
            and services.recorder.cannot_record
        ):
            # REQUIRE_RECORDING: no usage may go unrecorded, so serve nothing new.
            retry = [(b"retry-after", b"5")]
            await send_error(send, style, 503, UNRECORDABLE_MESSAGE, retry)
            return
        # The body is read before a concurrency slot is taken, against a deadline:
        # a client trickling its body holds its connection, not a slot. From its
        # first byte it counts against the process's budget for bodies in flight,
        # until the request ends.
        claim = guards.body_budget.claim()
        try:
            await self._admit(
                scope, receive, send, services, guards, provider, kind, api_path, style,
                principal, credential, failover, upstream_headers, client, url, claim,
            )  # fmt: skip
        finally:
            claim.release()
            if failover is not None and failover.attempts:
                # Keys tried by this request (intercepted or passthrough), once it is over.
                services.metrics.key_pool_attempts(provider.name, failover.attempts)

    async def _admit(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        services: Services,
        guards: RequestGuards,
        provider: Provider,
        kind: RouteKind,
        api_path: str,
        style: ErrorStyle,
        principal: Principal,
        credential: ClientCredential,
        failover: Failover | None,
        upstream_headers: Headers,
        client: HTTP11Client,
        url: str,
        claim: BodyClaim,
    ) -> None:
        """Read the body (deadline, budget), take a concurrency slot, dispatch."""
        method: str = scope["method"]
        headers = scope["headers"]
        options = services.options
        body: bytes | None = None
        if kind is not RouteKind.PASSTHROUGH or has_body(headers):
            try:
                body = await read_body(
                    claim.counting(receive),
                    options.max_request_body,
                    total=options.request_body_timeout,
                    idle=options.request_body_idle_timeout,
                )
            except BodyTooLarge as exc:
                await send_error(send, style, 413, str(exc))
                return
            except BodyBudgetExceeded as exc:
                await send_error(send, style, 503, str(exc), [(b"retry-after", b"1")])
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
                route = kind_for(provider.type).route_label(method, api_path)
                services.metrics.passthrough(provider.name, route, method)
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
            spec = kind_for(provider.type).specs.get(kind)
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
                claim=claim,
            )
            await run_interception(ctx, spec, self.kind_states[provider.type])
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
        guards.breakers.on_forget = lambda key: metrics.circuit_breaker_forgotten(*key)
    guards.key_pools.on_new_pool = on_pool


def create_app() -> RelayApp:
    """The application for ``hypercorn -k trio -w N 'relay.app:create_app()'``.

    Options come from the environment, as for ``relay serve``; every worker
    opens its own services (so they must share an external PostgreSQL).
    hypercorn calls it in each worker before serving, so the worker's
    connections get ``relay.hypercorn_fixes`` too (a connection the client
    closed is closed at once); ``MAX_CONNECTIONS`` applies to ``relay serve``.
    """
    from relay import hypercorn_fixes

    hypercorn_fixes.install()
    return RelayApp(announce=print_now)


def print_now(line: str) -> None:
    print(line, flush=True)  # a worker's stdout is often a pipe


def describe(
    app: RelayApp, binds: list[str], out: Callable[[str], None], *, worker: int | None = None
) -> None:
    """What ``relay serve`` prints once it serves: addresses, database, providers."""
    services = app.services
    assert services is not None
    where = ", ".join(binds) or "(no listening socket found)"
    suffix = f" (worker pid {worker})" if worker is not None else ""
    out(f"relay: listening on {where}{suffix}")
    out(f"relay: database: {services.dsn_description}")
    providers = services.providers.all()
    if not providers:
        out("relay: no providers configured (see docs/providers.md)")
    for p in providers:
        # endpoint and credential_hint know Bedrock's own fields (base URL, access key pair).
        endpoint = p.endpoint or "(default endpoint)"
        out(f"relay: provider {p.name} ({p.type}) -> {endpoint} key {p.credential_hint()}")
        out(f"       route: /api/v2/ai-gateway/{p.name}/")


def listening_addresses() -> list[str]:
    """The TCP and Unix sockets this process listens on (hypercorn's master made them).

    A hypercorn worker is handed its sockets without being told their
    addresses, so they are read back from the process's descriptors (Linux).
    """
    found: list[str] = []
    try:
        descriptors = sorted(int(name) for name in os.listdir("/proc/self/fd"))
    except OSError:
        return found
    for fd in descriptors:
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        with sock:
            try:
                if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    continue
                address = sock.getsockname()
            except OSError:
                continue
            if sock.family == socket.AF_INET:
                found.append(f"http://{address[0]}:{address[1]}")
            elif sock.family == socket.AF_INET6:
                found.append(f"http://[{address[0]}]:{address[1]}")
            elif sock.family == socket.AF_UNIX:
                found.append(f"unix:{address}")
    return found


def _startup_error(exc: BaseException) -> str:
    """The message of what stopped the start, out of the nurseries' exception groups."""
    return str(sole_exception(exc))
