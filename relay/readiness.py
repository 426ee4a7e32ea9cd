"""``/readyz``: can this process serve requests now?

``/healthz`` only says the process is alive. ``/readyz`` answers 200 when a
request could be served: the providers are loaded, the recorder is running,
and tokens can be verified (PostgreSQL answers, or the token cache holds
tokens verified earlier, which the relay accepts while the database is away).
Otherwise 503, with the reasons. The body is JSON either way::

    {"status": "ready", "checks": {"database": "ok", "providers": "2 loaded",
     "recorder": "running", "tokens": "cached"}}
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import trio

from relay.db.bridge import CONNECT_ERRORS, connect_failure

if TYPE_CHECKING:
    from relay.services import Services

#: How long the database may take to answer ``SELECT 1`` before it counts as unreachable.
DATABASE_TIMEOUT = 2.0


class Readiness(msgspec.Struct):
    status: str  # "ready" or "not ready"
    checks: dict[str, str]
    reasons: list[str] = msgspec.field(default_factory=list)


async def _database_check(services: Services) -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        with trio.move_on_after(DATABASE_TIMEOUT):
            await services.db.fetchval("SELECT 1")
            return None
        return f"no answer within {DATABASE_TIMEOUT:g}s"
    except CONNECT_ERRORS as exc:
        return connect_failure(exc)


async def readiness(services: Services | None) -> tuple[int, bytes]:
    """The ``/readyz`` status and body."""
    if services is None:
        state = Readiness("not ready", {}, ["the relay is starting or shutting down"])
        return 503, msgspec.json.encode(state)
    checks: dict[str, str] = {}
    reasons: list[str] = []
    cached = services.tokens.can_verify_offline()
    checks["tokens"] = "cached" if cached else "none cached"
    down = await _database_check(services)
    if down is None:
        checks["database"] = "ok"
    else:
        checks["database"] = f"unreachable: {down}"
        if not cached:
            reasons.append(f"the database is unreachable ({down}) and no token is cached")
    providers = services.providers.all()
    checks["providers"] = f"{len(providers)} loaded"
    if not providers:
        reasons.append("no provider is enabled (see docs/providers.md)")
    if services.recorder.running:
        checks["recorder"] = "running"
    else:
        checks["recorder"] = "not running"
        reasons.append("the recorder is not running")
    state = Readiness("not ready" if reasons else "ready", checks, reasons)
    return (503 if reasons else 200), msgspec.json.encode(state)
