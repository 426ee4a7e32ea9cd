"""What a benchmark run produces: its configuration and its results, as msgspec
Structs (results.json is their encoding), and the summaries computed from the
generator's samples and /proc. No I/O except reading /proc through ``targets``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec

from . import loadgen
from .targets import ProcSample, sample_proc, system_busy_s


class SuiteConfig(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    concurrencies: tuple[int, ...] = (1, 16, 64, 256)
    blocking_requests: int = 1000
    blocking_seconds: float = 3.0
    sweep_seconds: float = 2.0
    sweep_max_requests: int = 50_000
    paced_seconds: float = 2.0
    anthropic_concurrency: int = 64
    open_streams: int = 1000
    storm_streams: int = 300
    # Few at a time, so that requests reach the upstream before their client leaves.
    storm_concurrency: int = 8
    storm_leave_within_s: float = 0.06
    warmup_requests: int = 200
    timeout_s: float = 30.0
    drain_s: float = 10.0


SUITES = {
    "standard": SuiteConfig(name="standard"),
    "quick": SuiteConfig(
        name="quick",
        concurrencies=(1, 64),
        blocking_requests=300,
        sweep_seconds=1.0,
        paced_seconds=1.0,
        open_streams=200,
        storm_streams=100,
        warmup_requests=50,
    ),
    # LiteLLM needs seconds per stream at high concurrency: fewer held streams,
    # the same sweeps (bounded by time, in-flight requests by drain_s).
    "peers": SuiteConfig(name="peers", open_streams=300, storm_streams=0),
    "smoke": SuiteConfig(
        name="smoke",
        concurrencies=(1, 4),
        blocking_requests=20,
        blocking_seconds=1.0,
        sweep_seconds=0.3,
        sweep_max_requests=40,
        paced_seconds=0.3,
        anthropic_concurrency=4,
        open_streams=8,
        storm_streams=12,
        storm_concurrency=4,
        warmup_requests=4,
        drain_s=5.0,
    ),
}


class Latency(msgspec.Struct):
    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float


def latency(seconds: list[float]) -> Latency | None:
    if not seconds:
        return None
    ordered = sorted(seconds)
    n = len(ordered)

    def pick(q: float) -> float:
        return round(ordered[min(n - 1, int(q * n))] * 1000, 3)

    return Latency(
        n, pick(0.50), pick(0.90), pick(0.99), pick(1.0), round(sum(ordered) / n * 1000, 3)
    )


class RunSummary(msgspec.Struct, kw_only=True):
    phase: str  # blocking, stream-fast, stream-paced, anthropic
    concurrency: int
    completed: int
    errors: dict[str, int]
    unfinished: int
    wall_s: float
    per_s: float  # completed responses (streams) per second
    events_per_s: float
    mb_per_s: float
    events_per_response: float
    bytes_per_response: float
    ttfb: Latency | None
    total: Latency | None
    cpu_percent: float | None = None  # the target process, over the run
    # Every other process on the machine (PostgreSQL, other users), in % of one
    # CPU: beyond a few %, the target and the harness were competing for CPUs.
    other_cpu_percent: float | None = None
    cpu_ms_per_response: float | None = None
    rss_kb_after: int | None = None


class OpenStreams(msgspec.Struct, kw_only=True):
    requested: int
    opened: int
    failed: int
    rss_before_kb: int
    rss_held_kb: int
    kb_per_stream: float | None
    rss_after_close_kb: int | None
    upstream_before: int  # the mock's open connections (the target's pool, idle)
    upstream_held: int
    upstream_after_close: int


class Storm(msgspec.Struct, kw_only=True):
    streams: int
    left: int  # clients that disconnected mid-request
    completed: int  # streams that ended before their client meant to leave
    client_errors: int
    reached_upstream: int  # departed clients whose request the mock saw
    upstream_closed: int
    upstream_not_closed: int
    close_delay: Latency | None
    close_delay_by_phase: dict[str, Latency]


class TargetResult(msgspec.Struct, kw_only=True):
    name: str
    measured: bool = False
    reason: str | None = None
    pinned: bool = False
    log: str | None = None
    rss_start_kb: int | None = None  # before the first request
    rss_idle_kb: int | None = None  # after the warm-up
    runs: list[RunSummary] = []
    open_streams: OpenStreams | None = None
    storm: Storm | None = None

    def run(self, phase: str, concurrency: int) -> RunSummary | None:
        return next(
            (r for r in self.runs if r.phase == phase and r.concurrency == concurrency), None
        )


class SuiteResult(msgspec.Struct, kw_only=True):
    suite: SuiteConfig
    started_at: str
    duration_s: float
    machine: dict[str, Any]
    pinning: dict[str, Any]
    targets: list[TargetResult]

    def target(self, name: str) -> TargetResult | None:
        return next((t for t in self.targets if t.name == name and t.measured), None)


class CpuSnapshot(msgspec.Struct):
    target: ProcSample | None
    harness_cpu_s: float
    system_busy_s: float
    at: float

    @classmethod
    def take(cls, pid: int | None) -> CpuSnapshot:
        own = sample_proc(os.getpid())
        return cls(
            sample_proc(pid), own.cpu_s if own else 0.0, system_busy_s(), time.perf_counter()
        )


def summarize(
    phase: str, result: loadgen.RunResult, before: CpuSnapshot, after: CpuSnapshot
) -> RunSummary:
    samples = result.samples
    wall = max(result.wall_s, 1e-9)
    n = len(samples)
    events = sum(s.events for s in samples)
    nbytes = sum(s.nbytes for s in samples)
    summary = RunSummary(
        phase=phase,
        concurrency=result.concurrency,
        completed=n,
        errors=result.errors,
        unfinished=result.unfinished,
        wall_s=round(wall, 3),
        per_s=round(n / wall, 1),
        events_per_s=round(events / wall, 1),
        mb_per_s=round(nbytes / wall / 1e6, 2),
        events_per_response=round(events / n, 2) if n else 0.0,
        bytes_per_response=round(nbytes / n, 1) if n else 0.0,
        ttfb=latency([s.ttfb for s in samples]),
        total=latency([s.total for s in samples]),
    )
    elapsed = max(after.at - before.at, 1e-9)
    target_cpu = 0.0
    if before.target is not None and after.target is not None:
        target_cpu = after.target.cpu_s - before.target.cpu_s
        summary.cpu_percent = round(100 * target_cpu / elapsed, 1)
        summary.cpu_ms_per_response = round(1000 * target_cpu / n, 3) if n else None
        summary.rss_kb_after = after.target.rss_kb
    harness_cpu = after.harness_cpu_s - before.harness_cpu_s
    other = after.system_busy_s - before.system_busy_s - target_cpu - harness_cpu
    summary.other_cpu_percent = round(max(0.0, 100 * other / elapsed), 1)
    return summary
