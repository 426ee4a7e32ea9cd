"""The console's queries use indexes on a table of 1M interceptions (issue 20).

The table (bench/console_data.py: generate_series, once per module, in its own
database, ANALYZEd) has 1M interceptions with their token usages, prompts,
tool calls and thoughts. Each default view's function runs for real against
it through a wrapper that records every statement it sends; each statement is
then EXPLAINed (FORMAT JSON) with the same parameters, and no plan may hold a
sequential scan of interceptions or token_usages.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from bench.console_data import build_statements
from relay.admin.api import Filters, decode_cursor, list_interceptions
from relay.admin.sessions import SessionFilters, interception_detail, list_sessions, session_detail
from relay.admin.usage import spend_report
from relay.budgets.store import budgets_with_spend
from relay.db import Database
from tests.conftest import PgCluster, admin_execute

ROWS = 1_000_000
NOW = datetime.now(UTC)
BIG_TABLES = {"interceptions", "token_usages"}


@pytest.fixture(scope="module")
def million(pg_cluster: PgCluster, pg_template: str) -> Iterator[str]:
    dsn = pg_cluster.create_database(template=pg_template)
    try:
        admin_execute(dsn, *build_statements(ROWS, NOW))
        yield dsn
    finally:
        pg_cluster.drop_database(dsn)


class Recording:
    """A Database that remembers what it was asked."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        self.statements.append((sql, args))
        return await self.db.fetch(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self.statements.append((sql, args))
        return await self.db.fetchval(sql, *args)


def scans(plan: dict[str, Any]) -> Iterator[tuple[str, str | None]]:
    yield plan["Node Type"], plan.get("Relation Name")
    for child in plan.get("Plans", ()):
        yield from scans(child)


def seq_scans(plan_json: str) -> set[tuple[str, str | None]]:
    nodes = set(scans(json.loads(plan_json)[0]["Plan"]))
    return {n for n in nodes if n[0] == "Seq Scan" and n[1] in BIG_TABLES}


async def generic_plan_if_chosen(db: Database, sql: str, args: tuple[Any, ...]) -> str | None:
    """The generic plan of ``sql`` if PostgreSQL switches to it: a prepared
    statement is planned for its parameters five times, then generically if that
    looks no dearer; a condition like ``$1 IS NULL OR col = $1`` made such a plan
    a sequential scan. Runs it seven times on one connection, as a relay would."""

    async def run(conn: Any) -> str | None:
        statement = await conn.prepare(sql)
        for _ in range(7):
            await statement.fetch(*args)
        generic = await conn.fetchval(
            "SELECT generic_plans FROM pg_prepared_statements WHERE statement = $1", sql
        )
        if not generic:
            return None
        count = max((int(n) for n in re.findall(r"\$(\d+)", sql)), default=0)
        await conn.execute(f"PREPARE console_generic AS {sql}")
        try:
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            nulls = f"({', '.join(['NULL'] * count)})" if count else ""
            return str(await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE console_generic{nulls}"))
        finally:
            await conn.execute("RESET plan_cache_mode")
            await conn.execute("DEALLOCATE console_generic")

    return await db.run(run)


async def assert_indexed(db: Database, recording: Recording) -> None:
    assert recording.statements
    for sql, args in recording.statements:
        plan = await db.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
        assert not seq_scans(plan), f"{seq_scans(plan)} in the plan of {sql}"
        generic = await generic_plan_if_chosen(db, sql, args)
        if generic is not None:
            found = seq_scans(generic)
            assert not found, f"{found} in the generic plan of {sql}"


async def test_every_default_view_uses_indexes(million: str) -> None:
    async with Database.open(million, max_size=2) as db:
        assert await db.fetchval("SELECT count(*) FROM interceptions") == ROWS

        # Sessions: the first page, the next one, and a page filtered by user.
        rec = Recording(db)
        first = await list_sessions(rec, SessionFilters())
        assert len(first.sessions) == 50 and first.next_cursor and not first.partial
        kinds = {s.kind for s in first.sessions}
        assert kinds == {"client", "grouped"}
        assert first.sessions[0].last_started_at <= NOW
        assert all(s.requests >= 1 for s in first.sessions)
        await list_sessions(rec, SessionFilters(after=decode_cursor(first.next_cursor)))
        await list_sessions(rec, SessionFilters(user=first.sessions[0].user))
        await assert_indexed(db, rec)

        # A session of each kind, and an interception of each.
        for kind in ("client", "grouped"):
            summary = next(s for s in first.sessions if s.kind == kind)
            rec = Recording(db)
            detail = await session_detail(rec, summary.key)
            assert detail is not None and detail.interceptions
            assert detail.summary.requests == len(detail.interceptions) == 20
            one = detail.interceptions[0]
            assert one.prompt and one.token_usages and one.token_usages[0].cost_micros
            rec_i = Recording(db)
            found = await interception_detail(rec_i, one.id)
            assert found is not None and found.session_key == summary.key
            await assert_indexed(db, rec)
            await assert_indexed(db, rec_i)
        rec = Recording(db)
        assert await interception_detail(rec, uuid.uuid4()) is None
        await assert_indexed(db, rec)

        # The admin API's interceptions, first page and the next (its default view).
        rec = Recording(db)
        listed = await list_interceptions(rec, Filters())
        assert len(listed.interceptions) == 50 and listed.next_cursor
        await list_interceptions(rec, Filters(after=decode_cursor(listed.next_cursor)))
        await assert_indexed(db, rec)

        # Spend over the default period: the chart (per day and model) and the
        # table by each dimension; and the budgets.
        rec = Recording(db)
        chart = await spend_report(rec, group_by=("day", "model"), now=NOW)
        assert chart.totals.requests > 0 and chart.totals.cost_micros > 0
        for dimension in ("model", "user", "provider", "client"):
            table = await spend_report(rec, group_by=(dimension,), now=NOW)
            assert table.totals == chart.totals
            per_day = await spend_report(rec, group_by=("day", dimension), now=NOW)
            assert per_day.totals == chart.totals
        await assert_indexed(db, rec)
        rec = Recording(db)
        budgets = await budgets_with_spend(rec)  # type: ignore[arg-type]
        assert len(budgets) == 20 and any(spent > 0 for _budget, spent in budgets)
        await assert_indexed(db, rec)
