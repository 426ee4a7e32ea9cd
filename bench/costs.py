"""``python -m bench.costs`` (``just costs``): what each part of the relay's work costs.

One run measures, interleaved round by round so that a busy machine moves
every row alike, the relay's CPU per stream and streams/s with everything on
and with one part switched off at a time (``bench/costs_relay.py``), next
to the ASGI floor (``bench/load/floors/asgi_passthrough.py``):

==============  ==============================================================
``on``          parsing, recording, metrics and dumps (into a temporary dir)
``default``     the relay as ``just bench`` runs it: dumps off (so "dumps off")
``no-recording`` / ``no-metrics`` / ``no-parsing``: ``on`` less that one part
``off``         all four off: the relay's routing, auth, limits and shell only
``pg-other``    ``on``, PostgreSQL on the harness's core instead of the relay's
``floor``       the ASGI pass-through floor (hypercorn + the relay's client)
``direct``      the mock upstream itself, no gateway (in the harness's process):
                what every "added" figure is measured against
``w1`` / ``w2`` ``default`` under ``hypercorn -k trio -w 1`` / ``-w 2``,
                nothing pinned (the load generator neither): several workers
``tracing``     ``default`` with ``CODER_TRACE_ENABLE``, every request sampled,
                OTLP/HTTP to the mock's ``/v1/traces`` (``default`` is tracing off)
``json-logs``   ``default`` with ``STRUCTURED_LOGGING`` (a line per recorded row)
``budgets``     ``default`` with a token whose user has three budgets (the user's,
                a group's, the token's), never reached: the check and the charge
``limits``      ``default`` with ``REQUESTS_PER_MINUTE`` and ``TOKENS_PER_MINUTE``
                set, never reached: the per-minute counting and the 1 s sync
==============  ==============================================================

Beside CPU and streams/s, each round reads the database's write load from
``pg_stat_statements`` (statements executed, rows they touched) and
``pg_stat_database`` (rows inserted, updated and deleted; transactions), as
deltas over the round, per stream. The counters are the whole cluster's, so
the other variants' background work (heartbeats, refreshes, syncs) is in
them too: a few statements per second, against thousands of streams.

Every relay variant shares one embedded PostgreSQL started here (the relay
processes use it as an external database), so the database's CPU can be
measured (``pg ms``) and pinned: on the relay's core, as the issue's
measurement had it, except for ``pg-other``. Relay and floor are pinned to
the first CPU, the harness (load generator and mock) to the second.

``--baseline REV[,REV...]`` adds every relay variant again, run from a
checkout of each REV (a temporary ``git worktree``), labelled
``variant@REV``: before/after figures of a change, or of a series of
changes step by step, from one run. With ``direct`` among the variants the
report adds "added TTFB p50": each round's TTFB p50 less the direct one of
the same round, the median of those differences (on a ``paced`` stream the
first body byte is the first event, so this is the added time to first
token). Results: bench/results/costs-<UTC time>/
(``costs.md``, ``costs.json``, the processes' logs).

``--instructions N`` counts instead of timing: every relay variant and the
floor run under valgrind's callgrind (instrumentation switched on once the
process serves, so start-up is not counted), each round serves exactly
``N`` streams, and the report gives the user-space instructions each stream
cost the serving process (all its threads: the event loop and the database
thread). Instructions do not depend on what else the machine runs, so
"relay ÷ floor" and before/after ratios are repeatable on a shared machine
where CPU seconds are not; what they leave out is the kernel's work (the
same sockets for relay and floor) and PostgreSQL's. Streams/s and latencies
under callgrind mean nothing and are not reported.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import trio

from relay.auth import parse_token
from relay.testing.mock_upstream import MockUpstream

from .load import scenarios
from .load.loadgen import Endpoint, run_load
from .load.results import latency
from .load.targets import (
    CLIENT_KEY,
    REPO,
    TargetError,
    _credentials,
    _relay_cli,
    _relay_env,
    _subprocess,
    _tail,
    free_port,
    pin,
    sample_proc,
    system_busy_s,
)

RESULTS = REPO / "bench" / "results"
LAUNCHER = REPO / "bench" / "costs_relay.py"
RELAY_VARIANTS = {
    "on": frozenset(),
    "default": frozenset({"dumps"}),
    "no-recording": frozenset({"recording"}),
    "no-metrics": frozenset({"metrics"}),
    "no-parsing": frozenset({"parsing"}),
    "off": frozenset({"recording", "metrics", "parsing", "dumps"}),
    "pg-other": frozenset(),
    "w1": frozenset({"dumps"}),
    "w2": frozenset({"dumps"}),
    "tracing": frozenset({"dumps"}),
    "json-logs": frozenset({"dumps"}),
    "budgets": frozenset({"dumps"}),
    "limits": frozenset({"dumps"}),
}
# Variants that are ``default`` plus options (issue 21: what tracing and
# structured logs cost; ``--baseline REV`` adds the build without them).
# ``tracing`` samples every request and exports OTLP/HTTP to the mock
# upstream's /v1/traces, which answers 200 and keeps nothing.
VARIANT_ENV: dict[str, dict[str, str]] = {
    "tracing": {"CODER_TRACE_ENABLE": "true", "OTEL_TRACES_SAMPLER": "always_on"},
    "json-logs": {"CODER_AI_GATEWAY_STRUCTURED_LOGGING": "true"},
    # Issue 19: limits no bench run reaches, so every request is counted and admitted.
    "limits": {
        "CODER_AI_GATEWAY_REQUESTS_PER_MINUTE": "1000000000",
        "CODER_AI_GATEWAY_TOKENS_PER_MINUTE": "1000000000000",
    },
}
DEFAULT_VARIANTS = "on,default,no-recording,no-metrics,no-parsing,off,pg-other,floor"


@dataclass
class Variant:
    label: str
    kind: str  # a key of RELAY_VARIANTS, "floor" or "direct"
    tree: Path  # the checkout whose relay runs
    endpoint: Endpoint | None = None
    pid: int | None = None
    log: str | None = None
    rounds: list[dict[str, float]] = field(default_factory=list)
    callgrind_out: Path | None = None  # --instructions: callgrind's output file (dumps add .N)

    @property
    def pinned(self) -> bool:
        return self.kind not in ("w1", "w2")


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and every descendant still alive (hypercorn's workers)."""
    total = 0.0
    for p in [pid, *_descendants(pid)]:
        sample = sample_proc(p)
        if sample is not None:
            total += sample.cpu_s
    return total


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Postgres:
    """The embedded cluster every relay variant shares."""

    def __init__(self, data_dir: Path) -> None:
        from relay.db.embedded import EmbeddedPostgres

        self.cluster = EmbeddedPostgres(data_dir)
        self.dsn = ""

    def start(self) -> None:
        self.dsn = self.cluster.start()
        # pg_stat_statements counts the statements: it must be preloaded (a restart).
        _sql(self.dsn, "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        self.cluster.stop()
        self.dsn = self.cluster.start()
        _sql(self.dsn, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def write_load(self) -> dict[str, float]:
        """The cluster's cumulative statement and row counters (see the module docstring)."""
        (row,) = _sql(
            self.dsn,
            "SELECT (SELECT sum(calls) FROM pg_stat_statements"
            "        WHERE query NOT LIKE '%pg_stat%') AS statements,"
            "       sum(tup_inserted + tup_updated + tup_deleted) AS rows_written,"
            "       sum(xact_commit) AS commits"
            " FROM pg_stat_database WHERE datname = current_database()",
        )
        return {k: float(v or 0) for k, v in row.items()}

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.cluster.stop()

    def pids(self) -> list[int]:
        pid_file = self.cluster.pgdata / "postmaster.pid"
        try:
            postmaster = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return []
        return [postmaster, *_descendants(postmaster)]

    def pin(self, cpus: set[int]) -> None:
        for pid in self.pids():
            pin(pid, cpus)

    def cpu_s(self) -> float:
        return sum(s.cpu_s for p in self.pids() if (s := sample_proc(p)) is not None)


def _sql(dsn: str, query: str) -> list[dict[str, object]]:
    """Run one query on its own connection (from a worker thread: asyncpg wants asyncio)."""
    import asyncio

    import asyncpg

    async def go() -> list[dict[str, object]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [dict(r) for r in await conn.fetch(query)]
        finally:
            await conn.close()

    return asyncio.run(go())


@contextlib.asynccontextmanager
async def _baseline_trees(revs: list[str]) -> AsyncIterator[dict[str, Path]]:
    """A temporary ``git worktree`` of each revision, removed afterwards."""
    trees: dict[str, Path] = {}
    try:
        for rev in revs:
            path = Path(tempfile.mkdtemp(prefix="relay-costs-baseline-"))
            trees[rev] = path
            await trio.run_process(
                ["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), rev],
                capture_stdout=True,
                capture_stderr=True,
            )
        yield trees
    finally:
        for path in trees.values():
            await trio.run_process(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
                check=False,
                capture_stdout=True,
                capture_stderr=True,
            )


def callgrind_command(out: Path) -> list[str]:
    """valgrind's callgrind in front of a command, instrumentation off until switched on."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("--instructions needs valgrind (Debian's valgrind package)")
    return [valgrind, "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]


async def callgrind_control(option: str, pid: int) -> None:
    """``callgrind_control OPTION PID``, once the process has taken the command."""
    done = await trio.run_process(
        ["callgrind_control", option, str(pid)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if done.returncode != 0 or b"OK" not in done.stdout:
        raise RuntimeError(f"callgrind_control {option} {pid}: {done.stdout!r} {done.stderr!r}")


def dumped_instructions(out: Path, before: set[Path]) -> int:
    """The instructions in the dump callgrind wrote since ``before`` (its ``summary:`` line)."""
    new = sorted(set(out.parent.glob(out.name + ".*")) - before, key=lambda p: p.stat().st_mtime)
    if not new:
        raise RuntimeError(f"callgrind wrote no dump next to {out}")
    for line in new[-1].read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no summary line in {new[-1]}")


@contextlib.asynccontextmanager
async def _start(
    variant: Variant,
    mock: MockUpstream,
    pg: Postgres,
    tokens: dict[str, bytes],
    work: Path,
    logs: Path,
    *,
    counted: bool = False,
) -> AsyncIterator[None]:
    port = free_port()
    if variant.kind == "direct":
        key = CLIENT_KEY.encode()
        assert mock.port is not None
        variant.endpoint = Endpoint("127.0.0.1", mock.port, {}, _credentials(key, key))
        yield
        return
    if variant.kind == "floor":
        command = [sys.executable, "-m", "hypercorn", "-k", "trio", "-w", "0"]
        command += ["-b", f"127.0.0.1:{port}", "bench.load.floors.asgi_passthrough:app"]
        env = {**os.environ, "BENCH_UPSTREAM": mock.base_url}
        paths: dict[str, str] = {}
        key = b"sk-bench-client-0000"
        health = None
    else:
        data_dir = work / f"data-{variant.label}"
        data_dir.mkdir()
        env = _relay_env(mock, str(data_dir))
        env["CODER_PG_CONNECTION_URL"] = pg.dsn
        env["PYTHONPATH"] = str(variant.tree)
        off = RELAY_VARIANTS[variant.kind]
        env["BENCH_RELAY_OFF"] = ",".join(sorted(off))
        if "dumps" not in off:
            env["CODER_AI_GATEWAY_DUMP_DIR"] = str(work / f"dumps-{variant.label}")
        env.update(VARIANT_ENV.get(variant.kind, {}))
        if variant.kind == "tracing":
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = mock.base_url
        if variant.kind in ("w1", "w2"):
            workers = variant.kind[1]
            command = [sys.executable, "-m", "hypercorn", "-k", "trio", "-w", workers]
            # The backlog relay serve sets (relay.server.LISTEN_BACKLOG): the
            # master binds the socket, so it is hypercorn's flag here.
            command += ["--backlog", "4096", "-b", f"127.0.0.1:{port}", "relay.app:create_app()"]
            env["CODER_AI_GATEWAY_HTTP_ADDRESS"] = f"127.0.0.1:{port}"
        else:
            command = [sys.executable, str(LAUNCHER), "serve"]
            command += ["--ai-gateway-http-address", f"127.0.0.1:{port}"]
        paths = {"openai": "/api/v2/ai-gateway/openai", "anthropic": "/api/v2/ai-gateway/anthropic"}
        key = tokens.get(variant.kind, tokens["default"])
        health = "/healthz"
    name = variant.label.replace("@", "-")
    timeout = None
    if counted:
        variant.callgrind_out = logs / f"callgrind-{name}.out"
        command = [*callgrind_command(variant.callgrind_out), *command]
        timeout = 600.0  # valgrind runs the start-up uninstrumented, still ~5x slower
    async with _subprocess(
        name, command, port, logs, env=env, health_path=health, timeout_s=timeout
    ) as (pid, log):
        variant.pid, variant.log = pid, str(log)
        if counted:
            await callgrind_control("--instr=on", pid)
        variant.endpoint = Endpoint("127.0.0.1", port, paths, _credentials(key, key))
        yield


async def _measure(
    variant: Variant,
    pg: Postgres,
    cpus: list[int],
    concurrency: int,
    seconds: float,
    pacing: str,
    cold: bool,
    instructions: int = 0,
) -> dict[str, float]:
    assert variant.endpoint is not None
    scenario = scenarios.litellm_stream(pacing)  # type: ignore[arg-type]
    if variant.pid is None:  # direct: the mock, in this process
        os.sched_setaffinity(0, {cpus[1]})
    elif variant.pinned:
        os.sched_setaffinity(0, {cpus[1]})
        for p in [variant.pid, *_descendants(variant.pid)]:
            pin(p, {cpus[0]})
        pg.pin({cpus[1]} if variant.kind == "pg-other" else {cpus[0]})
    else:
        os.sched_setaffinity(0, set(cpus))
        for p in [variant.pid, *_descendants(variant.pid)]:
            pin(p, set(cpus))
        pg.pin(set(cpus))
    if instructions:
        return await _count(variant, scenario, concurrency, instructions)
    # Warm: connections, the token cache, the upstream pool, the workers.
    await run_load(variant.endpoint, scenario, concurrency, max_requests=300, max_seconds=3)
    pid = variant.pid
    load0 = await trio.to_thread.run_sync(pg.write_load)
    cpu0, pg0, busy0, at0 = (
        _tree_cpu_s(pid) if pid is not None else 0.0,
        pg.cpu_s(),
        system_busy_s(),
        time.perf_counter(),
    )
    # run_load closes its connections at its end: a cold run connects anew.
    result = await run_load(
        variant.endpoint,
        scenario,
        concurrency,
        max_requests=10**9,
        max_seconds=seconds,
        cold=cold,
    )
    cpu1, pg1, busy1, at1 = (
        _tree_cpu_s(pid) if pid is not None else 0.0,
        pg.cpu_s(),
        system_busy_s(),
        time.perf_counter(),
    )
    done = len(result.samples)
    await trio.sleep(1.2)  # backends report pg_stat_database counters within a second
    load1 = await trio.to_thread.run_sync(pg.write_load)
    load = {k: (load1[k] - load0[k]) / done if done else 0.0 for k in load0}
    own = sample_proc(os.getpid())
    harness = own.cpu_s if own else 0.0
    total = latency([s.total for s in result.samples])
    ttfb = latency([s.ttfb for s in result.samples])
    return {
        "streams": done,
        "errors": sum(result.errors.values()) + result.unfinished,
        "per_s": done / max(result.wall_s, 1e-9),
        "cpu_ms": (cpu1 - cpu0) * 1000 / done if done else 0.0,
        "pg_ms": (pg1 - pg0) * 1000 / done if done else 0.0,
        "p50_ms": total.p50_ms if total else 0.0,
        "p99_ms": total.p99_ms if total else 0.0,
        "ttfb_p50_ms": ttfb.p50_ms if ttfb else 0.0,
        # Every CPU of the machine busy meanwhile, in % of one CPU, ours included.
        "machine_busy_pct": (busy1 - busy0) * 100 / max(at1 - at0, 1e-9),
        "harness_cpu_s": harness,
        "statements": load["statements"],
        "rows_written": load["rows_written"],
        "commits": load["commits"],
    }


async def _count(
    variant: Variant, scenario: scenarios.Scenario, concurrency: int, streams: int
) -> dict[str, float]:
    """``--instructions``: what ``streams`` streams cost in instructions (callgrind)."""
    assert variant.endpoint is not None
    out, pid = variant.callgrind_out, variant.pid
    if out is None or pid is None:  # direct: nothing of ours runs
        return {"streams": 0, "errors": 0, "instructions": 0.0}
    # Warm (instrumented, so code is translated once): connections, caches, the pool.
    await run_load(variant.endpoint, scenario, concurrency, max_requests=64, max_seconds=300)
    await callgrind_control("--zero", pid)
    result = await run_load(
        variant.endpoint, scenario, concurrency, max_requests=streams, max_seconds=3600
    )
    before = set(out.parent.glob(out.name + ".*"))
    await callgrind_control("--dump", pid)
    done = len(result.samples)
    total = await trio.to_thread.run_sync(dumped_instructions, out, before)
    return {
        "streams": done,
        "errors": sum(result.errors.values()) + result.unfinished,
        "instructions": total / done if done else 0.0,
    }


async def run(args: argparse.Namespace, out: Path) -> list[Variant]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("bench.costs needs two usable CPUs (relay on one, harness on the other)")
    kinds = [k for k in args.variants.split(",") if k]
    for kind in kinds:
        if kind not in ("floor", "direct") and kind not in RELAY_VARIANTS:
            raise SystemExit(
                f"unknown variant {kind!r}; known: floor, direct, {', '.join(RELAY_VARIANTS)}"
            )
    # Data directories (the cluster, spools, dumps) in /tmp, which the 'postgres'
    # user (the embedded cluster runs as it when we are root) can enter.
    work = Path(tempfile.mkdtemp(prefix="relay-costs-"))
    os.chmod(work, 0o755)
    try:
        return await _run(args, out, work, cpus, kinds)
    finally:
        await trio.to_thread.run_sync(functools.partial(shutil.rmtree, work, ignore_errors=True))


async def _run(
    args: argparse.Namespace, out: Path, work: Path, cpus: list[int], kinds: list[str]
) -> list[Variant]:
    mock = MockUpstream(record=False)
    scenarios.install_bench_responder(mock)
    pg = Postgres(work / "pg")
    revs = [rev for rev in (args.baseline or "").split(",") if rev]
    async with _baseline_trees(revs) as trees:
        variants = [Variant(k, k, REPO) for k in kinds]
        for rev, tree in trees.items():
            variants += [
                Variant(f"{k}@{rev}", k, tree) for k in kinds if k not in ("floor", "direct")
            ]
        await trio.to_thread.run_sync(pg.start)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(mock.serve, 0)
                env = _relay_env(mock, str(work))
                env["CODER_PG_CONNECTION_URL"] = pg.dsn
                await _relay_cli(["migrate"], env)
                user = f"bench-costs-{os.getpid()}-{int(time.time())}"
                await _relay_cli(["users", "create", user], env)
                token = (await _relay_cli(["tokens", "create", "--user", user], env)).encode()
                tokens = {"default": token}
                if "budgets" in kinds:
                    tokens["budgets"] = await _budget_token(env, user)
                async with contextlib.AsyncExitStack() as stack:
                    for variant in variants:
                        try:
                            await stack.enter_async_context(
                                _start(
                                    variant,
                                    mock,
                                    pg,
                                    tokens,
                                    work,
                                    out,
                                    counted=bool(args.instructions) and variant.kind != "direct",
                                )
                            )
                        except TargetError as exc:
                            raise SystemExit(
                                f"bench.costs: {variant.label} did not start: {exc}"
                            ) from None
                    for round_ in range(args.rounds):
                        for variant in variants:
                            figures = await _measure(
                                variant,
                                pg,
                                cpus,
                                args.concurrency,
                                args.seconds,
                                args.pacing,
                                args.cold,
                                args.instructions,
                            )
                            variant.rounds.append(figures)
                            if args.instructions:
                                print(
                                    f"round {round_ + 1} {variant.label:>18}: "
                                    f"{figures['instructions'] / 1e6:.2f} M instructions "
                                    f"per stream ({figures['streams']:.0f} streams)",
                                    flush=True,
                                )
                                continue
                            print(
                                f"round {round_ + 1} {variant.label:>18}: {figures['per_s']:7.0f}/s "
                                f"cpu {figures['cpu_ms']:.3f} ms pg {figures['pg_ms']:.3f} ms "
                                f"p50/p99 {figures['p50_ms']:.0f}/{figures['p99_ms']:.0f} ms "
                                f"machine {figures['machine_busy_pct']:.0f}%",
                                flush=True,
                            )
                    os.sched_setaffinity(0, set(cpus))
                nursery.cancel_scope.cancel()
        finally:
            await trio.to_thread.run_sync(pg.stop)
    for variant in variants:
        if variant.log and any(r["errors"] for r in variant.rounds):
            print(f"{variant.label}: errors; log ends:\n{_tail(Path(variant.log))}")
    return variants


async def _budget_token(env: dict[str, str], user: str) -> bytes:
    """A token of a new user with three budgets no run reaches: the user's, a group's, the token's."""
    spender = f"{user}-budgets"
    await _relay_cli(["users", "create", spender], env)
    token = (await _relay_cli(["tokens", "create", "--user", spender], env)).encode()
    parsed = parse_token(token.decode())
    key_id = parsed[0] if parsed is not None else ""
    await _relay_cli(["groups", "create", f"{spender}-team"], env)
    await _relay_cli(["groups", "add", f"{spender}-team", spender], env)
    big = ["--limit", "1000000"]
    await _relay_cli(["budgets", "set", f"{spender}-user", "--user", spender, *big], env)
    await _relay_cli(
        ["budgets", "set", f"{spender}-group", "--group", f"{spender}-team", *big], env
    )
    if key_id:
        await _relay_cli(["budgets", "set", f"{spender}-token", "--token", key_id, *big], env)
    return token


def _median(variant: Variant, key: str) -> float:
    return statistics.median(r[key] for r in variant.rounds) if variant.rounds else 0.0


def _added_ttfb(variant: Variant, direct: Variant | None) -> str:
    """Median over rounds of (this TTFB p50 - the direct TTFB p50 of the same round)."""
    if direct is None or variant is direct or not variant.rounds:
        return ""
    added = [
        mine["ttfb_p50_ms"] - theirs["ttfb_p50_ms"]
        for mine, theirs in zip(variant.rounds, direct.rounds, strict=False)
    ]
    return f"{statistics.median(added):.2f}"


def render_counted(variants: list[Variant], args: argparse.Namespace, started: str) -> str:
    """The ``--instructions`` report: instructions per stream, and as ratios."""
    by_label = {v.label: v for v in variants}
    floor, base = by_label.get("floor"), by_label.get("on") or by_label.get("default")
    lines = [
        f"# bench.costs --instructions, {started}",
        "",
        f"`python -m bench.costs --variants {args.variants} --rounds {args.rounds} "
        f"--instructions {args.instructions} --concurrency {args.concurrency} "
        f"--pacing {args.pacing}" + (f" --baseline {args.baseline}`" if args.baseline else "`"),
        "",
        f"User-space instructions of the serving process per stream (callgrind; all its "
        f"threads; kernel and PostgreSQL not counted), median of {args.rounds} rounds of "
        f"{args.instructions} streams, `{args.pacing}` stream, {args.concurrency} clients.",
        "",
        f"| variant | M instructions / stream | ÷ floor | ÷ {base.label if base else 'on'} |",
        "|---|---|---|---|",
    ]
    for v in variants:
        if v.kind == "direct":
            continue
        ir = _median(v, "instructions")
        to_floor = f"{ir / _median(floor, 'instructions'):.3f}×" if floor and v is not floor else ""
        to_base = f"{ir / _median(base, 'instructions'):.3f}×" if base and v is not base else ""
        lines.append(f"| {v.label} | {ir / 1e6:.3f} | {to_floor} | {to_base} |")
    errors = {v.label: sum(int(r["errors"]) for r in v.rounds) for v in variants}
    if any(errors.values()):
        lines += ["", f"Errors or unfinished requests: {errors}"]
    return "\n".join(lines) + "\n"


def render(variants: list[Variant], args: argparse.Namespace, started: str) -> str:
    by_label = {v.label: v for v in variants}
    base = by_label.get("on")
    floor = by_label.get("floor")
    direct = by_label.get("direct")
    lines = [
        f"# bench.costs, {started}",
        "",
        f"`python -m bench.costs --variants {args.variants} --rounds {args.rounds} "
        f"--seconds {args.seconds:g} --concurrency {args.concurrency} --pacing {args.pacing}"
        + (f" --baseline {args.baseline}" if args.baseline else "")
        + (" --cold`" if args.cold else "`"),
        "",
        f"Medians of {args.rounds} interleaved rounds; `{args.pacing}` stream, "
        f"{args.concurrency} clients. Pinned variants: relay (and PostgreSQL, except "
        "pg-other) on CPU 0, harness on CPU 1; w1/w2 unpinned.",
        "",
        "| variant | streams/s | CPU ms / stream | Δ vs on | PostgreSQL ms / stream | "
        "p50 / p99 ms | TTFB p50 ms | added TTFB p50 ms | ÷ floor CPU | machine busy % | "
        "statements / stream | rows written / stream | commits / stream |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        cpu = _median(v, "cpu_ms")
        delta = (
            f"{cpu - _median(base, 'cpu_ms'):+.3f}" if base is not None and v is not base else ""
        )
        ratio = (
            f"{cpu / _median(floor, 'cpu_ms'):.2f}×"
            if floor is not None and v not in (floor, direct)
            else ""
        )
        lines.append(
            f"| {v.label} | {_median(v, 'per_s'):,.0f} | {cpu:.3f} | {delta} | "
            f"{_median(v, 'pg_ms'):.3f} | {_median(v, 'p50_ms'):.1f} / {_median(v, 'p99_ms'):.1f} | "
            f"{_median(v, 'ttfb_p50_ms'):.2f} | {_added_ttfb(v, direct)} | {ratio} | "
            f"{_median(v, 'machine_busy_pct'):.0f} | {_median(v, 'statements'):.3f} | "
            f"{_median(v, 'rows_written'):.2f} | {_median(v, 'commits'):.3f} |"
        )
    errors = {v.label: sum(int(r["errors"]) for r in v.rounds) for v in variants}
    if any(errors.values()):
        lines += ["", f"Errors or unfinished requests: {errors}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.costs", description=__doc__)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--pacing", default="fast", choices=sorted(scenarios.PACINGS))
    parser.add_argument(
        "--baseline", default=None, help="git revisions to compare with (comma-separated)"
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="every client connects when the clock starts (as wrk does): the accept path counts",
    )
    parser.add_argument(
        "--instructions",
        type=int,
        default=0,
        metavar="N",
        help="count instructions per stream under callgrind over N streams a round (no timing)",
    )
    args = parser.parse_args()
    started = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"costs-{started}"
    out.mkdir(parents=True)
    variants = trio.run(run, args, out)
    report = (render_counted if args.instructions else render)(variants, args, started)
    (out / "costs.md").write_text(report)
    (out / "costs.json").write_bytes(
        msgspec.json.encode(
            [{"label": v.label, "kind": v.kind, "rounds": v.rounds} for v in variants]
        )
    )
    print("\n" + report + f"\nresults: {out}")


if __name__ == "__main__":
    main()
