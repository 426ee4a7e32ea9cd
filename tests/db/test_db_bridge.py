"""relay.db.bridge against the test run's real PostgreSQL."""

from __future__ import annotations

import json
import socket
from typing import Any

import asyncpg
import pytest
import trio
import trio.testing

from relay.db import MISSED, UNAVAILABLE_ERRORS, Database, bridge, mask_dsn, wait_until_available
from relay.db.bridge import _NotificationQueue
from tests.conftest import PgCluster

# Bounds for waiting on the server: generous, only so a broken bridge fails
# instead of hanging. Nothing asserts on how long anything took.
HANG_GUARD = 20


async def test_queries(db: Database) -> None:
    assert await db.execute("CREATE TABLE t (id int PRIMARY KEY, name text)") == "CREATE TABLE"
    assert await db.execute("INSERT INTO t VALUES ($1, $2)", 1, "one") == "INSERT 0 1"
    await db.executemany("INSERT INTO t VALUES ($1, $2)", [(2, "two"), (3, "three")])
    rows = await db.fetch("SELECT id, name FROM t ORDER BY id")
    assert [tuple(r) for r in rows] == [(1, "one"), (2, "two"), (3, "three")]
    row = await db.fetchrow("SELECT name FROM t WHERE id = $1", 2)
    assert row is not None and row["name"] == "two"
    assert await db.fetchrow("SELECT name FROM t WHERE id = $1", 99) is None
    assert await db.fetchval("SELECT count(*) FROM t") == 3


async def test_concurrent_calls_share_the_pool(db: Database) -> None:
    results: list[int] = []

    async def query(n: int) -> None:
        results.append(await db.fetchval("SELECT $1::int FROM pg_sleep(0.01)", n))

    async with trio.open_nursery() as nursery:
        for n in range(30):
            nursery.start_soon(query, n)
    assert sorted(results) == list(range(30))


async def test_copy_records_to_table(db: Database) -> None:
    await db.execute("CREATE TABLE events (id bigint, kind text, payload jsonb)")
    records = [(i, f"kind-{i % 7}", json.dumps({"n": i})) for i in range(5000)]
    await db.copy_records_to_table("events", records=records, columns=["id", "kind", "payload"])
    assert await db.fetchval("SELECT count(*) FROM events") == 5000
    assert await db.fetchval("SELECT payload->>'n' FROM events WHERE id = 4321") == "4321"


async def test_run_commits_a_transaction(db: Database) -> None:
    await db.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int)")
    await db.execute("INSERT INTO accounts VALUES (1, 100), (2, 0)")

    async def transfer(connection: Any) -> int:
        async with connection.transaction():
            await connection.execute("UPDATE accounts SET balance = balance - 30 WHERE id = 1")
            await connection.execute("UPDATE accounts SET balance = balance + 30 WHERE id = 2")
            return await connection.fetchval("SELECT sum(balance) FROM accounts")

    assert await db.run(transfer) == 100
    rows = await db.fetch("SELECT balance FROM accounts ORDER BY id")
    assert [r["balance"] for r in rows] == [70, 30]


async def test_run_rolls_back_and_propagates_the_error(db: Database) -> None:
    await db.execute("CREATE TABLE items (id int PRIMARY KEY)")

    class Boom(Exception):
        pass

    async def insert_then_fail(connection: Any) -> None:
        async with connection.transaction():
            await connection.execute("INSERT INTO items VALUES (1)")
            raise Boom("from the asyncio side")

    with pytest.raises(Boom, match="from the asyncio side"):
        await db.run(insert_then_fail)
    assert await db.fetchval("SELECT count(*) FROM items") == 0


async def test_postgres_errors_propagate_unchanged(db: Database) -> None:
    with pytest.raises(asyncpg.DivisionByZeroError):
        await db.fetchval("SELECT 1 / 0")
    with pytest.raises(asyncpg.UndefinedTableError):
        await db.fetch("SELECT * FROM no_such_table")
    await db.execute("CREATE TABLE u (id int PRIMARY KEY)")
    await db.execute("INSERT INTO u VALUES (1)")
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute("INSERT INTO u VALUES (1)")
    # The pool is still usable afterwards.
    assert await db.fetchval("SELECT 41 + 1") == 42


async def _active_sleeps(db: Database, marker: str) -> int:
    return await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1",
        f"%{marker}%",
    )


async def test_trio_cancellation_cancels_the_query_on_the_server(db: Database) -> None:
    marker = "cancel_me_4711"
    sleep_sql = f"SELECT pg_sleep(600) AS {marker}"
    returned = trio.Event()

    async def long_query(cancel_scope: trio.CancelScope) -> None:
        with cancel_scope:
            await db.fetchval(sleep_sql)
        returned.set()

    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()
            nursery.start_soon(long_query, scope)
            while await _active_sleeps(db, marker) == 0:
                await trio.sleep(0.01)
            scope.cancel()
            await returned.wait()
        assert scope.cancelled_caught
        # The server stops running it (asyncpg sent a cancel request).
        while await _active_sleeps(db, marker) > 0:
            await trio.sleep(0.01)
    assert await db.fetchval("SELECT 7") == 7


SLEEP_THROUGH_CANCELS = """
CREATE FUNCTION sleep_through_cancels(swallow int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..swallow LOOP
        BEGIN
            PERFORM pg_sleep(600);
        EXCEPTION WHEN query_canceled THEN
            NULL;  -- as if this cancel request had been lost
        END;
    END LOOP;
    PERFORM pg_sleep(600);
END $$;
"""


async def _sleeping_in(db: Database, function: str) -> int:
    return await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE state = 'active' AND wait_event = 'PgSleep' AND query LIKE $1",
        f"%{function}%",
    )


async def _cancel_while_sleeping(db: Database, sql: str) -> trio.CancelScope:
    returned = trio.Event()
    scope = trio.CancelScope()

    async def call() -> None:
        with scope:
            await db.fetchval(sql)
        returned.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        while await _sleeping_in(db, "sleep_through_cancels") == 0:
            await trio.sleep(0.01)
        scope.cancel()
        await returned.wait()
    return scope


async def test_a_lost_cancel_request_is_repeated(db: Database) -> None:
    await db.execute(SLEEP_THROUGH_CANCELS)
    with trio.fail_after(HANG_GUARD):
        scope = await _cancel_while_sleeping(db, "SELECT sleep_through_cancels(1)")
        assert scope.cancelled_caught
        # The first request was swallowed; a repeated one ended the statement.
        while await _sleeping_in(db, "sleep_through_cancels") > 0:
            await trio.sleep(0.01)
    assert await db.fetchval("SELECT 3") == 3


async def test_a_statement_that_will_not_cancel_loses_its_connection(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bridge, "_CANCEL_RETRIES", 3)
    monkeypatch.setattr(bridge, "_CANCEL_RETRY_INTERVAL", 0.05)
    await db.execute(SLEEP_THROUGH_CANCELS)
    with trio.fail_after(HANG_GUARD):
        scope = await _cancel_while_sleeping(db, "SELECT sleep_through_cancels(1000000)")
    # The caller got its cancellation although the statement still runs (it is
    # between two pg_sleep calls for an instant after each swallowed cancel).
    assert scope.cancelled_caught
    still_running = False
    with trio.move_on_after(2):
        while not still_running:
            still_running = await _sleeping_in(db, "sleep_through_cancels") == 1
            await trio.sleep(0.01)
    assert still_running
    assert await db.fetchval("SELECT 4") == 4
    await db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE query LIKE '%sleep_through_cancels(1000000)%' AND pid <> pg_backend_pid()"
    )


async def test_cancellation_before_the_call_starts(db: Database) -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        await db.fetchval("SELECT 1")
    assert scope.cancelled_caught


async def test_listen_delivers_notifications(db: Database) -> None:
    with trio.fail_after(HANG_GUARD):
        async with db.listen("providers", "tokens") as notifications:
            await db.execute("SELECT pg_notify('providers', 'reload')")
            await db.execute("NOTIFY tokens, 'revoked:42'")
            await db.execute("NOTIFY elsewhere, 'not for us'")
            await db.execute("NOTIFY providers")
            received = [await notifications.receive() for _ in range(3)]
    assert received == [("providers", "reload"), ("tokens", "revoked:42"), ("providers", "")]


async def test_listen_reconnects_and_reports_missed(db: Database) -> None:
    with trio.fail_after(HANG_GUARD):
        async with db.listen("providers") as notifications:
            await db.execute("NOTIFY providers, 'before'")
            assert await notifications.receive() == ("providers", "before")
            killed = await db.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN%' AND datname = current_database()"
            )
            assert killed == 1
            # Reconnected: the receiver is told it may have missed something,
            assert await notifications.receive() == ("providers", MISSED)
            # and notifications flow again on the new connection.
            await db.execute("NOTIFY providers, 'after'")
            assert await notifications.receive() == ("providers", "after")


async def test_listen_buffer_overflow_reports_missed() -> None:
    # The trio-side buffer on its own: which notifications arrive when it overflows
    # depends only on the order of events, not on timing.
    queue = _NotificationQueue(["burst", "other"], max_buffer=3)
    send, receive = trio.open_memory_channel[tuple[str, str]](0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.forward, send)
        await trio.testing.wait_all_tasks_blocked()
        for n in range(1, 11):
            queue.push("burst", str(n))
        received = [await receive.receive() for _ in range(4)]
        assert received == [("burst", "1"), ("burst", "2"), ("burst", "3"), ("burst", MISSED)]
        queue.push("other", "later")
        assert await receive.receive() == ("other", "later")
        queue.mark_all_missed()
        assert {await receive.receive() for _ in range(2)} == {
            ("burst", MISSED),
            ("other", MISSED),
        }
        nursery.cancel_scope.cancel()


async def test_listen_on_an_unreachable_database_raises(tmp_path: Any) -> None:
    dsn = f"postgresql://relay@/relay?host={tmp_path}"
    async with Database.open(dsn, min_size=0) as db:
        with trio.fail_after(HANG_GUARD), pytest.raises(OSError):
            async with db.listen("x"):
                pass


async def test_unreachable_database_raises_at_open(tmp_path: Any) -> None:
    # No server at this socket directory, and none at this loopback port.
    with trio.fail_after(HANG_GUARD), pytest.raises(OSError):
        async with Database.open(f"postgresql://relay@/relay?host={tmp_path}"):
            pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with trio.fail_after(HANG_GUARD), pytest.raises(OSError):
        async with Database.open(f"postgresql://relay@127.0.0.1:{port}/relay"):
            pass


async def test_silent_server_times_out_instead_of_hanging() -> None:
    # A listener that accepts connections and never answers the startup message.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, _hold_open, listeners)
        with trio.fail_after(HANG_GUARD), pytest.raises(TimeoutError):
            async with Database.open(
                f"postgresql://relay@127.0.0.1:{port}/relay", connect_timeout=0.3
            ):
                pass
        nursery.cancel_scope.cancel()


async def _hold_open(stream: trio.SocketStream) -> None:
    async with stream:
        await trio.sleep_forever()


async def test_database_going_away_raises_promptly(db: Database, pg_cluster: PgCluster) -> None:
    assert await db.fetchval("SELECT 1") == 1
    async with pg_cluster.down():
        with trio.fail_after(HANG_GUARD), pytest.raises(UNAVAILABLE_ERRORS):
            await db.fetchval("SELECT 1")
    # Back up: the pool replaces its dead connections.
    assert await db.fetchval("SELECT 2") == 2


async def test_wait_until_available(pg_dsn: str, tmp_path: Any) -> None:
    await wait_until_available(pg_dsn, timeout=HANG_GUARD)
    with pytest.raises(TimeoutError, match="not available"):
        await wait_until_available(f"postgresql://relay@/relay?host={tmp_path}", timeout=0.3)


async def test_closed_database_refuses_calls(pg_dsn: str) -> None:
    async with Database.open(pg_dsn) as db:
        pass
    with pytest.raises(asyncpg.InterfaceError):
        await db.fetchval("SELECT 1")


def test_mask_dsn_hides_the_password() -> None:
    masked = mask_dsn("postgresql://app:s3cret-pw@db.internal:5432/relay?sslmode=require")
    assert "s3cret" not in masked
    assert masked == "postgresql://app:***@db.internal:5432/relay?sslmode=require"
    assert (
        mask_dsn("postgresql://relay@/relay?host=/tmp/x") == "postgresql://relay@/relay?host=/tmp/x"
    )
