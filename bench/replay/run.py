"""One replay, start to end: load dumps, serve them, send them, check, report."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio

from bench.replay.cases import LoadedDumps, load_dumps
from bench.replay.client import ReplayRun, Target, replay_cases
from bench.replay.relay_process import started_relay
from bench.replay.upstream import ReplayUpstream
from bench.replay.usage import UsageCheck, check_recorded_usage, expected_usage
from relay.db import Database
from relay.options import load_options
from relay.providers.types import mask_secret


@dataclass
class ReplayOptions:
    directory: Path
    relay_url: str | None = None  # an existing relay (needs token) ...
    token: str | None = None
    start_relay: bool = False  # ... or one started here ...
    direct: bool = False  # ... or none: straight to the replay upstream (checks the dumps)
    data_dir: Path | None = None  # for --start-relay; default a temporary one
    postgres_url: str = ""  # the relay's database (for --start-relay and --check-usage)
    check_usage: bool = False
    concurrency: int = 1
    repeat: int = 1
    speed: float = 1.0
    timeout: float = 120.0


@dataclass
class ReplayReport:
    dumps: LoadedDumps
    run: ReplayRun = field(default_factory=ReplayRun)
    usage: UsageCheck | None = None
    unmatched: int = 0  # requests the replay upstream could not match

    @property
    def ok(self) -> bool:
        return (
            bool(self.run.outcomes)
            and self.run.mismatches == 0
            and self.run.errors == 0
            and self.unmatched == 0
            and (self.usage is None or self.usage.ok)
        )


async def run_replay(options: ReplayOptions, out: Callable[[str], None] = print) -> ReplayReport:
    dumps = load_dumps(options.directory)
    report = ReplayReport(dumps)
    if not dumps.cases:
        out(f"replay: no replayable dumps in {options.directory}")
        _print_skipped(report, out)
        return report
    upstream = ReplayUpstream(dumps.cases, speed=options.speed)
    since = datetime.now(UTC) - timedelta(seconds=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.serve)
        try:
            async with AsyncExitStack() as stack:
                postgres_url = options.postgres_url
                data_dir = options.data_dir
                if options.direct:
                    target = Target(upstream.base_url, direct=True)
                elif options.start_relay:
                    relay = await stack.enter_async_context(
                        started_relay(
                            upstream.base_url,
                            dumps.provider_types,
                            data_dir=options.data_dir,
                            postgres_url=options.postgres_url,
                        )
                    )
                    out(f"replay: started {relay.describe()}")
                    target = Target(relay.url, relay.token)
                    data_dir = relay.data_dir
                else:
                    if not options.relay_url or not options.token:
                        raise ValueError("give --relay URL and --token, --start-relay, or --direct")
                    target = Target(options.relay_url, options.token)
                    out(
                        f"replay: relay at {options.relay_url} (token {mask_secret(options.token)})"
                    )
                out(
                    f"replay: {len(dumps.cases)} exchange(s) x {options.repeat}, "
                    f"concurrency {options.concurrency}, speed {options.speed:g}"
                )
                report.run = await replay_cases(
                    dumps.cases,
                    target,
                    concurrency=options.concurrency,
                    repeat=options.repeat,
                    timeout=options.timeout,
                )
                report.unmatched = upstream.unmatched
                if options.check_usage and not options.direct:
                    report.usage = await _check_usage(report, data_dir, postgres_url, since)
        finally:
            nursery.cancel_scope.cancel()
    print_report(report, options, out)
    return report


async def _check_usage(
    report: ReplayReport, data_dir: Path | None, postgres_url: str, since: datetime
) -> UsageCheck:
    from relay.services import open_database  # the relay's own way to reach its database

    ok_counts = {case.id: report.run.ok_count(case.id) for case in report.dumps.cases}
    expected, check = expected_usage(report.dumps.cases, ok_counts)
    env = {"CODER_PG_CONNECTION_URL": postgres_url}
    if data_dir is not None:
        env["CODER_AI_GATEWAY_DATA_DIR"] = str(data_dir)
    async with open_database(load_options(env, warn=lambda _line: None)) as (db, _):
        assert isinstance(db, Database)
        return await check_recorded_usage(db, expected, check, since)


def _print_skipped(report: ReplayReport, out: Callable[[str], None]) -> None:
    for skipped in report.dumps.skipped:
        out(f"replay: skipped {skipped.id}: {skipped.reason}")


def _percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    if len(ordered) == 1:
        return f"p50 {ordered[0] * 1000:.1f} ms"
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return (
        " ".join(
            f"{name} {value * 1000:.1f} ms"
            for name, value in (("p50", cuts[49]), ("p90", cuts[89]), ("p99", cuts[98]))
        )
        + f" max {ordered[-1] * 1000:.1f} ms"
    )


def print_report(report: ReplayReport, options: ReplayOptions, out: Callable[[str], None]) -> None:
    run = report.run
    _print_skipped(report, out)
    total = len(run.outcomes)
    identical = sum(1 for o in run.outcomes if o.ok)
    out(f"replay: {identical}/{total} responses byte-identical to the recording")
    if run.mismatches:
        out(f"replay: MISMATCH in {run.mismatches} response(s)")
    if run.first_mismatch is not None:
        out(f"replay: first mismatch, {run.first_mismatch.case_id}:")
        for line in run.first_mismatch.diff().splitlines():
            out("  " + line)
    if run.errors:
        first = next(o for o in run.outcomes if o.error)
        out(f"replay: {run.errors} request(s) failed; first: {first.case_id}: {first.error}")
    if report.unmatched:
        out(f"replay: {report.unmatched} request(s) matched no recorded exchange")
    if report.usage is not None:
        usage = report.usage
        verdict = "matches" if usage.ok else "DOES NOT match"
        out(
            f"replay: recorded usage {verdict} the streams ({usage.checked} row(s) compared, "
            f"{usage.unchecked_cases} case(s) without usage or response id)"
        )
        for problem in usage.problems[:20]:
            out("  " + problem)
    headers = [o.headers_s for o in run.outcomes if o.error is None]
    first_bytes = [o.first_byte_s for o in run.outcomes if o.first_byte_s is not None]
    totals = [o.total_s for o in run.outcomes if o.error is None]
    out(f"latency to headers:    {_percentiles(headers)}")
    out(f"latency to first byte: {_percentiles(first_bytes)}")
    out(f"latency to last byte:  {_percentiles(totals)}")
    answered = total - run.errors
    if run.wall_s > 0 and answered:
        body_bytes = sum(o.bytes for o in run.outcomes)
        out(
            f"throughput: {answered / run.wall_s:.1f} requests/s, "
            f"{body_bytes / run.wall_s / 1e6:.2f} MB/s of response bodies "
            f"({answered} answered in {run.wall_s:.2f} s)"
        )
    out("replay: OK" if report.ok else "replay: FAILED")
