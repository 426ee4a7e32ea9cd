"""``relay serve``: the app under hypercorn's trio worker, in this process."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import partial
from typing import Any, cast

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config, Sockets
from hypercorn.trio.run import worker_serve

from relay import hypercorn_fixes
from relay.app import RelayApp, describe, print_now
from relay.errors import ServiceFailure, listen_error
from relay.observe.logs import configure_logging
from relay.options import Options

log = logging.getLogger("relay.server")

LISTEN_BACKLOG = 4096
KEEP_ALIVE_MAX_REQUESTS = 100_000


def hypercorn_config(options: Options) -> Config:
    config = Config()
    config.bind = [options.http_address]
    config.worker_class = "trio"
    config.graceful_timeout = options.shutdown_grace
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    if options.structured_logging:
        # Through the root logger's JSON handler, not a plain handler of hypercorn's own.
        error_log = logging.getLogger("hypercorn.error")
        error_log.setLevel(logging.WARNING)
        config.errorlog = error_log
    # Long agent sessions keep connections open between requests (an idle
    # connection the client closes is closed at once: relay.hypercorn_fixes).
    config.keep_alive_timeout = 75
    # hypercorn's default accept backlog is 100: a burst of new connections
    # beyond it (clients starting together, or reconnecting after an overload)
    # has its handshakes dropped, and each such client waits for TCP's SYN
    # retry, 1 s, then 3 s more: that was the p99 at 256 connecting clients
    # (docs/benchmarks.md, *The tail*). The kernel caps it at net.core.somaxconn.
    config.backlog = LISTEN_BACKLOG
    # hypercorn closes a keep-alive connection after 1,000 requests by default;
    # the relay keeps no per-connection state worth bounding, and every close
    # costs the client a new connection, so only a very busy one is recycled.
    config.keep_alive_max_requests = KEEP_ALIVE_MAX_REQUESTS
    # Responses WebSockets: the client is pinged too (the relay pings the provider itself).
    config.websocket_ping_interval = options.responses_websocket_ping_interval or None
    hypercorn_fixes.install()
    hypercorn_fixes.set_connection_limit(config, options.max_connections)
    return config


async def _first_signal(signals: AsyncIterator[int]) -> None:
    async for _ in signals:
        print("relay: shutting down (streams get the grace period to finish)", file=sys.stderr)
        return


def bind_listeners(config: Config, address: str) -> Sockets:
    """The listening sockets, bound now: a taken or impossible address stops the start
    before the database (or the embedded cluster) is touched."""
    try:
        sockets = config.create_sockets()
    except OSError as exc:
        raise listen_error(address, exc) from None
    for sock in sockets.insecure_sockets:
        sock.listen(config.backlog)
    return sockets


async def run_server(
    options: Options,
    *,
    env: Mapping[str, str] | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[RelayApp] = trio.TASK_STATUS_IGNORED,
    out: Callable[[str], None] = print_now,
) -> None:
    """Serve until SIGINT/SIGTERM (or ``shutdown_trigger``), then shut down gracefully.

    A start that fails for an expected reason (``relay.services.startup_failure``)
    raises that error itself, not hypercorn's lifespan error around it. A
    background service that fails while serving shuts the server down the
    same way as a signal, then raises ``ServiceFailure`` (``relay serve`` exits
    1, so a supervisor restarts it).
    """
    config = hypercorn_config(options)
    sockets = bind_listeners(config, options.http_address)
    proxy_listeners: list[trio.SocketListener] = []
    ca = None
    proxy_tls = None
    if options.proxy_enabled:
        from relay.proxy.ca import listener_context, load_or_create_ca
        from relay.proxy.server import open_proxy_listeners
        from relay.proxy.upstream import upstream_from_options

        try:
            ca = await trio.to_thread.run_sync(load_or_create_ca, options)
            proxy_tls = await trio.to_thread.run_sync(listener_context, options)
            # (PROXY_UPSTREAM_CA refused here, before anything is bound, not later.)
            await trio.to_thread.run_sync(upstream_from_options, options)
            proxy_listeners = await open_proxy_listeners(options.proxy_listen_addr)
        except BaseException:
            for sock in sockets.insecure_sockets:
                sock.close()
            raise
    app = RelayApp(options, env)
    app.report_startup_failure = False  # the caller reports it, in one line
    try:
        with contextlib.ExitStack() as stack:
            if shutdown_trigger is None:
                # Caught from the start: a SIGTERM while starting (a supervisor's
                # quick stop) shuts down cleanly instead of killing the process.
                signals = stack.enter_context(
                    trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
                )
                shutdown_trigger = partial(_first_signal, signals)
            trigger = shutdown_trigger

            async def until_shutdown() -> None:
                async with trio.open_nursery() as waiting:

                    async def first(wait: Callable[[], Awaitable[object]]) -> None:
                        await wait()
                        waiting.cancel_scope.cancel()

                    waiting.start_soon(first, trigger)
                    waiting.start_soon(first, app.failed.wait)
                # Open live tails never end by themselves: end them now rather
                # than let them hold the grace period (their browsers reconnect).
                if app.services is not None and app.services.tail is not None:
                    app.services.tail.close()

            async with trio.open_nursery() as nursery:

                async def serve_http(*, task_status: trio.TaskStatus[list[str]]) -> None:
                    await worker_serve(
                        ASGIWrapper(cast(Any, app)),
                        config,
                        sockets=sockets,
                        shutdown_trigger=until_shutdown,
                        task_status=task_status,
                    )
                    nursery.cancel_scope.cancel()  # the proxy stops with the relay

                binds = await nursery.start(serve_http)
                describe(app, binds, out)
                if proxy_listeners:
                    from relay.proxy.service import build_proxy, listening_on

                    proxy = build_proxy(options, app, ca=ca, tls=proxy_tls)
                    await nursery.start(proxy.serve, proxy_listeners)
                    where = ", ".join(listening_on(proxy_listeners))
                    out(f"relay: AI Gateway Proxy listening on {where}")
                task_status.started(app)
    except Exception:
        if app.startup_error is not None:
            raise app.startup_error from None
        raise
    finally:
        for sock in sockets.insecure_sockets:
            sock.close()
        for listener in proxy_listeners:
            listener.socket.close()
    if app.failure is not None:
        raise ServiceFailure(app.failure)


def serve(options: Options, *, demo: bool = False) -> None:
    configure_logging(structured=options.structured_logging)
    if demo:
        from relay.demo import run_demo

        trio.run(run_demo, options)
        return
    trio.run(run_server, options)
