"""A private PostgreSQL cluster inside the relay's data directory.

Used when no database URL is configured, and by the test suite. Layout under
``<data_dir>/postgres/``:

- ``data/``      the cluster (PGDATA), with ``relay.conf`` rewritten at each start
- ``run/``       the unix socket; the server listens on nothing else (no TCP)
- ``lock``       ``flock`` held around start and stop
- ``users/``     one file per live ``EmbeddedPostgres`` that started it
- ``postgres.log`` the server's log

Several relay processes on the same directory share one server: ``start()``
reuses a running one, ``stop()`` stops it only when no live user remains
(users of processes that died are pruned). PostgreSQL refuses to run as root,
so as root the binaries run as the ``postgres`` system user, which owns the
cluster directory; the directories above it are opened for that user to
traverse (``o+x``) when they are not already.

Everything here blocks (subprocesses); trio callers use ``trio.to_thread``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import glob
import logging
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from relay.errors import StartupError

log = logging.getLogger(__name__)

MISSING_BINARIES = (
    "PostgreSQL server binaries not found: install PostgreSQL "
    "(e.g. apt-get install postgresql) or set CODER_PG_CONNECTION_URL"
)
DEFAULT_BIN_SEARCH: tuple[str, ...] = ("/usr/lib/postgresql/*/bin",)
ROLE = "relay"
DATABASE = "relay"
_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
_SOCKET_NAME = ".s.PGSQL.5432"
_MAX_SOCKET_PATH = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_COMMAND_TIMEOUT = 120.0


class EmbeddedPostgresError(StartupError, RuntimeError):
    """The embedded cluster cannot be set up or started; the message says why."""


def find_bin_dir(
    search: Sequence[str] = DEFAULT_BIN_SEARCH, *, prefer_version: str | None = None
) -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Looks on PATH first, then in ``search`` (glob patterns; the highest
    version wins). ``prefer_version`` (an existing cluster's ``PG_VERSION``)
    picks the matching major version when it is installed, since a server
    cannot open another major version's cluster.
    """
    candidates: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    found = [Path(p) for pattern in search for p in glob.glob(pattern)]
    candidates += sorted(found, key=_version_key, reverse=True)
    usable = [c for c in candidates if all(os.access(c / b, os.X_OK) for b in _SERVER_BINARIES)]
    if not usable:
        raise EmbeddedPostgresError(MISSING_BINARIES)
    if prefer_version:
        for bin_dir in usable:
            if _server_version(bin_dir) == prefer_version:
                return bin_dir
    return usable[0]


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", str(path))) or (0,)


@functools.lru_cache(maxsize=8)
def _server_version(bin_dir: Path) -> str | None:
    # e.g. "postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)" → "15"
    out = subprocess.run(
        [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=False
    ).stdout
    match = re.search(r"\) (\d+)(?:\.\d+)?", out)
    return match.group(1) if match else None


@dataclass(frozen=True)
class _RunAs:
    """Who runs the PostgreSQL binaries: ourselves, or (as root) ``postgres``."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    other_user: bool

    @classmethod
    def for_current_process(cls) -> _RunAs:
        if os.geteuid() != 0:
            return cls(os.geteuid(), os.getegid(), (), other_user=False)
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise EmbeddedPostgresError(
                "running as root, the embedded PostgreSQL needs the 'postgres' system user "
                "(created by the PostgreSQL package) because initdb refuses to run as root"
            ) from None
        groups = tuple(os.getgrouplist("postgres", entry.pw_gid))
        return cls(entry.pw_uid, entry.pw_gid, groups, other_user=True)

    def can_traverse(self, st: os.stat_result) -> bool:
        if st.st_uid == self.uid:
            return bool(st.st_mode & stat.S_IXUSR)
        if st.st_gid == self.gid or st.st_gid in self.groups:
            return bool(st.st_mode & stat.S_IXGRP)
        return bool(st.st_mode & stat.S_IXOTH)


class EmbeddedPostgres:
    """A private cluster in ``<data_dir>/postgres``, shared by processes on that directory.

    ``fast=True`` turns off fsync, synchronous_commit and full_page_writes
    (for tests: data may be lost on a machine crash); it applies when this
    instance is the one that starts the server.
    """

    def __init__(
        self, data_dir: Path, *, fast: bool = False, bin_search: Sequence[str] = DEFAULT_BIN_SEARCH
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.cluster_dir = self.data_dir / "postgres"
        self.pgdata = self.cluster_dir / "data"
        self.socket_dir = self.cluster_dir / "run"
        self.log_path = self.cluster_dir / "postgres.log"
        self.fast = fast
        self._bin_search = tuple(bin_search)
        self._users_dir = self.cluster_dir / "users"
        self._user_file: Path | None = None

    @property
    def dsn(self) -> str:
        """The relay database, as the ``relay`` role, over the private socket."""
        return self.dsn_for(DATABASE)

    @property
    def admin_dsn(self) -> str:
        """The ``postgres`` maintenance database (for CREATE/DROP DATABASE)."""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        """A DSN for another database of this cluster (as the `relay` superuser)."""
        host = urllib.parse.quote(str(self.socket_dir), safe="/")
        return f"postgresql://{ROLE}@/{database}?host={host}"

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> str:
        """Start the cluster (or join the running one) and return the DSN."""
        socket_path = self.socket_dir / _SOCKET_NAME
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            raise EmbeddedPostgresError(
                f"data directory path too long for a unix socket ({socket_path}): "
                "choose a shorter data directory or set CODER_PG_CONNECTION_URL"
            )
        run_as = _RunAs.for_current_process()
        # Binaries first: without them nothing below is worth creating.
        bin_dir = find_bin_dir(self._bin_search, prefer_version=self._cluster_version())
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.cluster_dir.mkdir(exist_ok=True, mode=0o700)
        with self._locked():
            self._prepare_directories(run_as)
            self._prune_users()
            if not self.is_running():
                self._start_server(bin_dir, run_as)
            if self._user_file is None:
                self._register()
        return self.dsn

    def stop(self) -> None:
        """Leave the cluster; stop the server when no live user remains."""
        if self._user_file is None:
            return
        with self._locked():
            self._user_file.unlink(missing_ok=True)
            self._user_file = None
            if self._prune_users():
                return
            if self.is_running():
                self._stop_server()

    def _stop_server(self) -> None:
        bin_dir = find_bin_dir(self._bin_search, prefer_version=self._cluster_version())
        self._run(
            _RunAs.for_current_process(),
            [bin_dir / "pg_ctl", "stop", "-D", self.pgdata, "-m", "fast", "-w", "-s"],
            "pg_ctl stop",
        )

    def stop_if_unused(self) -> bool:
        """Stop the server if no live process uses it (all of them died); True if unused."""
        if not self._users_dir.is_dir():
            return not self.is_running()
        with self._locked():
            if self._prune_users():
                return False
            if self.is_running():
                self._stop_server()
            return True

    def is_running(self) -> bool:
        """Whether a postmaster owns the cluster (per ``postmaster.pid``)."""
        pid = self._postmaster_pid()
        return pid is not None and _is_postgres_process(pid)

    # -- start ------------------------------------------------------------------

    def _start_server(self, bin_dir: Path, run_as: _RunAs) -> None:
        if not (self.pgdata / "PG_VERSION").exists():
            self._init_cluster(bin_dir, run_as)
        self._remove_stale_pid_files()
        self._write_config(run_as)
        try:
            self._run(
                run_as,
                [bin_dir / "pg_ctl", "start", "-D", self.pgdata, "-l", self.log_path, "-w", "-s"],
                "pg_ctl start",
            )
        except EmbeddedPostgresError as exc:
            raise EmbeddedPostgresError(f"{exc}\n{self._log_tail()}") from None
        log.info("embedded PostgreSQL started in %s", self.cluster_dir)

    def _init_cluster(self, bin_dir: Path, run_as: _RunAs) -> None:
        # initdb into a scratch directory renamed at the end, so a crash
        # half-way never leaves something that looks like a cluster.
        for leftover in self.cluster_dir.glob("data.init-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        scratch = self.cluster_dir / f"data.init-{os.getpid()}"
        initdb: list[str | os.PathLike[str]] = [bin_dir / "initdb", "-D", scratch, "-U", ROLE]
        initdb += ["--auth=trust", "--encoding=UTF8", "--locale=C"]
        if self.fast:
            initdb.append("--no-sync")
        self._run(run_as, initdb, "initdb")
        # Single-user mode creates the relay database without a server or a client.
        result = self._run(
            run_as,
            [bin_dir / "postgres", "--single", "-D", scratch, "postgres"],
            "postgres --single",
            stdin=f"CREATE DATABASE {DATABASE};\n",
        )
        if "ERROR" in result.stderr:
            raise EmbeddedPostgresError(f"creating database {DATABASE} failed: {result.stderr}")
        with open(scratch / "postgresql.conf", "a") as conf:
            conf.write("\n# Settings of the embedded relay cluster.\ninclude 'relay.conf'\n")
        scratch.rename(self.pgdata)
        log.info("embedded PostgreSQL cluster created in %s", self.pgdata)

    def _write_config(self, run_as: _RunAs) -> None:
        lines = [
            "# Written by relay at each start of the embedded cluster; edits are lost.",
            "listen_addresses = ''",
            f"unix_socket_directories = '{_quote_conf(str(self.socket_dir))}'",
            "unix_socket_permissions = 0700",
        ]
        if self.fast:
            lines += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        path = self.pgdata / "relay.conf"
        path.write_text("\n".join(lines) + "\n")
        os.chown(path, run_as.uid, run_as.gid)
        path.chmod(0o600)

    def _prepare_directories(self, run_as: _RunAs) -> None:
        self.socket_dir.mkdir(exist_ok=True, mode=0o700)
        self._users_dir.mkdir(exist_ok=True, mode=0o700)
        if not run_as.other_user:
            return
        for directory in (self.cluster_dir, self.socket_dir):
            os.chown(directory, run_as.uid, run_as.gid)
        # The postgres user must reach the cluster directory from /.
        for parent in (*self.data_dir.parents[::-1], self.data_dir):
            st = parent.stat()
            if not run_as.can_traverse(st):
                parent.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
                log.warning(
                    "opened %s for traversal (o+x) so the postgres user can reach %s",
                    parent,
                    self.cluster_dir,
                )

    def _remove_stale_pid_files(self) -> None:
        # A crash (or a reboot) can leave postmaster.pid naming a pid that is
        # now another process; PostgreSQL would refuse to start.
        pid_file = self.pgdata / "postmaster.pid"
        if pid_file.exists():
            log.warning("removing stale %s", pid_file)
            pid_file.unlink(missing_ok=True)
        for name in (_SOCKET_NAME, _SOCKET_NAME + ".lock"):
            (self.socket_dir / name).unlink(missing_ok=True)

    # -- users of a shared cluster --------------------------------------------

    def _register(self) -> None:
        pid = os.getpid()
        name = f"{pid}.{_process_start_time(pid)}.{secrets.token_hex(4)}"
        self._user_file = self._users_dir / name
        self._user_file.touch()

    def _prune_users(self) -> int:
        """Remove users whose process is gone; return how many live ones remain."""
        live = 0
        for entry in self._users_dir.iterdir():
            pid_text, _, rest = entry.name.partition(".")
            start_time = rest.partition(".")[0]
            if pid_text.isdigit() and _process_alive(int(pid_text), start_time):
                live += 1
            else:
                entry.unlink(missing_ok=True)
        return live

    # -- helpers ----------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.cluster_dir / "lock", "a+b") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            yield

    def _postmaster_pid(self) -> int | None:
        try:
            first_line = (self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0]
        except (FileNotFoundError, NotADirectoryError):
            return None
        return int(first_line) if first_line.strip().isdigit() else None

    def _cluster_version(self) -> str | None:
        try:
            return (self.pgdata / "PG_VERSION").read_text().strip()
        except FileNotFoundError:
            return None

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"(no server log at {self.log_path})"
        return f"last lines of {self.log_path}:\n" + "\n".join(text.splitlines()[-lines:])

    def _run(
        self,
        run_as: _RunAs,
        command: Sequence[str | os.PathLike[str]],
        what: str,
        *,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(part) for part in command]
        # A clean environment: PGDATA, PGPORT etc. of the caller must not leak in.
        env = {"PATH": os.environ.get("PATH") or "/usr/bin:/bin", "LC_ALL": "C"}
        # None: this process's own user and groups (subprocess.run's defaults).
        user: int | None = None
        group: int | None = None
        extra_groups: list[int] | None = None
        if run_as.other_user:
            user, group, extra_groups = run_as.uid, run_as.gid, list(run_as.groups)
        try:
            result = subprocess.run(
                argv,
                input=stdin,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                capture_output=True,
                text=True,
                cwd=self.cluster_dir,
                env=env,
                timeout=_COMMAND_TIMEOUT,
                check=False,
                user=user,
                group=group,
                extra_groups=extra_groups,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EmbeddedPostgresError(f"{what} failed: {exc}") from exc
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip()
            raise EmbeddedPostgresError(f"{what} failed (exit {result.returncode}): {output}")
        return result


def _quote_conf(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "''")


def _process_start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), or '0'."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "0"
    # The command name (field 2) may hold spaces and parentheses: split after it.
    return stat_line.rpartition(")")[2].split()[19]


def _process_alive(pid: int, start_time: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    # Same pid but a different start time: the pid was reused.
    return start_time in ("0", _process_start_time(pid))


def _is_postgres_process(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc to ask: trust the pid
    return name in ("postgres", "postmaster")
