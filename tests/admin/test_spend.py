"""The console's spend report and its CSV (relay/admin/usage.py) on the real PostgreSQL."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta

from relay.admin.usage import csv_cell, default_since, spend_csv, spend_report
from relay.db import Database
from relay.record.writer import write_batch
from tests.admin.test_sessions import one, price_everything

NOW = datetime(2025, 6, 10, 15, 30, tzinfo=UTC)


async def test_spend_defaults_to_the_last_seven_days_and_exports_csv(db: Database) -> None:
    evil = await db.fetchval("INSERT INTO users (name) VALUES ('=HYPERLINK(\"x\")') RETURNING id")
    alice = await db.fetchval(
        "INSERT INTO users (name) VALUES ('alice, \"the\" admin') RETURNING id"
    )
    records = one(alice, NOW - timedelta(days=8), 1)  # before the default period
    records += one(alice, NOW - timedelta(days=6, hours=15), 2)  # its first day, 00:30
    records += one(evil, NOW - timedelta(hours=1), 3, model="-2+3")
    await write_batch(db, records)
    await price_everything(db)

    assert default_since(NOW) == datetime(2025, 6, 4, tzinfo=UTC)
    report = await spend_report(db, group_by=("user", "model"), now=NOW)
    assert report.since == datetime(2025, 6, 4, tzinfo=UTC) and report.until is None
    assert [(r.user, r.model, r.output_tokens) for r in report.rows] == [
        ('=HYPERLINK("x")', "-2+3", 30),
        ('alice, "the" admin', "claude-sonnet-4-5", 20),
    ]
    assert report.totals.requests == 2 and report.totals.cost_micros == 50_000
    everything = await spend_report(db, group_by=("day",), now=NOW, since=NOW - timedelta(days=30))
    assert everything.totals.requests == 3
    only = await spend_report(db, group_by=(), now=NOW, model="-2+3")
    assert [r.requests for r in only.rows] == [1]

    text = spend_csv(report)
    assert text.endswith("\r\n")
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0][:3] == ["user", "model", "requests"] and lines[0][-2:] == [
        "cost_usd",
        "unpriced",
    ]
    # Quoted as RFC 4180 says; a cell a spreadsheet would run as a formula is defused.
    assert lines[1][:2] == ['\'=HYPERLINK("x")', "'-2+3"]
    assert lines[2][:2] == ['alice, "the" admin', "claude-sonnet-4-5"]
    assert lines[1][-2:] == ["0.030000", "0"]
    assert lines[-1][:2] == ["total", ""] and lines[-1][-2] == "0.050000"
    assert '"alice, ""the"" admin"' in text


def test_csv_cells() -> None:
    for text in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert csv_cell(text) == "'" + text
    assert csv_cell("a=b") == "a=b"
    assert csv_cell(None) == ""
    assert csv_cell(datetime(2025, 1, 2, tzinfo=UTC).date()) == "2025-01-02"
    assert csv_cell(uuid.UUID(int=0)) == str(uuid.UUID(int=0))
