"""`relay serve` that cannot start: one line naming the cause, a non-zero exit, nothing left.

Each case runs `relay serve` in its own process (and process group) with a data
directory and a listen port of its own. Afterwards no process of its group is
alive, the port can be bound again, and the data directory was never created:
nothing (no embedded cluster, no spool, no metrics files) was started.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import certifi
import pytest
import trio

from relay.app import RelayApp
from tests.conftest import PgCluster, admin_execute
from tests.relay_harness import clean_env
from tests.upstream.test_http11_client import self_signed

CONNECT_REFUSED = "connection refused (is PostgreSQL running and listening there?)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def serve_fails(
    tmp_path: Path, env: dict[str, str], *, port: int | None = None
) -> tuple[int, list[str]]:
    """Run `relay serve`; its exit status and stderr lines, once nothing of it is left."""
    port = free_port() if port is None else port
    data_dir = tmp_path / "data"
    full_env = clean_env(
        CODER_AI_GATEWAY_HTTP_ADDRESS=f"127.0.0.1:{port}",
        CODER_AI_GATEWAY_DATA_DIR=str(data_dir),
    )
    full_env.update(env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "serve"],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert stdout == ""
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # no child (postgres, a worker) outlived the relay
    assert not data_dir.exists(), "something was started before the failure"
    return proc.returncode, stderr.splitlines()


def test_database_refused(tmp_path: Path) -> None:
    url = f"postgresql://relay:s3cret@127.0.0.1:{free_port()}/relay"
    status, lines = serve_fails(tmp_path, {"CODER_PG_CONNECTION_URL": url})
    masked = url.replace("s3cret", "***")
    assert lines == [f"relay: cannot connect to the database {masked}: {CONNECT_REFUSED}"]
    assert status == 1


def test_unknown_database_host(tmp_path: Path) -> None:
    url = "postgresql://relay:s3cret@no-such-host.invalid:5432/relay"
    status, lines = serve_fails(tmp_path, {"CODER_PG_CONNECTION_URL": url})
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        "relay: cannot connect to the database "
        "postgresql://relay:***@no-such-host.invalid:5432/relay: unknown host ("
    )
    assert status == 1


def test_not_a_postgres_url(tmp_path: Path) -> None:
    status, lines = serve_fails(
        tmp_path, {"CODER_PG_CONNECTION_URL": "mysql://relay:s3cret@db.example/relay"}
    )
    assert lines == [
        "relay: configuration error: CODER_PG_CONNECTION_URL: mysql://relay:***@db.example/relay "
        "is not a PostgreSQL URL (use postgresql://USER:PASSWORD@HOST:PORT/DATABASE)"
    ]
    assert status == 2


PASSWORD_ROLE = "relay_password_test"


@pytest.fixture
def password_role(pg_cluster: PgCluster, pg_template: str) -> Iterator[str]:
    """A role of the test cluster that must give its password (the cluster trusts others)."""
    pg_cluster.start()
    hba = pg_cluster.embedded.pgdata / "pg_hba.conf"
    line = f"local all {PASSWORD_ROLE} scram-sha-256\n"
    admin_execute(
        pg_cluster.admin_dsn,
        f"DROP ROLE IF EXISTS {PASSWORD_ROLE}",
        f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD 'the-right-one'",
    )
    original = hba.read_text()
    hba.write_text(line + original)
    admin_execute(pg_cluster.admin_dsn, "SELECT pg_reload_conf()")
    try:
        yield pg_cluster.dsn_for("postgres").replace("relay@", f"{PASSWORD_ROLE}:wrong-one@", 1)
    finally:
        hba.write_text(original)
        admin_execute(pg_cluster.admin_dsn, "SELECT pg_reload_conf()", f"DROP ROLE {PASSWORD_ROLE}")


def test_wrong_password(tmp_path: Path, password_role: str) -> None:
    status, lines = serve_fails(tmp_path, {"CODER_PG_CONNECTION_URL": password_role})
    masked = password_role.replace("wrong-one", "***")
    assert lines == [
        f"relay: cannot connect to the database {masked}: wrong password "
        f'(password authentication failed for user "{PASSWORD_ROLE}")'
    ]
    assert status == 1


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[int]:
    """A server that accepts PostgreSQL's TLS request and shakes hands with a self-signed
    certificate (the PostgreSQL protocol ends there: the client must refuse it)."""
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(8)  # SSLRequest
                conn.sendall(b"S")
                try:
                    with context.wrap_socket(conn, server_side=True):
                        pass
                except (OSError, ssl.SSLError):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()
        thread.join(5)


def test_tls_failure(tmp_path: Path, tls_server: int) -> None:
    url = (
        f"postgresql://relay:s3cret@127.0.0.1:{tls_server}/relay"
        f"?sslmode=verify-full&sslrootcert={certifi.where()}"
    )
    status, lines = serve_fails(tmp_path, {"CODER_PG_CONNECTION_URL": url})
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"relay: cannot connect to the database {url.replace('s3cret', '***')}: "
        "TLS failed: certificate verify failed: self-signed certificate"
    )
    assert status == 1


def test_tls_refused_by_the_server(tmp_path: Path) -> None:
    """sslmode=require, and the server answers PostgreSQL's TLS request with 'N'."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def refuse_tls() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.recv(8)
                conn.sendall(b"N")
                conn.recv(1)

    thread = threading.Thread(target=refuse_tls, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    url = f"postgresql://relay@127.0.0.1:{port}/relay?sslmode=require"
    try:
        status, lines = serve_fails(tmp_path, {"CODER_PG_CONNECTION_URL": url})
    finally:
        listener.close()
        thread.join(5)
    assert lines == [
        f"relay: cannot connect to the database {url}: "
        "TLS failed: the server does not accept TLS connections (see sslmode)"
    ]
    assert status == 1


def test_listen_address_in_use_stops_before_the_embedded_cluster(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        # No database URL: the embedded cluster would be started in the data directory.
        status, lines = serve_fails(tmp_path, {}, port=port)
    assert lines == [
        f"relay: cannot listen on 127.0.0.1:{port}: the address is already in use "
        "(another relay, or another program, listens there)"
    ]
    assert status == 1
    assert port_is_free(port)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("localhost", "'localhost' has no port (use HOST:PORT, e.g. localhost:4001)"),
        ("127.0.0.1:99999", "'127.0.0.1:99999': port 99999 is out of range (0-65535)"),
        ("not an address", "'not an address' is not a HOST:PORT address (e.g. 127.0.0.1:4001)"),
        ("::1:4001", "'::1:4001': write an IPv6 address in brackets, e.g. [::1]:4001"),
    ],
)
def test_invalid_listen_address(tmp_path: Path, address: str, why: str) -> None:
    status, lines = serve_fails(tmp_path, {"CODER_AI_GATEWAY_HTTP_ADDRESS": address})
    assert lines == [f"relay: configuration error: CODER_AI_GATEWAY_HTTP_ADDRESS: {why}"]
    assert status == 2


def test_an_unusable_option_stops_the_start_before_the_port_is_bound(tmp_path: Path) -> None:
    # The port is taken: had the relay tried to bind it first, it would report that (exit 1).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        status, lines = serve_fails(
            tmp_path, {"CODER_AI_GATEWAY_MAX_BODIES_IN_FLIGHT": "1KiB"}, port=port
        )
    assert lines == [
        "relay: configuration error: CODER_AI_GATEWAY_MAX_BODIES_IN_FLIGHT: 1024 bytes is less "
        "than MAX_REQUEST_BODY (33554432 bytes); use 0 (no limit) or at least MAX_REQUEST_BODY"
    ]
    assert status == 2


def test_unknown_option_names_are_warned_with_the_closest_name(tmp_path: Path) -> None:
    env = {
        "CODER_AI_GATEWAY_RATE_LIMT": "5",
        "CODER_AI_GATEWY_PROVIDER_0_TYPE": "openai",
        "CODER_AIBRIDGE_ALLOW_BYO": "false",
        "CODER_AI_GATEWAY_SOMETHING_ELSE": "1",
        "CODER_ACCESS_URL": "https://coder.example",  # Coder's own: not ours to judge
        # Stops the start after the warnings, so the test needs no database.
        "CODER_AI_GATEWAY_HTTP_ADDRESS": "localhost",
    }
    status, lines = serve_fails(tmp_path, env)
    assert lines[:-1] == [
        "WARN: CODER_AIBRIDGE_ALLOW_BYO is not a relay option and is ignored; "
        "did you mean CODER_AIBRIDGE_ALLOW_BYOK?",
        "WARN: CODER_AI_GATEWAY_RATE_LIMT is not a relay option and is ignored; "
        "did you mean CODER_AI_GATEWAY_RATE_LIMIT?",
        "WARN: CODER_AI_GATEWAY_SOMETHING_ELSE is not a relay option and is ignored",
        "WARN: CODER_AI_GATEWY_PROVIDER_0_TYPE is not a relay option and is ignored; "
        "did you mean CODER_AI_GATEWAY_PROVIDER_0_TYPE?",
    ]
    assert lines[-1].startswith("relay: configuration error: CODER_AI_GATEWAY_HTTP_ADDRESS")
    assert status == 2


async def test_under_hypercorn_a_bad_option_fails_the_lifespan_in_one_message() -> None:
    """hypercorn drives the lifespan itself: the start must fail, not go on without it."""
    app = RelayApp(None, {"CODER_AI_GATEWAY_HTTP_ADDRESS": "localhost"})
    to_app, from_server = trio.open_memory_channel[dict[str, Any]](2)
    to_server, from_app = trio.open_memory_channel[dict[str, Any]](2)
    await to_app.send({"type": "lifespan.startup"})
    with trio.fail_after(30):
        await app({"type": "lifespan"}, from_server.receive, to_server.send)
    assert from_app.receive_nowait() == {
        "type": "lifespan.startup.failed",
        "message": "CODER_AI_GATEWAY_HTTP_ADDRESS: 'localhost' has no port "
        "(use HOST:PORT, e.g. localhost:4001)",
    }
