"""Shared pytest fixtures, one section per part of the relay."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import trio

from relay.db import Database, EmbeddedPostgres, EmbeddedPostgresError
from relay.db.migrate import migrate
from relay.pricing.store import seed_default_prices

# --------------------------------------------------------------------------------------------
# Database
#
# One embedded cluster (fast mode: no fsync) for the whole run, in a throwaway
# directory. A template database is migrated once from whatever relay/schemas/sql
# holds; each test that asks for `pg_dsn` (or `db`) gets its own copy of it.
# --------------------------------------------------------------------------------------------

TEMPLATE_DATABASE = "relay_template"


class PgCluster:
    """The test run's PostgreSQL, for tests that create databases or stop the server."""

    def __init__(self, embedded: EmbeddedPostgres) -> None:
        self.embedded = embedded
        # PostgreSQL 15+ copies a small template several times faster by
        # copying files (cheap checkpoints with fsync off) than through WAL.
        major = int((embedded.pgdata / "PG_VERSION").read_text().strip())
        self._create_options = " STRATEGY FILE_COPY" if major >= 15 else ""

    @property
    def admin_dsn(self) -> str:
        """The maintenance database, as a superuser."""
        return self.embedded.admin_dsn

    def dsn_for(self, database: str) -> str:
        return self.embedded.dsn_for(database)

    def stop(self) -> None:
        """Stop the server (blocking; from trio use `down()` or `trio.to_thread`)."""
        self.embedded.stop()

    def start(self) -> None:
        """Start the server again if it is down (blocking)."""
        self.embedded.start()

    @contextlib.asynccontextmanager
    async def down(self) -> AsyncIterator[None]:
        """Stop the server for the body of the block; it is started again on exit."""
        await trio.to_thread.run_sync(self.stop)
        try:
            yield
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.start)

    def create_database(self, template: str | None = TEMPLATE_DATABASE) -> str:
        """A new database with a unique name (migrated when copied from the template); its DSN."""
        name = f"test_{uuid.uuid4().hex[:16]}"
        clause = f" TEMPLATE {template}{self._create_options}" if template else ""
        admin_execute(self.admin_dsn, f"CREATE DATABASE {name}{clause}")
        return self.dsn_for(name)

    def drop_database(self, dsn: str) -> None:
        name = dsn.partition("@/")[2].partition("?")[0]
        admin_execute(self.admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def admin_execute(dsn: str, *statements: str) -> None:
    """Run statements on their own short connection (blocking; outside trio's loop)."""

    async def run() -> None:
        connection = await asyncpg.connect(dsn, timeout=10)
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


_TEST_CLUSTER_PREFIX = "relay-test-pg-"


def _remove_abandoned_test_clusters() -> None:
    """Stop and remove clusters of earlier runs that were killed before their teardown."""
    old_enough = time.time() - 600  # never a run that is still starting up
    for directory in Path(tempfile.gettempdir()).glob(_TEST_CLUSTER_PREFIX + "*"):
        with contextlib.suppress(OSError, EmbeddedPostgresError):
            if (
                directory.stat().st_mtime < old_enough
                and EmbeddedPostgres(directory).stop_if_unused()
            ):
                shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """The embedded cluster shared by the whole run; stopped and removed at its end."""
    _remove_abandoned_test_clusters()
    # Directly under /tmp (short socket path, and not below pytest's 0700 base
    # directory, which other pytest runs reset to 0700 while this one runs).
    data_dir = Path(tempfile.mkdtemp(prefix=_TEST_CLUSTER_PREFIX))
    embedded = EmbeddedPostgres(data_dir, fast=True)
    try:
        embedded.start()
        yield PgCluster(embedded)
    finally:
        try:
            embedded.stop()
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_template(pg_cluster: PgCluster) -> str:
    """Name of the database holding every migration, copied by `pg_dsn`."""
    admin_execute(pg_cluster.admin_dsn, f"CREATE DATABASE {TEMPLATE_DATABASE}")

    async def migrate_template() -> None:
        async with Database.open(pg_cluster.dsn_for(TEMPLATE_DATABASE), max_size=1) as db:
            await migrate(db)
            await seed_default_prices(db)  # as every relay start does

    trio.run(migrate_template)
    # No connection may stay on a template while it is copied.
    admin_execute(
        pg_cluster.admin_dsn,
        f"ALTER DATABASE {TEMPLATE_DATABASE} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false",
    )
    return TEMPLATE_DATABASE


@pytest.fixture
def pg_dsn(pg_cluster: PgCluster, pg_template: str) -> Iterator[str]:
    """DSN of a fresh, fully migrated database for this test alone."""
    pg_cluster.start()  # in case an earlier test left the server stopped
    dsn = pg_cluster.create_database(template=pg_template)
    yield dsn
    pg_cluster.start()
    pg_cluster.drop_database(dsn)


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[Database]:
    """An open `Database` on this test's own database."""
    async with Database.open(pg_dsn) as database:
        yield database
