"""The long-lived services of one relay process, opened and closed together."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import platformdirs
import trio

from relay.auth import TokenCache
from relay.budgets.minute import MinuteLimits, MinuteLimitService
from relay.budgets.store import BudgetService
from relay.budgets.tracker import BudgetTracker, ChargingSink
from relay.db.bridge import (
    CONNECT_ERRORS,
    Database,
    DatabaseConnectError,
    connect_failure,
    mask_dsn,
    unavailable,
)
from relay.db.embedded import EmbeddedPostgres
from relay.db.migrate import migrate
from relay.dump import DumpWriter
from relay.errors import RelayError, sole_exception
from relay.mcp.client import McpServers
from relay.metrics import Metrics, metrics_for_process, serve_metrics_listener
from relay.observe.logs import RecordLogSink, RecordSink
from relay.observe.tail import TailHub, TailSink
from relay.options import Options
from relay.pricing.store import PriceCache, seed_default_prices
from relay.providers.env import providers_from_env
from relay.providers.registry import ConfigListener, ProviderRegistry
from relay.providers.store import seed_providers_from_env
from relay.record.instances import Instance
from relay.record.recorder import Recorder
from relay.upstream.clients import UpstreamClients

log = logging.getLogger("relay.services")


def _warn(line: str) -> None:
    print(line, file=sys.stderr)


def data_dir(options: Options) -> Path:
    """The data directory: the option, else a per-user default.

    ``~/.local/share/relay`` for ordinary users. For root it is
    ``/var/lib/relay``: root's home is mode 700, which the ``postgres`` user
    that runs the embedded cluster cannot enter, and opening it up is not the
    relay's business.
    """
    if options.data_dir:
        return Path(options.data_dir).expanduser().resolve()
    if os.geteuid() == 0:
        return Path("/var/lib/relay")
    return Path(platformdirs.user_data_dir("relay", appauthor=False))


def startup_failure(exc: BaseException) -> RelayError | None:
    """The expected failure that stopped a start (unwrapped from exception groups), or None.

    An expected failure is a ``RelayError`` (the database going away on the way
    becomes one) and is reported in its one line; anything else is a bug and
    keeps its traceback.
    """
    exc = sole_exception(exc)
    if isinstance(exc, RelayError):
        return exc
    return unavailable(exc)


ServiceFailed = Callable[[str, BaseException], None]


class _Started:
    """A task status that remembers whether the service reported itself started."""

    def __init__(self, inner: trio.TaskStatus[Any]) -> None:
        self._inner = inner
        self.done = False

    def started(self, value: Any = None) -> None:
        self.done = True
        self._inner.started(value)


async def supervised(
    name: str,
    on_failure: ServiceFailed,
    run: Callable[..., Awaitable[None]],
    *args: Any,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one background service; a failure once it has started goes to ``on_failure``.

    A failure before it started is raised: the start fails, saying why. One
    after it is not left to cancel the services nursery (that would stop the
    recorder under requests still being served): ``on_failure`` is told, and
    the process shuts down the way it does on SIGTERM, then exits non-zero.
    """
    status = _Started(task_status)
    try:
        await run(*args, task_status=status)
    except Exception as exc:
        if not status.done:
            raise
        on_failure(name, exc)


@dataclass
class Services:
    options: Options
    db: Database
    providers: ProviderRegistry
    tokens: TokenCache
    recorder: Recorder
    upstreams: UpstreamClients
    dsn_description: str
    metrics: Metrics
    dumps: DumpWriter
    # This process in relay_instances: its id stamps the interceptions it serves.
    instance: Instance | None = None
    # The price book in memory, reloaded on every change (usage is priced from it).
    prices: PriceCache | None = None
    # Budgets and their spend in memory (checked by admit, charged as recorded).
    budgets: BudgetTracker | None = None
    # What the request path records through: the recorder, charging budgets on the way
    # (and, with STRUCTURED_LOGGING, one log line per row: relay.observe.logs).
    records: RecordSink | None = None
    # The MCP servers whose tools are injected (None: none configured).
    mcp: McpServers | None = None
    # REQUESTS_PER_MINUTE / TOKENS_PER_MINUTE across the fleet (None: both off).
    minute_limits: MinuteLimits | None = None
    # The console's live tail: fed by the record sink (relay.observe.tail).
    tail: TailHub | None = None


@asynccontextmanager
async def open_database(options: Options) -> AsyncIterator[tuple[Database, str]]:
    """The configured PostgreSQL, or the embedded cluster in the data directory."""
    embedded: EmbeddedPostgres | None = None
    dsn = options.pg_connection_url
    description = "external PostgreSQL (CODER_PG_CONNECTION_URL)"
    if not dsn:
        directory = data_dir(options)
        embedded = EmbeddedPostgres(directory)
        dsn = await trio.to_thread.run_sync(embedded.start)
        description = f"embedded PostgreSQL in {directory / 'postgres'}"
    where = f"the {description}" if embedded is not None else f"the database {mask_dsn(dsn)}"
    try:
        async with contextlib.AsyncExitStack() as stack:
            try:
                db = await stack.enter_async_context(Database.open(dsn))
            except CONNECT_ERRORS as exc:
                raise DatabaseConnectError(
                    f"cannot connect to {where}: {connect_failure(exc)}"
                ) from exc
            yield db, description
    finally:
        if embedded is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(embedded.stop)


def mcp_servers(options: Options) -> McpServers | None:
    """The configured MCP servers' connections, or None when there is none."""
    if not options.mcp_servers:
        return None
    return McpServers(
        options.mcp_servers,
        connect_timeout=options.mcp_connect_timeout,
        refresh_interval=options.mcp_refresh_interval,
        tool_timeout=options.mcp_tool_timeout,
        max_result=options.mcp_max_result_size,
        max_rounds=options.mcp_max_rounds,
    )


def record_sink(options: Options, sink: ChargingSink, tail: TailHub | None = None) -> RecordSink:
    """The request path's record sink: with STRUCTURED_LOGGING each row is logged too,
    and each finished interception goes to the live tail's viewers (if any watch)."""
    records: RecordSink = sink
    if options.structured_logging:
        records = RecordLogSink(records, content=options.structured_logging_content)
    if tail is not None:
        records = TailSink(records, tail)
    return records


@asynccontextmanager
async def open_services(
    options: Options, env: Mapping[str, str], on_failure: ServiceFailed
) -> AsyncIterator[Services]:
    """Everything one relay process needs, in the order it needs it.

    The background tasks (config listener, recorder) live in a nursery inside
    the database's lifetime, so they are gone before the database closes. A
    task that fails once started is reported to ``on_failure`` (see
    ``supervised``); the others keep running until the process shuts down.
    """
    async with open_database(options) as (db, description):
        await migrate(db)
        await seed_default_prices(db)
        providers = providers_from_env(env, _warn, options)
        seeded = await seed_providers_from_env(db, providers)
        if seeded.absent:
            # Seeding never disables: another node may serve them (docs/providers.md).
            log.info(
                "providers in the database but not in this environment, left as they are: %s",
                ", ".join(seeded.absent),
            )
        if seeded.skipped:
            log.warning(
                "environment providers skipped (a provider made with the CLI holds the name): %s",
                ", ".join(seeded.skipped),
            )
        # Before the first request: settle what a dead predecessor left in_progress.
        instance = Instance(db)
        await instance.register()
        await instance.sweep()
        registry = ProviderRegistry()
        tokens = TokenCache(db)
        prices = PriceCache()
        budgets = BudgetTracker()
        budget_service = BudgetService(db, budgets, options.budget_refresh_interval)
        upstreams = UpstreamClients(
            connect_timeout=options.upstream_connect_timeout,
            read_timeout=options.upstream_read_timeout,
        )
        recorder = Recorder(
            db,
            data_dir(options) / "spool",
            batch_size=options.recorder_batch_size,
            flush_interval=options.recorder_flush_interval,
            queue_size=options.recorder_queue_size,
            retention=options.retention or None,
            # REQUIRE_RECORDING refuses requests on cannot_record: keep it current.
            watch_interval=1.0 if options.require_recording else None,
        )
        async with trio.open_nursery() as nursery:
            # One LISTEN per process feeds them all: provider changes,
            # revocations, prices and budgets reach this process within a second.
            listener = ConfigListener(db, registry, tokens, prices, budget_service)
            await nursery.start(supervised, "config listener", on_failure, listener.run)
            await nursery.start(supervised, "recorder", on_failure, recorder.run)
            await nursery.start(supervised, "instance heartbeat", on_failure, instance.run)
            recorder.on_replayed = instance.sweep_soon
            # Multiprocess mode sets up its directory (mkdir, glob, rmtree): off the loop.
            metrics = await trio.to_thread.run_sync(
                partial(
                    metrics_for_process,
                    data_dir(options),
                    max_models=options.metrics_max_models,
                    initiator_label=options.metrics_initiator_id_label,
                    token=options.metrics_token,
                )
            )

            budgets.on_refused.append(lambda b: metrics.budget_refused(b.name))
            budgets.on_soft_limit.append(lambda b, _spent: metrics.budget_soft_limit(b.name))
            budget_service.on_refresh = lambda: metrics.budget_state(
                (b.name, budgets.spent(b), b.limit_micros) for b in budgets.budgets
            )
            await nursery.start(supervised, "budget totals", on_failure, budget_service.run)
            minute_limits = None
            if options.requests_per_minute or options.tokens_per_minute:
                minute_limits = MinuteLimits(
                    options.requests_per_minute,
                    options.tokens_per_minute,
                    per_token=options.minute_limits_per == "token",
                )
                minute_service = MinuteLimitService(
                    db, minute_limits, options.minute_limits_sync_interval
                )
                await minute_service.sync_once()  # the fleet's minute before the first request
                await nursery.start(supervised, "per-minute limits", on_failure, minute_service.run)

            async def report_providers(_changes: object = None) -> None:
                metrics.providers([(p.name, str(p.type), "enabled") for p in registry.all()])

            await report_providers()
            listener.add_callback(report_providers)
            await nursery.start(
                supervised, "recorder metrics", on_failure, metrics.watch_recorder, recorder.stats
            )
            if options.metrics_address:
                await nursery.start(
                    supervised,
                    "metrics listener",
                    on_failure,
                    serve_metrics_listener,
                    metrics,
                    options.metrics_address,
                )
            dumps = DumpWriter(options.dump_dir or None, metrics)
            await nursery.start(supervised, "dump writer", on_failure, dumps.run)
            tail = TailHub()
            mcp = mcp_servers(options)
            if mcp is not None:
                # Started once every server's first listing is over (or failed: skipped).
                await nursery.start(supervised, "MCP servers", on_failure, mcp.run)
            try:
                yield Services(
                    options,
                    db,
                    registry,
                    tokens,
                    recorder,
                    upstreams,
                    description,
                    metrics,
                    dumps,
                    instance,
                    prices,
                    budgets,
                    record_sink(
                        options,
                        ChargingSink(recorder, budgets, metrics, minute_limits),
                        tail,
                    ),
                    mcp,
                    minute_limits,
                    tail,
                )
            finally:
                with trio.CancelScope(shield=True):
                    await upstreams.aclose()
                    await dumps.aclose()  # what is queued goes to disk
                    # Drains the channel: everything is written or spooled.
                    await recorder.aclose()
                    await instance.stopped()
                nursery.cancel_scope.cancel()
