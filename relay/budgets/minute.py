"""Requests-per-minute and tokens-per-minute limits shared by a fleet through PostgreSQL.

``REQUESTS_PER_MINUTE`` and ``TOKENS_PER_MINUTE`` limit one user (or one
relay token: ``MINUTE_LIMITS_PER``) across every relay process sharing the
database, per UTC minute (a fixed window: it resets on the minute). They sit
beside ``RATE_LIMIT``, the per-process token bucket (relay.limits).

The request path never waits on the database. ``MinuteLimits`` (sans-io)
keeps, per subject, what the fleet had counted at the last sync and what this
process counted since; a request is checked against their sum and, when
admitted, counted locally. Tokens are counted when the usage is recorded
(a stream's at its end), so a request is admitted while the minute's tokens
are under the limit, and one already running is never cut.

``MinuteLimitService`` syncs every ``MINUTE_LIMITS_SYNC_INTERVAL`` (1 s):
one statement per process that adds this process's deltas to the
``rate_windows`` rows (UNLOGGED: counters a crash may lose, no WAL) and
returns the fleet's totals for the current minute. So another process's
requests reach this one's checks within two sync intervals; a limit can be
passed by what the other processes admit in that time. A sync that fails
keeps its deltas for the next one, and the last fleet totals.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import trio

log = logging.getLogger("relay.budgets")

WINDOW = 60  # seconds: a UTC minute


def window_of(now: float) -> int:
    """The minute (seconds since the epoch, floored to 60) holding ``now``."""
    return int(now // WINDOW) * WINDOW


@dataclass(slots=True)
class _Count:
    window: int
    requests: int = 0
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class MinuteExceeded:
    """Why a request is refused, and how long until the minute resets."""

    what: str  # "requests" or "tokens"
    limit: int
    counted: int
    retry_after: float

    def message(self) -> str:
        return (
            f"relay {self.what}-per-minute limit exceeded: {self.counted} of {self.limit} "
            f"{self.what} this minute across the relay fleet; retry in {max(1, math.ceil(self.retry_after))}s"
        )


Delta = tuple[int, str, int, int]  # (window, subject, requests, tokens)


class MinuteLimits:
    """Counters of one process (see the module docstring); time is passed in."""

    def __init__(
        self, rpm: int, tpm: int, *, per_token: bool = False, max_subjects: int = 100_000
    ) -> None:
        if rpm < 0 or tpm < 0:
            raise ValueError("a per-minute limit cannot be negative")
        self.rpm = rpm
        self.tpm = tpm
        self.per_token = per_token  # MINUTE_LIMITS_PER=token: counted per token, not per user
        self.max_subjects = max_subjects
        self.refused = 0
        # The wall clock the request path and the syncs read (a test may fix it).
        self.clock: Callable[[], float] = wall_now
        self._fleet: dict[str, _Count] = {}  # at the last sync, this process's flushed deltas in
        self._pending: dict[str, _Count] = {}  # counted here since, not yet flushed
        self._flushing: dict[str, _Count] = {}  # taken by the sync under way, not yet answered

    @property
    def enabled(self) -> bool:
        return bool(self.rpm or self.tpm)

    def counted(self, subject: str, now: float) -> tuple[int, int]:
        """(requests, tokens) this minute, as this process knows them."""
        w = window_of(now)
        requests = tokens = 0
        for table in (self._fleet, self._flushing, self._pending):
            c = table.get(subject)
            if c is not None and c.window == w:
                requests += c.requests
                tokens += c.tokens
        return requests, tokens

    def subject(self, user_id: str | None, api_key_id: str | None) -> str | None:
        """Whose minute a request counts in: its token's or its user's (``per_token``)."""
        return api_key_id if self.per_token else user_id

    def admit(self, user_id: str, api_key_id: str) -> MinuteExceeded | None:
        """``check`` for a request of this user and token, now."""
        subject = self.subject(user_id, api_key_id)
        return None if subject is None else self.check(subject, self.clock())

    def check(self, subject: str, now: float) -> MinuteExceeded | None:
        """Admit (counting one request) or say which limit the minute has reached."""
        requests, tokens = self.counted(subject, now)
        retry = WINDOW - (now - window_of(now))
        if self.rpm and requests >= self.rpm:
            self.refused += 1
            return MinuteExceeded("requests", self.rpm, requests, retry)
        if self.tpm and tokens >= self.tpm:
            self.refused += 1
            return MinuteExceeded("tokens", self.tpm, tokens, retry)
        self._pending_for(subject, now).requests += 1
        return None

    def add_tokens(self, subject: str, tokens: int, now: float) -> None:
        if tokens > 0 and self.tpm:
            self._pending_for(subject, now).tokens += tokens

    def _pending_for(self, subject: str, now: float) -> _Count:
        w = window_of(now)
        c = self._pending.get(subject)
        if c is None or c.window != w:
            # A count of a past minute not yet flushed is dropped: that minute is over.
            if len(self._pending) >= self.max_subjects and subject not in self._pending:
                self._pending.clear()  # bounded: lose counts rather than grow
            c = self._pending[subject] = _Count(w)
        return c

    def take_pending(self) -> list[Delta]:
        """The deltas to flush (sorted: concurrent upserts lock rows in one order).

        They go on counting (as flushing) until ``synced`` brings the totals
        that hold them, or ``restore`` gives them back: a check made while
        the sync waits on the database still sees them.
        """
        deltas = sorted(
            (c.window, s, c.requests, c.tokens)
            for s, c in self._pending.items()
            if c.requests or c.tokens
        )
        self._flushing, self._pending = self._pending, {}
        return deltas

    def restore(self, deltas: Iterable[Delta]) -> None:
        """A sync failed: its deltas count locally again, for the next one."""
        self._flushing = {}
        for w, subject, requests, tokens in deltas:
            c = self._pending.get(subject)
            if c is None or c.window < w:
                c = self._pending[subject] = _Count(w)
            elif c.window > w:
                continue  # an older minute's delta: moot
            c.requests += requests
            c.tokens += tokens

    def synced(self, window: int, rows: Iterable[tuple[str, int, int]]) -> None:
        """The fleet's totals for ``window``, this process's flushed deltas included."""
        fleet: dict[str, _Count] = {}
        for subject, requests, tokens in rows:
            if len(fleet) >= self.max_subjects:
                break
            fleet[subject] = _Count(window, requests, tokens)
        self._fleet, self._flushing = fleet, {}


class LimitDatabase(Protocol):
    async def fetch(self, sql: str, *args: Any) -> list[Any]: ...

    async def execute(self, sql: str, *args: Any) -> Any: ...


# One statement per sync: this process's deltas added, the minute's fleet
# totals returned (the upserted rows as they are now, the others as read).
SYNC_SQL = """
WITH d AS (
    SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::bigint[], $4::bigint[])
        AS d(window_start, subject, requests, tokens)
), up AS (
    INSERT INTO rate_windows AS r (window_start, subject, requests, tokens)
    SELECT window_start, subject, requests, tokens FROM d
    ON CONFLICT (window_start, subject) DO UPDATE
        SET requests = r.requests + EXCLUDED.requests, tokens = r.tokens + EXCLUDED.tokens
    RETURNING r.window_start, r.subject, r.requests, r.tokens
)
SELECT subject, requests, tokens FROM up WHERE window_start = $5
UNION ALL
SELECT subject, requests, tokens FROM rate_windows
WHERE window_start = $5 AND subject NOT IN (SELECT subject FROM up WHERE window_start = $5)
LIMIT 100000
"""
EXPIRE_SQL = "DELETE FROM rate_windows WHERE window_start < $1"


def _ts(window: int) -> datetime:
    return datetime.fromtimestamp(window, UTC)


async def sync(db: LimitDatabase, limits: MinuteLimits, now: float) -> None:
    """Flush this process's deltas and read the fleet's totals back (one statement)."""
    deltas = limits.take_pending()
    window = window_of(now)
    try:
        rows = await db.fetch(
            SYNC_SQL,
            [_ts(d[0]) for d in deltas],
            [d[1] for d in deltas],
            [d[2] for d in deltas],
            [d[3] for d in deltas],
            _ts(window),
        )
    except BaseException:
        limits.restore(deltas)
        raise
    limits.synced(window, ((r["subject"], r["requests"], r["tokens"]) for r in rows))


class MinuteLimitService:
    """Runs ``sync`` every ``interval`` seconds, and drops finished minutes once a minute."""

    def __init__(self, db: LimitDatabase, limits: MinuteLimits, interval: float) -> None:
        self._db = db
        self.limits = limits
        self._interval = interval
        self._expired = 0

    async def sync_once(self, now: float | None = None) -> None:
        now = self.limits.clock() if now is None else now
        await sync(self._db, self.limits, now)
        window = window_of(now)
        if window != self._expired:
            self._expired = window
            await self._db.execute(EXPIRE_SQL, _ts(window - 2 * WINDOW))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self._interval)
            try:
                await self.sync_once()
            except Exception as exc:
                log.warning("per-minute limits: not synced (%r); using the last totals", exc)


def wall_now() -> float:
    """Seconds since the epoch: the fleet's processes agree on the minute (NTP)."""
    return datetime.now(UTC).timestamp()
