"""The console's changes (``ROUTES``): providers, users, groups, tokens, budgets, and
the audit page's API (``GET api/audit``).

The changes live in ``providers`` and ``access``; ``changes`` holds what they
share. Every change goes through the store function the CLI calls (relay.providers.store,
relay.auth, relay.budgets.store), so the console can make exactly the changes
the CLI can, with the same checks; the configuration triggers announce it on
``relay_config`` and every relay process reloads (a disabled provider is
refused at once, a revoked token too). Each successful change is written to
the audit log (``record_audit``: who, through what, which action, which
target, and a detail that never holds a secret: a provider key appears only
as its mask, a new token only as its id).

Every input is checked here before it reaches the store (names, URLs, types,
numbers: 400 with what is wrong); a change the store refuses answers its
message (404 when the target does not exist, 409 when the name is taken, 400
otherwise), never a 500. A provider's keys and its AWS secret are never sent
back: listings carry their masks, and error messages never quote a key.
"""

from __future__ import annotations

from relay.console import access, providers
from relay.console.audit import MAX_LIMIT, list_audit
from relay.console.http import BadRequest, ConsoleRequest, Response, Route, json_response


def _int_param(req: ConsoleRequest, name: str, low: int, high: int) -> int | None:
    text = req.query.get(name)
    if text is None or text == "":
        return None
    if not text.isdigit() or len(text) > 19:
        raise BadRequest(f"{name}: a whole number from {low} to {high}")
    value = int(text)
    if not low <= value <= high:
        raise BadRequest(f"{name}: a whole number from {low} to {high}")
    return value


async def audit_log(req: ConsoleRequest) -> Response:
    limit = _int_param(req, "limit", 1, MAX_LIMIT) or 100
    before = _int_param(req, "before", 1, 2**63 - 1)
    entries = await list_audit(req.services.db, limit, before)
    more = len(entries) == limit
    return json_response(
        {"entries": entries, "next_before": entries[-1].id if entries and more else None}
    )


ROUTES: list[Route] = [
    *providers.ROUTES,
    *access.ROUTES,
    Route("GET", "api/audit", audit_log),
]
