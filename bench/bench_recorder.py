"""Recorder throughput, and what a SIGKILL loses.

    python -m bench.bench_recorder [--rows 300000] [--dsn URL] [--kills 5]

Uses ``--dsn`` (or ``CODER_PG_CONNECTION_URL``) if given, else a throwaway
embedded PostgreSQL cluster (durable settings: fsync on) in a temporary
directory. Rows are realistic interceptions: an interception, its token
usage, prompt, one tool call and one thought (5 rows each).

1. copy:     ``write_batch`` alone, batches of 1,000 rows, one after another.
             (Records are built before the clock starts, in both 1 and 2.)
2. recorder: ``Recorder.record()`` from a producer as fast as it can go,
             end to end (channel, batching, COPY), rows/s until all committed.
3. sigkill:  a child process records at a steady rate and is SIGKILLed; the
             interceptions it had accepted but that are neither in PostgreSQL
             nor in its spool are what a SIGKILL loses.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import msgspec
import trio

from relay.db import Database, EmbeddedPostgres
from relay.db.migrate import migrate
from relay.facts import Facts, ToolCall, Usage
from relay.record.events import InterceptionMeta, InterceptionRecord, Record, records_for
from relay.record.recorder import Recorder
from relay.record.spool import Spool
from relay.record.writer import write_batch

USER = uuid.uuid4()


def interception(n: int, provider: str = "bench") -> list[Record]:
    meta = InterceptionMeta(
        provider_name=provider,
        provider_type="anthropic",
        model="claude-sonnet-4-5",
        route="/v1/messages",
        initiator_id=USER,
        api_key_id="0123456789ab",
        client="claude-code",
        client_session_id="3f1c2d8e-5b0a-4c1e-9d2f-7a6b5c4d3e2f",
        user_agent="claude-cli/2.0.14 (external, cli)",
        credential_hint="sk-…abcd",
    )
    facts = Facts(
        response_id=f"msg_{n:024d}",
        usage=Usage(
            input_tokens=1200,
            output_tokens=350,
            cache_read_tokens=40_000,
            cache_write_tokens=512,
            extra={"cache_creation_5m": 512, "cache_creation_1h": 0},
            raw={"input_tokens": 1200, "output_tokens": 350, "cache_read_input_tokens": 40000},
        ),
        tool_calls=[ToolCall(id=f"toolu_{n}", name="Read", arguments='{"file_path": "/src/a.py"}')],
        thoughts=["The user wants the bug fixed; read the file first."],
    )
    return records_for(meta, facts, "Fix the failing test in tests/test_app.py", "completed")


@asynccontextmanager
async def database(dsn: str | None) -> AsyncIterator[str]:
    if dsn:
        yield dsn
        return
    directory = Path(tempfile.mkdtemp(prefix="relay-bench-pg-"))
    embedded = EmbeddedPostgres(directory)
    url = await trio.to_thread.run_sync(embedded.start)
    try:
        yield url
    finally:
        await trio.to_thread.run_sync(embedded.stop)
        await trio.to_thread.run_sync(partial(shutil.rmtree, directory, ignore_errors=True))


def prepare(interceptions: int) -> list[list[Record]]:
    # Built ahead, so the figures are the writer's, not records_for's.
    return [interception(n) for n in range(interceptions)]


async def bench_copy(db: Database, prepared: list[list[Record]]) -> float:
    batches = [
        [r for records in prepared[i : i + 200] for r in records]
        for i in range(0, len(prepared), 200)
    ]
    start = time.perf_counter()
    for batch in batches:
        await write_batch(db, batch)
    return sum(map(len, batches)) / (time.perf_counter() - start)


async def bench_recorder(
    db: Database, prepared: list[list[Record]], spool_dir: Path
) -> tuple[float, Recorder]:
    recorder = Recorder(db, spool_dir)
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        with trio.fail_after(30):
            while not recorder.stats.database_up:
                await trio.sleep(0.01)
        start = time.perf_counter()
        for records in prepared:
            recorder.record(records)
            if recorder.stats.queued > 5_000:
                await trio.sleep(0.001)  # a real server yields between requests
        while recorder.stats.queued:
            await trio.sleep(0.001)
        elapsed = time.perf_counter() - start
        await recorder.aclose()
    return recorder.stats.written / elapsed, recorder


def child(dsn: str, spool_dir: str, provider: str) -> None:
    """Record ~2,000 interceptions/s, printing each accepted count, until killed."""

    async def main() -> None:
        async with Database.open(dsn) as db:
            recorder = Recorder(db, Path(spool_dir), flush_interval=0.05)
            async with trio.open_nursery() as nursery:
                await nursery.start(recorder.run)
                n = 0
                while True:
                    recorder.record(interception(n, provider))
                    n += 1
                    os.write(1, f"{n}\n".encode())
                    await trio.sleep(0.0005)

    trio.run(main)


async def bench_sigkill(db: Database, dsn: str, kills: int, workdir: Path) -> list[int]:
    lost_per_kill = []
    for k in range(kills):
        provider = f"kill-{k}-{uuid.uuid4().hex[:6]}"
        spool_dir = workdir / f"spool-{k}"
        command = [sys.executable, "-m", "bench.bench_recorder", "--child", dsn, str(spool_dir)]
        process = await trio.lowlevel.open_process([*command, provider], stdout=subprocess.PIPE)
        assert process.stdout is not None
        output = b""
        # Let it run steadily for a while, then kill it at a different point
        # of its flush cycle each time.
        while output.count(b"\n") < 1000:
            output += await process.stdout.receive_some()
        await trio.sleep(0.5 + 0.0137 * k)
        process.send_signal(signal.SIGKILL)
        while chunk := await process.stdout.receive_some():
            output += chunk
        await process.wait()
        accepted = int(output.split()[-1])
        stored = await db.fetchval(
            "SELECT count(*) FROM interceptions WHERE provider_name = $1", provider
        )
        spooled = sum(1 for r in read_spool(spool_dir) if isinstance(r, InterceptionRecord))
        lost_per_kill.append(accepted - stored - spooled)
    return lost_per_kill


def read_spool(directory: Path) -> list[Record]:
    decoder = msgspec.msgpack.Decoder(list[Record])
    spool = Spool(directory)
    records: list[Record] = []
    for segment in spool.claim():
        for frame in segment.read().frames:
            records.extend(decoder.decode(frame))
        spool.release(segment)
    return records


async def main(args: argparse.Namespace) -> None:
    async with database(args.dsn or os.environ.get("CODER_PG_CONNECTION_URL")) as dsn:
        async with Database.open(dsn) as db:
            await migrate(db)
            with tempfile.TemporaryDirectory(prefix="relay-bench-spool-") as work:
                workdir = Path(work)
                interceptions = args.rows // 5
                rate = await bench_copy(db, prepare(interceptions))
                print(f"copy      write_batch, 1,000 rows/transaction: {rate:>10,.0f} rows/s")
                rate, recorder = await bench_recorder(db, prepare(interceptions), workdir / "spool")
                s = recorder.stats
                print(
                    f"recorder  record() → PostgreSQL, end to end:   {rate:>10,.0f} rows/s "
                    f"({s.written:,} rows in {s.batches:,} transactions; spooled {s.spooled}, "
                    f"lost {s.lost})"
                )
                if args.kills:
                    lost = await bench_sigkill(db, dsn, args.kills, workdir)
                    print(
                        f"sigkill   at ~2,000 interceptions/s, flush interval 50 ms: lost "
                        f"{lost} interceptions per kill (worst {max(lost)}, "
                        f"= {max(lost) / 2000 * 1000:.0f} ms of traffic)"
                    )
            await db.execute(
                "DELETE FROM interceptions WHERE initiator_id = $1 AND started_at <= $2",
                USER,
                datetime.now(UTC),
            )


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=300_000, help="rows per measurement")
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--kills", type=int, default=5)
    trio.run(main, parser.parse_args())
