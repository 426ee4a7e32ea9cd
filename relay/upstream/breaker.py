"""Circuit breakers per (provider, route, model): a sans-io state machine.

The semantics follow sony/gobreaker, which the Coder AI Gateway uses:

- closed: requests pass. ``failure_threshold`` consecutive failures open the
  circuit. Every ``interval`` the counts start over (a new generation), so
  failures must come in a burst to trip it.
- open: requests are refused (503 with ``Retry-After``) until ``timeout``
  has passed, then the circuit is half-open.
- half-open: ``max_requests`` trial requests pass; when they all succeed the
  circuit closes, the first failure opens it again, anything beyond them is
  refused.

Failures are upstream answers that say "overloaded": 429, 503, 504, and 529
for Anthropic. Other statuses (a 400, a 401) are the request's fault, not
the provider's, and count as successes.

``allow(now)`` hands out a ticket (the generation it was issued in);
``record(ticket, failure=…, now=…)`` reports the result. A result from an
older generation is ignored, as in gobreaker, so a slow request that started
before the circuit changed state cannot move it. ``release(ticket)`` returns
a ticket without a verdict (the client left): a half-open trial slot is
freed for another request.
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

FAILURE_STATUSES = frozenset({429, 503, 504})
ANTHROPIC_OVERLOADED = 529
OPEN_MESSAGE = "circuit breaker is open"


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half-open"
    OPEN = "open"


def is_failure(status: int, provider_type: str) -> bool:
    """Whether an upstream status counts against the circuit."""
    if status in FAILURE_STATUSES:
        return True
    return status == ANTHROPIC_OVERLOADED and provider_type == "anthropic"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failure_threshold: int = 5
    interval: float = 10.0  # closed: counts start over this often (0: never)
    timeout: float = 30.0  # open: how long before trial requests
    max_requests: int = 3  # half-open: trial requests, all must succeed


StateListener = Callable[[BreakerState, BreakerState], None]


class CircuitBreaker:
    """One circuit. ``state`` is the state as last computed; ``state_at(now)`` advances it.

    ``trips`` (times it opened) and ``rejects`` (requests refused) are plain
    counters for metrics; ``on_state_change(old, new)`` is called on every
    transition.
    """

    def __init__(self, settings: BreakerSettings, now: float = 0.0) -> None:
        self.settings = settings
        self.state = BreakerState.CLOSED
        self.generation = 0
        self.consecutive_failures = 0
        self.trips = 0
        self.rejects = 0
        self.on_state_change: StateListener | None = None
        self._expires = self._closed_expiry(now)
        self._half_open_inflight = 0
        self._half_open_successes = 0

    def state_at(self, now: float) -> BreakerState:
        if self.state is BreakerState.CLOSED:
            if now >= self._expires:
                self._new_generation(now)
        elif self.state is BreakerState.OPEN and now >= self._expires:
            self._set_state(BreakerState.HALF_OPEN, now)
        return self.state

    def allow(self, now: float) -> int | None:
        """A ticket for one request, or None when the circuit refuses it."""
        state = self.state_at(now)
        if state is BreakerState.OPEN:
            self.rejects += 1
            return None
        if state is BreakerState.HALF_OPEN:
            used = self._half_open_inflight + self._half_open_successes
            if used >= self.settings.max_requests:
                self.rejects += 1
                return None
            self._half_open_inflight += 1
        return self.generation

    def record(self, ticket: int, *, failure: bool, now: float) -> None:
        """The result of the request that holds ``ticket``."""
        state = self.state_at(now)
        if ticket != self.generation:
            return
        if state is BreakerState.HALF_OPEN:
            self._half_open_inflight -= 1
            if failure:
                self._set_state(BreakerState.OPEN, now)
                return
            self._half_open_successes += 1
            if self._half_open_successes >= self.settings.max_requests:
                self._set_state(BreakerState.CLOSED, now)
            return
        if failure:
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.settings.failure_threshold:
                self._set_state(BreakerState.OPEN, now)
        else:
            self.consecutive_failures = 0

    def release(self, ticket: int) -> None:
        """Give back a ticket without a result (the request was cancelled)."""
        if ticket == self.generation and self.state is BreakerState.HALF_OPEN:
            self._half_open_inflight -= 1

    def retry_after(self, now: float) -> float:
        """Seconds until the circuit lets trial requests through (for ``Retry-After``)."""
        if self.state_at(now) is BreakerState.OPEN:
            return max(self._expires - now, 0.0)
        return 0.0

    def _set_state(self, new: BreakerState, now: float) -> None:
        old = self.state
        if new is old:
            return
        self.state = new
        self._new_generation(now)
        if new is BreakerState.OPEN:
            self.trips += 1
        if self.on_state_change is not None:
            self.on_state_change(old, new)

    def _new_generation(self, now: float) -> None:
        self.generation += 1
        self.consecutive_failures = 0
        self._half_open_inflight = 0
        self._half_open_successes = 0
        if self.state is BreakerState.CLOSED:
            self._expires = self._closed_expiry(now)
        elif self.state is BreakerState.OPEN:
            self._expires = now + self.settings.timeout
        else:
            self._expires = math.inf

    def _closed_expiry(self, now: float) -> float:
        return now + self.settings.interval if self.settings.interval > 0 else math.inf


BreakerKey = tuple[str, str, str]  # provider name, route, model


class CircuitBreakers:
    """Every circuit of this process, made on first use.

    Model names come from clients, so callers key circuits by the route
    pattern (not the path) and by the model name folded by
    ``relay.metrics.labels.BoundedLabels``, and the number of circuits is
    capped too: beyond ``max_circuits`` the least recently used closed
    circuit is forgotten (a closed circuit with no recent use carries no
    state worth keeping), or the least recently used one when all are open.
    ``on_new_circuit(key, breaker)`` lets metrics attach a state listener to
    each circuit as it is made; ``on_forget(key)`` drops its series.
    """

    def __init__(self, settings: BreakerSettings, *, max_circuits: int = 10_000) -> None:
        self.settings = settings
        self.max_circuits = max_circuits
        self._circuits: OrderedDict[BreakerKey, CircuitBreaker] = OrderedDict()
        self.on_new_circuit: Callable[[BreakerKey, CircuitBreaker], None] | None = None
        self.on_forget: Callable[[BreakerKey], None] | None = None

    def get(self, provider: str, route: str, model: str, now: float) -> CircuitBreaker:
        key = (provider, route, model)
        breaker = self._circuits.get(key)
        if breaker is not None:
            self._circuits.move_to_end(key)
            return breaker
        breaker = CircuitBreaker(self.settings, now)
        if len(self._circuits) >= self.max_circuits:
            self._forget_one()
        self._circuits[key] = breaker
        if self.on_new_circuit is not None:
            self.on_new_circuit(key, breaker)
        return breaker

    def items(self) -> list[tuple[BreakerKey, CircuitBreaker]]:
        """((provider, route, model), circuit) of every circuit, for metrics."""
        return list(self._circuits.items())

    def __len__(self) -> int:
        return len(self._circuits)

    def _forget_one(self) -> None:
        gone = next(
            (k for k, b in self._circuits.items() if b.state is BreakerState.CLOSED),
            next(iter(self._circuits)),
        )
        del self._circuits[gone]
        if self.on_forget is not None:
            self.on_forget(gone)
