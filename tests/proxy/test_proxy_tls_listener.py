"""TLS on the proxy's own listener (PROXY_TLS_CERT_FILE / PROXY_TLS_KEY_FILE).

Clients speak TLS to the proxy (``HTTPS_PROXY=https://…``) and, for a
decrypted host, TLS again inside it to the minted leaf. The listener's
certificate is a leaf for 127.0.0.1 from a CA of the test's own.
"""

from __future__ import annotations

import json
import shutil
import ssl
import warnings
from pathlib import Path

import httpx
import pytest
import trio

from relay.options import load_options
from relay.proxy.ca import (
    CAError,
    CertificateAuthority,
    listener_context,
    listener_context_files,
)
from tests.proxy.test_proxy_listener import GOOD, auth, connect, proxy, read_answer
from tests.proxy.test_proxy_mitm import USER, proxy_beside
from tests.relay_harness import config_settled, mock_and_relay


def listener_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(certificate chain, key, the CA a client trusts) of a listener on 127.0.0.1."""
    ca = CertificateAuthority.generate()
    chain, key, _ = ca.mint("127.0.0.1")
    files = tmp_path / "listener.pem", tmp_path / "listener-key.pem", tmp_path / "listener-ca.pem"
    for path, data in zip(files, (chain, key, ca.cert_pem), strict=True):
        path.write_bytes(data)
    return files


def client_context(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


async def tls_connect(port: int, ca_file: Path) -> trio.SSLStream[trio.SocketStream]:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, client_context(ca_file), server_hostname="127.0.0.1")
    await stream.do_handshake()
    return stream


async def test_connect_and_absolute_form_over_tls_to_the_proxy(tmp_path: Path) -> None:
    cert, key, ca_file = listener_files(tmp_path)
    async with proxy(tls=listener_context_files(str(cert), str(key))) as h:
        # A tunnel inside the TLS connection; the destination answers and closes,
        # and the client sees the close (a TLS client cannot be half-closed).
        async with await tls_connect(h.port, ca_file) as stream:
            await stream.send_all(connect(f"127.0.0.1:{h.http_port}", auth()))
            assert await read_answer(stream) == b"HTTP/1.1 200 Connection Established\r\n\r\n"
            await stream.send_all(b"GET /through-tls HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await read_answer(stream, b"never")
            assert answer.startswith(b"HTTP/1.1 200 OK")
            assert answer.endswith(b"GET /through-tls HTTP/1.1\r\nHost: x")
        # httpx with an https:// proxy URL.
        h.resolver.answers["web.test"] = [["127.0.0.1"]]
        tls_proxy = httpx.Proxy(
            f"https://alice:{GOOD}@127.0.0.1:{h.port}", ssl_context=client_context(ca_file)
        )
        async with httpx.AsyncClient(proxy=tls_proxy) as client:
            response = await client.get(f"http://web.test:{h.http_port}/path")
        assert response.status_code == 200
        assert response.content.startswith(b"GET /path HTTP/1.1\r\n")


async def test_plain_tcp_and_old_tls_are_refused_and_the_listener_goes_on(
    tmp_path: Path,
) -> None:
    cert, key, ca_file = listener_files(tmp_path)
    async with proxy(tls=listener_context_files(str(cert), str(key))) as h:
        # Plaintext to a TLS listener: no answer in plaintext, the connection closed.
        answer = await h.exchange(connect(f"127.0.0.1:{h.dest_port}", auth()))
        assert not answer.startswith(b"HTTP/"), answer
        # TLS 1.1 is below the floor.
        old = client_context(ca_file)
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises(trio.BrokenResourceError):
            tcp = await trio.open_tcp_stream("127.0.0.1", h.port)
            async with trio.SSLStream(tcp, old, server_hostname="127.0.0.1") as stream:
                await stream.do_handshake()
        # An untrusting client refuses the proxy's certificate.
        other = tmp_path / "other-ca.pem"
        other.write_bytes(CertificateAuthority.generate().cert_pem)
        with pytest.raises(trio.BrokenResourceError):
            await tls_connect(h.port, other)
        async with await tls_connect(h.port, ca_file) as stream:
            await stream.send_all(connect(f"127.0.0.1:{h.dest_port}", auth("wrong")))
            assert (await read_answer(stream)).startswith(b"HTTP/1.1 407 ")


def test_the_listener_context_floor_and_errors(tmp_path: Path) -> None:
    cert, key, _ = listener_files(tmp_path)
    context = listener_context_files(str(cert), str(key))
    assert context is not None and context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert listener_context_files("", "") is None
    with pytest.raises(CAError, match="together"):
        listener_context_files(str(cert), "")
    (tmp_path / "bad.pem").write_text("not a certificate")
    with pytest.raises(CAError, match="cannot load the proxy's TLS certificate"):
        listener_context_files(str(tmp_path / "bad.pem"), str(key))


def test_the_options_and_their_aliases(tmp_path: Path) -> None:
    cert, key, _ = listener_files(tmp_path)
    base = {"CODER_AI_GATEWAY_DATA_DIR": str(tmp_path)}
    options = load_options(
        {
            **base,
            "CODER_AIBRIDGE_PROXY_TLS_CERT_FILE": str(cert),
            "CODER_AI_GATEWAY_PROXY_TLS_KEY_FILE": str(key),
        },
        warn=lambda line: None,
    )
    assert (options.proxy_tls_cert_file, options.proxy_tls_key_file) == (str(cert), str(key))
    # One without the other: refused when the proxy starts, before anything is bound.
    alone = load_options({**base, "CODER_AI_GATEWAY_PROXY_TLS_CERT_FILE": str(cert)})
    with pytest.raises(CAError, match="PROXY_TLS_CERT_FILE and PROXY_TLS_KEY_FILE"):
        listener_context(alone)


async def test_curl_decrypted_through_a_tls_proxy(pg_dsn: str, tmp_path: Path) -> None:
    """TLS to the proxy, TLS to api.anthropic.com inside it: an ordinary relay request."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    cert, key, listener_ca = listener_files(tmp_path)
    ca = CertificateAuthority.generate()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    tls = listener_context_files(str(cert), str(key))
    async with (
        mock_and_relay(pg_dsn, tmp_path / "relay") as (mock, relay),
    ):
        await config_settled(relay.app)
        async with proxy_beside(relay, ca, tls) as (_proxy, port):
            body = json.dumps({"model": "mock-text", "max_tokens": 50, "messages": USER})
            done = await trio.run_process(
                [
                    curl, "-sS", "--fail-with-body",
                    "--proxy", f"https://me:{relay.token}@127.0.0.1:{port}",
                    "--proxy-cacert", str(listener_ca), "--cacert", str(ca_file),
                    "-H", f"x-api-key: {relay.token}", "-H", "content-type: application/json",
                    "-H", "anthropic-version: 2023-06-01",
                    "--data-binary", body, "https://api.anthropic.com/v1/messages",
                ],
                capture_stdout=True, capture_stderr=True, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert done.stdout == mock.requests[0].response_body
            rows = await relay.wait_for_rows("SELECT provider_name, status FROM interceptions")
            assert (rows[0]["provider_name"], rows[0]["status"]) == ("anthropic", "completed")
