"""Retention: delete recorded rows older than the RETENTION option, in batches.

Each statement deletes at most ``batch_rows`` rows, so it holds locks briefly
and never competes for long with the recorder's writes. Every table is
trimmed by its own timestamp (interceptions by ``started_at``, the others by
``created_at``), as there are no foreign keys to cascade along.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import trio

from relay.record.writer import RecordingDatabase

log = logging.getLogger(__name__)

# (table, timestamp column). Children first: were a run interrupted, no usage
# row outlives its interception for longer than one more run.
RETAINED_TABLES: tuple[tuple[str, str], ...] = (
    ("token_usages", "created_at"),
    ("user_prompts", "created_at"),
    ("tool_usages", "created_at"),
    ("model_thoughts", "created_at"),
    ("interceptions", "started_at"),
)


async def delete_expired(
    db: RecordingDatabase, cutoff: datetime, *, batch_rows: int = 10_000
) -> dict[str, int]:
    """Delete every row older than ``cutoff``; returns rows deleted per table."""
    deleted: dict[str, int] = {}
    for table, column in RETAINED_TABLES:
        total = 0
        while True:
            # ctid lets PostgreSQL delete exactly the rows the LIMIT picked.
            status = await db.execute(
                f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("
                f"SELECT ctid FROM {table} WHERE {column} < $1 LIMIT $2))",
                cutoff,
                batch_rows,
            )
            count = _affected(status)
            total += count
            if count < batch_rows:
                break
        deleted[table] = total
    return deleted


def _affected(status: object) -> int:
    # asyncpg's execute() returns the command tag, e.g. "DELETE 10000".
    if isinstance(status, str):
        try:
            return int(status.rsplit(" ", 1)[-1])
        except ValueError:
            return 0
    return int(status) if isinstance(status, int) else 0


async def run_retention(
    db: RecordingDatabase | Callable[[], RecordingDatabase | None],
    retention: float,
    *,
    interval: float = 3600.0,
    batch_rows: int = 10_000,
) -> None:
    """Forever: every ``interval`` seconds, delete rows older than ``retention``
    seconds. ``db`` may be a callable returning the current database (or None
    while there is none). Errors are logged and retried at the next round."""
    while True:
        current = db() if callable(db) else db
        if current is not None and retention > 0:
            cutoff = datetime.now(UTC) - timedelta(seconds=retention)
            try:
                deleted = await delete_expired(current, cutoff, batch_rows=batch_rows)
            except Exception as exc:
                log.warning("retention: could not delete old rows: %r", exc)
            else:
                if any(deleted.values()):
                    log.info("retention: deleted rows older than %s: %s", cutoff, deleted)
        await trio.sleep(interval)
