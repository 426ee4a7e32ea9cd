"""The budgets of a running relay and what each has spent, in memory.

A request is checked with ``BudgetTracker.check``: a few dictionary lookups,
no query, no lock, no row updated. The spend it compares with is

    spent = what PostgreSQL's running totals said at the last refresh
          + what this process charged since that refresh began,

so this process sees its own spend at once and the other processes' within
one refresh interval (plus their recorder's flush interval). One exception:
a refresh that reads the totals before this process's recorder has written
its latest charges (they are at most a flush interval old) drops them from
the view until the next refresh. The recorder
maintains the running totals (``spend_daily``) once per batch; the refresh is
one query per interval per process, whatever the traffic.

Overshoot bound: a request admitted under the limit runs to its end (a stream
is never cut), so a budget can end above its limit by (a) what the requests
in flight when it was crossed go on to cost, plus (b) what the fleet (this
process included, see above) spends within one refresh interval + one flush
interval, before it is seen.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

import msgspec

from relay.budgets.minute import MinuteLimits
from relay.pricing.book import format_dollars, model_candidates
from relay.record.events import InterceptionRecord, Record, TokenUsageRecord

log = logging.getLogger("relay.budgets")

Period = Literal["day", "week", "month"]
Scope = Literal["user", "group", "key"]
PERIODS: tuple[Period, ...] = ("day", "week", "month")


class Budget(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    scope: Scope
    subject: str  # the user's id, the group's id or the relay token's id
    subject_name: str  # the user's or group's name, the token's id
    model: str | None  # None: every model
    period: Period
    limit_micros: int
    soft_percent: int = 80

    @property
    def soft_micros(self) -> int:
        return self.limit_micros * self.soft_percent // 100


def period_start(period: str, now: datetime) -> datetime:
    """The start (UTC) of the calendar ``period`` holding ``now``: a day, an ISO week, a month."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def period_end(period: str, now: datetime) -> datetime:
    start = period_start(period, now)
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    return (start + timedelta(days=32)).replace(day=1)


def model_matches(budget_model: str | None, model: str) -> bool:
    """Does a budget on ``budget_model`` cover ``model`` (a request's or a usage's model)?"""
    if budget_model is None:
        return True
    return budget_model == model or budget_model in model_candidates(model)


@dataclass(frozen=True, slots=True)
class BudgetExceeded:
    """Why a request is refused: the budget, what it has spent, when it resets."""

    budget: Budget
    spent_micros: int
    resets_at: datetime

    def message(self) -> str:
        b = self.budget
        scope = {"user": "user", "group": "group", "key": "relay token"}[b.scope]
        on = f" on {b.model}" if b.model else ""
        return (
            f"budget {b.name!r} ({scope} {b.subject_name}{on}) is spent: "
            f"${format_dollars(self.spent_micros)} of ${format_dollars(b.limit_micros)} "
            f"per {b.period}; it resets at {self.resets_at.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        )


@dataclass
class _State:
    database: int = 0  # the running totals at the last refresh
    local: int = 0  # charged by this process since that refresh began
    period: datetime | None = None  # the period the figures are for
    warned: datetime | None = None  # the period the soft limit was logged for


@dataclass
class BudgetTracker:
    """Budgets and their spend (see the module docstring). One per process."""

    on_soft_limit: list[object] = field(default_factory=list)  # callbacks(budget, spent)
    on_refused: list[object] = field(default_factory=list)  # callbacks(budget)

    def __post_init__(self) -> None:
        self._budgets: tuple[Budget, ...] = ()
        self._by_user: dict[str, list[Budget]] = {}
        self._by_key: dict[str, list[Budget]] = {}
        self._groups_of: dict[str, tuple[str, ...]] = {}
        self._by_group: dict[str, list[Budget]] = {}
        self._state: dict[str, _State] = {}

    # --- configuration ------------------------------------------------------------------------

    @property
    def budgets(self) -> tuple[Budget, ...]:
        return self._budgets

    def configure(self, budgets: Iterable[Budget], members: Mapping[str, Sequence[str]]) -> None:
        """Replace the budgets and group memberships (``members``: group id → user ids)."""
        self._budgets = tuple(budgets)
        by_user: dict[str, list[Budget]] = {}
        by_key: dict[str, list[Budget]] = {}
        by_group: dict[str, list[Budget]] = {}
        for budget in self._budgets:
            target = {"user": by_user, "key": by_key, "group": by_group}[budget.scope]
            target.setdefault(budget.subject, []).append(budget)
        groups_of: dict[str, list[str]] = {}
        for group, users in members.items():
            if group in by_group:
                for user in users:
                    groups_of.setdefault(user, []).append(group)
        self._by_user, self._by_key, self._by_group = by_user, by_key, by_group
        self._groups_of = {user: tuple(groups) for user, groups in groups_of.items()}
        self._state = {b.id: self._state.get(b.id, _State()) for b in self._budgets}

    def begin_refresh(self) -> dict[str, int]:
        """Before the totals are read: what was charged locally so far (see ``refreshed``)."""
        return {budget_id: state.local for budget_id, state in self._state.items()}

    def refreshed(
        self, totals: Mapping[str, int], charged_before: Mapping[str, int], now: datetime
    ) -> None:
        """The running totals read from PostgreSQL, for the periods holding ``now``.

        What this process charged before the read began is in them (or will
        be, once its recorder writes it: at most a flush interval); what it
        charged during the read stays counted locally.
        """
        for budget in self._budgets:
            state = self._state[budget.id]
            state.database = totals.get(budget.id, 0)
            state.local = max(state.local - charged_before.get(budget.id, 0), 0)
            state.period = period_start(budget.period, now)

    # --- the request path ---------------------------------------------------------------------

    def applicable(self, user_id: str | None, api_key_id: str | None) -> list[Budget]:
        if not self._budgets:
            return []
        found: list[Budget] = []
        if user_id is not None:
            found += self._by_user.get(user_id, ())
            for group in self._groups_of.get(user_id, ()):
                found += self._by_group.get(group, ())
        if api_key_id is not None:
            found += self._by_key.get(api_key_id, ())
        return found

    def spent(self, budget: Budget, now: datetime | None = None) -> int:
        state = self._state.get(budget.id)
        if state is None:
            return 0
        now = now or datetime.now(UTC)
        start = period_start(budget.period, now)
        if state.period is not None and state.period != start:
            # A new period began since the last refresh: nothing spent in it yet
            # that the next refresh will not bring.
            state.database, state.local, state.period = 0, 0, start
        return state.database + state.local

    def check(
        self, user_id: str | None, api_key_id: str | None, model: str, now: datetime | None = None
    ) -> BudgetExceeded | None:
        """The first spent budget covering this request, or None (also logs soft limits)."""
        budgets = self.applicable(user_id, api_key_id)
        if not budgets:
            return None
        now = now or datetime.now(UTC)
        for budget in budgets:
            if not model_matches(budget.model, model):
                continue
            spent = self.spent(budget, now)
            if spent >= budget.limit_micros:
                for callback in self.on_refused:
                    callback(budget)  # type: ignore[operator]
                return BudgetExceeded(budget, spent, period_end(budget.period, now))
            self._maybe_warn(budget, spent, now)
        return None

    def _maybe_warn(self, budget: Budget, spent: int, now: datetime) -> None:
        if spent < budget.soft_micros:
            return
        state = self._state[budget.id]
        start = period_start(budget.period, now)
        if state.warned == start:
            return
        state.warned = start
        log.warning(
            "budget %r (%s %s) passed its soft limit: $%s of $%s per %s (%d%%)",
            budget.name,
            budget.scope,
            budget.subject_name,
            format_dollars(spent),
            format_dollars(budget.limit_micros),
            budget.period,
            budget.soft_percent,
        )
        for callback in self.on_soft_limit:
            callback(budget, spent)  # type: ignore[operator]

    def charge(self, user_id: str | None, api_key_id: str | None, model: str, cost: int) -> None:
        """This process recorded ``cost`` micro-dollars of usage of ``model``."""
        if cost <= 0:
            return
        for budget in self.applicable(user_id, api_key_id):
            if model_matches(budget.model, model):
                self._state[budget.id].local += cost


class ChargingSink:
    """The recorder's sink, charging each recorded cost to the tracker on the way.

    Wraps ``Recorder.record`` for the request path: the rows go to the
    recorder unchanged, and a priced usage row is added to the running totals
    of the budgets of its interception's user and token.
    """

    def __init__(
        self,
        records: RecordSink,
        tracker: BudgetTracker,
        metrics: CostMetrics,
        minute_limits: MinuteLimits | None = None,
    ) -> None:
        self._records = records
        self._tracker = tracker
        self._metrics = metrics
        self._minute = minute_limits if minute_limits is not None and minute_limits.tpm else None

    def record(self, records: Sequence[Record]) -> None:
        self._records.record(records)
        tracker = self._tracker
        owner: InterceptionRecord | None = None
        for row in records:
            if isinstance(row, InterceptionRecord):
                owner = row
            elif isinstance(row, TokenUsageRecord) and owner is not None:
                if self._minute is not None and owner.credential_kind == "centralized":
                    self._count_tokens(owner, row)
                self._metrics.cost(
                    owner.provider_name, owner.model, owner.initiator_id, row.cost_micros
                )
                if row.cost_micros and owner.credential_kind == "centralized":
                    user = str(owner.initiator_id) if owner.initiator_id else None
                    model = row.price_model or owner.model
                    tracker.charge(user, owner.api_key_id, model, row.cost_micros)

    def _count_tokens(self, owner: InterceptionRecord, row: TokenUsageRecord) -> None:
        minute = self._minute
        assert minute is not None
        user = str(owner.initiator_id) if owner.initiator_id is not None else None
        subject = minute.subject(user, owner.api_key_id)
        if subject is None:
            return
        tokens = row.input_tokens + row.output_tokens + row.cache_read_tokens
        minute.add_tokens(subject, tokens + row.cache_write_tokens, minute.clock())


class RecordSink(Protocol):
    def record(self, records: Sequence[Record]) -> None: ...


class CostMetrics(Protocol):
    """What the sink counts (``relay.metrics.Metrics``)."""

    def cost(
        self, provider: str, model: str, initiator_id: object, cost_micros: int | None
    ) -> None: ...
