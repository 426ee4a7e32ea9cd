"""The circuit breaker's state machine, without I/O (time is passed in)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.upstream.breaker import (
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    CircuitBreakers,
    is_failure,
)

SETTINGS = BreakerSettings(failure_threshold=3, interval=10, timeout=30, max_requests=2)


def fail(breaker: CircuitBreaker, now: float, times: int = 1) -> None:
    for _ in range(times):
        ticket = breaker.allow(now)
        assert ticket is not None
        breaker.record(ticket, failure=True, now=now)


def succeed(breaker: CircuitBreaker, now: float) -> None:
    ticket = breaker.allow(now)
    assert ticket is not None
    breaker.record(ticket, failure=False, now=now)


def open_breaker(now: float = 0) -> CircuitBreaker:
    breaker = CircuitBreaker(SETTINGS, now)
    fail(breaker, now, SETTINGS.failure_threshold)
    assert breaker.state is BreakerState.OPEN
    return breaker


@pytest.mark.parametrize(
    ("status", "provider", "expected"),
    [
        (429, "openai", True),
        (503, "openai", True),
        (504, "anthropic", True),
        (529, "anthropic", True),
        (529, "openai", False),
        (500, "anthropic", False),
        (401, "anthropic", False),
        (200, "openai", False),
    ],
)
def test_failures(status, provider, expected):
    assert is_failure(status, provider) is expected


def test_consecutive_failures_open_the_circuit():
    breaker = CircuitBreaker(SETTINGS)
    fail(breaker, 0, 2)
    succeed(breaker, 0)  # breaks the run
    fail(breaker, 0, 2)
    assert breaker.state is BreakerState.CLOSED
    fail(breaker, 0)
    assert breaker.state is BreakerState.OPEN
    assert breaker.trips == 1


def test_open_refuses_until_timeout_then_half_open():
    breaker = open_breaker(now=0)
    assert breaker.allow(29.9) is None
    assert breaker.rejects == 1
    assert breaker.retry_after(20) == 10
    assert breaker.state_at(30) is BreakerState.HALF_OPEN
    assert breaker.retry_after(30) == 0


def test_half_open_closes_after_max_requests_successes():
    breaker = open_breaker()
    first = breaker.allow(30)
    second = breaker.allow(30)
    assert first is not None and second is not None
    assert breaker.allow(30) is None  # only max_requests trials
    breaker.record(first, failure=False, now=30)
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record(second, failure=False, now=31)
    assert breaker.state is BreakerState.CLOSED
    succeed(breaker, 31)


def test_half_open_failure_opens_again():
    breaker = open_breaker()
    ticket = breaker.allow(30)
    assert ticket is not None
    breaker.record(ticket, failure=True, now=31)
    assert breaker.state is BreakerState.OPEN
    assert breaker.trips == 2
    assert breaker.allow(60) is None  # a fresh timeout from the reopening
    assert breaker.state_at(61) is BreakerState.HALF_OPEN


def test_released_ticket_frees_a_half_open_slot():
    breaker = open_breaker()
    tickets = [breaker.allow(30), breaker.allow(30)]
    assert None not in tickets
    assert breaker.allow(30) is None
    breaker.release(tickets[0])  # type: ignore[arg-type]
    assert breaker.allow(30) is not None


def test_interval_starts_the_count_over():
    breaker = CircuitBreaker(SETTINGS, now=0)
    fail(breaker, 1, 2)
    fail(breaker, 10.5, 2)  # a new interval: the earlier two are forgotten
    assert breaker.state is BreakerState.CLOSED
    fail(breaker, 11)
    assert breaker.state is BreakerState.OPEN


def test_results_from_an_older_generation_are_ignored():
    breaker = CircuitBreaker(SETTINGS)
    slow = breaker.allow(0)
    assert slow is not None
    fail(breaker, 1, 3)
    assert breaker.state is BreakerState.OPEN
    breaker.record(slow, failure=False, now=31)  # issued while closed
    assert breaker.state is BreakerState.HALF_OPEN
    # And a stale failure cannot reopen a circuit that has recovered.
    stale = breaker.allow(31)
    assert stale is not None
    breaker.record(stale, failure=False, now=31)
    succeed(breaker, 31)
    assert breaker.state is BreakerState.CLOSED


def test_state_listener_and_counters():
    breaker = CircuitBreaker(SETTINGS)
    changes: list[tuple[str, str]] = []
    breaker.on_state_change = lambda old, new: changes.append((old.value, new.value))
    fail(breaker, 0, 3)
    breaker.state_at(30)
    succeed(breaker, 30)
    succeed(breaker, 30)
    assert changes == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]


def test_zero_interval_never_forgets():
    breaker = CircuitBreaker(BreakerSettings(failure_threshold=2, interval=0), now=0)
    fail(breaker, 0)
    fail(breaker, 10_000)
    assert breaker.state is BreakerState.OPEN


@given(
    st.lists(
        st.tuples(st.sampled_from(["allow", "ok", "fail", "release"]), st.floats(0, 20)),
        max_size=80,
    )
)
def test_half_open_never_has_more_than_max_requests_trials(steps):
    """Admitted half-open trials minus those handed back never exceed max_requests,
    and an open circuit admits nothing."""
    breaker = CircuitBreaker(SETTINGS)
    now = 0.0
    outstanding: list[int] = []
    trials: dict[int, int] = {}  # half-open generation -> trials admitted and not handed back
    for action, step in steps:
        now += step
        if action == "allow":
            ticket = breaker.allow(now)
            if breaker.state is BreakerState.OPEN:
                assert ticket is None
            if ticket is not None:
                outstanding.append(ticket)
                if breaker.state is BreakerState.HALF_OPEN:
                    trials[ticket] = trials.get(ticket, 0) + 1
                    assert trials[ticket] <= SETTINGS.max_requests
        elif outstanding:
            ticket = outstanding.pop(0)
            if action == "release":
                breaker.release(ticket)
                if ticket in trials and breaker.generation == ticket:
                    trials[ticket] -= 1
            else:
                breaker.record(ticket, failure=action == "fail", now=now)
        assert breaker.state in set(BreakerState)


def test_registry_per_provider_route_model():
    breakers = CircuitBreakers(SETTINGS)
    made: list[tuple[str, str, str]] = []
    breakers.on_new_circuit = lambda key, breaker: made.append(key)
    a = breakers.get("anthropic", "/v1/messages", "claude", 0)
    assert breakers.get("anthropic", "/v1/messages", "claude", 1) is a
    assert breakers.get("anthropic", "/v1/messages", "haiku", 1) is not a
    assert breakers.get("openai", "/v1/messages", "claude", 1) is not a
    assert made == [
        ("anthropic", "/v1/messages", "claude"),
        ("anthropic", "/v1/messages", "haiku"),
        ("openai", "/v1/messages", "claude"),
    ]
    assert len(breakers.items()) == 3


def test_registry_is_bounded_and_keeps_open_circuits():
    breakers = CircuitBreakers(SETTINGS, max_circuits=3)
    tripped = breakers.get("p", "/r", "tripped", 0)
    fail(tripped, 0, 3)
    for i in range(10):
        breakers.get("p", "/r", f"model-{i}", 0)
    assert len(breakers.items()) == 3
    assert breakers.get("p", "/r", "tripped", 0) is tripped
