"""The proxy beside the relay: `relay serve` with PROXY_ENABLED, and `relay proxy` alone."""

from __future__ import annotations

import base64
from pathlib import Path

import trio

from relay.auth import create_token, create_user
from relay.options import load_options
from relay.proxy.service import run_proxy
from relay.server import run_server


def _env(pg_dsn: str, tmp_path: Path) -> dict[str, str]:
    return {
        "CODER_PG_CONNECTION_URL": pg_dsn,
        "CODER_AI_GATEWAY_DATA_DIR": str(tmp_path),
        "CODER_AI_GATEWAY_HTTP_ADDRESS": "127.0.0.1:0",
        "CODER_AIBRIDGE_PROXY_ENABLED": "true",  # the old name works too
        "CODER_AI_GATEWAY_PROXY_LISTEN_ADDR": "127.0.0.1:0",
    }


async def _connect(port: int, target: str, token: str) -> bytes:
    creds = base64.b64encode(f"me:{token}".encode()).decode()
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(
            f"CONNECT {target} HTTP/1.1\r\nProxy-Authorization: Basic {creds}\r\n\r\n".encode()
        )
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(4096):
                data += chunk
        return data


def _proxy_port(lines: list[str]) -> int:
    line = next(line for line in lines if "AI Gateway Proxy listening on" in line)
    return int(line.rsplit(":", 1)[1])


async def test_relay_serve_also_listens_when_enabled(pg_dsn: str, tmp_path: Path) -> None:
    env = _env(pg_dsn, tmp_path)
    options = load_options(env, warn=lambda line: None)
    assert options.proxy_enabled
    lines: list[str] = []
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        app = await nursery.start(
            lambda task_status: run_server(
                options,
                env=env,
                shutdown_trigger=stop.wait,
                out=lines.append,
                task_status=task_status,
            )
        )
        port = _proxy_port(lines)
        await create_user(app.services.db, "alice")
        token, _ = await create_token(app.services.db, "alice")
        answer = await _connect(port, "127.0.0.1:443", token)
        assert answer.startswith(b"HTTP/1.1 403 "), answer
        assert b"loopback" in answer
        answer = await _connect(port, "127.0.0.1:443", "not-a-token")
        assert answer.startswith(b"HTTP/1.1 407 "), answer
        stop.set()
    assert any(line.startswith("relay: listening on http://127.0.0.1:") for line in lines)


async def test_relay_proxy_runs_alone(pg_dsn: str, tmp_path: Path) -> None:
    env = _env(pg_dsn, tmp_path)
    options = load_options(env, warn=lambda line: None)
    lines: list[str] = []
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        app, _proxy, where = await nursery.start(
            lambda task_status: run_proxy(
                options,
                env=env,
                shutdown_trigger=stop.wait,
                out=lines.append,
                task_status=task_status,
            )
        )
        assert app.services is not None
        await create_user(app.services.db, "bob")
        token, _ = await create_token(app.services.db, "bob")
        port = _proxy_port(lines)
        assert where == [f"127.0.0.1:{port}"]
        answer = await _connect(port, "[::ffff:10.0.0.1]:443", token)
        assert answer.startswith(b"HTTP/1.1 403 "), answer
        stop.set()
    # Only the proxy listened: the relay's own listener was not started.
    assert not any(line.startswith("relay: listening on") for line in lines)


async def test_relay_serve_with_tls_on_the_proxy_listener(pg_dsn: str, tmp_path: Path) -> None:
    from tests.proxy.test_proxy_tls_listener import listener_files, tls_connect

    cert, key, listener_ca = listener_files(tmp_path)
    env = {
        **_env(pg_dsn, tmp_path),
        "CODER_AIBRIDGE_PROXY_TLS_CERT_FILE": str(cert),
        "CODER_AI_GATEWAY_PROXY_TLS_KEY_FILE": str(key),
    }
    options = load_options(env, warn=lambda line: None)
    lines: list[str] = []
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        app = await nursery.start(
            lambda task_status: run_server(
                options, env=env, shutdown_trigger=stop.wait, out=lines.append,
                task_status=task_status,
            )
        )  # fmt: skip
        port = _proxy_port(lines)
        await create_user(app.services.db, "carol")
        token, _ = await create_token(app.services.db, "carol")
        creds = base64.b64encode(f"me:{token}".encode()).decode()
        async with await tls_connect(port, listener_ca) as stream:
            await stream.send_all(
                f"CONNECT 10.0.0.1:443 HTTP/1.1\r\nProxy-Authorization: Basic {creds}\r\n\r\n".encode()
            )
            with trio.fail_after(5):
                answer = await stream.receive_some(4096)
        assert answer.startswith(b"HTTP/1.1 403 "), answer
        stop.set()


def test_relay_proxy_ca_cert_prints_the_generated_ca(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from cryptography import x509

    from relay.cli import main

    monkeypatch.setenv("CODER_AI_GATEWAY_DATA_DIR", str(tmp_path))
    assert main(["proxy", "ca-cert"]) == 0
    first = capsys.readouterr().out
    cert = x509.load_pem_x509_certificate(first.encode())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = tmp_path / "proxy" / "ca-key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    # Generated once: the same CA the next time.
    assert main(["proxy", "ca-cert"]) == 0
    assert capsys.readouterr().out == first
    # A configured CA needs both files.
    monkeypatch.setenv("CODER_AI_GATEWAY_PROXY_CERT_FILE", str(tmp_path / "proxy" / "ca.pem"))
    assert main(["proxy", "ca-cert"]) == 1
    assert "PROXY_CERT_FILE and PROXY_KEY_FILE must be given together" in capsys.readouterr().err
    monkeypatch.setenv("CODER_AI_GATEWAY_PROXY_KEY_FILE", str(key))
    assert main(["proxy", "ca-cert"]) == 0
    assert capsys.readouterr().out == first


def test_leaves_are_minted_once_per_host_and_bounded() -> None:
    from relay.proxy.ca import CertificateAuthority, LeafContexts

    leaves = LeafContexts(CertificateAuthority.generate(), max_cached=2)
    a = leaves.context_for("api.openai.com")
    assert leaves.context_for("api.openai.com") is a
    leaves.context_for("api.anthropic.com")
    leaves.context_for("api.individual.githubcopilot.com")
    assert leaves.minted == 3
    assert leaves.cached("api.openai.com") is None  # the oldest went
