"""The audit log: who changed what, when, and through what (console, API, CLI).

``record_audit`` is called after each successful change; ``detail`` must
never hold a secret (a provider key appears only as its mask, a new token
only as its id). ``list_audit`` reads it newest first, keyset-paginated by id.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec

from relay.db.bridge import Database

VIA = ("console", "api", "cli")
MAX_LIMIT = 1000


class AuditEntry(msgspec.Struct, frozen=True):
    id: int
    at: datetime
    actor_id: uuid.UUID | None
    actor_name: str
    via: str
    action: str
    target: str
    detail: msgspec.Raw


async def record_audit(
    db: Database,
    actor_name: str,
    actor_id: uuid.UUID | str | None,
    via: str,
    action: str,
    target: str,
    detail: dict[str, Any],
) -> None:
    """Add one entry (``via``: "console", "api" or "cli"; ``action`` e.g. "provider.disable")."""
    if via not in VIA:
        raise ValueError(f"via must be one of {', '.join(VIA)}, not {via!r}")
    await db.execute(
        "INSERT INTO audit_log (actor_id, actor_name, via, action, target, detail) "
        "VALUES ($1::uuid, $2, $3, $4, $5, $6::jsonb)",
        str(actor_id) if actor_id is not None else None,
        actor_name,
        via,
        action,
        target,
        msgspec.json.encode(detail).decode(),
    )


async def list_audit(db: Database, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
    """The newest ``limit`` entries (1 to ``MAX_LIMIT``) with an id below ``before``, newest first."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
    rows = await db.fetch(
        "SELECT id, at, actor_id, actor_name, via, action, target, detail::text AS detail "
        "FROM audit_log WHERE $1::bigint IS NULL OR id < $1 ORDER BY id DESC LIMIT $2",
        before,
        limit,
    )
    return [
        AuditEntry(
            r["id"],
            r["at"],
            r["actor_id"],
            r["actor_name"],
            r["via"],
            r["action"],
            r["target"],
            msgspec.Raw(r["detail"].encode()),
        )
        for r in rows
    ]
