"""``relay serve``: the app under hypercorn's trio worker, in this process."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from relay import hypercorn_fixes
from relay.app import RelayApp
from relay.options import Options

log = logging.getLogger("relay.server")


def hypercorn_config(options: Options) -> Config:
    config = Config()
    config.bind = [options.http_address]
    config.worker_class = "trio"
    config.graceful_timeout = options.shutdown_grace
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    # Long agent sessions keep connections open between requests (an idle
    # connection the client closes is closed at once: relay.hypercorn_fixes).
    config.keep_alive_timeout = 75
    hypercorn_fixes.install()
    hypercorn_fixes.set_connection_limit(config, options.max_connections)
    return config


async def wait_for_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            print("relay: shutting down (streams get the grace period to finish)", file=sys.stderr)
            return


def describe(app: RelayApp, binds: list[str], out: Callable[[str], None]) -> None:
    services = app.services
    assert services is not None
    out(f"relay: listening on {', '.join(binds)}")
    out(f"relay: database: {services.dsn_description}")
    providers = services.providers.all()
    if not providers:
        out("relay: no providers configured (see docs/providers.md)")
    for p in providers:
        keys = ", ".join(p.masked_keys()) or "(no key)"
        out(
            f"relay: provider {p.name} ({p.type}) -> {p.base_url or '(default endpoint)'} key {keys}"
        )
        out(f"       route: /api/v2/ai-gateway/{p.name}/")


async def run_server(
    options: Options,
    *,
    env: Mapping[str, str] | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[RelayApp] = trio.TASK_STATUS_IGNORED,
    out: Callable[[str], None] = print,
) -> None:
    """Serve until SIGINT/SIGTERM (or ``shutdown_trigger``), then shut down gracefully."""
    app = RelayApp(options, env)
    config = hypercorn_config(options)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(
                hypercorn_serve,
                cast(Any, app),
                config,
                shutdown_trigger=shutdown_trigger or wait_for_signal,
            )
        )
        describe(app, binds, out)
        task_status.started(app)


def serve(options: Options, *, demo: bool = False) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO: a per-request cost on the hot path.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if demo:
        from relay.demo import run_demo

        trio.run(run_demo, options)
        return
    trio.run(run_server, options)
