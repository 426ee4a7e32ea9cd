"""Per-process guards in front of the providers: concurrency, rate, circuits, key pools.

``ConcurrencyLimit`` (``MAX_CONCURRENCY``) refuses a request at once when the
process already serves that many: queueing would only hide the overload
while clients time out. ``RateLimiter`` (``RATE_LIMIT``) is a token bucket
per relay token: the bucket holds one second's worth of requests and refills
continuously, so a burst of ``RATE_LIMIT`` passes and then the steady rate.
Both are sans-io (time is passed in) and per process: with ``hypercorn -w N``
the effective limits are N times the options.

``RequestGuards`` gathers every guard of a process, built from the options,
with the circuit breakers (``relay.upstream.breaker``) and key pools
(``relay.upstream.keypool``), so metrics can read them from one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.asgi import Message, Receive
from relay.options import Options
from relay.upstream.breaker import BreakerSettings, CircuitBreakers
from relay.upstream.keypool import KeyPools

# Largest request header block forwarded (names, values and ": \r\n" per line).
# hypercorn's h11 refuses a larger block with 431 only while it is still
# incomplete, so whether one arrives depended on how TCP split it; the relay
# refuses it every time. Same size as hypercorn's default limit.
MAX_HEADER_BLOCK = 16 * 1024


def header_block_size(headers: list[tuple[bytes, bytes]]) -> int:
    """Bytes the header lines take on the wire in HTTP/1.1."""
    return sum(len(name) + len(value) + 4 for name, value in headers)


def has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the request declares a body (HTTP/1.1 framing headers)."""
    return any(name in (b"content-length", b"transfer-encoding") for name, _ in headers)


def ambiguous_framing(headers: list[tuple[bytes, bytes]]) -> bool:
    """Both Content-Length and Transfer-Encoding: the request smuggling ambiguity (RFC 9112 §6.3)."""
    names = {name for name, _ in headers}
    return b"content-length" in names and b"transfer-encoding" in names


class ConcurrencyLimit:
    """At most ``limit`` requests at a time (0: unlimited). ``rejected`` counts refusals."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("a concurrency limit cannot be negative")
        self.limit = limit
        self.active = 0
        self.rejected = 0

    def try_acquire(self) -> bool:
        if self.limit and self.active >= self.limit:
            self.rejected += 1
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1


class BodyBudgetExceeded(Exception):
    """Taking these bytes would put the process over its budget for request bodies."""


class BodyBudget:
    """Request-body bytes one process holds at once (``MAX_BODIES_IN_FLIGHT``; 0: no limit).

    Each request takes a ``BodyClaim`` that grows as its body arrives and is
    given back, whole, when the request ends: the body is held until then (it
    is forwarded, maybe retried on another key, dumped). Sans-io.
    """

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("a body budget cannot be negative")
        self.limit = limit
        self.used = 0
        self.refused = 0

    def claim(self) -> BodyClaim:
        return BodyClaim(self)


class BodyClaim:
    """One request's share of a ``BodyBudget``."""

    __slots__ = ("budget", "size")

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.size = 0

    def grow(self, n: int) -> None:
        """Take ``n`` more bytes, or raise ``BodyBudgetExceeded`` (nothing taken)."""
        budget = self.budget
        if budget.limit and budget.used + n > budget.limit:
            budget.refused += 1
            raise BodyBudgetExceeded(
                f"the relay is holding too many request bodies (over {budget.limit} bytes)"
            )
        budget.used += n
        self.size += n

    def release(self) -> None:
        self.budget.used -= self.size
        self.size = 0

    def counting(self, receive: Receive) -> Receive:
        """``receive``, with every body chunk taken from this claim as it arrives."""

        async def receive_counted() -> Message:
            message = await receive()
            chunk = message.get("body")
            if chunk:
                self.grow(len(chunk))
            return message

        return receive_counted


class RateLimiter:
    """A token bucket per key: ``rate`` requests per second, bursts up to ``burst``.

    ``check(key, now)`` takes one token and returns None, or returns the
    seconds until a token is available (the request is refused). Full
    buckets are forgotten now and then: a full bucket is what a new key gets
    anyway, so memory stays proportional to the keys active in the last
    second or so.
    """

    def __init__(self, rate: float, burst: float | None = None, *, max_keys: int = 100_000) -> None:
        if rate <= 0:
            raise ValueError("a rate limit must be positive")
        self.rate = rate
        self.burst = max(1.0, rate if burst is None else burst)
        self.max_keys = max_keys
        self.rejected = 0
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def check(self, key: str, now: float) -> float | None:
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > self.max_keys:
                self._forget_full(now)
            return None
        self._buckets[key] = (tokens, now)
        self.rejected += 1
        return (1.0 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        full = [
            k
            for k, (tokens, at) in self._buckets.items()
            if tokens + (now - at) * self.rate >= self.burst
        ]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) > self.max_keys:
            # Everyone is busy: forget the oldest half rather than grow without bound.
            for k in list(self._buckets)[: len(self._buckets) // 2]:
                del self._buckets[k]


class SocketCaps:
    """Open Responses WebSockets: at most ``per_user`` per person and ``total`` per process.

    0 means unlimited. ``try_open`` refuses with the cap it hit (``user_cap``,
    ``process_cap``) or takes a place that ``close`` gives back.
    """

    def __init__(self, per_user: int, total: int) -> None:
        self.per_user = per_user
        self.total = total
        self.open = 0
        self._by_user: dict[str, int] = {}

    def try_open(self, user: str) -> str | None:
        if self.total and self.open >= self.total:
            return "process_cap"
        held = self._by_user.get(user, 0)
        if self.per_user and held >= self.per_user:
            return "user_cap"
        self._by_user[user] = held + 1
        self.open += 1
        return None

    def close(self, user: str) -> None:
        held = self._by_user.get(user, 0) - 1
        if held > 0:
            self._by_user[user] = held
        else:
            self._by_user.pop(user, None)
        self.open -= 1


@dataclass
class RequestGuards:
    """Every guard of one relay process; ``from_options`` builds them."""

    concurrency: ConcurrencyLimit
    rate: RateLimiter | None  # None: RATE_LIMIT is 0
    breakers: CircuitBreakers | None  # None: circuit breakers are disabled
    key_pools: KeyPools
    # (id header, user-name header), lower case; always stripped from what
    # clients send, and set by the relay when send_actor_headers is on.
    actor_header_names: tuple[bytes, bytes]
    send_actor_headers: bool
    body_budget: BodyBudget = field(default_factory=lambda: BodyBudget(0))
    sockets: SocketCaps = field(default_factory=lambda: SocketCaps(0, 0))

    @classmethod
    def from_options(cls, options: Options) -> RequestGuards:
        """Build, never refuse: ``relay.options.load_options`` checked every value."""
        breakers = None
        if options.circuit_breaker_enabled:
            breakers = CircuitBreakers(
                BreakerSettings(
                    failure_threshold=options.circuit_breaker_failure_threshold,
                    interval=options.circuit_breaker_interval,
                    timeout=options.circuit_breaker_timeout,
                    max_requests=options.circuit_breaker_max_requests,
                )
            )
        # parse_header_name admitted only RFC 9110 token characters (ASCII).
        names = (
            options.actor_id_header.lower().encode("ascii"),
            options.actor_username_header.lower().encode("ascii"),
        )
        return cls(
            concurrency=ConcurrencyLimit(options.max_concurrency),
            rate=RateLimiter(options.rate_limit) if options.rate_limit else None,
            breakers=breakers,
            key_pools=KeyPools(auth_cooldown=options.key_auth_cooldown),
            actor_header_names=names,
            send_actor_headers=options.send_actor_headers,
            body_budget=BodyBudget(options.max_bodies_in_flight),
            sockets=SocketCaps(
                options.responses_websocket_max_per_user, options.responses_websocket_max
            ),
        )

    def actor_headers(self, user_id: str, user_name: str) -> list[tuple[bytes, bytes]]:
        """The actor headers for one person (empty when the option is off).

        User ids are UUIDs and user names are restricted to letters, digits
        and ``. _ @ + -`` (relay.auth), so neither can smuggle a line break.
        """
        if not self.send_actor_headers:
            return []
        id_name, user_name_header = self.actor_header_names
        return [(id_name, user_id.encode("ascii")), (user_name_header, user_name.encode("ascii"))]
