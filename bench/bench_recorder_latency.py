"""The relay's added latency with PostgreSQL stopped versus running.

    python -m bench.bench_recorder_latency [--rounds 4] [--requests 150] [--warmup 10]

Recording must never slow a stream: with the database away, records go to the
spool instead, off the request path. This measures it from a client's seat.

A throwaway PostgreSQL cluster (durable settings: fsync on) in a temporary
directory, the mock upstream in this process, and ``relay serve`` as a
subprocess on that database. The client is lean on purpose: httpx with one
keep-alive connection, requests one after another, Anthropic Messages
(``mock-tool``: interception, usage, prompt and a tool call to record),
blocking and streaming in turn. Per request: TTFB (the first body byte) and
total (the last byte).

Rounds of two phases, so that a drift in the machine's load falls on both
conditions: ``up`` (PostgreSQL running), then ``down`` (stopped: the recorder
spools); PostgreSQL is started again and the next round waits until the spool
has been replayed. Figures are pooled per condition; the "A/A" line compares
the up phases of odd and even rounds, i.e. how far apart two runs of the same
condition come out on this machine. At the end every interception of the run
must be in PostgreSQL exactly once and the spool must be empty, else the exit
status is 1. Loopback only; bounded by ``--rounds``, ``--requests`` and
``--timeout``.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
import trio

from bench.replay.relay_process import started_relay
from relay.db import Database, EmbeddedPostgres
from relay.db.bridge import UNAVAILABLE_ERRORS
from relay.record.spool import SEGMENT_SUFFIX
from relay.testing.mock_upstream import MockUpstream

KINDS = ("blocking", "streaming")
CLAUDE_CODE_UA = "claude-cli/2.0.14 (external, cli)"


@dataclass
class Samples:
    ttfb: list[float] = field(default_factory=list)  # seconds
    total: list[float] = field(default_factory=list)
    errors: int = 0


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 300 is the 297th value)."""
    ordered = sorted(values)
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


def request_body(streaming: bool) -> bytes:
    return msgspec.json.encode(
        {
            "model": "mock-tool",
            "max_tokens": 100,
            "stream": streaming,
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        }
    )


async def timed_request(
    client: httpx.AsyncClient, url: str, token: str, streaming: bool, session: str
) -> tuple[float, float] | None:
    """(TTFB, total) in seconds, or None if the relay did not answer 200 in full."""
    headers = {
        "x-api-key": token,
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
        "user-agent": CLAUDE_CODE_UA,
        "x-claude-code-session-id": session,  # one per request: rows are counted by it
    }
    body = request_body(streaming)
    start = time.perf_counter()
    first: float | None = None
    try:
        async with client.stream("POST", url, content=body, headers=headers) as response:
            async for chunk in response.aiter_raw():
                if first is None and chunk:
                    first = time.perf_counter()
            end = time.perf_counter()
            ok = response.status_code == 200
    except httpx.HTTPError:
        return None
    if not ok or first is None:
        return None
    return first - start, end - start


async def run_phase(
    client: httpx.AsyncClient,
    url: str,
    token: str,
    phase: str,
    requests: int,
    warmup: int,
    sessions: list[str],
) -> dict[str, Samples]:
    """``requests`` of each kind, alternating, after ``warmup`` unmeasured ones."""
    samples = {kind: Samples() for kind in KINDS}
    for i in range(-warmup, requests):
        for kind in KINDS:
            session = f"bench-{phase}-{kind}-{i + warmup}"
            sessions.append(session)
            timing = await timed_request(client, url, token, kind == "streaming", session)
            if i < 0:
                continue
            if timing is None:
                samples[kind].errors += 1
                continue
            samples[kind].ttfb.append(timing[0])
            samples[kind].total.append(timing[1])
    return samples


def spool_segments(data_dir: Path) -> int:
    return sum(1 for _ in (data_dir / "spool").glob(f"*{SEGMENT_SUFFIX}"))


async def wait_for_rows(dsn: str, sessions: list[str], timeout: float) -> tuple[int, int, int]:
    """(interceptions, distinct sessions among them, usage rows) once all have arrived
    or ``timeout`` has passed."""
    query = (
        "SELECT count(*) AS n, count(DISTINCT client_session_id) AS sessions, "
        "(SELECT count(*) FROM token_usages) AS usages FROM interceptions "
        "WHERE client_session_id = ANY($1::text[])"
    )
    found = (0, 0, 0)
    with trio.move_on_after(timeout):
        while True:
            try:
                async with Database.open(dsn, max_size=1) as db:
                    while True:
                        row = await db.fetchrow(query, sessions)
                        assert row is not None
                        found = (row["n"], row["sessions"], row["usages"])
                        if found[0] >= len(sessions) and found[2] >= len(sessions):
                            return found
                        await trio.sleep(0.1)
            except UNAVAILABLE_ERRORS:
                await trio.sleep(0.2)
    return found


def pooled(runs: list[dict[str, Samples]]) -> dict[str, Samples]:
    out = {kind: Samples() for kind in KINDS}
    for run in runs:
        for kind, s in run.items():
            out[kind].ttfb += s.ttfb
            out[kind].total += s.total
            out[kind].errors += s.errors
    return out


def ms(seconds: float) -> str:
    return f"{seconds * 1000:9.2f}"


def figures(s: Samples) -> tuple[float, float, float, float]:
    return (
        percentile(s.ttfb, 0.5),
        percentile(s.ttfb, 0.99),
        percentile(s.total, 0.5),
        percentile(s.total, 0.99),
    )


def report(runs: dict[str, list[dict[str, Samples]]], args: argparse.Namespace) -> list[str]:
    """The table: pooled figures per kind and condition, down/up, and an A/A line
    (the up rounds split in two) showing how far apart two equal conditions come out."""
    up, down = pooled(runs["up"]), pooled(runs["down"])
    up_odd, up_even = pooled(runs["up"][0::2]), pooled(runs["up"][1::2])
    header = f"{'':<22}{'ttfb p50':>9}{'ttfb p99':>9}{'total p50':>10}{'total p99':>10}"
    lines = [
        f"relay latency, PostgreSQL up vs down: {args.rounds} rounds of (up, down), "
        f"{args.requests} requests per kind in each; httpx, one keep-alive connection, "
        "sequential",
        "",
        header + "  (ms)",
    ]
    for kind in KINDS:
        for label, pool in (("up", up), ("down", down)):
            s = pool[kind]
            n = f"n={len(s.total)}, errors={s.errors}"
            if not s.total:
                lines.append(f"{kind:<10} {label:<11} no successful requests ({n})")
                continue
            cells = "".join(ms(v) for v in figures(s))
            lines.append(f"{kind:<10} {label:<11}{cells}   {n}")
    lines += ["", header + "  (ratios)"]
    for kind in KINDS:
        for label, a, b in (("down/up", down, up), ("A/A up", up_even, up_odd)):
            if a[kind].total and b[kind].total:
                ratios = [x / y for x, y in zip(figures(a[kind]), figures(b[kind]), strict=True)]
                cells = "".join(f"{r:9.2f}" for r in ratios)
                lines.append(f"{kind:<10} {label:<11}{cells}")
    return lines


async def main(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="relay-bench-latency-"))
    embedded = EmbeddedPostgres(root / "pg")
    relay_dir = root / "relay"
    mock = MockUpstream(record=False)
    runs: dict[str, list[dict[str, Samples]]] = {"up": [], "down": []}
    sessions: list[str] = []
    spooled: list[int] = []  # spool segments at the end of each down phase
    found = (0, 0, 0)
    left = -1
    try:
        with trio.fail_after(args.timeout):
            dsn = await trio.to_thread.run_sync(embedded.start)
            async with trio.open_nursery() as nursery:
                await nursery.start(mock.serve, 0)
                async with started_relay(
                    mock.base_url, {"anthropic": "anthropic"}, data_dir=relay_dir, postgres_url=dsn
                ) as relay:
                    url = f"{relay.url}/api/v2/ai-gateway/anthropic/v1/messages"
                    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
                    async with httpx.AsyncClient(
                        trust_env=False, timeout=30, limits=limits
                    ) as client:
                        for round_ in range(args.rounds):
                            for condition in ("up", "down"):
                                if condition == "down":
                                    await trio.to_thread.run_sync(embedded.stop)
                                print(f"round {round_ + 1}: {condition}", file=sys.stderr)
                                runs[condition].append(
                                    await run_phase(
                                        client,
                                        url,
                                        relay.token,
                                        f"{condition}{round_}",
                                        args.requests,
                                        args.warmup,
                                        sessions,
                                    )
                                )
                            spooled.append(spool_segments(relay_dir))
                            await trio.to_thread.run_sync(embedded.start)
                            # The next up phase starts once the spool is replayed.
                            found = await wait_for_rows(dsn, sessions, timeout=30)
                        left = spool_segments(relay_dir)
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(embedded.stop)
        shutil.rmtree(root, ignore_errors=True)

    print("\n".join(report(runs, args)))
    interceptions, distinct, usages = found
    print(
        f"\nspool segments at the end of each down phase: {spooled}; left at the end: {left}\n"
        f"requests sent: {len(sessions)}; interceptions recorded: {interceptions} "
        f"({distinct} distinct); token usage rows: {usages}"
    )
    status = 0
    if not all(spooled):
        print("FAIL: nothing was spooled while PostgreSQL was down", file=sys.stderr)
        status = 1
    if not interceptions == distinct == usages == len(sessions) or left:
        print("FAIL: rows missing or duplicated, or the spool was not emptied", file=sys.stderr)
        status = 1
    if any(s.errors for condition in runs.values() for run in condition for s in run.values()):
        print("FAIL: some requests failed", file=sys.stderr)
        status = 1
    return status


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds of (up, down)")
    parser.add_argument(
        "--requests", type=int, default=150, help="measured, per kind, round and condition"
    )
    parser.add_argument(
        "--warmup", type=int, default=10, help="unmeasured, before each round and condition"
    )
    parser.add_argument("--timeout", type=float, default=180, help="the whole run, seconds")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(trio.run(main, parse_args()))
