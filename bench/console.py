"""How fast the console's pages answer on a table of 1M interceptions (issue 20).

    python -m bench.console [--rows 1000000] [--calls 50]

Builds the recorded-data set of bench/console_data.py (the one the EXPLAIN
test uses) in a throwaway embedded PostgreSQL (durable settings), starts
``relay serve`` on it, and times each page's API calls through the relay over
HTTP with an admin credential (``ADMIN_TOKEN``, as a bearer): ``--calls``
sequential calls each after two warm-up calls, p50 and p95 in milliseconds. A
figure from one run on this machine, not a timed test: docs/benchmarks.md
("Console") holds the latest.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import trio

from bench.console_data import build_statements
from bench.replay.relay_process import started_relay
from relay.db import Database, EmbeddedPostgres
from relay.db.migrate import migrate
from relay.pricing.store import seed_default_prices

API = "/api/v2/ai-gateway/admin/ui/api/"
PAGE = "/api/v2/ai-gateway/admin/ui/"


def _build(dsn: str, rows: int) -> float:
    async def run() -> None:
        connection = await asyncpg.connect(dsn, timeout=30)
        try:
            for statement in build_statements(rows, datetime.now(UTC)):
                await connection.execute(statement)
        finally:
            await connection.close()

    started = time.perf_counter()
    asyncio.run(run())
    return time.perf_counter() - started


async def _time(client: httpx.AsyncClient, path: str, calls: int) -> tuple[float, float, int]:
    for _ in range(2):
        (await client.get(path)).raise_for_status()
    times = []
    size = 0
    for _ in range(calls):
        started = time.perf_counter()
        response = await client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        size = len(response.content)
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return statistics.median(times), p95, size


async def main(rows: int, calls: int) -> None:
    directory = Path(tempfile.mkdtemp(prefix="relay-bench-console-"))
    try:
        embedded = EmbeddedPostgres(directory / "pg")
        dsn = await trio.to_thread.run_sync(embedded.start)
        try:
            async with Database.open(dsn, max_size=1) as db:
                await migrate(db)
                await seed_default_prices(db)
            built = await trio.to_thread.run_sync(_build, dsn, rows)
            print(
                f"built {rows:,} interceptions (+ usage, prompts, tools, thoughts) in {built:.1f} s"
            )
            admin = "bench-admin-" + secrets.token_hex(16)
            extra = {"CODER_AI_GATEWAY_ADMIN_TOKEN": admin}
            async with started_relay(
                "http://127.0.0.1:9",
                {"anthropic": "anthropic"},
                data_dir=directory / "relay",
                postgres_url=dsn,
                extra_env=extra,
            ) as relay:
                headers = {"authorization": f"Bearer {admin}"}
                async with httpx.AsyncClient(
                    base_url=relay.url, headers=headers, timeout=30, trust_env=False
                ) as client:
                    await _run(client, calls)
        finally:
            await trio.to_thread.run_sync(embedded.stop)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def _run(client: httpx.AsyncClient, calls: int) -> None:
    first = (await client.get(API + "sessions")).json()
    client_session = next(s for s in first["sessions"] if s["kind"] == "client")
    grouped = next(s for s in first["sessions"] if s["kind"] == "grouped")
    detail = (await client.get(API + "sessions/" + client_session["key"])).json()
    interception = detail["interceptions"][0]["id"]
    cases = [
        ("Sessions: the shell page (HTML)", PAGE + "sessions"),
        ("Sessions: first page (50)", API + "sessions"),
        ("Sessions: next page", API + "sessions?cursor=" + first["next_cursor"]),
        ("Sessions: filtered by user", API + "sessions?user=" + client_session["user"]),
        ("Sessions: filtered by model", API + "sessions?model=gpt-5"),
        ("Session: a client session (20 requests)", API + "sessions/" + client_session["key"]),
        ("Session: a grouped session (20 requests)", API + "sessions/" + grouped["key"]),
        ("Interception", API + "interceptions/" + interception),
        ("Spend: chart (day, model; last 7 days)", API + "spend?group_by=day,model"),
        ("Spend: table (model; last 7 days)", API + "spend?group_by=model"),
        ("Spend: table (user; last 7 days)", API + "spend?group_by=user"),
        ("Spend: CSV (model)", API + "spend.csv?group_by=model"),
        ("Spend: budgets", API + "budgets"),
    ]
    print(f"\n{calls} sequential calls each, after 2 warm-up calls\n")
    print("| call | p50 ms | p95 ms | bytes |")
    print("|---|---:|---:|---:|")
    for label, path in cases:
        p50, p95, size = await _time(client, path, calls)
        print(f"| {label} | {p50:.1f} | {p95:.1f} | {size:,} |")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    trio.run(main, args.rows, args.calls)


if __name__ == "__main__":
    cli()
