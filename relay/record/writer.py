"""Writing batches of records to PostgreSQL with COPY, one transaction per batch.

COPY is the fast path (hundreds of thousands of rows per second). Writes are
idempotent: when a batch meets rows already there (a retry after a timeout
whose commit did land, a replayed spool), it is copied into staging tables
instead and merged with ``INSERT ... SELECT ... ON CONFLICT (id) DO NOTHING``,
so every row ends up there once.

Interceptions are the exception: each is written twice, ``in_progress`` when
it starts and finished when it ends, so their rows are upserted (one
``INSERT ... SELECT FROM unnest(...) ON CONFLICT (id) DO UPDATE`` per batch)
and a row only ever moves forward: in_progress → interrupted → an end status
(completed, failed, cancelled). A start and an end of one interception in the
same batch are collapsed to the end before writing.

A row PostgreSQL refuses as invalid (a NUL byte in a text, a broken CHECK) must
not block the rows around it, nor the spool behind it: such a batch is retried
with NUL bytes removed, then split in halves until the bad rows are isolated
and reported as rejected.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import asyncpg
import msgspec

from relay.record.events import RECORD_TYPES, InterceptionRecord, Record, TokenUsageRecord

log = logging.getLogger(__name__)


class RecordingDatabase(Protocol):
    """What the recorder needs of ``relay.db.bridge.Database``."""

    async def run(self, fn: Callable[[Any], Awaitable[Any]]) -> Any: ...

    async def execute(self, sql: str, *args: Any) -> Any: ...

    async def fetch(self, sql: str, *args: Any) -> list[Any]: ...

    async def fetchval(self, sql: str, *args: Any) -> Any: ...


class Table(msgspec.Struct, frozen=True):
    name: str
    columns: tuple[str, ...]
    json_columns: frozenset[int]  # positions of dict fields, written as jsonb text


def _table_of(record_type: type) -> Table:
    config = record_type.__struct_config__  # type: ignore[attr-defined]
    fields = record_type.__struct_fields__  # type: ignore[attr-defined]
    hints = msgspec.structs.fields(record_type)
    json_columns = frozenset(
        i for i, f in enumerate(hints) if getattr(f.type, "__origin__", None) is dict
    )
    return Table(f"{config.tag}s", tuple(fields), json_columns)


# Record type → its table. The table name is the tag in the plural
# (interception → interceptions, token_usage → token_usages, ...).
TABLES: dict[type, Table] = {t: _table_of(t) for t in RECORD_TYPES}
_json = msgspec.json.Encoder()


def rows_by_table(batch: Sequence[Record]) -> dict[Table, list[tuple[Any, ...]]]:
    """Group a batch into COPY rows per table, in table order (interceptions first)."""
    grouped: dict[Table, list[tuple[Any, ...]]] = {TABLES[t]: [] for t in RECORD_TYPES}
    for record in batch:
        table = TABLES[type(record)]
        row = msgspec.structs.astuple(record)
        if table.json_columns:
            row = tuple(
                _json.encode(v).decode() if i in table.json_columns else v
                for i, v in enumerate(row)
            )
        grouped[table].append(row)
    return {table: rows for table, rows in grouped.items() if rows}


INTERCEPTIONS = TABLES[InterceptionRecord]
# Order of the row states; a row is only replaced by a later one.
_STATE_RANK = {"in_progress": 0, "interrupted": 1}  # every end status ranks 2
_STATUS = INTERCEPTIONS.columns.index("status")
_ID = INTERCEPTIONS.columns.index("id")
_SQL_TYPES = {
    "id": "uuid",
    "initiator_id": "uuid",
    "instance_id": "uuid",
    "started_at": "timestamptz",
    "ended_at": "timestamptz",
}
_UPSERT_INTERCEPTIONS = (
    f"INSERT INTO interceptions ({', '.join(INTERCEPTIONS.columns)}) SELECT * FROM unnest("
    + ", ".join(
        f"${i}::{_SQL_TYPES.get(c, 'text')}[]" for i, c in enumerate(INTERCEPTIONS.columns, 1)
    )
    + ") ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in INTERCEPTIONS.columns if c != "id")
    + " WHERE (interceptions.status = 'in_progress' AND EXCLUDED.status <> 'in_progress')"
    " OR (interceptions.status = 'interrupted'"
    " AND EXCLUDED.status NOT IN ('in_progress', 'interrupted'))"
)


def _rank(row: tuple[Any, ...]) -> int:
    return _STATE_RANK.get(row[_STATUS], 2)


def latest_interceptions(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """One row per interception id: the most advanced state (the last of equals).

    An upsert may not touch one row twice, and a start written after its own
    end would be ignored anyway.
    """
    latest: dict[Any, tuple[Any, ...]] = {}
    for row in rows:
        seen = latest.get(row[_ID])
        if seen is None or _rank(row) >= _rank(seen):
            latest[row[_ID]] = row
    return list(latest.values())


async def _upsert_interceptions(conn: Any, rows: Sequence[tuple[Any, ...]]) -> None:
    columns = [list(column) for column in zip(*rows, strict=True)]
    await conn.execute(_UPSERT_INTERCEPTIONS, *columns)


TOKEN_USAGES = TABLES[TokenUsageRecord]
NIL_USER = "00000000-0000-0000-0000-000000000000"
# The running spend totals (spend_daily), from the usage rows this
# transaction inserted: one statement per batch. The interceptions of a batch
# are upserted before its usage rows, so the join finds them. Keys are taken
# in order, so two relays adding to the same rows cannot deadlock.
_ADD_SPEND = f"""
INSERT INTO spend_daily (day, user_id, api_key_id, model, cost_micros, usages, unpriced)
SELECT (t.created_at AT TIME ZONE 'UTC')::date, coalesce(i.initiator_id, '{NIL_USER}'::uuid),
       coalesce(i.api_key_id, ''), coalesce(t.price_model, i.model),
       coalesce(sum(t.cost_micros), 0), count(*), count(*) FILTER (WHERE t.cost_micros IS NULL)
FROM token_usages t JOIN interceptions i ON i.id = t.interception_id
WHERE t.id = ANY($1::uuid[]) AND i.credential_kind = 'centralized'
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3, 4
ON CONFLICT (day, user_id, api_key_id, model) DO UPDATE SET
    cost_micros = spend_daily.cost_micros + EXCLUDED.cost_micros,
    usages = spend_daily.usages + EXCLUDED.usages,
    unpriced = spend_daily.unpriced + EXCLUDED.unpriced
"""
#: What ``spend_daily`` must equal: the same sums over every usage row (tests, docs).
RECOMPUTE_SPEND_SQL = f"""
SELECT (t.created_at AT TIME ZONE 'UTC')::date AS day,
       coalesce(i.initiator_id, '{NIL_USER}'::uuid) AS user_id,
       coalesce(i.api_key_id, '') AS api_key_id, coalesce(t.price_model, i.model) AS model,
       coalesce(sum(t.cost_micros), 0)::bigint AS cost_micros, count(*) AS usages,
       count(*) FILTER (WHERE t.cost_micros IS NULL) AS unpriced
FROM token_usages t JOIN interceptions i ON i.id = t.interception_id
WHERE i.credential_kind = 'centralized'
GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
"""


def _staging(table: Table) -> str:
    return f"relay_stage_{table.name}"


async def write_batch(db: RecordingDatabase, batch: Sequence[Record]) -> None:
    """Write one batch in one transaction. Idempotent by record id. Raises on failure."""
    grouped = rows_by_table(batch)
    if not grouped:
        return
    interceptions = latest_interceptions(grouped.pop(INTERCEPTIONS, []))
    usage_ids = [r.id for r in batch if type(r) is TokenUsageRecord]

    async def copy_in_transaction(conn: Any) -> None:
        # The common case has no row in the database yet: COPY straight into
        # the tables (several times faster than staging, which needs a temp
        # table per batch). A primary-key conflict (a retry whose commit had in
        # fact landed, a replayed spool) rolls that back and merges instead.
        try:
            async with conn.transaction():
                if interceptions:
                    await _upsert_interceptions(conn, interceptions)
                for table, rows in grouped.items():
                    await conn.copy_records_to_table(
                        table.name, records=rows, columns=table.columns
                    )
                if usage_ids:
                    await conn.execute(_ADD_SPEND, usage_ids)
            return
        except asyncpg.UniqueViolationError:
            pass
        async with conn.transaction():
            if interceptions:
                await _upsert_interceptions(conn, interceptions)
            await conn.execute(
                "".join(
                    f"CREATE TEMP TABLE {_staging(t)} (LIKE {t.name} INCLUDING DEFAULTS)"
                    " ON COMMIT DROP;"
                    for t in grouped
                )
            )
            for table, rows in grouped.items():
                await conn.copy_records_to_table(
                    _staging(table), records=rows, columns=table.columns
                )
            others = [t for t in grouped if t is not TOKEN_USAGES]
            if others:
                await conn.execute("".join(_merge(t) for t in others))
            if TOKEN_USAGES in grouped:
                # Only the usage rows not there yet add to the spend totals.
                inserted = await conn.fetch(_merge(TOKEN_USAGES)[:-1] + " RETURNING id")
                if inserted:
                    await conn.execute(_ADD_SPEND, [row["id"] for row in inserted])

    await db.run(copy_in_transaction)


def _merge(table: Table) -> str:
    return (
        f"INSERT INTO {table.name} ({', '.join(table.columns)})"
        f" SELECT {', '.join(table.columns)} FROM {_staging(table)}"
        " ON CONFLICT (id) DO NOTHING;"
    )


def is_data_error(exc: BaseException) -> bool:
    """True when the rows themselves are at fault, so retrying them as they are
    can never succeed (unlike a connection error or a database that is away)."""
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str):
        # Class 22: data exception; class 23: integrity constraint violation.
        return sqlstate.startswith(("22", "23"))
    # asyncpg's client-side encoding errors (asyncpg.DataError is a ValueError).
    return isinstance(exc, (ValueError, TypeError, UnicodeError))


async def write_batch_isolating(
    db: RecordingDatabase, batch: Sequence[Record]
) -> tuple[int, list[Record]]:
    """Write a batch; rows PostgreSQL refuses are left out and returned.

    Returns (rows written, rejected records). Errors that are not the data's
    fault (connection lost, database down) propagate, for the caller to spool.
    """
    try:
        await write_batch(db, batch)
        return len(batch), []
    except Exception as exc:
        if not is_data_error(exc):
            raise
        log.warning("recorder: PostgreSQL refused a batch (%s); isolating bad rows", exc)
    cleaned = [without_nul(record) for record in batch]
    rejected = await _bisect(db, cleaned)
    return len(batch) - len(rejected), rejected


async def _bisect(db: RecordingDatabase, batch: list[Record]) -> list[Record]:
    try:
        await write_batch(db, batch)
        return []
    except Exception as exc:
        if not is_data_error(exc):
            raise
        if len(batch) == 1:
            log.error("recorder: PostgreSQL rejected %r: %s", batch[0], exc)
            return batch
    middle = len(batch) // 2
    return await _bisect(db, batch[:middle]) + await _bisect(db, batch[middle:])


def without_nul(record: Record) -> Record:
    """The record with NUL characters removed from its texts: PostgreSQL's text
    and jsonb cannot hold U+0000, and model output occasionally contains it."""
    changes = {}
    for name in record.__struct_fields__:
        value = getattr(record, name)
        cleaned = _strip_nul(value)
        if cleaned is not value:
            changes[name] = cleaned
    return msgspec.structs.replace(record, **changes) if changes else record


def _strip_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, dict):
        return {_strip_nul(k): _strip_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_nul(v) for v in value]
    return value
