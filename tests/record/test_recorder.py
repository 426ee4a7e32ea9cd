"""The recorder against a real PostgreSQL: round trip, batching, idempotency,
the database going away mid-run, the spool across restarts, retention."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.lowlevel

from relay.db import Database
from relay.facts import Facts, ToolCall, Usage
from relay.record.events import (
    InterceptionMeta,
    InterceptionRecord,
    Record,
    TokenUsageRecord,
    records_for,
)
from relay.record.recorder import Recorder
from relay.record.retention import delete_expired, run_retention
from relay.record.spool import Spool
from relay.record.writer import TABLES, write_batch, write_batch_isolating
from tests.conftest import PgCluster

# Nothing listens on port 1 of loopback: connecting is refused at once.
UNREACHABLE_DSN = "postgresql://relay@127.0.0.1:1/relay"


def interception(
    n: int = 0, *, started: datetime | None = None, user: uuid.UUID | None = None
) -> list[Record]:
    started = started or datetime.now(UTC)
    meta = InterceptionMeta(
        provider_name="openai",
        provider_type="openai",
        model="gpt-4.1",
        route="/v1/chat/completions",
        initiator_id=user or uuid.uuid4(),
        api_key_id="0123456789ab",
        client="sdk-python-openai",
        client_session_id=f"session-{n}",
        user_agent="OpenAI/Python 1.99.0",
        credential_kind="centralized",
        credential_hint="sk-…wxyz",
        started_at=started,
    )
    facts = Facts(
        response_id=f"chatcmpl-{n}",
        usage=Usage(
            input_tokens=100 + n,
            output_tokens=7,
            cache_read_tokens=50,
            cache_write_tokens=0,
            extra={"reasoning": 3, "audio": 0},
            raw={"prompt_tokens": 150 + n, "prompt_tokens_details": {"cached_tokens": 50}},
        ),
        tool_calls=[ToolCall(id=f"call_{n}", name="get_weather", arguments='{"city":"Paris"}')],
        thoughts=[f"thought {n}"],
    )
    return records_for(
        meta, facts, f"prompt {n}", "completed", ended_at=started + timedelta(seconds=1)
    )


async def count(db: Database, table: str) -> int:
    return int(await db.fetchval(f"SELECT count(*) FROM {table}"))


async def ids_in(db: Database, table: str) -> set[uuid.UUID]:
    return {row["id"] for row in await db.fetch(f"SELECT id FROM {table}")}


def expected_ids(records: Sequence[Record]) -> dict[str, set[uuid.UUID]]:
    by_table: dict[str, set[uuid.UUID]] = {t.name: set() for t in TABLES.values()}
    for record in records:
        by_table[TABLES[type(record)].name].add(record.id)
    return by_table


async def assert_exactly(db: Database, records: Sequence[Record]) -> None:
    for table, wanted in expected_ids(records).items():
        assert await ids_in(db, table) == wanted, table
        assert await count(db, table) == len(wanted), table


async def wait_until(condition: Any, timeout: float = 30) -> None:
    # A safety net against hanging, not a timing assertion.
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


def spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.spool")) if directory.exists() else []


def spooled_records(directory: Path) -> list[Record]:
    decoder = msgspec.msgpack.Decoder(list[Record])
    spool = Spool(directory)
    out: list[Record] = []
    segments = spool.claim()
    for segment in segments:
        for frame in segment.read().frames:
            out.extend(decoder.decode(frame))
        spool.release(segment)
    return out


async def test_every_field_round_trips(db: Database, tmp_path: Path) -> None:
    records = interception(1) + interception(2)
    recorder = Recorder(db, tmp_path / "spool")
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        recorder.record(records[:5])
        recorder.record(records[5:])
        await recorder.aclose()
    assert recorder.stats.written == len(records)
    assert (recorder.stats.spooled, recorder.stats.lost, recorder.stats.queued) == (0, 0, 0)
    for record in records:
        table = TABLES[type(record)]
        row = await db.fetchrow(
            f"SELECT {', '.join(table.columns)} FROM {table.name} WHERE id = $1", record.id
        )
        assert row is not None
        stored = dict(row)
        for column in table.json_columns:
            name = table.columns[column]
            stored[name] = msgspec.json.decode(stored[name])
        assert msgspec.convert(stored, type(record)) == record


async def test_batches_are_few_and_large(db: Database, tmp_path: Path) -> None:
    recorder = Recorder(db, tmp_path / "spool", batch_size=1000, flush_interval=0.05)
    records = []
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        for n in range(700):  # 4,900 rows, handed over without a checkpoint
            batch = interception(n)
            records.extend(batch)
            recorder.record(batch)
        await wait_until(lambda: recorder.stats.written == len(records))
        await recorder.aclose()
    assert recorder.stats.batches <= 6  # ~1,000 rows per transaction, not one per record
    assert await count(db, "interceptions") == 700
    await assert_exactly(db, records)


async def test_a_lone_record_is_flushed_by_the_interval(db: Database, tmp_path: Path) -> None:
    recorder = Recorder(db, tmp_path / "spool", batch_size=1000, flush_interval=0.02)
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        recorder.record(interception(0)[:1])
        await wait_until(lambda: recorder.stats.written == 1)
        assert await count(db, "interceptions") == 1
        await recorder.aclose()


async def test_a_full_batch_does_not_wait_for_the_interval(db: Database, tmp_path: Path) -> None:
    # The collector sleeps through a batch's interval (one wake-up per batch):
    # record() must wake it as soon as a whole batch waits, and aclose() at once.
    recorder = Recorder(db, tmp_path / "spool", batch_size=10, flush_interval=3600)
    batches = [interception(n) for n in range(3)]  # 21 rows
    rows = [record for batch in batches for record in batch]
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        await wait_until(lambda: recorder.stats.database_up)
        with trio.fail_after(60):  # far less than the hour of the interval
            for batch in batches:
                recorder.record(batch)
                await trio.lowlevel.checkpoint()
            await wait_until(lambda: recorder.stats.written >= 10)
            await recorder.aclose()
    assert recorder.stats.written == len(rows)
    await assert_exactly(db, rows)


async def test_writing_twice_stores_once(db: Database, tmp_path: Path) -> None:
    records = interception(1) + interception(2)
    await write_batch(db, records)
    await write_batch(db, records)
    await assert_exactly(db, records)

    # A spool holding rows that are already in the database replays cleanly.
    spool = Spool(tmp_path / "spool")
    spool.append(msgspec.msgpack.encode(records))
    spool.append(msgspec.msgpack.encode(records[:3]))
    spool.close()
    recorder = Recorder(db, tmp_path / "spool")
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        await wait_until(lambda: recorder.stats.replayed == len(records) + 3)
        await recorder.aclose()
    assert spool_files(tmp_path / "spool") == []
    await assert_exactly(db, records)


async def test_invalid_rows_are_isolated(db: Database) -> None:
    good = interception(1)
    nul_prompt = msgspec.structs.replace(good[2], prompt="a\x00b")  # type: ignore[type-var]
    bogus = msgspec.structs.replace(interception(2)[0], status="exploded")  # type: ignore[type-var]
    assert isinstance(bogus, InterceptionRecord)
    batch = [*good[:2], nul_prompt, *good[3:], bogus]
    written, rejected = await write_batch_isolating(db, batch)
    assert rejected == [bogus]
    assert written == len(batch) - 1
    assert await db.fetchval("SELECT prompt FROM user_prompts") == "ab"
    assert await ids_in(db, "interceptions") == {good[0].id}


async def test_database_stopped_mid_run_loses_nothing(
    db: Database, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    recorder = Recorder(db, tmp_path / "spool", flush_interval=0.01, write_timeout=2)
    records: list[Record] = []

    async def produce(start: int, stop: int) -> None:
        for n in range(start, stop):
            batch = interception(n)
            records.extend(batch)
            recorder.record(batch)
            await trio.sleep(0.002)

    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        await produce(0, 50)
        await wait_until(lambda: recorder.stats.written > 0)
        async with pg_cluster.down():
            await produce(50, 150)  # streams keep ending while the database is away
            await wait_until(lambda: recorder.stats.spooled > 0)
            assert not recorder.stats.database_up
        await produce(150, 200)
        await wait_until(lambda: recorder.stats.written >= len(records))
        await wait_until(lambda: not spool_files(tmp_path / "spool"))
        await recorder.aclose()
    assert recorder.stats.lost == 0 and recorder.stats.rejected == 0
    assert recorder.stats.replayed > 0
    await assert_exactly(db, records)


async def test_a_slow_database_sends_batches_to_the_spool(
    db: Database, pg_dsn: str, tmp_path: Path
) -> None:
    """A write that exceeds write_timeout (here: blocked on a table lock) is
    abandoned and spooled; once the lock is gone, the spool is replayed."""
    recorder = Recorder(db, tmp_path / "spool", flush_interval=0.01, write_timeout=0.2)
    release = threading.Event()

    async def hold_table_lock(conn: Any) -> None:
        async with conn.transaction():
            await conn.execute("LOCK TABLE interceptions IN ACCESS EXCLUSIVE MODE")
            while not release.is_set():
                await asyncio.sleep(0.01)

    async def lock_held() -> bool:
        return bool(
            await db.fetchval(
                "SELECT count(*) FROM pg_locks WHERE granted AND mode = 'AccessExclusiveLock'"
                " AND relation = 'interceptions'::regclass"
            )
        )

    records = interception(1) + interception(2)
    async with Database.open(pg_dsn) as other, trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        await wait_until(lambda: recorder.stats.database_up)
        nursery.start_soon(other.run, hold_table_lock)
        with trio.fail_after(30):
            while not await lock_held():
                await trio.sleep(0.01)
        recorder.record(records)
        await wait_until(lambda: recorder.stats.spooled == len(records))
        assert recorder.stats.written == 0
        release.set()
        await wait_until(lambda: recorder.stats.replayed == len(records))
        await recorder.aclose()
    await assert_exactly(db, records)


async def test_a_spool_left_by_an_earlier_run_is_replayed(db: Database, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    first = Recorder(UNREACHABLE_DSN, spool_dir, flush_interval=0.01)
    records: list[Record] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        for n in range(30):
            batch = interception(n)
            records.extend(batch)
            first.record(batch)
            await trio.lowlevel.checkpoint()
        await first.aclose()
    assert first.stats.spooled == len(records) and first.stats.written == 0
    assert spool_files(spool_dir)

    second = Recorder(db, spool_dir)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        await wait_until(lambda: second.stats.replayed == len(records))
        await second.aclose()
    assert spool_files(spool_dir) == []
    await assert_exactly(db, records)


async def test_record_never_waits_even_with_the_database_away(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool_dir = tmp_path / "spool"
    recorder = Recorder(UNREACHABLE_DSN, spool_dir, queue_size=1000)
    one = interception(0)[:1]
    with caplog.at_level(logging.ERROR, logger="relay.record.recorder"):
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run)
            for _ in range(100_000):  # no checkpoint: any wait would be a deadlock
                recorder.record(one)
            # Nothing was written to disk inside record(): the writer tasks do that.
            assert recorder.stats.spooled == 0
            assert recorder.stats.queued == 2000  # channel and overflow, each queue_size calls
            assert recorder.stats.lost == 98_000
            assert logged_losses(caplog) == 1  # the first at once, the rest summed up later
            await recorder.aclose()
    # The log counts what the metric counts (stats.lost), however fast they came.
    assert logged_losses(caplog) == 98_000
    stats = recorder.stats
    assert stats.accepted == 100_000
    assert stats.spooled == 2000 and stats.queued == 0
    assert len(spooled_records(spool_dir)) == 2000


async def test_an_unwritable_spool_is_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Stands for a full disk: the spool directory cannot be created.
    (tmp_path / "file").write_text("")
    recorder = Recorder(UNREACHABLE_DSN, tmp_path / "file" / "spool", flush_interval=0.01)
    records = interception(1)
    with caplog.at_level(logging.ERROR, logger="relay.record.recorder"):
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run)
            recorder.record(records)
            await wait_until(lambda: recorder.stats.lost == len(records))
            await recorder.aclose()
    assert (recorder.stats.spooled, recorder.stats.written) == (0, 0)
    assert f"LOST {len(records)} row(s)" in caplog.text
    assert logged_losses(caplog) == recorder.stats.lost


def logged_losses(caplog: pytest.LogCaptureFixture) -> int:
    """The rows the recorder's "LOST n row(s)" lines add up to."""
    return sum(int(n) for n in re.findall(r"LOST (\d+) row\(s\)", caplog.text))


async def test_low_free_space_for_the_spool_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # No filesystem here has an exabyte free: the warning threshold is crossed.
    recorder = Recorder(UNREACHABLE_DSN, tmp_path / "spool", min_free_bytes=1 << 60)
    with caplog.at_level(logging.WARNING, logger="relay.record.recorder"):
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run)
            await wait_until(lambda: "free for the spool" in caplog.text)
            await recorder.aclose()
    fine = Recorder(UNREACHABLE_DSN, tmp_path / "spool2", min_free_bytes=1)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="relay.record.recorder"):
        async with trio.open_nursery() as nursery:
            await nursery.start(fine.run)
            await trio.sleep(0.1)
            await fine.aclose()
    assert "free for the spool" not in caplog.text


async def test_cannot_record_while_the_database_is_away_and_the_spool_unwritable(
    tmp_path: Path, pg_cluster: PgCluster, db: Database
) -> None:
    (tmp_path / "spool").write_text("")  # a file where the spool directory should be
    recorder = Recorder(db, tmp_path / "spool", watch_interval=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        await wait_until(lambda: recorder.stats.database_up)
        assert not recorder.cannot_record  # the database takes everything
        async with pg_cluster.down():
            await wait_until(lambda: recorder.cannot_record)  # learnt without a write
            (tmp_path / "spool").unlink()  # the disk is usable again
            await wait_until(lambda: not recorder.cannot_record)
        await recorder.aclose()


async def test_cancelled_recorder_spools_what_it_holds(tmp_path: Path, db: Database) -> None:
    spool_dir = tmp_path / "spool"
    recorder = Recorder(db, spool_dir, batch_size=100_000, flush_interval=3600)
    records = interception(1) + interception(2)
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        recorder.record(records)
        await wait_until(lambda: recorder.stats.database_up)
        await trio.sleep(0.05)  # let the collector take them into its batch
        nursery.cancel_scope.cancel()
    assert recorder.stats.written == 0
    assert sorted(r.id for r in spooled_records(spool_dir)) == sorted(r.id for r in records)
    # Records handed over after the end are not dropped either.
    recorder.record(interception(3))
    assert recorder.stats.lost == 0
    assert len(spooled_records(spool_dir)) == len(records) + len(interception(3))


async def test_retention_deletes_only_old_rows(db: Database) -> None:
    now = datetime.now(UTC)
    old = [r for n in range(5) for r in interception(n, started=now - timedelta(days=90))]
    new = [r for n in range(5, 8) for r in interception(n, started=now - timedelta(days=1))]
    await write_batch(db, old + new)
    deleted = await delete_expired(db, now - timedelta(days=60), batch_rows=2)
    assert deleted == {
        "token_usages": 5,
        "user_prompts": 5,
        "tool_usages": 5,
        "model_thoughts": 5,
        "interceptions": 5,
    }
    await assert_exactly(db, new)

    # The background task does the same on its own.
    await write_batch(db, old)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_retention, db, 60 * 86400.0)
        with trio.fail_after(30):
            while await count(db, "interceptions") != 3:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    await assert_exactly(db, new)


async def test_a_poisoned_spooled_record_is_set_aside_and_the_rest_replayed(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A value the driver cannot encode (out of bigint range) is no data error
    # PostgreSQL reports: the batch fails as a whole, every time.
    spool_dir = tmp_path / "spool"
    good = [interception(n) for n in range(4)]
    poisoned = [
        msgspec.structs.replace(r, input_tokens=2**63) if isinstance(r, TokenUsageRecord) else r
        for r in interception(99)
    ]
    poison = next(r for r in poisoned if isinstance(r, TokenUsageRecord))
    spool = Spool(spool_dir)
    encode = msgspec.msgpack.Encoder().encode
    spool.append(encode(good[0]))
    spool.append(encode(good[1] + poisoned + good[2]))
    spool.append(encode(good[3]))
    spool.close()

    recorder = Recorder(db, spool_dir, flush_interval=0.01)
    later = interception(100)
    expected = [r for batch in good for r in batch] + [r for r in poisoned if r is not poison]
    with caplog.at_level(logging.WARNING, logger="relay.record.recorder"):
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run)
            # The spool is empty once its last segment is replayed; the recorder
            # writes directly again only when that pass has ended (a record()
            # in between would be spooled and replayed too).
            await wait_until(lambda: spool_files(spool_dir) == [] and recorder.stats.database_up)
            recorder.record(later)  # and the recorder writes directly again
            await wait_until(lambda: recorder.stats.written >= len(expected) + len(later))
            await recorder.aclose()
    await assert_exactly(db, expected + later)
    assert recorder.stats.rejected == 1
    assert recorder.stats.replayed == len(expected)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("batch 1 failed" in w and "OverflowError" in w for w in warnings), warnings
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("set aside" in e and str(poison.id) in e for e in errors), errors
