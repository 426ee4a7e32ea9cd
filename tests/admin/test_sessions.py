"""Client sessions (relay/admin/sessions.py) against the real PostgreSQL."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from relay.admin import sessions
from relay.admin.api import BadRequest
from relay.admin.sessions import (
    GAP,
    SessionFilters,
    SessionGrouper,
    WalkRow,
    decode_key,
    interception_detail,
    list_sessions,
    parse_session_filters,
    session_detail,
)
from relay.db import Database
from relay.facts import Facts, ToolCall, Usage
from relay.record.events import InterceptionMeta, InterceptionRecord, Record, records_for
from relay.record.writer import write_batch

T0 = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)


def one(
    user: uuid.UUID | None,
    started: datetime,
    n: int,
    *,
    session: str | None = None,
    client: str = "claude-code",
    model: str = "claude-sonnet-4-5",
    status: str = "completed",
) -> list[Record]:
    meta = InterceptionMeta(
        provider_name="anthropic",
        provider_type="anthropic",
        model=model,
        route="/v1/messages",
        initiator_id=user,
        client=client,
        client_session_id=session,
        started_at=started,
    )
    facts = Facts(
        response_id=f"msg-{n}",
        usage=Usage(
            input_tokens=n, output_tokens=10 * n, cache_read_tokens=1, cache_write_tokens=2
        ),
        tool_calls=[ToolCall(id=f"toolu-{n}", name="Bash", arguments=f'{{"command":"ls {n}"}}')],
        thoughts=[f"thought {n}"],
    )
    error = ("overloaded_error", "busy") if status == "failed" else None
    return records_for(
        meta,
        facts,
        f"prompt {n}",
        status,  # type: ignore[arg-type]
        error,
        ended_at=started + timedelta(seconds=3),
    )


async def users(db: Database, *names: str) -> list[uuid.UUID]:
    return [
        await db.fetchval("INSERT INTO users (name) VALUES ($1) RETURNING id", name)
        for name in names
    ]


async def price_everything(db: Database) -> None:
    # 1000 micro-dollars per output token: a cost that is easy to check.
    await db.execute(
        "UPDATE token_usages SET cost_micros = output_tokens * 1000, price_model = 'test'"
    )


async def all_pages(db: Database, **filters: Any) -> list[sessions.SessionSummary]:
    found: list[sessions.SessionSummary] = []
    cursor = None
    for _ in range(200):
        page = await list_sessions(
            db,
            SessionFilters(after=sessions.decode_cursor(cursor) if cursor else None, **filters),
        )
        found += page.sessions
        cursor = page.next_cursor
        if cursor is None:
            return found
    raise AssertionError("the pages never end")


async def test_sessions_group_by_client_session_and_by_user_and_time(db: Database) -> None:
    alice, bob = await users(db, "alice", "bob")
    records: list[Record] = []
    # alice's Claude Code session: three requests; bob uses the same session id
    # (client-chosen): his request is his own session, never in alice's.
    for n in range(3):
        records += one(alice, T0 + timedelta(minutes=n), n + 1, session="s-1")
    records += one(bob, T0 + timedelta(minutes=1, seconds=30), 4, session="s-1")
    # alice without a session id: two within 20 min, then one after a 31 min gap.
    records += one(alice, T0 + timedelta(hours=2), 5, session=None, client="curl")
    records += one(alice, T0 + timedelta(hours=2, minutes=20), 6, session=None, client="curl")
    records += one(
        alice, T0 + timedelta(hours=2, minutes=51), 7, session=None, client="curl", status="failed"
    )
    await write_batch(db, records)
    await price_everything(db)

    page = await list_sessions(db, SessionFilters())
    assert page.next_cursor is None and not page.partial
    got = [(s.kind, s.user, s.client_session_id, s.requests) for s in page.sessions]
    assert got == [
        ("grouped", "alice", None, 1),
        ("grouped", "alice", None, 2),
        ("client", "alice", "s-1", 3),  # its newest at 09:02, bob's at 09:01:30
        ("client", "bob", "s-1", 1),
    ]
    latest, grouped, alices, bobs = page.sessions
    assert latest.failed == 1 and latest.clients == ["curl"]
    assert grouped.first_started_at == T0 + timedelta(hours=2)
    assert grouped.last_started_at == T0 + timedelta(hours=2, minutes=20)
    assert (alices.input_tokens, alices.output_tokens) == (1 + 2 + 3, 10 + 20 + 30)
    assert (alices.cache_read_tokens, alices.cache_write_tokens) == (3, 6)
    assert alices.cost_micros == 60 * 1000 and alices.unpriced == 0
    assert alices.tool_calls == 3 and alices.models == ["claude-sonnet-4-5"]
    assert alices.last_ended_at == T0 + timedelta(minutes=2, seconds=3)
    assert bobs.output_tokens == 40

    # A session's page: its interceptions in order, with what each carried.
    detail = await session_detail(db, alices.key)
    assert detail is not None and detail.summary == alices
    assert [i.prompt for i in detail.interceptions] == ["prompt 1", "prompt 2", "prompt 3"]
    first = detail.interceptions[0]
    assert first.tool_usages[0].name == "Bash"
    assert first.tool_usages[0].input == '{"command":"ls 1"}'
    assert first.thoughts == ["thought 1"]
    assert first.token_usages[0].output_tokens == 10
    assert first.token_usages[0].cost_micros == 10_000
    assert {i.initiator_name for i in detail.interceptions} == {"alice"}

    grouped_detail = await session_detail(db, grouped.key)
    assert grouped_detail is not None
    assert [i.prompt for i in grouped_detail.interceptions] == ["prompt 5", "prompt 6"]
    assert grouped_detail.summary.key == grouped.key

    # An interception knows the session it is in (the same key as the list's).
    for summary in page.sessions:
        s_detail = await session_detail(db, summary.key)
        assert s_detail is not None
        for i in s_detail.interceptions:
            found = await interception_detail(db, i.id)
            assert found is not None and found.session_key == summary.key
    assert await interception_detail(db, uuid.uuid4()) is None


async def test_session_pages_and_junk_keys(db: Database) -> None:
    (alice,) = await users(db, "alice")
    records: list[Record] = []
    for n in range(5):
        records += one(alice, T0 + timedelta(seconds=n), n, session="long")
    long_id = "x" * 400  # too long for a key of its own: the key names an interception
    records += one(alice, T0 + timedelta(minutes=5), 9, session=long_id)
    await write_batch(db, records)

    page = await list_sessions(db, SessionFilters())
    long_summary = next(s for s in page.sessions if s.client_session_id == long_id)
    assert long_summary.key.startswith("a.") and len(long_summary.key) <= sessions.MAX_KEY
    detail = await session_detail(db, long_summary.key)
    assert detail is not None and detail.interceptions[0].client_session_id == long_id

    key = next(s.key for s in page.sessions if s.client_session_id == "long")
    prompts: list[str | None] = []
    after = None
    while True:
        d = await session_detail(db, key, limit=2, after=after)
        assert d is not None and d.summary.requests == 5
        prompts += [i.prompt for i in d.interceptions]
        if d.next_cursor is None:
            break
        after = sessions.decode_cursor(d.next_cursor)
    assert prompts == [f"prompt {n}" for n in range(5)]

    junk = [
        "",
        "k",
        "k.",
        "zz",
        "q.abc",
        "k.!!!!",
        "k." + "A" * 300,
        "a.not-a-uuid",
        f"a.{uuid.uuid4()}",  # no such interception
        "g.WzEsMiwzXQ",  # [1,2,3]
        sessions.encode_key(sessions.ClientKey(None, "nobody")),
        sessions.encode_key(sessions.GroupedKey(alice, T0, T0 - timedelta(seconds=1))),
        "k." + sessions._b64([str(alice), "a\x00b"]),
        "k.é",
    ]
    for text in junk:
        assert await session_detail(db, text) is None, text


async def test_pages_list_each_session_once_however_they_interleave(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random interleaved sessions, walked in tiny chunks and pages: every
    session exactly once, newest first, with the same summary as one big page."""
    rng = random.Random(20)
    people = await users(db, "u0", "u1", "u2")
    owners: list[uuid.UUID | None] = [*people, None]
    records: list[Record] = []
    t = T0
    for n in range(120):
        t += timedelta(minutes=rng.choice([1, 2, 5, 20, 29, 31, 45]), microseconds=n)
        session = rng.choice([None, None, "a", "b", "c", f"solo-{n}"])
        records += one(rng.choice(owners), t, n, session=session)
    await write_batch(db, records)

    reference = (await list_sessions(db, SessionFilters(limit=200))).sessions
    # The same sessions worked out here from the records, by the definition.
    rows = sorted(
        {r.id: r for r in records if isinstance(r, InterceptionRecord)}.values(),
        key=lambda r: r.started_at,
        reverse=True,
    )
    expected: dict[Any, list[datetime]] = {}
    open_run: dict[Any, Any] = {}
    for r in rows:
        if r.client_session_id is not None:
            expected.setdefault((r.initiator_id, r.client_session_id), []).append(r.started_at)
            continue
        run = open_run.get(r.initiator_id)
        if run is None or expected[run][-1] - r.started_at > GAP:
            run = open_run[r.initiator_id] = (r.initiator_id, None, r.started_at)
        expected.setdefault(run, []).append(r.started_at)
    assert [
        (s.user_id, s.client_session_id, s.requests, s.last_started_at, s.first_started_at)
        for s in reference
    ] == [(k[0], k[1], len(v), v[0], v[-1]) for k, v in expected.items()]
    assert reference and reference[0].last_started_at == t
    times = [s.last_started_at for s in reference]
    assert times == sorted(times, reverse=True)
    assert sum(s.requests for s in reference) == 120
    monkeypatch.setattr(sessions, "WALK_CHUNK", 3)
    for limit in (1, 2, 5):
        assert await all_pages(db, limit=limit) == reference, limit
    # A filter narrows the interceptions the sessions are made of.
    only_u0 = await all_pages(db, limit=2, user="u0")
    assert {s.user for s in only_u0} == {"u0"}
    assert sum(s.requests for s in only_u0) == len(
        {r.id for r in records if isinstance(r, InterceptionRecord) and r.initiator_id == people[0]}
    )


async def test_the_walk_stops_at_its_bound_and_says_so(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    (alice,) = await users(db, "alice")
    records: list[Record] = []
    for n in range(12):  # one grouped session: each request 10 minutes after the last
        records += one(alice, T0 + timedelta(minutes=10 * n), n, session=None)
    records += one(alice, T0 - timedelta(days=1), 99, session="old")
    await write_batch(db, records)
    monkeypatch.setattr(sessions, "WALK_CHUNK", 4)
    monkeypatch.setattr(sessions, "WALK_MAX_ROWS", 8)
    page = await list_sessions(db, SessionFilters())
    assert page.partial and page.scanned == 8 and page.next_cursor is not None
    assert [s.requests for s in page.sessions] == [8]
    # Unbounded, the same session is whole, and the old one follows.
    monkeypatch.setattr(sessions, "WALK_MAX_ROWS", 1000)
    page = await list_sessions(db, SessionFilters())
    assert [(s.kind, s.requests) for s in page.sessions] == [("grouped", 12), ("client", 1)]


async def test_filters(db: Database) -> None:
    alice, bob = await users(db, "alice", "bob")
    records = one(alice, T0, 1, session="s", model="claude-opus-4-1", status="failed")
    records += one(alice, T0 + timedelta(minutes=1), 2, session="s", client="claude-code")
    records += one(bob, T0 + timedelta(minutes=2), 3, session="t", client="codex", model="gpt-5")
    await write_batch(db, records)

    async def keys(**f: Any) -> list[tuple[str | None, int]]:
        page = await list_sessions(db, SessionFilters(**f))
        return [(s.client_session_id, s.requests) for s in page.sessions]

    assert await keys() == [("t", 1), ("s", 2)]
    assert await keys(model="claude-opus-4-1") == [("s", 1)]
    assert await keys(status="failed") == [("s", 1)]
    assert await keys(client="codex") == [("t", 1)]
    assert await keys(provider="anthropic") == [("t", 1), ("s", 2)]
    assert await keys(provider="nope") == []
    assert await keys(user="bob") == [("t", 1)]
    assert await keys(user=str(alice)) == [("s", 2)]
    assert await keys(user="nobody") == []
    assert await keys(since=T0 + timedelta(minutes=1)) == [("t", 1), ("s", 1)]
    assert await keys(until=T0 + timedelta(minutes=1)) == [("s", 1)]


def test_parse_session_filters_refuses_bad_values() -> None:
    f = parse_session_filters({"user": "alice", "status": "failed", "limit": "7"})
    assert (f.user, f.status, f.limit) == ("alice", "failed", 7)
    assert parse_session_filters({}).limit == sessions.DEFAULT_SESSIONS
    for query in (
        {"limit": "0"},
        {"limit": "201"},
        {"limit": "-1"},
        {"limit": "1e3"},
        {"status": "nope"},
        {"since": "yesterday"},
        {"model": "x" * 300},
        {"model": "a\x00"},
        {"cursor": "junk!"},
        {"cursor": "A" * 1000},
    ):
        with pytest.raises(BadRequest):
            parse_session_filters(query)


def row(user: int | None, minutes: float, session: str | None = None) -> WalkRow:
    uid = uuid.UUID(int=user) if user is not None else None
    return WalkRow(
        id=uuid.uuid4(),
        initiator_id=uid,
        client_session_id=session,
        started_at=T0 + timedelta(minutes=minutes),
        ended_at=None,
        model="m",
        provider_name="p",
        client="c",
        status="completed",
    )


def test_grouper_splits_runs_at_the_gap_and_waits_until_a_run_is_closed() -> None:
    g = SessionGrouper(limit=1, gap=GAP)
    for r in (row(1, 100), row(1, 70), row(2, 69, "s"), row(1, 40)):  # gaps of 30 min: one run
        g.feed(r)
    assert [len(x.rows) for x in g.live()] == [3, 1]
    # Two sessions seen, but the first (grouped) could still grow: not settled.
    assert not g.complete()
    g.feed(row(1, 9.99))  # 30.01 min: a new run
    assert [len(x.rows) for x in g.live()] == [3, 1, 1]
    assert g.complete()
    groups, boundary = g.page()
    assert len(groups) == 1 and boundary is not None
    assert boundary.started_at == T0 + timedelta(minutes=70)  # the row before the second session


def test_keys_round_trip() -> None:
    for key in (
        sessions.ClientKey(uuid.uuid4(), "sess"),
        sessions.ClientKey(None, "ü-session"),
        sessions.GroupedKey(None, T0, T0 + timedelta(hours=1)),
        sessions.AnchorKey(uuid.uuid4()),
    ):
        assert decode_key(sessions.encode_key(key)) == key
