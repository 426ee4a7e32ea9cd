"""One benchmark run: every target, one after the other, through the same phases.

Per target: warm-up; sequential blocking requests (added latency); the
LiteLLM-shaped stream as fast as possible and paced, swept over the
concurrency levels; Anthropic streams; N long open streams (RSS per stream);
a disconnect storm (upstream close delay). The target's RSS and CPU come
from /proc around each phase.

Pinning: when at least two CPUs are usable, each target is pinned to the
first and the harness (generator and in-process mock) to the second, once
the target is up (so PostgreSQL, started by the relay, is not pinned).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from relay.testing.mock_upstream import MockUpstream

from . import loadgen, scenarios, stream_lifetimes
from .results import (
    SUITES,
    CpuSnapshot,
    OpenStreams,
    RunSummary,
    Storm,
    SuiteConfig,
    SuiteResult,
    TargetResult,
    latency,
    summarize,
)
from .targets import RunningTarget, TargetError, describe_machine, pin, sample_proc, start_target

__all__ = ["SUITES", "Measurer", "SuiteConfig", "run_suite"]


# -- progress -----------------------------------------------------------------------------

ProgressFactory = Callable[[str, int | None], Any]  # (label, total) -> object with update/close


class _Quiet:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def quiet_progress(label: str, total: int | None) -> _Quiet:
    return _Quiet()


# -- phases -------------------------------------------------------------------------------


class Measurer:
    def __init__(
        self,
        target: RunningTarget,
        mock: MockUpstream,
        config: SuiteConfig,
        progress: ProgressFactory,
    ) -> None:
        self.target = target
        self.mock = mock
        self.config = config
        self.progress = progress
        self.next_bench_id = 0

    async def load(
        self, phase: str, scenario: scenarios.Scenario, concurrency: int, count: int, seconds: float
    ) -> RunSummary:
        bar = self.progress(f"{self.target.name} {phase} c={concurrency}", None)
        before = CpuSnapshot.take(self.target.pid)
        try:
            result = await loadgen.run_load(
                self.target.endpoint,
                scenario,
                concurrency,
                max_requests=count,
                max_seconds=seconds,
                timeout_s=self.config.timeout_s,
                drain_s=self.config.drain_s,
                progress=bar.update,
            )
        finally:
            bar.close()
        return summarize(phase, result, before, CpuSnapshot.take(self.target.pid))

    async def warm_up(self) -> None:
        c = self.config
        for scenario, concurrency in (
            (scenarios.blocking_chat(), 1),
            (scenarios.litellm_stream("fast"), 4),
        ):
            run = await self.load("warm-up", scenario, concurrency, c.warmup_requests, 30.0)
            if not run.completed:
                raise TargetError(f"warm-up failed ({scenario.name}): errors {run.errors}")

    async def open_streams(self) -> OpenStreams:
        pid = self.target.pid
        before = sample_proc(pid)
        assert before is not None
        upstream_before = self.mock.open_connections
        count = self.config.open_streams
        bar = self.progress(f"{self.target.name} open streams", count)
        try:
            async with stream_lifetimes.holding_open(
                self.target.endpoint,
                scenarios.long_open_stream(),
                count,
                open_timeout_s=self.config.timeout_s * 2,
                progress=bar.update,
            ) as held:
                await trio.sleep(0.5)  # let the target settle after the last open
                during = sample_proc(pid)
                upstream_held = self.mock.open_connections
        finally:
            bar.close()
        # Bounded wait for the target to close the held streams' upstream connections.
        for _ in range(200):
            if self.mock.open_connections <= upstream_before:
                break
            await trio.sleep(0.05)
        after = sample_proc(pid)
        held_kb = during.rss_kb if during else before.rss_kb
        return OpenStreams(
            requested=count,
            opened=held.opened,
            failed=held.failed,
            rss_before_kb=before.rss_kb,
            rss_held_kb=held_kb,
            kb_per_stream=round((held_kb - before.rss_kb) / held.opened, 2)
            if held.opened
            else None,
            rss_after_close_kb=after.rss_kb if after else None,
            upstream_before=upstream_before,
            upstream_held=upstream_held,
            upstream_after_close=self.mock.open_connections,
        )

    async def storm(self) -> Storm:
        c = self.config
        mock = self.mock
        first_request, first_event = len(mock.requests), len(mock.events)
        bar = self.progress(f"{self.target.name} disconnect storm", c.storm_streams)
        try:
            departures = await stream_lifetimes.run_storm(
                self.target.endpoint,
                scenarios.litellm_stream("storm"),
                streams=c.storm_streams,
                concurrency=c.storm_concurrency,
                leave_within_s=c.storm_leave_within_s,
                first_id=self.next_bench_id,
                progress=bar.update,
            )
            self.next_bench_id += c.storm_streams
            left: dict[int, float] = {
                d.bench_id: d.left_at for d in departures if d.left_at is not None
            }
            conn_of: dict[int, int] = {}
            for _ in range(100):  # up to 2 s for the last closes to show
                for request in mock.requests[first_request:]:
                    header = request.header("x-bench-id")
                    if header is not None and int(header) in left:
                        conn_of[int(header)] = request.conn_id
                closes = {
                    e.conn_id: e
                    for e in mock.events[first_event:]
                    if e.kind in ("closed-by-peer", "closed-by-server")
                }
                if all(conn in closes for conn in conn_of.values()):
                    break
                await trio.sleep(0.02)
        finally:
            bar.close()
        delays: list[float] = []
        by_phase: dict[str, list[float]] = {}
        for bench_id, conn_id in conn_of.items():
            close = closes.get(conn_id)
            if close is None:
                continue
            delay = max(0.0, close.at - left[bench_id])
            delays.append(delay)
            by_phase.setdefault(close.phase or "unknown", []).append(delay)
        return Storm(
            streams=len(departures),
            left=len(left),
            completed=sum(d.seen == "complete" for d in departures),
            client_errors=sum(d.seen == "error" for d in departures),
            reached_upstream=len(conn_of),
            upstream_closed=len(delays),
            upstream_not_closed=len(conn_of) - len(delays),
            close_delay=latency(delays),
            close_delay_by_phase={p: v for p, d in by_phase.items() if (v := latency(d))},
        )

    async def measure(self, result: TargetResult) -> None:
        c = self.config
        start = sample_proc(self.target.pid)
        result.rss_start_kb = start.rss_kb if start else None
        await self.warm_up()
        idle = sample_proc(self.target.pid)
        result.rss_idle_kb = idle.rss_kb if idle else None
        blocking = scenarios.blocking_chat()
        result.runs.append(
            await self.load("blocking", blocking, 1, c.blocking_requests, c.blocking_seconds)
        )
        for phase, scenario, seconds in (
            ("stream-fast", scenarios.litellm_stream("fast"), c.sweep_seconds),
            ("stream-paced", scenarios.litellm_stream("paced"), c.paced_seconds),
        ):
            for concurrency in c.concurrencies:
                run = await self.load(phase, scenario, concurrency, c.sweep_max_requests, seconds)
                result.runs.append(run)
        # LiteLLM would translate Anthropic requests to an OpenAI model: not comparable.
        if self.target.name != "litellm":
            result.runs.append(
                await self.load(
                    "anthropic",
                    scenarios.anthropic_stream(),
                    c.anthropic_concurrency,
                    c.sweep_max_requests,
                    c.sweep_seconds,
                )
            )
        if self.target.pid is not None and c.open_streams:
            result.open_streams = await self.open_streams()


async def run_suite(
    config: SuiteConfig,
    targets: list[str],
    log_dir: Path,  # must exist
    *,
    pin_cpus: bool = True,
    litellm_bin: str | None = None,
    progress: ProgressFactory = quiet_progress,
) -> SuiteResult:
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    cpus = sorted(os.sched_getaffinity(0))
    can_pin = pin_cpus and len(cpus) >= 2
    pinning: dict[str, Any] = {"applied": False, "target_cpu": None, "generator_cpu": None}
    if not pin_cpus:
        pinning["note"] = "disabled (--no-pin)"
    elif not can_pin:
        pinning["note"] = f"only {len(cpus)} usable CPU(s): nothing pinned"
    # Throughput phases use a mock that keeps only counters; the storm needs
    # the connection log, so it runs on a fresh instance of the target
    # pointed at a second mock that records.
    mock = MockUpstream(record=False)
    storm_mock = MockUpstream(record=True)
    for m in (mock, storm_mock):
        scenarios.install_bench_responder(m)
    results: list[TargetResult] = []

    @contextlib.asynccontextmanager
    async def running(name: str, upstream: MockUpstream) -> AsyncIterator[RunningTarget]:
        if can_pin:
            os.sched_setaffinity(0, set(cpus))  # children must not inherit the harness's CPU
        async with start_target(name, upstream, log_dir, litellm_bin=litellm_bin) as target:
            if can_pin:
                os.sched_setaffinity(0, {cpus[1]})
                pinning.update(applied=True, target_cpu=cpus[0], generator_cpu=cpus[1])
                target.pinned = target.pid is None or pin(target.pid, {cpus[0]})
            yield target

    async with trio.open_nursery() as nursery:
        await nursery.start(mock.serve)
        await nursery.start(storm_mock.serve)
        for name in targets:
            result = TargetResult(name=name)
            results.append(result)
            try:
                async with running(name, mock) as target:
                    result.log = target.log_path
                    result.pinned = target.pinned
                    await Measurer(target, mock, config, progress).measure(result)
                # LiteLLM does not forward x-bench-id: its closes cannot be matched.
                if config.storm_streams and name != "litellm":
                    async with running(name, storm_mock) as target:
                        measurer = Measurer(target, storm_mock, config, progress)
                        await measurer.warm_up()
                        result.storm = await measurer.storm()
                result.measured = True
            except* TargetError as group:
                result.reason = "; ".join(str(e) for e in group.exceptions)
                print(f"bench: {name} not measured: {result.reason}", file=sys.stderr)
            except* Exception as group:
                result.reason = f"harness error: {group.exceptions[0]!r}"
                traceback.print_exception(group, file=sys.stderr)
        nursery.cancel_scope.cancel()
    if can_pin:
        os.sched_setaffinity(0, set(cpus))
    return SuiteResult(
        suite=config,
        started_at=started_at,
        duration_s=round(time.perf_counter() - started, 1),
        machine=describe_machine(),
        pinning=pinning,
        targets=results,
    )
