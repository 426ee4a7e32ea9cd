"""The proxy beside a running relay: its token verifier, metrics and providers are the relay's.

``build_proxy(options, app)`` makes the ``ProxyServer`` for ``relay serve``
(which also listens when ``PROXY_ENABLED``); ``run_proxy`` is ``relay
proxy``: the same services (database, migrations, providers, recorder),
only the proxy's listener, no HTTP listener of the relay's own.
"""

from __future__ import annotations

import contextlib
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import trio

from relay.app import RelayApp, print_now
from relay.asgi import Scope
from relay.errors import ServiceFailure, StartupError
from relay.identity import TokenVerifier
from relay.metrics import Metrics
from relay.options import Options
from relay.providers.registry import ProviderRegistry
from relay.proxy.ca import (
    CertificateAuthority,
    LeafContexts,
    listener_context,
    load_or_create_ca,
)
from relay.proxy.mitm import Decryptor
from relay.proxy.server import (
    ProxyServer,
    ProxySettings,
    Resolver,
    open_proxy_listeners,
)
from relay.proxy.upstream import upstream_from_options


def build_proxy(
    options: Options,
    app: RelayApp,
    *,
    ca: CertificateAuthority | None = None,
    resolver: Resolver | None = None,
    tls: ssl.SSLContext | None = None,
) -> ProxyServer:
    """The proxy of ``app``: its tokens, metrics and providers; ``ca`` signs the leaves.

    ``tls``: the listener's own TLS context (``ca.listener_context(options)``,
    loaded before anything is bound), None for plain TCP.
    """
    if ca is None:
        ca = load_or_create_ca(options)
    # Served at /api/v2/ai-gateway/proxy/ca-cert.pem for clients to trust.
    app.proxy_ca_pem = ca.cert_pem

    def tokens() -> TokenVerifier | None:
        services = app.services
        return services.tokens if services is not None else None

    def metrics() -> Metrics | None:
        services = app.services
        return services.metrics if services is not None else None

    def registry() -> ProviderRegistry | None:
        services = app.services
        return services.providers if services is not None else None

    decryptor = Decryptor(
        app,
        LeafContexts(ca),
        registry,
        metrics=metrics,
        handshake_timeout=options.proxy_header_timeout,
    )
    return ProxyServer(
        ProxySettings.from_options(options),
        tokens,
        resolver=resolver,
        interceptor=decryptor,
        metrics=metrics,
        tls=tls,
    )


def listening_on(listeners: list[trio.SocketListener]) -> list[str]:
    found = []
    for listener in listeners:
        host, port = listener.socket.getsockname()[:2]
        found.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return found


@contextlib.asynccontextmanager
async def app_lifespan(app: RelayApp) -> AsyncIterator[None]:
    """The app's services open for the body of the block (its ASGI lifespan, driven here)."""
    to_app, app_receives = trio.open_memory_channel[Scope](1)
    app_sends, from_app = trio.open_memory_channel[Scope](1)

    async def receive() -> Scope:
        return await app_receives.receive()

    async def send(message: Scope) -> None:
        await app_sends.send(message)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, {"type": "lifespan"}, receive, send)
        await to_app.send({"type": "lifespan.startup"})
        answer = await from_app.receive()
        if answer["type"] == "lifespan.startup.failed":
            error = app.startup_error
            if error is not None:
                raise error
            raise StartupError(str(answer.get("message", "the relay failed to start")))
        try:
            yield
        finally:
            with trio.CancelScope(shield=True):
                await to_app.send({"type": "lifespan.shutdown"})
                await from_app.receive()


async def _first_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            print("relay: shutting down the proxy", file=sys.stderr)
            return


async def run_proxy(
    options: Options,
    *,
    env: Mapping[str, str] | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    resolver: Resolver | None = None,
    ca: CertificateAuthority | None = None,
    task_status: trio.TaskStatus[
        tuple[RelayApp, ProxyServer, list[str]]
    ] = trio.TASK_STATUS_IGNORED,
    out: Callable[[str], None] = print_now,
) -> None:
    """``relay proxy``: the proxy alone, against the same database as ``relay serve``."""
    if ca is None:
        ca = await trio.to_thread.run_sync(load_or_create_ca, options)
    tls = await trio.to_thread.run_sync(listener_context, options)
    await trio.to_thread.run_sync(upstream_from_options, options)  # refused before binding
    listeners = await open_proxy_listeners(options.proxy_listen_addr)
    app = RelayApp(options, env)
    app.report_startup_failure = False
    trigger = shutdown_trigger or _first_signal
    try:
        async with app_lifespan(app):
            proxy = build_proxy(options, app, ca=ca, resolver=resolver, tls=tls)
            async with trio.open_nursery() as nursery:
                await nursery.start(proxy.serve, listeners)
                where = listening_on(listeners)
                out(f"relay: AI Gateway Proxy listening on {', '.join(where)}")
                task_status.started((app, proxy, where))

                async def first(wait: Callable[[], Awaitable[object]]) -> None:
                    await wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(first, trigger)
                nursery.start_soon(first, app.failed.wait)
    finally:
        for listener in listeners:
            await listener.aclose()
    if app.failure is not None:
        raise ServiceFailure(app.failure)
