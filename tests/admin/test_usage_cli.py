"""usage_report (behind `relay usage`) against a real PostgreSQL, with known figures."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

from relay.admin.usage import UsageRow, format_usage_table, usage_report
from relay.db import Database
from relay.facts import Facts, ToolCall, Usage
from relay.pricing.book import PriceBook
from relay.pricing.store import default_prices
from relay.record.events import InterceptionMeta, Record, records_for
from relay.record.writer import write_batch

DAY1 = datetime(2025, 3, 1, 23, 59, tzinfo=UTC)
DAY2 = datetime(2025, 3, 2, 0, 1, tzinfo=UTC)
BOOK = PriceBook(default_prices())


def one(
    user: uuid.UUID,
    started: datetime,
    *,
    provider: str = "openai",
    model: str = "gpt-4.1",
    tokens: tuple[int, int, int, int] | None = (0, 0, 0, 0),
    tools: int = 0,
    client: str = "claude-code",
) -> list[Record]:
    meta = InterceptionMeta(
        provider_name=provider,
        provider_type=provider,
        model=model,
        route="/v1/chat/completions",
        initiator_id=user,
        started_at=started,
        client=client,
    )
    usage = None
    if tokens is not None:
        i, o, r, w = tokens
        usage = Usage(input_tokens=i, output_tokens=o, cache_read_tokens=r, cache_write_tokens=w)
    facts = Facts(
        usage=usage,
        tool_calls=[ToolCall(id=f"t{n}", name="bash", arguments="{}") for n in range(tools)],
    )
    return records_for(
        meta,
        facts,
        "hello",
        "completed" if usage else "failed",
        ended_at=started,
        prices=BOOK,
    )


async def make_user(db: Database, name: str) -> uuid.UUID:
    return await db.fetchval("INSERT INTO users (name) VALUES ($1) RETURNING id", name)  # type: ignore[no-any-return]


async def test_usage_per_day_user_provider_model(db: Database) -> None:
    alice = await make_user(db, "alice")
    bob = await make_user(db, "bob")
    # A user deleted since: their usage stays, under their id (sorts before names).
    gone = uuid.UUID("0000000a-0000-4000-8000-000000000000")
    records = [
        *one(alice, DAY1, tokens=(100, 10, 1000, 5), tools=1),
        *one(alice, DAY1, tokens=(200, 20, 0, 0), tools=2),
        *one(alice, DAY1, tokens=None),  # failed before any usage: a request, no tokens
        *one(alice, DAY2, tokens=(1, 2, 3, 4)),
        *one(bob, DAY2, provider="anthropic", model="claude-sonnet-4-5", tokens=(7, 8, 9, 10)),
        *one(gone, DAY2, tokens=(5, 5, 5, 5), tools=3),
    ]
    await write_batch(db, records)

    rows = await usage_report(db)
    assert rows == [
        UsageRow(
            day=date(2025, 3, 1),
            user="alice",
            provider="openai",
            model="gpt-4.1",
            requests=3,
            input_tokens=300,
            output_tokens=30,
            cache_read_tokens=1000,
            cache_write_tokens=5,
            tool_calls=3,
            # (100×2 + 10×8 + 1000×0.50 + 5×2) + (200×2 + 20×8) = 790 + 560 µ$
            cost_micros=1350,
        ),
        UsageRow(
            day=date(2025, 3, 2),
            user=str(gone),
            provider="openai",
            model="gpt-4.1",
            requests=1,
            input_tokens=5,
            output_tokens=5,
            cache_read_tokens=5,
            cache_write_tokens=5,
            tool_calls=3,
            cost_micros=63,  # 5×2 + 5×8 + 5×0.50 + 5×2 = 62.5, half up
        ),
        UsageRow(
            day=date(2025, 3, 2),
            user="alice",
            provider="openai",
            model="gpt-4.1",
            requests=1,
            input_tokens=1,
            output_tokens=2,
            cache_read_tokens=3,
            cache_write_tokens=4,
            tool_calls=0,
            cost_micros=28,  # 1×2 + 2×8 + 3×0.50 + 4×2 = 27.5
        ),
        UsageRow(
            day=date(2025, 3, 2),
            user="bob",
            provider="anthropic",
            model="claude-sonnet-4-5",
            requests=1,
            input_tokens=7,
            output_tokens=8,
            cache_read_tokens=9,
            cache_write_tokens=10,
            tool_calls=0,
            cost_micros=181,  # 7×3 + 8×15 + 9×0.30 + 10×3.75 = 181.2
        ),
    ]

    assert [r.user for r in await usage_report(db, user="bob")] == ["bob"]
    assert [r.user for r in await usage_report(db, user=str(gone))] == [str(gone)]
    assert [r.provider for r in await usage_report(db, provider="anthropic")] == ["anthropic"]
    since_day2 = await usage_report(db, user="alice", since=DAY2)
    assert [(r.day, r.requests) for r in since_day2] == [(date(2025, 3, 2), 1)]
    assert await usage_report(db, user="nobody") == []

    text = format_usage_table(rows)
    lines = text.splitlines()
    assert lines[0].split() == [
        "day",
        "user",
        "provider",
        "model",
        "requests",
        "input",
        "output",
        "cache",
        "read",
        "cache",
        "write",
        "tool",
        "calls",
        "cost",
        "$",
        "unpriced",
    ]
    assert lines[-1].split() == ["total", "6", "313", "45", "1,017", "24", "6", "0.001622", "0"]
    assert format_usage_table([]) == "No recorded usage matches.\n"


async def test_group_by_until_and_unpriced(db: Database) -> None:
    alice = await make_user(db, "alice")
    records = [
        *one(alice, DAY1, tokens=(1000, 100, 0, 0)),  # gpt-4.1: 2000 + 800 µ$
        *one(alice, DAY1, tokens=(10, 10, 0, 0), client="codex"),  # 20 + 80 µ$
        *one(alice, DAY2, model="mystery-1", tokens=(5, 5, 0, 0), client="codex"),  # unpriced
    ]
    await write_batch(db, records)
    by_client = await usage_report(db, group_by=("client",))
    assert [
        (r.client, r.requests, r.cost_micros, r.unpriced, r.day, r.user) for r in by_client
    ] == [
        ("claude-code", 1, 2800, 0, None, None),
        ("codex", 2, 100, 1, None, None),
    ]
    only_day1 = await usage_report(db, until=DAY2, group_by=("model", "client"))
    assert [(r.model, r.client, r.cost_micros) for r in only_day1] == [
        ("gpt-4.1", "claude-code", 2800),
        ("gpt-4.1", "codex", 100),
    ]
    (everything,) = await usage_report(db, group_by=())
    assert (everything.requests, everything.cost_micros, everything.unpriced) == (3, 2900, 1)
    assert await usage_report(db, user="nobody", group_by=()) == []
    text = format_usage_table(by_client, ("client",))
    assert text.splitlines()[-1].split() == [
        "total",
        "3",
        "1,015",
        "115",
        "0",
        "0",
        "0",
        "0.002900",
        "1",
    ]


def test_usage_command_flags(pg_dsn, monkeypatch, capsys):  # type: ignore[no-untyped-def]
    from relay.cli import main

    for name in [n for n in __import__("os").environ if n.startswith("CODER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CODER_PG_CONNECTION_URL", pg_dsn)
    assert main(["usage", "--since", "2025-03-01", "--until", "30d", "--group-by", "client"]) == 0
    assert capsys.readouterr().out == "No recorded usage matches.\n"
    assert main(["usage", "--group-by", "day,colour"]) == 1
    assert "cannot group by colour" in capsys.readouterr().err
    assert main(["usage", "--since", "last tuesday"]) == 1
    assert "neither a duration" in capsys.readouterr().err
