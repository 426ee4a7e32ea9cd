"""The running spend totals (spend_daily) the recorder keeps, against a full
recomputation from the usage rows: after retries, and after a database outage
and the spool's replay."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio

from relay.db import Database
from relay.facts import Facts, Usage
from relay.pricing.book import PriceBook
from relay.pricing.store import default_prices
from relay.record.events import InterceptionMeta, Record, records_for
from relay.record.recorder import Recorder
from relay.record.writer import RECOMPUTE_SPEND_SQL, write_batch
from tests.conftest import PgCluster

BOOK = PriceBook(default_prices())
USERS = [uuid.UUID(int=n + 1) for n in range(3)]
T0 = datetime(2026, 12, 3, 23, 59, 59, tzinfo=UTC)


def usage(n: int, *, byok: bool = False) -> list[Record]:
    model = ("claude-sonnet-4-5-20250929", "gpt-4.1", "mystery-model")[n % 3]
    ptype = "openai" if model != "claude-sonnet-4-5-20250929" else "anthropic"
    meta = InterceptionMeta(
        provider_name=ptype,
        provider_type=ptype,
        model=model,
        route="/v1/x",
        initiator_id=USERS[n % len(USERS)],
        api_key_id=f"{n % 2:012x}",
        credential_kind="byok" if byok else "centralized",
    )
    facts = Facts(usage=Usage(input_tokens=100 + n, output_tokens=10 + n, cache_read_tokens=n))
    # Across a UTC midnight: the totals are per day.
    ended = T0 + timedelta(seconds=n % 2)
    return records_for(meta, facts, None, "completed", ended_at=ended, prices=BOOK)


async def totals(db: Database) -> list[tuple[object, ...]]:
    rows = await db.fetch(
        "SELECT day, user_id, api_key_id, model, cost_micros, usages, unpriced FROM spend_daily"
        " ORDER BY 1, 2, 3, 4"
    )
    return [tuple(r) for r in rows]


async def recomputed(db: Database) -> list[tuple[object, ...]]:
    return [tuple(r) for r in await db.fetch(RECOMPUTE_SPEND_SQL)]


async def test_retried_batches_never_count_twice(db: Database) -> None:
    first = [r for n in range(6) for r in usage(n)]
    await write_batch(db, first)
    assert await totals(db) == await recomputed(db)
    assert sum(row[4] for row in await totals(db)) > 0  # type: ignore[misc]
    # A retry whose commit had landed, and one half old, half new (the merge path).
    await write_batch(db, first)
    more = [r for n in range(6, 12) for r in usage(n)]
    await write_batch(db, first[: len(first) // 2] + more)
    assert await totals(db) == await recomputed(db)
    assert sum(row[5] for row in await totals(db)) == 12  # type: ignore[misc]
    # BYOK usage is the user's own bill: priced and reported, not in the budgets' totals.
    await write_batch(db, usage(12, byok=True))
    assert sum(row[5] for row in await totals(db)) == 12  # type: ignore[misc]
    unpriced = [row for row in await totals(db) if row[3] == "mystery-model"]
    assert unpriced and all(row[4] == 0 and row[6] == row[5] for row in unpriced)


async def test_totals_agree_with_a_recomputation_after_an_outage_and_replay(
    db: Database, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    recorder = Recorder(db, tmp_path / "spool", flush_interval=0.01, write_timeout=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        for n in range(20):
            recorder.record(usage(n))
        with trio.fail_after(30):
            while recorder.stats.written < recorder.stats.accepted:
                await trio.sleep(0.01)
        async with pg_cluster.down():
            for n in range(20, 60):
                recorder.record(usage(n))
            with trio.fail_after(30):
                while recorder.stats.spooled == 0:
                    await trio.sleep(0.01)
        for n in range(60, 70):
            recorder.record(usage(n))
        with trio.fail_after(60):
            while recorder.stats.written < recorder.stats.accepted:
                await trio.sleep(0.02)
        await recorder.aclose()
    assert recorder.stats.replayed > 0 and recorder.stats.lost == 0
    assert await totals(db) == await recomputed(db)
    assert sum(row[5] for row in await totals(db)) == 70  # type: ignore[misc]
