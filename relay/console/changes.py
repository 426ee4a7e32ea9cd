"""What the console's changes share: bounds on input, the audit entry, the store's refusals.

Every change goes through the store function the CLI calls, and each one that
succeeds is written to the audit log (``audit_change``): who, through what,
which action, which target, and a detail that never holds a secret.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec

from relay.console.audit import record_audit
from relay.console.http import ConsoleRequest, Response, error_response
from relay.errors import CommandError
from relay.providers.types import MAX_KEYS

# Bounds on what a client may send (each value is hostile until bounded).
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Short = Annotated[str, msgspec.Meta(max_length=256)]
Url = Annotated[str, msgspec.Meta(max_length=2048)]
Key = Annotated[str, msgspec.Meta(max_length=4096)]
Keys = Annotated[list[Key], msgspec.Meta(max_length=MAX_KEYS)]
TOKEN_ID_RE = re.compile(r"^[0-9a-f]{12}$")


async def audit_change(
    req: ConsoleRequest, action: str, target: str, detail: dict[str, Any]
) -> None:
    actor = req.actor
    await record_audit(
        req.services.db, actor.name, actor.user_id, actor.via, action, target, detail
    )


def refused(exc: CommandError) -> Response:
    """A change the store refused, with its message: 404 unknown, 409 taken, else 400."""
    message = str(exc)
    if message.startswith("no "):
        return error_response(404, "not_found", message)
    if "exist" in message:
        return error_response(409, "conflict", message)
    return error_response(400, "bad_request", message)
