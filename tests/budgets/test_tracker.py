"""The in-memory budget tracker: periods, matching, local charges and refreshes."""

from __future__ import annotations

from datetime import UTC, datetime

from relay.budgets.tracker import Budget, BudgetTracker, period_end, period_start

NOW = datetime(2026, 12, 3, 18, 0, tzinfo=UTC)  # a Thursday


def budget(name: str = "b", scope: str = "user", subject: str = "u1", **kw: object) -> Budget:
    return Budget(
        id=name,
        name=name,
        scope=scope,  # type: ignore[arg-type]
        subject=subject,
        subject_name=subject,
        model=kw.pop("model", None),  # type: ignore[arg-type]
        period=kw.pop("period", "month"),  # type: ignore[arg-type]
        limit_micros=kw.pop("limit", 1000),  # type: ignore[arg-type]
        soft_percent=kw.pop("soft", 80),  # type: ignore[arg-type]
    )


def test_periods_are_calendar_periods_in_utc() -> None:
    assert period_start("day", NOW) == datetime(2026, 12, 3, tzinfo=UTC)
    assert period_start("week", NOW) == datetime(2026, 11, 30, tzinfo=UTC)  # Monday
    assert period_start("month", NOW) == datetime(2026, 12, 1, tzinfo=UTC)
    assert period_end("month", NOW) == datetime(2027, 1, 1, tzinfo=UTC)
    assert period_end("week", NOW) == datetime(2026, 12, 7, tzinfo=UTC)


def test_charges_count_at_once_and_refreshes_do_not_count_twice() -> None:
    tracker = BudgetTracker()
    tracker.configure([budget()], {})
    assert tracker.check("u1", None, "gpt-4.1", NOW) is None
    tracker.charge("u1", None, "gpt-4.1", 600)
    assert tracker.check("u1", None, "gpt-4.1", NOW) is None
    # A refresh starts; 300 more is charged while it reads; the database had the 600.
    before = tracker.begin_refresh()
    tracker.charge("u1", None, "gpt-4.1", 300)
    tracker.refreshed({"b": 600}, before, NOW)
    assert tracker.spent(tracker.budgets[0], NOW) == 900
    tracker.charge("u1", None, "gpt-4.1", 100)
    exceeded = tracker.check("u1", None, "gpt-4.1", NOW)
    assert exceeded is not None and exceeded.spent_micros == 1000
    assert "budget 'b' (user u1) is spent: $0.001000 of $0.001000 per month" in exceeded.message()
    assert "resets at 2027-01-01T00:00:00Z" in exceeded.message()
    # Other users, and other processes' spend arriving through the refresh.
    assert tracker.check("u2", None, "gpt-4.1", NOW) is None


def test_groups_keys_and_models() -> None:
    tracker = BudgetTracker()
    tracker.configure(
        [
            budget("team", "group", "g1", limit=500),
            budget("key", "key", "k1", limit=100),
            budget("sonnet", "user", "u3", model="claude-sonnet-4-5", limit=50),
        ],
        {"g1": ["u1", "u2"], "g2": ["u3"]},
    )
    tracker.charge("u1", None, "gpt-4.1", 300)
    tracker.charge("u2", None, "gpt-4.1", 200)  # the group's members together
    assert tracker.check("u2", None, "x", NOW) is not None
    assert tracker.check("u3", None, "x", NOW) is None
    tracker.charge("u3", "k1", "claude-sonnet-4-5", 100)
    # The key's budget is spent; the per-model budget covers dated snapshots of its family.
    assert tracker.check("u4", "k1", "x", NOW).budget.name == "key"  # type: ignore[union-attr]
    refused = tracker.check("u3", None, "claude-sonnet-4-5-20250929", NOW)
    assert refused is not None and refused.budget.name == "sonnet"
    assert tracker.check("u3", None, "claude-haiku-4-5", NOW) is None


def test_soft_limit_warns_once_per_period_and_a_new_period_starts_empty(caplog) -> None:  # type: ignore[no-untyped-def]
    warned: list[str] = []
    tracker = BudgetTracker()
    tracker.on_soft_limit.append(lambda b, spent: warned.append(b.name))
    tracker.configure([budget(period="day")], {})
    before = tracker.begin_refresh()
    tracker.refreshed({"b": 850}, before, NOW)
    for _ in range(3):
        assert tracker.check("u1", None, "m", NOW) is None
    assert warned == ["b"]
    assert "passed its soft limit" in caplog.text
    tomorrow = datetime(2026, 12, 4, 0, 0, 1, tzinfo=UTC)
    assert tracker.spent(tracker.budgets[0], tomorrow) == 0
    tracker.charge("u1", None, "m", 900)
    assert tracker.check("u1", None, "m", tomorrow) is None
    assert warned == ["b", "b"]


def test_no_budgets_costs_nothing() -> None:
    tracker = BudgetTracker()
    assert tracker.check("u1", "k", "m") is None
    tracker.charge("u1", "k", "m", 10)


def test_a_native_bedrock_path_names_the_model_a_budget_checks() -> None:
    from relay.budgets.tracker import model_matches
    from relay.intercept.session import prepare
    from relay.providers.kinds import kind_for
    from relay.routes import RouteKind

    spec = kind_for("bedrock").specs[RouteKind.BEDROCK_INVOKE]
    body = b'{"anthropic_version":"bedrock-2023-05-31","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}'
    prepared = prepare(
        spec,
        "bedrock",
        RouteKind.BEDROCK_INVOKE,
        "/model/global.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke",
        body,
        max_stored_prompt=None,
        hold_rewrite=lambda _n: None,
        fold_model=lambda m: m,
    )
    assert prepared.model == "global.anthropic.claude-sonnet-4-5-20250929-v1:0"
    assert model_matches("claude-sonnet-4-5", prepared.model)
