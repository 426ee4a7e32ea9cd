"""Groups, budgets and spend totals in PostgreSQL, and ``BudgetService``, which
keeps a process's ``BudgetTracker`` current: budgets and memberships reloaded
on every change (NOTIFY on ``relay_config``), spend totals every
``refresh_interval`` seconds (one query per process, whatever the traffic)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import trio

from relay.budgets.tracker import PERIODS, Budget, BudgetTracker
from relay.errors import CommandError

if TYPE_CHECKING:
    from relay.providers.registry import ConfigChange

log = logging.getLogger("relay.budgets")

_CHANGES = frozenset({"budgets", "user_groups", "user_group_members", "resync"})


class BudgetDatabase(Protocol):
    async def execute(self, sql: str, *args: Any) -> Any: ...

    async def fetch(self, sql: str, *args: Any) -> list[Any]: ...

    async def fetchval(self, sql: str, *args: Any) -> Any: ...


class BudgetError(CommandError):
    """A group or budget command cannot be done (unknown user, duplicate name, ...)."""


# --- groups -----------------------------------------------------------------------------------


async def create_group(db: BudgetDatabase, name: str) -> str:
    gid = await db.fetchval(
        "INSERT INTO user_groups (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING id",
        name,
    )
    if gid is None:
        raise BudgetError(f"a group named {name!r} exists already")
    return str(gid)


async def _group_id(db: BudgetDatabase, name: str) -> uuid.UUID:
    gid = await db.fetchval("SELECT id FROM user_groups WHERE name = $1", name)
    if gid is None:
        raise BudgetError(f"no group named {name!r}")
    return gid  # type: ignore[no-any-return]


async def _user_id(db: BudgetDatabase, name: str) -> uuid.UUID:
    uid = await db.fetchval("SELECT id FROM users WHERE name = $1 OR id::text = $1", name)
    if uid is None:
        raise BudgetError(f"no user named {name!r}")
    return uid  # type: ignore[no-any-return]


async def add_member(db: BudgetDatabase, group: str, user: str) -> bool:
    gid, uid = await _group_id(db, group), await _user_id(db, user)
    status = await db.execute(
        "INSERT INTO user_group_members (group_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        gid,
        uid,
    )
    return str(status).endswith(" 1")


async def remove_member(db: BudgetDatabase, group: str, user: str) -> bool:
    gid, uid = await _group_id(db, group), await _user_id(db, user)
    status = await db.execute(
        "DELETE FROM user_group_members WHERE group_id = $1 AND user_id = $2", gid, uid
    )
    return str(status).endswith(" 1")


async def delete_group(db: BudgetDatabase, name: str) -> None:
    status = await db.execute("DELETE FROM user_groups WHERE name = $1", name)
    if str(status).endswith(" 0"):
        raise BudgetError(f"no group named {name!r}")


async def list_groups(db: BudgetDatabase) -> list[tuple[str, list[str]]]:
    rows = await db.fetch(
        "SELECT g.name, coalesce(array_agg(u.name ORDER BY u.name) FILTER (WHERE u.name IS NOT NULL),"
        " '{}') AS members FROM user_groups g LEFT JOIN user_group_members m ON m.group_id = g.id"
        " LEFT JOIN users u ON u.id = m.user_id GROUP BY g.name ORDER BY g.name"
    )
    return [(r["name"], list(r["members"])) for r in rows]


# --- budgets ----------------------------------------------------------------------------------


async def set_budget(
    db: BudgetDatabase,
    name: str,
    *,
    user: str | None = None,
    group: str | None = None,
    api_key_id: str | None = None,
    limit_micros: int,
    period: str = "month",
    model: str | None = None,
    soft_percent: int = 80,
) -> None:
    """Create the budget ``name``, or replace what it limits."""
    if sum(x is not None for x in (user, group, api_key_id)) != 1:
        raise BudgetError("a budget is for exactly one of a user, a group or a relay token")
    if period not in PERIODS:
        raise BudgetError(f"period must be one of {', '.join(PERIODS)}")
    if limit_micros <= 0:
        raise BudgetError("the limit must be more than $0")
    if not 1 <= soft_percent <= 100:
        raise BudgetError("the soft limit is a percentage from 1 to 100")
    uid = await _user_id(db, user) if user is not None else None
    gid = await _group_id(db, group) if group is not None else None
    if api_key_id is not None and not await db.fetchval(
        "SELECT true FROM api_keys WHERE id = $1", api_key_id
    ):
        raise BudgetError(f"no relay token with id {api_key_id!r}")
    await db.execute(
        """
        INSERT INTO budgets (name, user_id, group_id, api_key_id, model, period, limit_micros,
                             soft_percent)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (name) DO UPDATE SET user_id = EXCLUDED.user_id,
            group_id = EXCLUDED.group_id, api_key_id = EXCLUDED.api_key_id,
            model = EXCLUDED.model, period = EXCLUDED.period,
            limit_micros = EXCLUDED.limit_micros, soft_percent = EXCLUDED.soft_percent
        """,
        name,
        uid,
        gid,
        api_key_id,
        model.strip().lower() if model else None,
        period,
        limit_micros,
        soft_percent,
    )


async def remove_budget(db: BudgetDatabase, name: str) -> None:
    status = await db.execute("DELETE FROM budgets WHERE name = $1", name)
    if str(status).endswith(" 0"):
        raise BudgetError(f"no budget named {name!r}")


_BUDGETS_SQL = """
SELECT b.id::text AS id, b.name, b.model, b.period, b.limit_micros, b.soft_percent,
       CASE WHEN b.user_id IS NOT NULL THEN 'user'
            WHEN b.group_id IS NOT NULL THEN 'group' ELSE 'key' END AS scope,
       coalesce(b.user_id::text, b.group_id::text, b.api_key_id) AS subject,
       coalesce(u.name, g.name, b.api_key_id) AS subject_name
FROM budgets b
LEFT JOIN users u ON u.id = b.user_id
LEFT JOIN user_groups g ON g.id = b.group_id
ORDER BY b.name
"""
_MEMBERS_SQL = "SELECT group_id::text AS group_id, user_id::text AS user_id FROM user_group_members"

# Each budget's spend in the calendar period holding $1: the sum of a few rows
# of the running totals per user (index spend_daily_user_idx), never token_usages.
SPEND_SQL = """
SELECT b.id::text AS id, coalesce(sum(s.cost_micros), 0)::bigint AS spent
FROM budgets b
LEFT JOIN spend_daily s
  ON s.day >= date_trunc(b.period, $1::timestamptz AT TIME ZONE 'UTC')::date
 AND (b.model IS NULL OR s.model = b.model)
 AND ((b.user_id IS NOT NULL AND s.user_id = b.user_id)
   OR (b.api_key_id IS NOT NULL AND s.api_key_id = b.api_key_id)
   OR (b.group_id IS NOT NULL AND s.user_id IN (
        SELECT m.user_id FROM user_group_members m WHERE m.group_id = b.group_id)))
GROUP BY b.id
"""


async def load_budgets(db: BudgetDatabase) -> tuple[list[Budget], dict[str, list[str]]]:
    budgets = [Budget(**dict(row)) for row in await db.fetch(_BUDGETS_SQL)]
    members: dict[str, list[str]] = {}
    for row in await db.fetch(_MEMBERS_SQL):
        members.setdefault(row["group_id"], []).append(row["user_id"])
    return budgets, members


async def budget_spend(db: BudgetDatabase, now: datetime) -> dict[str, int]:
    return {row["id"]: row["spent"] for row in await db.fetch(SPEND_SQL, now)}


class BudgetService:
    """Keeps ``tracker`` current in one relay process (see the module docstring).

    A ``ConfigListener`` subscriber for the budget tables; ``run`` refreshes
    the spend totals. A refresh that fails (database away) keeps the last
    figures and this process's own charges; the next one catches up.
    """

    def __init__(self, db: BudgetDatabase, tracker: BudgetTracker, refresh_interval: float) -> None:
        self._db = db
        self.tracker = tracker
        self._interval = refresh_interval
        self._lock = trio.Lock()
        self.on_refresh: Callable[[], None] | None = None  # metrics: the budgets' gauges

    async def reload(self) -> None:
        budgets, members = await load_budgets(self._db)
        self.tracker.configure(budgets, members)
        await self.refresh()

    async def refresh(self) -> None:
        if not self.tracker.budgets:
            return
        async with self._lock:
            now = datetime.now(UTC)
            before = self.tracker.begin_refresh()
            totals = await budget_spend(self._db, now)
            self.tracker.refreshed(totals, before, now)
        if self.on_refresh is not None:
            self.on_refresh()

    async def on_config_change(self, changes: Sequence[ConfigChange], db: Any) -> None:
        if any(c.kind in _CHANGES for c in changes):
            await self.reload()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self._interval)
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("budgets: spend totals not refreshed (%r); using the last ones", exc)


async def budgets_with_spend(db: BudgetDatabase) -> list[tuple[Budget, int]]:
    """Every budget and what it has spent in its current period (``relay budgets list``)."""
    budgets, _members = await load_budgets(db)
    spend = await budget_spend(db, datetime.now(UTC))
    return [(b, spend.get(b.id, 0)) for b in budgets]
