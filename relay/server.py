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
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from relay.app import RelayApp, describe, print_now
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
    # Long agent sessions keep connections open between requests.
    config.keep_alive_timeout = 75
    return config


async def _first_signal(signals: AsyncIterator[int]) -> None:
    async for _ in signals:
        print("relay: shutting down (streams get the grace period to finish)", file=sys.stderr)
        return


async def run_server(
    options: Options,
    *,
    env: Mapping[str, str] | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[RelayApp] = trio.TASK_STATUS_IGNORED,
    out: Callable[[str], None] = print_now,
) -> None:
    """Serve until SIGINT/SIGTERM (or ``shutdown_trigger``), then shut down gracefully."""
    app = RelayApp(options, env)
    config = hypercorn_config(options)
    with contextlib.ExitStack() as stack:
        if shutdown_trigger is None:
            # Caught from the start: a SIGTERM while starting (a supervisor's
            # quick stop) shuts down cleanly instead of killing the process.
            signals = stack.enter_context(trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM))
            shutdown_trigger = partial(_first_signal, signals)
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                partial(hypercorn_serve, cast(Any, app), config, shutdown_trigger=shutdown_trigger)
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
