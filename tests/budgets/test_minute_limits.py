"""The per-minute limits' counters, sans-io: time and the fleet's totals are passed in."""

from __future__ import annotations

import pytest

from relay.budgets.minute import MinuteLimits, window_of

T = 1_800_000_000.0 + 10  # 10 s into a minute


def test_requests_are_counted_locally_and_refused_at_the_limit() -> None:
    limits = MinuteLimits(rpm=2, tpm=0)
    assert limits.check("u", T) is None
    assert limits.check("u", T + 1) is None
    over = limits.check("u", T + 2)
    assert over is not None and over.what == "requests" and over.counted == 2
    assert over.retry_after == pytest.approx(48)
    assert limits.refused == 1
    assert limits.check("other", T) is None  # per subject
    assert limits.check("u", T + 49) is not None
    assert limits.check("u", window_of(T) + 60) is None  # the next minute starts empty


def test_the_fleet_totals_and_the_unflushed_deltas_add_up() -> None:
    limits = MinuteLimits(rpm=5, tpm=100)
    assert limits.check("u", T) is None
    deltas = limits.take_pending()
    assert deltas == [(window_of(T), "u", 1, 0)]
    # Taken, on its way to the database: still counted while the sync waits.
    assert limits.counted("u", T) == (1, 0)
    assert limits.check("u", T) is None
    assert limits.counted("u", T) == (2, 0)
    # The database answered: the flushed delta plus 3 from elsewhere; the
    # check made meanwhile is still this process's own.
    limits.synced(window_of(T), [("u", 4, 0)])
    assert limits.counted("u", T) == (5, 0)
    assert limits.check("u", T) is not None
    limits.add_tokens("v", 100, T)
    over = limits.check("v", T)
    assert over is not None and over.what == "tokens"
    assert "tokens-per-minute limit exceeded: 100 of 100" in over.message()


def test_a_failed_sync_gives_its_deltas_back() -> None:
    limits = MinuteLimits(rpm=2, tpm=50)
    limits.check("u", T)
    limits.add_tokens("u", 30, T)
    deltas = limits.take_pending()
    limits.check("u", T)
    assert limits.counted("u", T) == (2, 30)  # one flushing, one pending
    limits.restore(deltas)
    assert limits.counted("u", T) == (2, 30)  # not twice
    assert limits.take_pending() == [(window_of(T), "u", 2, 30)]


def test_a_past_minutes_counts_do_not_count_now() -> None:
    limits = MinuteLimits(rpm=1, tpm=0)
    limits.synced(window_of(T), [("u", 1, 0)])
    assert limits.check("u", T) is not None
    later = window_of(T) + 60
    assert limits.check("u", later) is None
    limits.restore([(window_of(T), "u", 5, 0)])  # an older minute's delta: moot
    assert limits.counted("u", later) == (1, 0)


def test_memory_is_bounded_by_max_subjects() -> None:
    limits = MinuteLimits(rpm=10, tpm=0, max_subjects=100)
    for i in range(1000):
        limits.check(f"s{i}", T)
    assert len(limits.take_pending()) <= 100
    limits.synced(window_of(T), ((f"s{i}", 1, 0) for i in range(1000)))
    assert sum(limits.counted(f"s{i}", T)[0] for i in range(1000)) == 100


def test_negative_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        MinuteLimits(rpm=-1, tpm=0)
