"""relay.db.migrate: ordered, once-only, safe with several processes at once."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from relay.db import Database, MigrationError
from relay.db.migrate import SQL_DIR, migrate, read_migrations
from tests.conftest import PgCluster


@pytest.fixture
def empty_dsn(pg_cluster: PgCluster) -> Iterator[str]:
    """A database without any migration (copied from template1)."""
    pg_cluster.start()
    dsn = pg_cluster.create_database(template=None)
    yield dsn
    pg_cluster.start()
    pg_cluster.drop_database(dsn)


def write(sql_dir: Path, name: str, sql: str) -> None:
    sql_dir.mkdir(exist_ok=True)
    (sql_dir / name).write_text(sql)


async def test_applies_each_file_once_in_order(empty_dsn: str, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    write(sql_dir, "0002_second.sql", "INSERT INTO log VALUES ('0002');")
    write(sql_dir, "0001_first.sql", "CREATE TABLE log (v text);\nINSERT INTO log VALUES ('0001');")
    async with Database.open(empty_dsn) as db:
        assert await migrate(db, sql_dir) == ["0001_first", "0002_second"]
        assert await migrate(db, sql_dir) == []
        write(sql_dir, "0010_tenth.sql", "INSERT INTO log VALUES ('0010');")
        assert await migrate(db, sql_dir) == ["0010_tenth"]
        rows = await db.fetch("SELECT v FROM log")
        assert [r["v"] for r in rows] == ["0001", "0002", "0010"]
        versions = await db.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in versions] == ["0001_first", "0002_second", "0010_tenth"]


async def test_a_failing_file_is_rolled_back_whole(empty_dsn: str, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    write(sql_dir, "0001_ok.sql", "CREATE TABLE a (n int);")
    write(sql_dir, "0002_broken.sql", "CREATE TABLE b (n int);\nSELECT no_such_column FROM a;")
    async with Database.open(empty_dsn) as db:
        with pytest.raises(MigrationError, match="0002_broken"):
            await migrate(db, sql_dir)
        # 0001 stays applied; nothing of 0002 remains, and it is not recorded.
        assert await db.fetchval("SELECT to_regclass('a') IS NOT NULL") is True
        assert await db.fetchval("SELECT to_regclass('b') IS NULL") is True
        assert await db.fetchval("SELECT count(*) FROM schema_migrations") == 1
        # Fixed, it applies on the next run; the advisory lock was released.
        write(sql_dir, "0002_broken.sql", "CREATE TABLE b (n int);")
        assert await migrate(db, sql_dir) == ["0002_broken"]


def test_misnamed_file_is_rejected(tmp_path: Path) -> None:
    write(tmp_path, "0001_ok.sql", "SELECT 1;")
    write(tmp_path, "add-users.sql", "SELECT 1;")
    with pytest.raises(MigrationError, match=r"add-users\.sql"):
        read_migrations(tmp_path)


async def test_project_migrations_apply_to_an_empty_database(empty_dsn: str) -> None:
    expected = [version for version, _ in read_migrations(SQL_DIR)]
    async with Database.open(empty_dsn) as db:
        assert await migrate(db) == expected
        assert await migrate(db) == []


async def test_template_databases_are_already_migrated(db: Database) -> None:
    assert await migrate(db) == []


MIGRATE_IN_A_PROCESS = """
import json, sys
from pathlib import Path
import trio
from relay.db import Database
from relay.db.migrate import migrate

async def main():
    async with Database.open(sys.argv[1], max_size=2) as db:
        print("ready", flush=True)
        sys.stdin.readline()  # wait for the others, then all migrate at once
        print(json.dumps(await migrate(db, Path(sys.argv[2]))), flush=True)

trio.run(main)
"""


def test_four_processes_migrating_at_once(empty_dsn: str, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    write(sql_dir, "0001_log.sql", "CREATE TABLE applied (version text);")
    versions = ["0001_log"]
    for n in range(2, 9):
        version = f"{n:04d}_step"
        versions.append(version)
        # CREATE TABLE fails if a file ever runs twice; the sleep widens the race.
        write(
            sql_dir,
            f"{version}.sql",
            f"CREATE TABLE step_{n} (n int);\n"
            f"INSERT INTO applied VALUES ('{version}');\n"
            "SELECT pg_sleep(0.02);",
        )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE_IN_A_PROCESS, empty_dsn, str(sql_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=120) for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
    applied_by_each = [json.loads(stdout) for stdout, _ in outputs]
    applied = [version for each in applied_by_each for version in each]
    assert sorted(applied) == versions  # each file applied by exactly one process

    async def check() -> list[str]:
        async with Database.open(empty_dsn) as db:
            rows = await db.fetch("SELECT version FROM applied ORDER BY version")
            return [r["version"] for r in rows]

    assert trio.run(check) == versions[1:]


def test_an_install_without_its_migrations_refuses_to_migrate(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="no migration files"):
        read_migrations(tmp_path)
