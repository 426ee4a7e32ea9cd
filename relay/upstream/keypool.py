"""A provider's centralized keys, tried in order while the provider refuses one (sans-io).

``KeyPool`` remembers, per key, how long it cools down: a 429 for the
provider's ``Retry-After`` (60 s without one), a 401/403 for the
``KEY_AUTH_COOLDOWN`` option (a revoked or unpaid key rarely heals within
seconds, and every request that tries it costs a round trip). ``Failover`` is
one request's walk through a pool: the I/O shell asks it for the next key and
tells it each answer; it never sleeps or sends anything itself. Time is
passed in (``now``: any monotonic clock, the same for every call).

Pools live in a per-process ``KeyPools`` registry keyed by provider name and
key tuple, so a provider whose keys change starts with a fresh pool. BYOK
requests never use a pool: the person's own key is tried once.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal

DEFAULT_RETRY_AFTER = 60.0
DEFAULT_AUTH_COOLDOWN = 600.0
# Statuses with which a provider refuses a key (rather than the request).
RATE_LIMITED = 429
KEY_REFUSED = frozenset({401, 403})

Headers = list[tuple[bytes, bytes]]
KeyReason = Literal["rate_limited", "unauthorized", "forbidden"]
ExhaustedOutcome = Literal["rate_limited", "auth_failed"]


def parse_retry_after(headers: Mapping[str, str], wall_now: float) -> float | None:
    """Seconds the provider asks us to wait, from ``retry-after-ms`` or ``retry-after``.

    ``retry-after`` is delta-seconds or an HTTP date (RFC 9110 §10.2.3);
    ``wall_now`` is the Unix time to measure a date against. None when absent
    or unreadable.
    """
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000
        except ValueError:
            value = -1.0
        if value >= 0 and math.isfinite(value):
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(raw).timestamp() - wall_now
        except (TypeError, ValueError, IndexError):
            return None
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def retry_after_header(seconds: float) -> bytes:
    """Whole seconds for a ``Retry-After`` header, at least 1 (0 would invite a hot loop)."""
    return str(max(1, math.ceil(seconds))).encode()


@dataclass(slots=True)
class _Cooldown:
    until: float
    reason: KeyReason


@dataclass(frozen=True, slots=True)
class Exhausted:
    """Every key is cooling down: what the client gets instead of an upstream answer."""

    status: int  # 429 when any key was rate limited, else 502
    retry_after: float | None  # shortest remaining rate-limit cooldown, for the 429
    message: str


class KeyPool:
    """The keys of one provider and how long each still cools down.

    For metrics, ``transitions`` counts keys put to cool down by reason
    (``rate_limited``, ``unauthorized``, ``forbidden``) and ``exhaustions``
    counts requests that found no usable key by outcome (``rate_limited``,
    ``auth_failed``); ``counts(now)`` gives the keys per state. The optional
    ``on_transition`` / ``on_exhausted`` callbacks see the same events as
    they happen.
    """

    def __init__(
        self,
        keys: Sequence[str],
        *,
        auth_cooldown: float = DEFAULT_AUTH_COOLDOWN,
        default_retry_after: float = DEFAULT_RETRY_AFTER,
    ) -> None:
        self.keys = tuple(keys)
        self.auth_cooldown = auth_cooldown
        self.default_retry_after = default_retry_after
        self._cooling: dict[str, _Cooldown] = {}
        self.transitions: Counter[str] = Counter()
        self.exhaustions: Counter[str] = Counter()
        self.on_transition: Callable[[KeyReason], None] | None = None
        self.on_exhausted: Callable[[ExhaustedOutcome], None] | None = None

    def is_cooling(self, key: str, now: float) -> bool:
        cooldown = self._cooling.get(key)
        return cooldown is not None and cooldown.until > now

    def candidates(self, now: float) -> list[str]:
        """The keys to try, in configured order, skipping those still cooling down."""
        return [key for key in self.keys if not self.is_cooling(key, now)]

    def rate_limited(self, key: str, retry_after: float | None, now: float) -> None:
        """The provider answered 429 for ``key``: rest it for ``retry_after`` (or the default)."""
        wait = self.default_retry_after if retry_after is None else retry_after
        self._cool(key, now + wait, "rate_limited")

    def rejected(self, key: str, now: float, status: int = 401) -> None:
        """The provider refused ``key`` (401/403): rest it for the auth cooldown."""
        self._cool(key, now + self.auth_cooldown, "forbidden" if status == 403 else "unauthorized")

    def succeeded(self, key: str, now: float | None = None) -> None:
        """The provider accepted ``key``: forget its past refusal.

        With ``now``, a cooldown still running is kept: it was set by an
        answer that arrived after this request had already started.
        """
        cooldown = self._cooling.get(key)
        if cooldown is not None and (now is None or cooldown.until <= now):
            del self._cooling[key]

    def shortest_retry_after(self, now: float) -> float | None:
        """Seconds until the first rate-limited key is usable again (None: none is rate limited)."""
        waits = [
            c.until - now
            for c in self._cooling.values()
            if c.reason == "rate_limited" and c.until > now
        ]
        return min(waits) if waits else None

    def counts(self, now: float) -> dict[str, int]:
        """Keys per state: ``valid``, ``temporary`` (rate limited), ``permanent`` (refused)."""
        result = {"valid": 0, "temporary": 0, "permanent": 0}
        for key in self.keys:
            cooldown = self._cooling.get(key)
            if cooldown is None or cooldown.until <= now:
                result["valid"] += 1
            elif cooldown.reason == "rate_limited":
                result["temporary"] += 1
            else:
                result["permanent"] += 1
        return result

    def exhausted(self, now: float) -> Exhausted:
        """No key is usable: 429 with the shortest wait if any key is rate limited, else 502."""
        wait = self.shortest_retry_after(now)
        outcome: ExhaustedOutcome = "rate_limited" if wait is not None else "auth_failed"
        self.exhaustions[outcome] += 1
        if self.on_exhausted is not None:
            self.on_exhausted(outcome)
        if wait is not None:
            return Exhausted(429, wait, "all of the provider's keys are rate limited")
        return Exhausted(502, None, "the provider refused all of the relay's keys")

    def _cool(self, key: str, until: float, reason: KeyReason) -> None:
        if key not in self.keys:
            return
        current = self._cooling.get(key)
        # Concurrent answers for one key: keep the longer rest.
        if current is None or until > current.until:
            self._cooling[key] = _Cooldown(until, reason)
        self.transitions[reason] += 1
        if self.on_transition is not None:
            self.on_transition(reason)


class Failover:
    """One request's walk through a pool (sans-io).

    The shell loops: ``next_key(now)``; send with ``auth_headers(key)``; then
    ``should_retry(key, status, headers, now, wall_now)``. True means the
    answer must not reach the client: the key was put to rest and the next
    one is tried with the same buffered body. ``next_key`` returning None
    means no key is left: answer with ``exhausted(now)``. Only valid before
    the first response byte went to the client.
    """

    def __init__(self, pool: KeyPool, auth_headers: Callable[[str], Headers], now: float) -> None:
        self.pool = pool
        self.auth_headers = auth_headers
        self._remaining = pool.candidates(now)
        self.attempts = 0
        self.current: str | None = None  # the key of the latest attempt
        self.last_status: int | None = None  # of the latest answer, for the record

    def next_key(self, now: float) -> str | None:
        while self._remaining:
            key = self._remaining.pop(0)
            # Another request may have put it to rest since this one started.
            if not self.pool.is_cooling(key, now):
                self.attempts += 1
                self.current = key
                return key
        return None

    def should_retry(
        self, key: str, status: int, headers: Mapping[str, str], now: float, wall_now: float
    ) -> bool:
        self.last_status = status
        if status == RATE_LIMITED:
            self.pool.rate_limited(key, parse_retry_after(headers, wall_now), now)
            return True
        if status in KEY_REFUSED:
            self.pool.rejected(key, now, status)
            return True
        self.pool.succeeded(key, now)
        return False

    def exhausted(self, now: float) -> Exhausted:
        return self.pool.exhausted(now)


class KeyPools:
    """Every provider's pool in this process, keyed by (provider name, keys).

    A provider whose keys change gets a fresh pool (its old one is dropped),
    so a replaced key never inherits the cooldown of the key it replaced.
    ``on_new_pool`` lets metrics attach callbacks to each pool as it is made.
    """

    def __init__(
        self,
        *,
        auth_cooldown: float = DEFAULT_AUTH_COOLDOWN,
        default_retry_after: float = DEFAULT_RETRY_AFTER,
    ) -> None:
        self.auth_cooldown = auth_cooldown
        self.default_retry_after = default_retry_after
        self._pools: dict[str, KeyPool] = {}
        self.on_new_pool: Callable[[str, KeyPool], None] | None = None

    def get(self, provider_name: str, keys: Sequence[str]) -> KeyPool:
        pool = self._pools.get(provider_name)
        if pool is None or pool.keys != tuple(keys):
            pool = KeyPool(
                keys,
                auth_cooldown=self.auth_cooldown,
                default_retry_after=self.default_retry_after,
            )
            self._pools[provider_name] = pool
            if self.on_new_pool is not None:
                self.on_new_pool(provider_name, pool)
        return pool

    def items(self) -> list[tuple[str, KeyPool]]:
        """(provider name, pool) of every pool, for metrics."""
        return list(self._pools.items())
