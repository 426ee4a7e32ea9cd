"""The key pool and one request's failover walk, without I/O (time is passed in)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.upstream.keypool import (
    DEFAULT_RETRY_AFTER,
    Failover,
    KeyPool,
    KeyPools,
    parse_retry_after,
    retry_after_header,
)

KEYS = ("sk-key-a", "sk-key-b", "sk-key-c")


def auth(key: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-api-key", key.encode())]


def test_candidates_in_order_skipping_cooling_keys():
    pool = KeyPool(KEYS, auth_cooldown=600)
    assert pool.candidates(0) == list(KEYS)
    pool.rate_limited("sk-key-a", 5, now=0)
    pool.rejected("sk-key-b", now=0)
    assert pool.candidates(1) == ["sk-key-c"]
    assert pool.candidates(5) == ["sk-key-a", "sk-key-c"]  # the rate limit is over
    assert pool.candidates(599) == ["sk-key-a", "sk-key-c"]
    assert pool.candidates(600) == list(KEYS)  # the auth cooldown is over


def test_rate_limit_without_retry_after_uses_the_default():
    pool = KeyPool(KEYS)
    pool.rate_limited("sk-key-a", None, now=100)
    assert pool.is_cooling("sk-key-a", 100 + DEFAULT_RETRY_AFTER - 0.001)
    assert not pool.is_cooling("sk-key-a", 100 + DEFAULT_RETRY_AFTER)


def test_shortest_retry_after_counts_only_rate_limited_keys():
    pool = KeyPool(KEYS, auth_cooldown=600)
    assert pool.shortest_retry_after(0) is None
    pool.rejected("sk-key-a", now=0)
    assert pool.shortest_retry_after(0) is None
    pool.rate_limited("sk-key-b", 30, now=0)
    pool.rate_limited("sk-key-c", 10, now=0)
    assert pool.shortest_retry_after(4) == 6
    assert pool.shortest_retry_after(10) == 20  # key c is usable again


def test_exhausted_is_429_when_any_key_was_rate_limited_else_502():
    pool = KeyPool(KEYS, auth_cooldown=600)
    pool.rejected("sk-key-a", now=0, status=403)
    pool.rate_limited("sk-key-b", 7, now=0)
    pool.rejected("sk-key-c", now=0)
    exhausted = pool.exhausted(2)
    assert (exhausted.status, exhausted.retry_after) == (429, 5)
    assert pool.exhaustions["rate_limited"] == 1
    later = pool.exhausted(8)  # the rate limit is over, the refusals are not
    assert (later.status, later.retry_after) == (502, None)
    assert pool.exhaustions["auth_failed"] == 1
    assert pool.transitions == {"forbidden": 1, "rate_limited": 1, "unauthorized": 1}


def test_counts_per_state_for_metrics():
    pool = KeyPool(KEYS, auth_cooldown=600)
    pool.rate_limited("sk-key-a", 5, now=0)
    pool.rejected("sk-key-b", now=0)
    assert pool.counts(1) == {"valid": 1, "temporary": 1, "permanent": 1}
    assert pool.counts(6) == {"valid": 2, "temporary": 0, "permanent": 1}


def test_callbacks_see_transitions_and_exhaustions():
    pool = KeyPool(["sk-only"])
    seen: list[str] = []
    pool.on_transition = seen.append
    pool.on_exhausted = seen.append
    pool.rate_limited("sk-only", 1, now=0)
    pool.exhausted(0)
    assert seen == ["rate_limited", "rate_limited"]


def test_a_late_short_answer_does_not_shorten_a_longer_rest():
    pool = KeyPool(KEYS, auth_cooldown=600)
    pool.rejected("sk-key-a", now=0)
    pool.rate_limited("sk-key-a", 1, now=0)  # a concurrent request's 429
    assert pool.is_cooling("sk-key-a", 300)


def test_succeeded_keeps_a_cooldown_that_is_still_running():
    pool = KeyPool(KEYS)
    pool.rate_limited("sk-key-a", 10, now=0)
    pool.succeeded("sk-key-a", now=5)  # a request that started before the 429
    assert pool.is_cooling("sk-key-a", 5)
    pool.succeeded("sk-key-a")
    assert not pool.is_cooling("sk-key-a", 5)


def test_unknown_keys_are_ignored():
    pool = KeyPool(KEYS)
    pool.rate_limited("sk-not-in-the-pool", 10, now=0)
    assert pool.counts(0)["valid"] == 3
    assert pool.shortest_retry_after(0) is None


def test_failover_walks_keys_until_one_is_accepted():
    pool = KeyPool(KEYS, auth_cooldown=600)
    walk = Failover(pool, auth, now=0)
    assert walk.next_key(0) == "sk-key-a"
    assert walk.should_retry("sk-key-a", 429, {"retry-after": "3"}, 0, 0)
    assert walk.next_key(0) == "sk-key-b"
    assert walk.should_retry("sk-key-b", 401, {}, 0, 0)
    assert walk.next_key(0) == "sk-key-c"
    assert not walk.should_retry("sk-key-c", 200, {}, 0, 0)
    assert (walk.attempts, walk.current, walk.last_status) == (3, "sk-key-c", 200)
    assert walk.auth_headers("sk-key-c") == [(b"x-api-key", b"sk-key-c")]
    # The next request starts with the key that worked.
    assert Failover(pool, auth, now=1).next_key(1) == "sk-key-c"
    assert pool.candidates(3) == ["sk-key-a", "sk-key-c"]


@pytest.mark.parametrize("status", [200, 400, 404, 500, 503, 529])
def test_other_answers_go_to_the_client(status):
    walk = Failover(KeyPool(KEYS), auth, now=0)
    key = walk.next_key(0)
    assert key is not None
    assert not walk.should_retry(key, status, {}, 0, 0)
    assert walk.pool.candidates(0) == list(KEYS)


def test_failover_skips_a_key_another_request_put_to_rest():
    pool = KeyPool(KEYS)
    walk = Failover(pool, auth, now=0)
    pool.rate_limited("sk-key-a", 10, now=0)
    assert walk.next_key(0) == "sk-key-b"


def test_failover_exhaustion():
    pool = KeyPool(KEYS[:2])
    walk = Failover(pool, auth, now=0)
    for _ in range(2):
        key = walk.next_key(0)
        assert key is not None
        assert walk.should_retry(key, 429, {"retry-after": "2"}, 0, 0)
    assert walk.next_key(0) is None
    exhausted = walk.exhausted(0.5)
    assert (exhausted.status, exhausted.retry_after) == (429, 1.5)
    # A request made while every key rests tries nothing.
    assert Failover(pool, auth, now=1).next_key(1) is None


@given(
    st.lists(
        st.tuples(
            st.sampled_from(KEYS),
            st.sampled_from(["rate_limited", "rejected", "succeeded"]),
            st.floats(0, 100),
            st.floats(0, 1000),
        ),
        max_size=30,
    ),
    st.floats(0, 2000),
)
def test_candidates_are_an_ordered_subset_and_never_cooling(events, at):
    pool = KeyPool(KEYS, auth_cooldown=50)
    for key, what, retry_after, now in sorted(events, key=lambda e: e[3]):
        if what == "rate_limited":
            pool.rate_limited(key, retry_after, now)
        elif what == "rejected":
            pool.rejected(key, now)
        else:
            pool.succeeded(key, now)
    candidates = pool.candidates(at)
    assert candidates == [k for k in KEYS if k in candidates]
    assert all(not pool.is_cooling(k, at) for k in candidates)
    counts = pool.counts(at)
    assert counts["valid"] == len(candidates)
    assert sum(counts.values()) == len(KEYS)
    wait = pool.shortest_retry_after(at)
    assert wait is None or wait > 0


def test_registry_makes_a_fresh_pool_when_keys_change():
    pools = KeyPools(auth_cooldown=5)
    made: list[str] = []
    pools.on_new_pool = lambda name, pool: made.append(name)
    first = pools.get("anthropic", KEYS)
    first.rejected("sk-key-a", now=0)
    assert pools.get("anthropic", list(KEYS)) is first
    second = pools.get("anthropic", KEYS[1:])
    assert second is not first
    assert second.candidates(0) == list(KEYS[1:])
    assert second.auth_cooldown == 5
    assert pools.get("openai", KEYS) is not second
    assert made == ["anthropic", "anthropic", "openai"]
    assert [name for name, _ in pools.items()] == ["anthropic", "openai"]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "17"}, 17.0),
        ({"retry-after": " 2.5 "}, 2.5),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after-ms": "junk", "retry-after": "9"}, 9.0),
    ],
)
def test_parse_retry_after(headers, expected):
    assert parse_retry_after(headers, wall_now=0) == expected


def test_parse_retry_after_http_date():
    wall_now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    date = format_datetime(datetime(2026, 1, 1, 12, 0, 42, tzinfo=UTC), usegmt=True)
    assert parse_retry_after({"retry-after": date}, wall_now) == 42
    past = format_datetime(datetime(2025, 1, 1, tzinfo=UTC), usegmt=True)
    assert parse_retry_after({"retry-after": past}, wall_now) == 0


@pytest.mark.parametrize(("seconds", "header"), [(0, b"1"), (0.2, b"1"), (1.0, b"1"), (1.01, b"2")])
def test_retry_after_header_is_whole_seconds_at_least_one(seconds, header):
    assert retry_after_header(seconds) == header
