"""Schema migrations: the SQL files in ``relay/schemas/sql``, each applied once.

Files are named ``NNNN_name.sql`` and applied in lexical order; the version
recorded in ``schema_migrations`` is the file name without ``.sql``. Each file
runs in its own transaction (so a file cannot use statements such as
``CREATE INDEX CONCURRENTLY``). The whole run holds a PostgreSQL advisory
lock, so several relay processes starting at once apply each file exactly
once: the others wait, then find nothing left to do.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import asyncpg
import trio

import relay
from relay.db.bridge import Database
from relay.errors import StartupError

#: Directory of the project's migrations (package data, shipped in the wheel).
SQL_DIR = Path(relay.__file__).resolve().parent / "schemas" / "sql"

#: Key of the advisory lock held while migrating: "relaymig" as a bigint.
MIGRATION_LOCK_KEY = int.from_bytes(b"relaymig", "big")

_FILE_NAME = re.compile(r"^\d{4}_[A-Za-z0-9_]+\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(StartupError, RuntimeError):
    """A migration file is misnamed or failed; the message names the file."""


def read_migrations(sql_dir: Path = SQL_DIR) -> list[tuple[str, str]]:
    """``(version, sql)`` of every migration file, in the order they apply."""
    migrations = []
    for path in sorted(sql_dir.glob("*.sql")):
        if not _FILE_NAME.match(path.name):
            raise MigrationError(f"migration file {path} is not named NNNN_name.sql")
        migrations.append((path.stem, path.read_text()))
    if not migrations:
        # An install without its package data must not serve on an empty schema.
        raise MigrationError(f"no migration files in {sql_dir} (is the package installed whole?)")
    return migrations


async def migrate(db: Database, sql_dir: Path | None = None) -> list[str]:
    """Apply the migrations not yet applied; return their versions in order."""
    migrations = await trio.to_thread.run_sync(read_migrations, sql_dir or SQL_DIR)

    async def apply_pending(connection: Any) -> list[str]:
        # A session-level lock on this one connection. Should anything below
        # fail, the pool's reset on release (pg_advisory_unlock_all) or the
        # connection's end releases it.
        await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        await connection.execute(_CREATE_TABLE)
        rows = await connection.fetch("SELECT version FROM schema_migrations")
        done = {row["version"] for row in rows}
        applied = []
        for version, sql in migrations:
            if version in done:
                continue
            try:
                async with connection.transaction():
                    await connection.execute(sql)
                    await connection.execute(
                        "INSERT INTO schema_migrations (version) VALUES ($1)", version
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"migration {version} failed: {exc}") from exc
            applied.append(version)
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        return applied

    return await db.run(apply_pending)
