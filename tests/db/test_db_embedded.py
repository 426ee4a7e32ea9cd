"""relay.db.embedded: a private cluster from the machine's PostgreSQL binaries."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from relay.db.embedded import (
    MISSING_BINARIES,
    EmbeddedPostgres,
    EmbeddedPostgresError,
    find_bin_dir,
)


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    """One directory for this module's tests, so initdb runs once.

    Under /tmp rather than pytest's base directory: as root the postgres user
    must be able to enter it, and pytest resets its own base to mode 0700.
    """
    path = Path(tempfile.mkdtemp(prefix="relay-test-embedded-"))
    yield path
    leftover = EmbeddedPostgres(path)
    if leftover.is_running():  # a failed test left it up
        leftover.start()
        leftover.stop()
    shutil.rmtree(path, ignore_errors=True)


def query(dsn: str, sql: str) -> object:
    async def run() -> object:
        connection = await asyncpg.connect(dsn, timeout=10)
        try:
            return await connection.fetchval(sql)
        finally:
            await connection.close()

    return asyncio.run(run())


def test_start_and_stop(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir, fast=True)
    dsn = pg.start()
    try:
        assert dsn == pg.dsn
        assert dsn.startswith("postgresql://relay@/relay?host=")
        assert query(dsn, "SELECT current_user || '@' || current_database()") == "relay@relay"
        # Unix socket only, inside the data directory; fast mode as asked.
        assert query(dsn, "SHOW listen_addresses") == ""
        assert query(dsn, "SHOW unix_socket_directories") == str(pg.socket_dir)
        assert query(dsn, "SHOW fsync") == "off"
        assert (pg.socket_dir / ".s.PGSQL.5432").is_socket()
        if os.geteuid() == 0:
            assert pg.cluster_dir.stat().st_uid == pwd.getpwnam("postgres").pw_uid
            assert query(dsn, "SELECT pg_postmaster_start_time() IS NOT NULL") is True
        assert pg.is_running()
    finally:
        pg.stop()
    assert not pg.is_running()
    assert not (pg.socket_dir / ".s.PGSQL.5432").exists()


def test_context_manager_and_restart(data_dir: Path) -> None:
    with EmbeddedPostgres(data_dir) as pg:
        query(pg.dsn, "CREATE TABLE IF NOT EXISTS kept (n int)")
        query(pg.dsn, "INSERT INTO kept VALUES (1)")
        assert query(pg.dsn, "SHOW fsync") == "on"
    assert not pg.is_running()
    with EmbeddedPostgres(data_dir, fast=True) as again:
        assert query(again.dsn, "SELECT count(*) > 0 FROM kept") is True


def test_second_instance_shares_the_cluster(data_dir: Path) -> None:
    first = EmbeddedPostgres(data_dir, fast=True)
    second = EmbeddedPostgres(data_dir, fast=True)
    first.start()
    try:
        pid = query(first.dsn, "SELECT pg_backend_pid()")  # proves it answers
        assert pid
        server = first._postmaster_pid()
        assert second.start() == first.dsn
        assert second._postmaster_pid() == server  # reused, not restarted
        first.stop()
        assert second.is_running()
        assert query(second.dsn, "SELECT 1") == 1
    finally:
        first.stop()
        second.stop()
    assert not second.is_running()


def start_in_a_process_that_then_dies(data_dir: Path) -> None:
    """Another process starts the cluster and exits without stopping it (a crash)."""
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from relay.db import EmbeddedPostgres; "
            "EmbeddedPostgres(sys.argv[1], fast=True).start()",
            str(data_dir),
        ],
        check=True,
        timeout=120,
    )


def test_users_that_died_do_not_keep_it_running(data_dir: Path) -> None:
    start_in_a_process_that_then_dies(data_dir)
    pg = EmbeddedPostgres(data_dir, fast=True)
    assert pg.is_running()
    pg.start()  # joins the orphaned server
    assert not EmbeddedPostgres(data_dir).stop_if_unused()  # pg is alive and uses it
    pg.stop()  # the dead user is pruned, so the last live one stops it
    assert not pg.is_running()

    start_in_a_process_that_then_dies(data_dir)
    assert pg.is_running()
    assert EmbeddedPostgres(data_dir).stop_if_unused()
    assert not pg.is_running()


def test_stale_postmaster_pid_is_recovered(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir, fast=True)
    pg.start()
    pg.stop()
    # As after a crash and a reboot: the file names a pid now used by another
    # (live) process, which PostgreSQL alone would take for a running server.
    with subprocess.Popen(["sleep", "300"]) as other:
        try:
            (pg.pgdata / "postmaster.pid").write_text(f"{other.pid}\n{pg.pgdata}\n")
            assert not pg.is_running()
            pg.start()
            assert query(pg.dsn, "SELECT 1") == 1
            pg.stop()
        finally:
            other.kill()


def test_missing_binaries_error(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    nowhere = [str(tmp_path / "no-postgresql" / "*" / "bin")]
    with pytest.raises(EmbeddedPostgresError) as error:
        find_bin_dir(nowhere)
    assert str(error.value) == MISSING_BINARIES
    fresh = EmbeddedPostgres(tmp_path / "data", bin_search=nowhere)
    with pytest.raises(EmbeddedPostgresError, match="CODER_PG_CONNECTION_URL"):
        fresh.start()


def test_bin_dir_prefers_the_clusters_major_version() -> None:
    found = find_bin_dir()
    assert all((found / name).exists() for name in ("initdb", "pg_ctl", "postgres"))
    version = subprocess.run(
        [str(found / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    major = version.split(") ")[1].split(".")[0]
    assert find_bin_dir(prefer_version=major) == found


def test_too_long_socket_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedPostgresError, match="too long for a unix socket"):
        EmbeddedPostgres(tmp_path / ("d" * 120)).start()
