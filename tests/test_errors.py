"""One error tree at the CLI/server boundary: ``relay`` reports a ``RelayError`` in one line.

``relay.cli.main`` catches ``RelayError`` once and exits with its class's
``exit_code``; anything else keeps its traceback.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from relay import cli
from relay.auth import AuthError
from relay.db.bridge import DatabaseConnectError, unavailable
from relay.db.embedded import EmbeddedPostgresError
from relay.db.migrate import MigrationError
from relay.errors import (
    CommandError,
    ConfigurationError,
    DatabaseUnavailable,
    ListenError,
    RelayError,
    ServiceFailure,
    StartupError,
    relay_error,
)
from relay.options import OptionError
from relay.providers.env import ProviderConfigError
from relay.providers.store import ProviderStoreError
from relay.upstream.aws import BedrockConfigError
from tests.relay_harness import clean_env
from tests.test_startup_errors import free_port, port_is_free


@pytest.mark.parametrize(
    ("error", "exit_code", "line"),
    [
        (OptionError("CODER_AI_GATEWAY_X: bad"), 2, "configuration error: CODER_AI_GATEWAY_X: bad"),
        (
            ProviderConfigError(["first problem", "second problem"]),
            2,
            "configuration error:\n  first problem\n  second problem",
        ),
        (ListenError("cannot listen on 1.2.3.4:5: why"), 1, "cannot listen on 1.2.3.4:5: why"),
        (DatabaseConnectError("cannot connect"), 1, "cannot connect"),
        (EmbeddedPostgresError("no binaries"), 1, "no binaries"),
        (MigrationError("0001_x.sql failed"), 1, "0001_x.sql failed"),
        (BedrockConfigError("bedrock: no region"), 1, "bedrock: no region"),
        (ServiceFailure("the recorder failed: boom"), 1, "stopped: the recorder failed: boom"),
        (CommandError("nothing to update"), 1, "nothing to update"),
        (AuthError("no user named 'x'"), 1, "no user named 'x'"),
        (ProviderStoreError("no provider named 'x'"), 1, "no provider named 'x'"),
    ],
)
def test_each_boundary_error_is_a_relay_error_with_its_line_and_exit_code(
    error: RelayError, exit_code: int, line: str
) -> None:
    assert isinstance(error, RelayError)
    assert error.exit_code == exit_code
    assert error.report() == line


def test_the_tree() -> None:
    assert issubclass(OptionError, ConfigurationError) and issubclass(OptionError, ValueError)
    assert issubclass(ProviderConfigError, ConfigurationError)
    for startup in (
        ListenError,
        DatabaseConnectError,
        DatabaseUnavailable,
        EmbeddedPostgresError,
        MigrationError,
        BedrockConfigError,
    ):
        assert issubclass(startup, StartupError)
    assert issubclass(AuthError, CommandError) and issubclass(ProviderStoreError, CommandError)


def test_a_relay_error_is_found_inside_the_groups_nurseries_wrap_it_in() -> None:
    inner = ListenError("cannot listen")
    assert relay_error(ExceptionGroup("", [ExceptionGroup("", [inner])])) is inner
    assert relay_error(ValueError("a bug")) is None
    # Two failures at once: no single cause to report.
    assert relay_error(ExceptionGroup("", [inner, ListenError("other")])) is None


def test_a_lost_database_becomes_database_unavailable() -> None:
    lost = unavailable(ConnectionResetError("connection reset by peer"))
    assert isinstance(lost, DatabaseUnavailable)
    assert lost.report() == "the database is not available: connection reset by peer"
    assert unavailable(KeyError("x")) is None


class _Teapot(RelayError):
    exit_code = 7


def test_main_prints_any_relay_error_once_with_its_exit_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def serve(options: object, demo: bool) -> None:
        # As trio hands it over from inside a nursery.
        raise ExceptionGroup("nursery", [_Teapot("short and stout")])

    monkeypatch.setattr(cli, "_serve", serve)
    monkeypatch.setattr(cli, "providers_from_env", lambda *args: [])
    assert cli.main(["serve"]) == 7
    assert capsys.readouterr().err.splitlines()[-1] == "relay: short and stout"


def test_main_lets_a_bug_keep_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def serve(options: object, demo: bool) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "_serve", serve)
    monkeypatch.setattr(cli, "providers_from_env", lambda *args: [])
    with pytest.raises(ZeroDivisionError):
        cli.main(["serve"])


def test_metrics_address_in_use_is_a_listen_error(pg_dsn: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics_port = int(taken.getsockname()[1])
        port = free_port()
        env = clean_env(
            CODER_PG_CONNECTION_URL=pg_dsn,
            CODER_AI_GATEWAY_DATA_DIR=str(tmp_path / "data"),
            CODER_AI_GATEWAY_HTTP_ADDRESS=f"127.0.0.1:{port}",
            CODER_AI_GATEWAY_METRICS_ADDRESS=f"127.0.0.1:{metrics_port}",
        )
        result = subprocess.run(
            [sys.executable, "-m", "relay.cli", "serve"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"relay: cannot listen on 127.0.0.1:{metrics_port} (METRICS_ADDRESS): the address is "
        "already in use (another relay, or another program, listens there)"
    )
    assert "Traceback" not in result.stderr
    assert port_is_free(port)


async def test_the_metrics_listener_raises_listen_error() -> None:
    from relay.metrics import Metrics
    from relay.metrics.exposition import serve_metrics_listener

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(ListenError, match="METRICS_ADDRESS"), trio.fail_after(10):
            await serve_metrics_listener(Metrics(), address)
