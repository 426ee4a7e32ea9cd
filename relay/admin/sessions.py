"""Client sessions: the interceptions of one conversation, as the console's
Sessions pages show them (docs/console.md, "Sessions").

A **client session** is the interceptions one user made with one
``client_session_id`` (Claude Code's ``X-Claude-Code-Session-Id``, Codex's
``session-id``, ...; relay/clients.py). The user is part of it: the id is
chosen by the client, so one user's requests can never show up in another's
session. Requests without a session id (SDKs, curl) are **grouped** per user:
a gap of more than ``GAP`` (30 minutes) between two of them starts a new
session.

The list is newest first (a session sits where its newest matching
interception is) and keyset-paginated. It never aggregates the table: it walks
``interceptions_started_at_idx`` backwards from the cursor, ``WALK_CHUNK`` rows
at a time and at most ``WALK_MAX_ROWS`` per page, and groups in Python
(``SessionGrouper``, no I/O). A client session's summary is then read by
``interceptions_client_session_idx`` (migration 0014), capped at
``SUMMARY_CAP`` interceptions. Filters select interceptions; a session is
listed when it has a matching one, and its summary counts the matching ones.
A session's page shows all of its interceptions.

Session keys are opaque to the browser and hostile when they come back:
``k.<base64url JSON [user id, client session id]>``, ``g.<base64url JSON
[user id, first start, last start]>``, or ``a.<interception id>`` (a client
session whose id is too long to fit the 256 characters a key may have).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from relay.admin import ReadDatabase, Where
from relay.admin.api import (
    BadRequest,
    Interception,
    _text,
    _timestamp,
    attach_details,
    decode_cursor,
    encode_cursor,
)

GAP = timedelta(minutes=30)
WALK_CHUNK = 500
WALK_MAX_ROWS = 20_000
SUMMARY_CAP = 5_000
DEFAULT_SESSIONS = 50
MAX_SESSIONS = 200
DEFAULT_DETAIL = 100
MAX_DETAIL = 500
MAX_KEY = 256
MAX_FILTER_TEXT = 256
#: Statuses an interception can have (the CHECK of migration 0007).
STATUSES = ("in_progress", "completed", "failed", "cancelled", "interrupted", "refused")
_FAILED = frozenset({"failed", "cancelled", "interrupted", "refused"})

_COLUMNS = """i.id, i.initiator_id, u.name AS initiator_name, i.api_key_id, i.provider_name,
       i.provider_type, i.model, i.route, i.started_at, i.ended_at, i.status,
       i.error_type, i.error_message, i.client, i.client_session_id, i.user_agent,
       i.credential_kind, i.credential_hint"""
_WALK_COLUMNS = """i.id, i.initiator_id, i.client_session_id, i.started_at, i.ended_at,
       i.model, i.provider_name, i.client, i.status"""


class SessionFilters(msgspec.Struct, kw_only=True):
    user: str | None = None  # name or id
    client: str | None = None
    model: str | None = None
    provider: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None  # excluded
    limit: int = DEFAULT_SESSIONS
    after: tuple[datetime, uuid.UUID] | None = None  # decoded cursor


class SessionSummary(msgspec.Struct, kw_only=True):
    key: str
    kind: str  # "client" (a client session id) or "grouped" (by user and time)
    client_session_id: str | None
    user_id: uuid.UUID | None
    user: str | None  # users.name; null when the user is gone or there was none
    clients: list[str]
    models: list[str]
    providers: list[str]
    requests: int
    failed: int  # failed, cancelled, interrupted or refused
    in_progress: int
    first_started_at: datetime
    last_started_at: datetime
    last_ended_at: datetime | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    tool_calls: int
    cost_micros: int
    unpriced: int  # usage rows without a price (not in cost_micros)
    capped: bool = False  # more than SUMMARY_CAP interceptions: the newest are counted


class SessionPage(msgspec.Struct, kw_only=True):
    sessions: list[SessionSummary]
    next_cursor: str | None
    scanned: int  # interceptions read to build the page
    partial: bool  # stopped at WALK_MAX_ROWS: there may be more sessions on the next page


class SessionDetail(msgspec.Struct, kw_only=True):
    summary: SessionSummary
    interceptions: list[Interception]  # oldest first
    next_cursor: str | None


class InterceptionDetail(msgspec.Struct, kw_only=True):
    interception: Interception
    session_key: str | None  # the session it belongs to


# --- keys ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientKey:
    user_id: uuid.UUID | None
    client_session_id: str


@dataclass(frozen=True)
class GroupedKey:
    user_id: uuid.UUID | None
    first: datetime
    last: datetime


@dataclass(frozen=True)
class AnchorKey:
    interception_id: uuid.UUID


SessionKey = ClientKey | GroupedKey | AnchorKey


def _b64(value: object) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(value)).decode().rstrip("=")


def encode_key(key: SessionKey) -> str:
    if isinstance(key, AnchorKey):
        return f"a.{key.interception_id}"
    if isinstance(key, GroupedKey):
        return "g." + _b64([key.user_id, key.first, key.last])
    return "k." + _b64([key.user_id, key.client_session_id])


def client_key(user_id: uuid.UUID | None, session_id: str, anchor: uuid.UUID) -> str:
    text = encode_key(ClientKey(user_id, session_id))
    return text if len(text) <= MAX_KEY else encode_key(AnchorKey(anchor))


class BadKey(ValueError):
    """Not a key this module hands out (the HTTP layer answers 404)."""


def decode_key(text: str) -> SessionKey:
    if not 3 <= len(text) <= MAX_KEY or not text.isascii():
        raise BadKey("no such session")
    kind, dot, body = text[0], text[1], text[2:]
    if dot != ".":
        raise BadKey("no such session")
    try:
        if kind == "a":
            return AnchorKey(uuid.UUID(body))
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        if kind == "k":
            user_id, session_id = msgspec.json.decode(raw, type=tuple[uuid.UUID | None, str])
            if not session_id or "\x00" in session_id:
                raise BadKey("no such session")
            return ClientKey(user_id, session_id)
        if kind == "g":
            user_id, first, last = msgspec.json.decode(
                raw, type=tuple[uuid.UUID | None, datetime, datetime]
            )
            if first.tzinfo is None or last.tzinfo is None or first > last:
                raise BadKey("no such session")
            return GroupedKey(user_id, first.astimezone(UTC), last.astimezone(UTC))
    except (ValueError, OverflowError, msgspec.DecodeError) as exc:
        raise BadKey("no such session") from exc
    raise BadKey("no such session")


# --- filters --------------------------------------------------------------------------------


def parse_session_filters(query: Mapping[str, str]) -> SessionFilters:
    """The list's filters from a query (BadRequest for a bad value)."""
    cursor = query.get("cursor")
    if cursor is not None and len(cursor) > MAX_KEY:
        raise BadRequest("cursor is not one this API handed out")
    status = filter_text(query, "status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}")
    since = _timestamp(query.get("since") or None, "since")
    until = _timestamp(query.get("until") or None, "until")
    return SessionFilters(
        user=filter_text(query, "user"),
        client=filter_text(query, "client"),
        model=filter_text(query, "model"),
        provider=filter_text(query, "provider"),
        status=status,
        since=since,
        until=until,
        limit=bounded_int(query, "limit", DEFAULT_SESSIONS, MAX_SESSIONS),
        after=decode_cursor(cursor) if cursor else None,
    )


def filter_text(query: Mapping[str, str], name: str) -> str | None:
    value = _text(query.get(name) or None, name)
    if value is not None and len(value) > MAX_FILTER_TEXT:
        raise BadRequest(f"{name} must be at most {MAX_FILTER_TEXT} characters")
    return value


def bounded_int(query: Mapping[str, str], name: str, default: int, most: int) -> int:
    text = query.get(name)
    if not text:
        return default
    if not text.isdigit() or len(text) > 6:
        raise BadRequest(f"{name} must be an integer from 1 to {most}")
    value = int(text)
    if not 1 <= value <= most:
        raise BadRequest(f"{name} must be an integer from 1 to {most}")
    return value


def _filter_where(f: SessionFilters, users: list[uuid.UUID] | None, start: int = 1) -> Where:
    where = Where(start)
    if users is not None:
        where.add("i.initiator_id = ANY({}::uuid[])", users)
    for column, value in (
        ("client", f.client),
        ("model", f.model),
        ("provider_name", f.provider),
        ("status", f.status),
    ):
        if value is not None:
            where.add(f"i.{column} = {{}}", value)
    if f.since is not None:
        where.add("i.started_at >= {}", f.since)
    if f.until is not None:
        where.add("i.started_at < {}", f.until)
    return where


async def _resolve_user(db: ReadDatabase, user: str | None) -> list[uuid.UUID] | None:
    """The ids a user filter (a name or an id) means; None: no filter."""
    if user is None:
        return None
    ids = [row["id"] for row in await db.fetch("SELECT id FROM users WHERE name = $1", user)]
    try:
        ids.append(uuid.UUID(user))  # an id, also of a user since deleted
    except ValueError:
        pass
    return ids


# --- grouping (no I/O) ----------------------------------------------------------------------


class WalkRow(msgspec.Struct, frozen=True):
    id: uuid.UUID
    initiator_id: uuid.UUID | None
    client_session_id: str | None
    started_at: datetime
    ended_at: datetime | None
    model: str
    provider_name: str
    client: str
    status: str


@dataclass(eq=False)
class Group:
    """One session as the walk found it."""

    identity: tuple[Any, ...]
    user_id: uuid.UUID | None
    client_session_id: str | None
    first_index: int  # position in the walk of its newest row
    rows: list[WalkRow] = field(default_factory=list)
    skipped: bool = False  # listed on an earlier page

    @property
    def grouped(self) -> bool:
        return self.client_session_id is None

    @property
    def newest(self) -> WalkRow:
        return self.rows[0]

    @property
    def oldest(self) -> WalkRow:
        return self.rows[-1]


class SessionGrouper:
    """Groups interceptions fed newest first into sessions (see the module
    docstring); decides where a page of ``limit`` sessions ends."""

    def __init__(self, limit: int, gap: timedelta = GAP) -> None:
        self.limit = limit
        self.gap = gap
        self.walked: list[WalkRow] = []
        self.groups: dict[tuple[Any, ...], Group] = {}
        self._open_run: dict[uuid.UUID | None, Group] = {}
        self._runs: dict[uuid.UUID | None, int] = {}

    def feed(self, row: WalkRow) -> Group | None:
        """Add the next (older) row; the group it opened, if it opened one."""
        index = len(self.walked)
        self.walked.append(row)
        user = row.initiator_id
        if row.client_session_id is not None:
            identity: tuple[Any, ...] = ("k", user, row.client_session_id)
            group = self.groups.get(identity)
            if group is not None:
                group.rows.append(row)
                return None
            group = Group(identity, user, row.client_session_id, index, [row])
            self.groups[identity] = group
            return group
        run = self._open_run.get(user)
        if run is not None and run.oldest.started_at - row.started_at <= self.gap:
            run.rows.append(row)
            return None
        number = self._runs.get(user, 0)
        self._runs[user] = number + 1
        run = Group(("g", user, number), user, None, index, [row])
        self.groups[run.identity] = run
        self._open_run[user] = run
        return run

    def live(self) -> list[Group]:
        return [g for g in self.groups.values() if not g.skipped]

    def page(self) -> tuple[list[Group], WalkRow | None]:
        """The page's groups, and the row to continue after (None: the next page
        starts after the last row walked, if there is one)."""
        live = self.live()
        if len(live) <= self.limit:
            return live, None
        boundary = live[self.limit].first_index
        return live[: self.limit], self.walked[boundary - 1]

    def complete(self) -> bool:
        """Whether the page is settled: more than ``limit`` sessions seen, and
        every grouped one among the first ``limit`` closed (the walk is past its
        oldest row by more than the gap, so no later row can join it)."""
        live = self.live()
        if len(live) <= self.limit or not self.walked:
            return False
        position = self.walked[-1].started_at
        return all(
            g.oldest.started_at - position > self.gap for g in live[: self.limit] if g.grouped
        )


# --- the list -------------------------------------------------------------------------------


async def list_sessions(db: ReadDatabase, filters: SessionFilters) -> SessionPage:
    users = await _resolve_user(db, filters.user)
    if users == []:
        return SessionPage(sessions=[], next_cursor=None, scanned=0, partial=False)
    grouper = SessionGrouper(filters.limit)
    position = filters.after
    exhausted = False
    while len(grouper.walked) < WALK_MAX_ROWS:
        rows = await _walk(db, filters, users, position, WALK_CHUNK)
        opened = [g for g in map(grouper.feed, rows) if g is not None]
        if filters.after is not None and opened:
            await _skip_listed(db, filters, users, filters.after, opened)
        if len(rows) < WALK_CHUNK:
            exhausted = True
            break
        last = rows[-1]
        position = (last.started_at, last.id)
        if grouper.complete():
            break
    groups, boundary = grouper.page()
    partial = False
    if boundary is not None:
        cursor: str | None = encode_cursor(boundary.started_at, boundary.id)
    elif not exhausted and grouper.walked:
        last = grouper.walked[-1]
        cursor, partial = encode_cursor(last.started_at, last.id), True
    else:
        cursor = None
    sessions = await _summaries(db, filters, groups)
    return SessionPage(
        sessions=sessions, next_cursor=cursor, scanned=len(grouper.walked), partial=partial
    )


async def _walk(
    db: ReadDatabase,
    f: SessionFilters,
    users: list[uuid.UUID] | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[WalkRow]:
    where = _filter_where(f, users)
    if after is not None:
        where.add("(i.started_at, i.id) < ({}, {})", *after)
    sql = (
        f"SELECT {_WALK_COLUMNS} FROM interceptions i WHERE {where.sql()}"
        f" ORDER BY i.started_at DESC, i.id DESC LIMIT {where.param(limit)}"
    )
    return [WalkRow(**dict(row)) for row in await db.fetch(sql, *where.params)]


async def _skip_listed(
    db: ReadDatabase,
    f: SessionFilters,
    users: list[uuid.UUID] | None,
    cursor: tuple[datetime, uuid.UUID],
    opened: list[Group],
) -> None:
    """Mark the groups an earlier page listed: a client session with a matching
    interception at or before the cursor (newer), a grouped run within the gap
    of one."""
    keyed = [g for g in opened if not g.grouped]
    grouped = [g for g in opened if g.grouped]
    if keyed:
        where = _filter_where(f, users, start=3)
        where.add("(i.started_at, i.id) >= ({}, {})", *cursor)
        sql = (
            "SELECT s.n FROM unnest($1::text[], $2::uuid[]) WITH ORDINALITY AS s(sid, uid, n)"
            " WHERE EXISTS (SELECT 1 FROM interceptions i WHERE i.client_session_id = s.sid"
            f" AND i.initiator_id IS NOT DISTINCT FROM s.uid AND {where.sql()})"
        )
        found = await db.fetch(
            sql, [g.client_session_id for g in keyed], [g.user_id for g in keyed], *where.params
        )
        for row in found:
            keyed[row["n"] - 1].skipped = True
    if grouped:
        where = _filter_where(f, users, start=3)
        where.add("(i.started_at, i.id) >= ({}, {})", *cursor)
        gap = where.param(GAP)
        sql = (
            "SELECT s.n FROM unnest($1::uuid[], $2::timestamptz[]) WITH ORDINALITY AS s(uid, hi, n)"
            " WHERE EXISTS (SELECT 1 FROM interceptions i WHERE i.client_session_id IS NULL"
            f" AND i.initiator_id IS NOT DISTINCT FROM s.uid AND i.started_at <= s.hi + {gap}"
            f" AND {where.sql()})"
        )
        found = await db.fetch(
            sql, [g.user_id for g in grouped], [g.newest.started_at for g in grouped], *where.params
        )
        for row in found:
            grouped[row["n"] - 1].skipped = True


_STATS_SQL = """
SELECT t.interception_id AS id,
       sum(t.input_tokens)::bigint AS input_tokens,
       sum(t.output_tokens)::bigint AS output_tokens,
       sum(t.cache_read_tokens)::bigint AS cache_read_tokens,
       sum(t.cache_write_tokens)::bigint AS cache_write_tokens,
       coalesce(sum(t.cost_micros), 0)::bigint AS cost_micros,
       count(*) FILTER (WHERE t.cost_micros IS NULL) AS unpriced
FROM token_usages t WHERE t.interception_id = ANY($1::uuid[])
GROUP BY t.interception_id
"""
_TOOL_COUNTS_SQL = """
SELECT interception_id AS id, count(*) AS tool_calls FROM tool_usages
WHERE interception_id = ANY($1::uuid[]) GROUP BY interception_id
"""


async def _client_session_rows(
    db: ReadDatabase, f: SessionFilters | None, sessions: Sequence[tuple[uuid.UUID | None, str]]
) -> dict[tuple[uuid.UUID | None, str], list[WalkRow]]:
    """Each client session's matching interceptions, newest first, at most
    SUMMARY_CAP + 1 each (by interceptions_client_session_idx)."""
    where = _filter_where(f, None, start=3) if f is not None else Where(3)
    cap = where.param(SUMMARY_CAP + 1)
    sql = (
        "SELECT s.n, r.* FROM unnest($1::text[], $2::uuid[]) WITH ORDINALITY AS s(sid, uid, n)"
        f" CROSS JOIN LATERAL (SELECT {_WALK_COLUMNS} FROM interceptions i"
        " WHERE i.client_session_id = s.sid AND i.initiator_id IS NOT DISTINCT FROM s.uid"
        f" AND {where.sql()} ORDER BY i.started_at DESC, i.id DESC LIMIT {cap}) r"
    )
    found: dict[tuple[uuid.UUID | None, str], list[WalkRow]] = {s: [] for s in sessions}
    rows = await db.fetch(sql, [s[1] for s in sessions], [s[0] for s in sessions], *where.params)
    for row in rows:
        fields = dict(row)
        found[sessions[fields.pop("n") - 1]].append(WalkRow(**fields))
    return found


async def _summaries(
    db: ReadDatabase, f: SessionFilters | None, groups: Sequence[Group]
) -> list[SessionSummary]:
    keyed = [(g.user_id, g.client_session_id) for g in groups if g.client_session_id is not None]
    session_rows = await _client_session_rows(db, f, keyed) if keyed else {}
    members: list[tuple[Group, list[WalkRow], bool]] = []
    for g in groups:
        if g.client_session_id is None:
            members.append((g, g.rows, False))
        else:
            rows = session_rows.get((g.user_id, g.client_session_id)) or g.rows
            members.append((g, rows[:SUMMARY_CAP], len(rows) > SUMMARY_CAP))
    ids = [r.id for _, rows, _ in members for r in rows]
    stats = {row["id"]: row for row in await db.fetch(_STATS_SQL, ids)} if ids else {}
    tools = {row["id"]: row["tool_calls"] for row in await db.fetch(_TOOL_COUNTS_SQL, ids)}
    user_ids = list({g.user_id for g in groups if g.user_id is not None})
    names = {
        row["id"]: row["name"]
        for row in (
            await db.fetch("SELECT id, name FROM users WHERE id = ANY($1::uuid[])", user_ids)
            if user_ids
            else []
        )
    }
    return [
        summarize(g, rows, capped, stats, tools, names.get(g.user_id) if g.user_id else None)
        for g, rows, capped in members
    ]


def summarize(
    group: Group,
    rows: Sequence[WalkRow],
    capped: bool,
    stats: Mapping[uuid.UUID, Any],
    tools: Mapping[uuid.UUID, int],
    user_name: str | None,
) -> SessionSummary:
    newest = max(rows, key=lambda r: (r.started_at, r.id))
    oldest = min(rows, key=lambda r: (r.started_at, r.id))
    if group.client_session_id is not None:
        key = client_key(group.user_id, group.client_session_id, newest.id)
    else:
        key = encode_key(GroupedKey(group.user_id, oldest.started_at, newest.started_at))
    sums = dict.fromkeys(
        (
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "cost_micros",
            "unpriced",
        ),
        0,
    )
    for r in rows:
        s = stats.get(r.id)
        if s is not None:
            for name in sums:
                sums[name] += s[name] or 0
    ended = [r.ended_at for r in rows if r.ended_at is not None]
    return SessionSummary(
        key=key,
        kind="grouped" if group.client_session_id is None else "client",
        client_session_id=group.client_session_id,
        user_id=group.user_id,
        user=user_name,
        clients=sorted({r.client for r in rows}),
        models=sorted({r.model for r in rows}),
        providers=sorted({r.provider_name for r in rows}),
        requests=len(rows),
        failed=sum(r.status in _FAILED for r in rows),
        in_progress=sum(r.status == "in_progress" for r in rows),
        first_started_at=oldest.started_at,
        last_started_at=newest.started_at,
        last_ended_at=max(ended) if ended else None,
        tool_calls=sum(tools.get(r.id, 0) for r in rows),
        capped=capped,
        **sums,
    )


# --- one session ----------------------------------------------------------------------------


async def session_detail(
    db: ReadDatabase,
    key_text: str,
    *,
    limit: int = DEFAULT_DETAIL,
    after: tuple[datetime, uuid.UUID] | None = None,
) -> SessionDetail | None:
    """A session's interceptions, oldest first, ``limit`` a page; None when the
    key is not one this module hands out or names no interceptions."""
    try:
        key = decode_key(key_text)
    except BadKey:
        return None
    if isinstance(key, AnchorKey):
        row = await _fetchrow(
            db,
            "SELECT initiator_id, client_session_id FROM interceptions WHERE id = $1",
            key.interception_id,
        )
        if row is None or row["client_session_id"] is None:
            return None
        key = ClientKey(row["initiator_id"], row["client_session_id"])
    where = Where()
    if isinstance(key, ClientKey):
        where.add("i.client_session_id = {}", key.client_session_id)
    else:
        where.add("i.client_session_id IS NULL")
        where.add("i.started_at BETWEEN {} AND {}", key.first, key.last)
    if key.user_id is None:
        where.add("i.initiator_id IS NULL")
    else:
        where.add("i.initiator_id = {}", key.user_id)
    page_where = Where(len(where.params) + 1)
    if after is not None:
        page_where.add("(i.started_at, i.id) > ({}, {})", *after)
    sql = (
        f"SELECT {_COLUMNS} FROM interceptions i LEFT JOIN users u ON u.id = i.initiator_id"
        f" WHERE {where.sql()} AND {page_where.sql()}"
        f" ORDER BY i.started_at, i.id LIMIT {page_where.param(limit + 1)}"
    )
    rows = await db.fetch(sql, *where.params, *page_where.params)
    if not rows and after is None:
        return None
    interceptions = [Interception(**dict(row)) for row in rows[:limit]]
    await attach_details(db, interceptions)
    cursor = None
    if len(rows) > limit:
        last = interceptions[-1]
        cursor = encode_cursor(last.started_at, last.id)
    summary = await _session_summary(db, key, where)
    if summary is None:
        return None
    return SessionDetail(summary=summary, interceptions=interceptions, next_cursor=cursor)


async def _session_summary(
    db: ReadDatabase, key: ClientKey | GroupedKey, where: Where
) -> SessionSummary | None:
    if isinstance(key, ClientKey):
        found = await _client_session_rows(db, None, [(key.user_id, key.client_session_id)])
        rows = found[(key.user_id, key.client_session_id)]
    else:
        sql = (
            f"SELECT {_WALK_COLUMNS} FROM interceptions i WHERE {where.sql()}"
            f" ORDER BY i.started_at DESC, i.id DESC LIMIT {SUMMARY_CAP + 1}"
        )
        rows = [WalkRow(**dict(row)) for row in await db.fetch(sql, *where.params)]
    if not rows:
        return None
    group = Group(("-",), key.user_id, getattr(key, "client_session_id", None), 0, rows)
    summaries = await _summaries(db, None, [group])
    if isinstance(key, GroupedKey):
        # The key as it came: a page links back to the same session.
        summaries[0].key = encode_key(key)
    return summaries[0]


async def _fetchrow(db: ReadDatabase, sql: str, *args: Any) -> Any:
    rows = await db.fetch(sql, *args)
    return rows[0] if rows else None


# --- one interception -----------------------------------------------------------------------

#: How far a grouped session is followed to find the one an interception is in.
_RUN_PROBE = 1000


async def interception_detail(
    db: ReadDatabase, interception_id: uuid.UUID
) -> InterceptionDetail | None:
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM interceptions i LEFT JOIN users u ON u.id = i.initiator_id"
        " WHERE i.id = $1",
        interception_id,
    )
    if not rows:
        return None
    interception = Interception(**dict(rows[0]))
    await attach_details(db, [interception])
    if interception.client_session_id is not None:
        key: str | None = client_key(
            interception.initiator_id, interception.client_session_id, interception.id
        )
    else:
        key = await _grouped_key_of(db, interception)
    return InterceptionDetail(interception=interception, session_key=key)


async def _grouped_key_of(db: ReadDatabase, i: Interception) -> str | None:
    """The grouped session holding ``i``: its user's interceptions without a
    session id, followed both ways while the gap is at most GAP (at most
    _RUN_PROBE each way; None past that)."""
    user = "i.initiator_id IS NULL" if i.initiator_id is None else "i.initiator_id = $2"
    args: list[Any] = [i.started_at] + ([] if i.initiator_id is None else [i.initiator_id])
    bounds: list[datetime] = []
    for op, order in ((">", "ASC"), ("<", "DESC")):
        sql = (
            f"SELECT i.started_at FROM interceptions i WHERE {user}"
            f" AND i.client_session_id IS NULL AND i.started_at {op} $1"
            f" ORDER BY i.started_at {order} LIMIT {_RUN_PROBE}"
        )
        edge = i.started_at
        times = [row["started_at"] for row in await db.fetch(sql, *args)]
        for t in times:
            if abs(t - edge) > GAP:
                break
            edge = t
        else:
            if len(times) == _RUN_PROBE:
                return None
        bounds.append(edge)
    return encode_key(GroupedKey(i.initiator_id, bounds[1], bounds[0]))
