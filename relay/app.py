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

import logging
import os
import socket
from collections.abc import Callable, Mapping

import trio

from relay.asgi import (
    Receive,
    Scope,
    Send,
)
from relay.errors import sole_exception
from relay.limits import (
    RequestGuards,
)
from relay.metrics import Metrics
from relay.observe import tracing
from relay.options import Options, load_options
from relay.providers.kinds import all_kinds
from relay.request import serve
from relay.request.admit import UNRECORDABLE_MESSAGE as UNRECORDABLE_MESSAGE  # (tests)
from relay.request.websocket import serve_websocket
from relay.services import Services, open_services, startup_failure
from relay.upstream.breaker import BreakerState, CircuitBreaker
from relay.upstream.keypool import KeyPool

log = logging.getLogger("relay.app")


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
        # The AI Gateway Proxy's CA certificate (PEM), once the proxy runs: served at
        # /api/v2/ai-gateway/proxy/ca-cert.pem for clients to trust (docs/proxy.md).
        self.proxy_ca_pem: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            # The Responses API over WebSocket (relay.request.websocket); anything else: 426.
            await serve_websocket(self, scope, receive, send)

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
            # CODER_TRACE_ENABLE: the SDK from the OTEL_* variables (nothing is imported when off).
            traced = tracing.configure(options.trace_enable, env)
            try:
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
            finally:
                if traced:  # what the batch processor holds is exported (it may block)
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(tracing.shutdown)
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
        # The request's steps: route, authenticate, admit, build upstream, dispatch.
        await serve(self, scope, receive, send)


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
