"""Concurrency and rate limits, and the guards built from the options.

All without I/O but one: `relay serve` refusing an unusable limit before it starts.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.limits import ConcurrencyLimit, RateLimiter, RequestGuards
from relay.options import OptionError, load_options
from tests.relay_harness import clean_env


def test_concurrency_limit_refuses_beyond_the_limit():
    limit = ConcurrencyLimit(2)
    assert limit.try_acquire() and limit.try_acquire()
    assert not limit.try_acquire()
    assert (limit.active, limit.rejected) == (2, 1)
    limit.release()
    assert limit.try_acquire()


def test_concurrency_zero_is_unlimited():
    limit = ConcurrencyLimit(0)
    assert all(limit.try_acquire() for _ in range(10_000))
    assert limit.rejected == 0


def test_rate_limiter_burst_then_steady_rate():
    limiter = RateLimiter(rate=2)
    assert limiter.check("t", 0) is None
    assert limiter.check("t", 0) is None  # a burst of `rate` passes
    assert limiter.check("t", 0) == pytest.approx(0.5)
    assert limiter.check("t", 0.5) is None  # one token refilled
    assert limiter.check("t", 0.5) is not None
    assert limiter.rejected == 2


def test_rate_limiter_is_per_key():
    limiter = RateLimiter(rate=1)
    assert limiter.check("alice", 0) is None
    assert limiter.check("alice", 0) == pytest.approx(1.0)
    assert limiter.check("bob", 0) is None


def test_rate_limiter_refused_requests_take_no_token():
    limiter = RateLimiter(rate=1)
    assert limiter.check("t", 0) is None
    for _ in range(100):
        assert limiter.check("t", 0.5) is not None
    assert limiter.check("t", 1.0) is None


def test_rate_limiter_memory_is_bounded():
    limiter = RateLimiter(rate=1, max_keys=100)
    for i in range(1000):
        assert limiter.check(f"token-{i}", i * 10) is None  # earlier buckets are full again
    assert len(limiter._buckets) <= 100
    busy = RateLimiter(rate=1, max_keys=100)
    for i in range(1000):
        busy.check(f"token-{i}", 0)  # nobody refills: the oldest are forgotten
    assert len(busy._buckets) <= 100


@given(st.floats(0.5, 50), st.lists(st.floats(0, 0.5), min_size=1, max_size=200))
def test_rate_limiter_never_admits_more_than_burst_plus_rate_times_time(rate, gaps):
    limiter = RateLimiter(rate=rate)
    now = 0.0
    admitted = 0
    for gap in gaps:
        now += gap
        wait = limiter.check("t", now)
        if wait is None:
            admitted += 1
        else:
            assert wait > 0
    assert admitted <= limiter.burst + rate * now + 1e-6


def guards_for(**env: str) -> RequestGuards:
    full = {f"CODER_AI_GATEWAY_{k}": v for k, v in env.items()}
    return RequestGuards.from_options(load_options(full, warn=lambda line: None))


def test_guards_from_default_options():
    guards = guards_for()
    assert guards.concurrency.limit == 0
    assert guards.rate is None
    assert guards.breakers is None
    assert guards.key_pools.auth_cooldown == 600
    assert guards.actor_header_names == (
        b"x-ai-bridge-actor-id",
        b"x-ai-bridge-actor-metadata-username",
    )
    assert guards.actor_headers("u-1", "alice") == []


def test_guards_from_options():
    guards = guards_for(
        MAX_CONCURRENCY="4",
        RATE_LIMIT="3",
        CIRCUIT_BREAKER_ENABLED="true",
        CIRCUIT_BREAKER_FAILURE_THRESHOLD="2",
        CIRCUIT_BREAKER_INTERVAL="1s",
        CIRCUIT_BREAKER_TIMEOUT="250ms",
        CIRCUIT_BREAKER_MAX_REQUESTS="1",
        KEY_AUTH_COOLDOWN="2m",
        SEND_ACTOR_HEADERS="true",
        ACTOR_ID_HEADER="X-Who",
        ACTOR_USERNAME_HEADER="X-Who-Name",
    )
    assert guards.concurrency.limit == 4
    assert guards.rate is not None and guards.rate.rate == 3
    assert guards.breakers is not None
    settings = guards.breakers.settings
    assert (settings.failure_threshold, settings.interval, settings.timeout) == (2, 1, 0.25)
    assert settings.max_requests == 1
    assert guards.key_pools.auth_cooldown == 120
    assert guards.actor_headers("u-1", "alice") == [(b"x-who", b"u-1"), (b"x-who-name", b"alice")]


@pytest.mark.parametrize(
    "env",
    [
        {"MAX_CONCURRENCY": "-1"},
        {"RATE_LIMIT": "-5"},
        {"CIRCUIT_BREAKER_FAILURE_THRESHOLD": "0"},
        {"CIRCUIT_BREAKER_MAX_REQUESTS": "0"},
        {"ACTOR_ID_HEADER": "X-Bad\r\nInjected: 1"},
        {"ACTOR_USERNAME_HEADER": "has space"},
        {"ACTOR_ID_HEADER": ""},
    ],
)
def test_unusable_options_are_refused_when_options_load(env):
    # At load time, before anything is started or bound (not in the lifespan).
    with pytest.raises(OptionError) as refused:
        load_options({f"CODER_AI_GATEWAY_{k}": v for k, v in env.items()}, warn=lambda _: None)
    assert f"CODER_AI_GATEWAY_{next(iter(env))}" in str(refused.value)


def test_serve_refuses_an_unusable_limit_before_starting(tmp_path):
    env = clean_env(
        CODER_AI_GATEWAY_MAX_CONCURRENCY="-1",
        # Never reached: the option is refused first (else: "database not available", 1).
        CODER_PG_CONNECTION_URL="postgresql://x@127.0.0.1:1/x",
        CODER_AI_GATEWAY_DATA_DIR=str(tmp_path),
    )
    result = subprocess.run(
        [sys.executable, "-m", "relay.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "CODER_AI_GATEWAY_MAX_CONCURRENCY" in result.stderr


def test_legacy_option_names_work():
    options = load_options({"CODER_AIBRIDGE_RATE_LIMIT": "7"}, warn=lambda line: None)
    guards = RequestGuards.from_options(options)
    assert guards.rate is not None and guards.rate.rate == 7


def test_header_block_size_counts_wire_bytes():
    from relay.limits import MAX_HEADER_BLOCK, header_block_size

    headers = [(b"x-api-key", b"abc"), (b"accept", b"*/*")]
    assert header_block_size(headers) == len(b"x-api-key: abc\r\naccept: */*\r\n")
    assert header_block_size([(b"a", b"b" * MAX_HEADER_BLOCK)]) > MAX_HEADER_BLOCK
