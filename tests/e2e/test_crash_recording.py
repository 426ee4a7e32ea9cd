"""What a crash loses (issue 13 item 3): nothing that was served goes unrecorded.

Interceptions are recorded ``in_progress`` when they start and completed when
they end; a relay marks the rows a dead process left as ``interrupted``.

- end to end: a real ``relay serve`` subprocess on a real PostgreSQL, streams
  in flight, SIGKILL, a new relay on the same machine: every request served
  has its row, the killed ones ``interrupted``;
- the fleet rule, on the database: which instances count as gone (same host
  and pid not running, lease expired, stopped, unknown) and which do not (a
  live instance elsewhere), and a completion arriving after ``interrupted``
  still wins.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import trio

from relay.auth import create_token, create_user
from relay.db import Database
from relay.facts import Facts
from relay.record.events import InterceptionMeta, interception_started, records_for
from relay.record.instances import INTERRUPTED_ERROR_TYPE, Instance
from relay.record.writer import write_batch
from relay.testing.mock_upstream.server import MockUpstream
from tests.relay_process import relay_process

KEY = "sk-upstream-test-key-0001"
MESSAGE = {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def relay_options(pg_dsn: str, data_dir: Path, mock: MockUpstream) -> dict[str, str]:
    return {
        "CODER_PG_CONNECTION_URL": pg_dsn,
        "CODER_AI_GATEWAY_DATA_DIR": str(data_dir),
        "CODER_AI_GATEWAY_PROVIDER_0_TYPE": "anthropic",
        "CODER_AI_GATEWAY_PROVIDER_0_NAME": "anthropic",
        "CODER_AI_GATEWAY_PROVIDER_0_KEY": KEY,
        "CODER_AI_GATEWAY_PROVIDER_0_BASE_URL": mock.base_url,
    }


async def statuses(db: Database) -> dict[str, int]:
    rows = await db.fetch("SELECT status, count(*) AS n FROM interceptions GROUP BY 1")
    return {row["status"]: row["n"] for row in rows}


async def until(predicate, timeout: float = 15) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(0.05)


async def test_sigkill_mid_stream_leaves_interrupted_rows_for_every_stream_served(
    pg_dsn: str, tmp_path: Path
):
    completed, in_flight = 3, 4
    mock = MockUpstream(record=False)
    async with trio.open_nursery() as nursery, Database.open(pg_dsn, max_size=2) as db:
        await nursery.start(mock.serve, 0)
        options = relay_options(pg_dsn, tmp_path / "data", mock)
        log = tmp_path / "relay.log"
        await create_user(db, "alice")
        token, _ = await create_token(db, "alice")
        async with relay_process(options, log) as first:
            headers = {"x-api-key": token, "anthropic-version": "2023-06-01"}
            url = first.gateway("anthropic") + "/v1/messages"
            async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
                for _ in range(completed):
                    response = await client.post(
                        url, headers=headers, json={"model": "mock-text", **MESSAGE}
                    )
                    assert response.status_code == 200
                streaming = trio.Semaphore(0)

                async def stream_until_killed() -> None:
                    # mock-long with a gap between writes: about 20 s, far longer than the test.
                    slow = {**headers, "x-mock-gap-ms": "200"}
                    body = {"model": "mock-long", "stream": True, **MESSAGE}
                    try:
                        async with client.stream("POST", url, headers=slow, json=body) as response:
                            assert response.status_code == 200
                            first_bytes = True
                            async for _ in response.aiter_raw():
                                if first_bytes:
                                    streaming.release()  # served: the client has bytes
                                    first_bytes = False
                    except httpx.HTTPError:
                        pass  # the relay was killed under it

                async with trio.open_nursery() as streams:
                    for _ in range(in_flight):
                        streams.start_soon(stream_until_killed)
                    for _ in range(in_flight):
                        await streaming.acquire()

                    async def recorded_in_progress() -> bool:
                        return (await statuses(db)).get("in_progress") == in_flight

                    # The start rows are written within the flush interval.
                    await until(recorded_in_progress)
                    await first.kill()
            dead_pid = first.pid
        assert await statuses(db) == {"completed": completed, "in_progress": in_flight}
        instances = await db.fetch("SELECT id, pid FROM relay_instances")
        assert [row["pid"] for row in instances] == [dead_pid]

        # A new relay on the same machine settles them before it serves.
        async with relay_process(options, log) as second:
            assert await statuses(db) == {"completed": completed, "interrupted": in_flight}
            rows = await db.fetch("SELECT * FROM interceptions WHERE status = 'interrupted'")
            assert {row["instance_id"] for row in rows} == {instances[0]["id"]}
            for row in rows:
                assert row["error_type"] == INTERRUPTED_ERROR_TYPE
                assert row["ended_at"] is not None and row["ended_at"] >= row["started_at"]
                assert row["model"] == "mock-long" and row["client_session_id"] is None
            # Every request served has exactly one row.
            assert await db.fetchval("SELECT count(DISTINCT id) FROM interceptions") == (
                completed + in_flight
            )
            assert f"marked {in_flight} interception(s) interrupted" in second.output()
            remaining = await db.fetch("SELECT pid FROM relay_instances")
            assert [row["pid"] for row in remaining] == [second.pid]
        nursery.cancel_scope.cancel()


async def test_sigkill_with_the_database_down_loses_nothing_that_was_served(
    pg_cluster: Any, pg_dsn: str, tmp_path: Path
):
    """PostgreSQL is down: the starts and ends go to the spool (fsync'd); the relay
    is killed with streams in flight; PostgreSQL comes back and a new relay
    replays the spool: completed ones completed, the killed ones interrupted."""
    completed, in_flight = 3, 3
    mock = MockUpstream(record=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(mock.serve, 0)
        options = relay_options(pg_dsn, tmp_path / "data", mock)
        log = tmp_path / "relay.log"
        # Made before the relay starts (pg_dsn is migrated): announced later, the
        # new token would evict itself from the relay's cache during the outage.
        async with Database.open(pg_dsn, max_size=1) as db:
            await create_user(db, "alice")
            token, _ = await create_token(db, "alice")
        spool = tmp_path / "data" / "spool"
        try:
            async with relay_process(options, log) as first:
                async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
                    headers = {"x-api-key": token, "anthropic-version": "2023-06-01"}
                    url = first.gateway("anthropic") + "/v1/messages"
                    # Verified (and cached) while the database is up.
                    response = await client.post(
                        url, headers=headers, json={"model": "mock-text", **MESSAGE}
                    )
                    assert response.status_code == 200
                    async with Database.open(pg_dsn, max_size=1) as db:

                        async def written() -> bool:
                            return await statuses(db) == {"completed": 1}

                        await until(written)
                    await trio.to_thread.run_sync(pg_cluster.stop)
                    for _ in range(completed):
                        response = await client.post(
                            url, headers=headers, json={"model": "mock-text", **MESSAGE}
                        )
                        assert response.status_code == 200
                    streaming = trio.Semaphore(0)

                    async def stream_until_killed() -> None:
                        slow = {**headers, "x-mock-gap-ms": "200"}
                        body = {"model": "mock-long", "stream": True, **MESSAGE}
                        try:
                            async with client.stream(
                                "POST", url, headers=slow, json=body
                            ) as response:
                                first_bytes = True
                                async for _ in response.aiter_raw():
                                    if first_bytes:
                                        streaming.release()
                                        first_bytes = False
                        except httpx.HTTPError:
                            pass

                    async with trio.open_nursery() as streams:
                        for _ in range(in_flight):
                            streams.start_soon(stream_until_killed)
                        for _ in range(in_flight):
                            await streaming.acquire()

                        # Every start and end so far is spooled: one start row each for
                        # the streams, two interception rows, usage, prompt for the others.
                        def spooled_rows() -> int:
                            return spooled_row_count(spool)

                        want = in_flight + completed * 4
                        with trio.fail_after(15):
                            while await trio.to_thread.run_sync(spooled_rows) < want:
                                await trio.sleep(0.05)
                        await first.kill()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(pg_cluster.start)
        async with Database.open(pg_dsn, max_size=1) as db:
            assert await statuses(db) == {"completed": 1}  # only the one before the outage
            async with relay_process(options, log):

                async def settled() -> bool:
                    return await statuses(db) == {
                        "completed": 1 + completed,
                        "interrupted": in_flight,
                    }

                await until(settled)  # the spool is replayed, then the sweep follows
                assert await db.fetchval("SELECT count(*) FROM token_usages") == 1 + completed
        nursery.cancel_scope.cancel()


def spooled_row_count(spool: Path) -> int:
    """Rows in the spool's segments (whole frames), read as a replay would."""
    import msgspec

    from relay.record.events import Record
    from relay.record.spool import SEGMENT_MAGIC, SEGMENT_SUFFIX, decode_frames

    decoder = msgspec.msgpack.Decoder(list[Record])
    count = 0
    for path in spool.glob(f"*{SEGMENT_SUFFIX}"):
        data = path.read_bytes()
        if data.startswith(SEGMENT_MAGIC):
            for frame in decode_frames(data, len(SEGMENT_MAGIC)).frames:
                count += len(decoder.decode(frame))
    return count


# --- the fleet rule, on the database ---------------------------------------------------------


def meta(instance_id: uuid.UUID | None) -> InterceptionMeta:
    return InterceptionMeta(
        provider_name="anthropic",
        provider_type="anthropic",
        model="claude",
        route="/v1/messages",
        instance_id=instance_id,
    )


async def add_instance(
    db: Database, *, host: str, pid: int, age: float = 0, stopped: bool = False
) -> uuid.UUID:
    instance_id = uuid.uuid4()
    beat = datetime.now(UTC) - timedelta(seconds=age)
    await db.execute(
        "INSERT INTO relay_instances (id, host_key, hostname, pid, heartbeat_at, stopped_at) "
        "VALUES ($1, $2, 'h', $3, $4, $5)",
        instance_id,
        host,
        pid,
        beat,
        beat if stopped else None,
    )
    return instance_id


async def test_only_rows_of_instances_that_are_gone_are_interrupted(db: Database):
    me = Instance(db, host="this-host", pid_running=lambda pid: pid == 4242, lease=60)
    await me.register()
    cases = {
        "mine": me.id,
        "same host, pid running": await add_instance(db, host="this-host", pid=4242),
        "same host, pid gone": await add_instance(db, host="this-host", pid=999),
        "other host, heartbeat fresh": await add_instance(db, host="elsewhere", pid=999, age=5),
        "other host, lease expired": await add_instance(db, host="elsewhere", pid=1, age=120),
        "stopped gracefully": await add_instance(db, host="elsewhere", pid=2, stopped=True),
        "unknown instance": uuid.uuid4(),
    }
    started = {name: meta(instance) for name, instance in cases.items()}
    await write_batch(db, [interception_started(m) for m in started.values()])
    assert await me.sweep() == 4
    rows = await db.fetch("SELECT id, status FROM interceptions")
    by_id = {row["id"]: row["status"] for row in rows}
    assert {name: by_id[m.id] for name, m in started.items()} == {
        "mine": "in_progress",
        "same host, pid running": "in_progress",
        "same host, pid gone": "interrupted",
        "other host, heartbeat fresh": "in_progress",
        "other host, lease expired": "interrupted",
        "stopped gracefully": "interrupted",
        "unknown instance": "interrupted",
    }
    left = {row["id"] for row in await db.fetch("SELECT id FROM relay_instances")}
    assert left == {
        cases["mine"],
        cases["same host, pid running"],
        cases["other host, heartbeat fresh"],
    }
    assert await me.sweep() == 0  # nothing twice

    # A completion that arrives later (a spool replayed after the sweep) wins;
    # a start replayed after an end never moves a row back.
    late = started["other host, lease expired"]
    await write_batch(db, records_for(late, Facts(), None, "completed"))
    await write_batch(db, [interception_started(late)])
    await write_batch(db, [interception_started(started["mine"])])
    row = await db.fetchrow("SELECT status, ended_at FROM interceptions WHERE id = $1", late.id)
    assert row is not None and row["status"] == "completed" and row["ended_at"] is not None


async def test_a_start_and_its_end_in_one_batch_write_the_end(db: Database):
    m = meta(None)
    batch = [interception_started(m), *records_for(m, Facts(), "hi", "cancelled")]
    await write_batch(db, batch)
    await write_batch(db, batch)  # replayed: still one row, still the end
    rows = await db.fetch("SELECT status FROM interceptions")
    assert [row["status"] for row in rows] == ["cancelled"]
