"""Hostile input over raw sockets: path tricks, slow bodies, smuggling, connection floods.

HTTP clients normalise paths and refuse ambiguous framing, so these requests
are written byte for byte (tests/raw_http.py). The relay runs in front of the
bundled mock upstream; "nothing ran" means the mock saw no request.
"""

from __future__ import annotations

import contextlib
import os
from functools import partial
from importlib.metadata import version

import httpx
import hypercorn.protocol
import hypercorn.trio.run
import pytest
import trio
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.tcp_server import TCPServer

from relay.auth import create_token, create_user
from relay.hypercorn_fixes import TESTED_VERSIONS, RelayH11Protocol, RelayTCPServer
from relay.options import load_options
from relay.routes import PathRefused, normalise_api_path
from relay.server import hypercorn_config
from tests.raw_http import exchange, host_port, parse_responses, request_bytes
from tests.relay_harness import mock_and_relay

pytestmark = pytest.mark.usefixtures("pg_dsn")

CHAT_BODY = b'{"model":"mock-text","messages":[{"role":"user","content":"hi"}]}'

# Each would reach another route once a front end or the provider resolves it.
BYPASSES = [
    ("POST", "/openai/v1/conversations/../chat/completions"),
    ("POST", "/openai/v1/conversations/%2e%2e/chat/completions"),
    ("POST", "/openai/v1/conversations/%2E%2E/responses"),
    ("POST", "/openai/v1/conversations/.%2e/responses"),
    ("POST", "/openai/v1/conversations/./x"),
    ("POST", "/openai/v1/conversations/%2e/x"),
    ("GET", "/openai/v1/models/../files"),
    ("GET", "/openai/v1/models/%2e%2E/files"),
    ("GET", "/openai/v1/models/x%2F..%2Ffiles"),
    ("GET", "/openai/v1/models/x%2f..%2ffiles"),
    ("GET", "/openai/v1/models/x%5C..%5Cfiles"),
    ("GET", "/openai/v1/models/x%5c..%5cfiles"),
    ("GET", "/openai/v1/models/x\\..\\files"),
    ("GET", "/openai/v1/models//files"),
    ("GET", "/openai/v1/models/"),
    ("POST", "/openai/v1/conversations//x"),
    ("GET", "/anthropic/v1/models/%2e%2e"),
    ("POST", "/anthropic/v1/messages/../count_tokens"),
]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/models", "/v1/models"),
        ("/v1/%6Dodels/%7Ex", "/v1/models/~x"),
        ("/v1/models/a%2Fb", "/v1/models/a%2Fb"),  # an escaped "/" stays as sent
        ("/model/arn%3Aaws%3Ax/invoke", "/model/arn%3Aaws%3Ax/invoke"),
        ("/", "/"),
    ],
)
def test_normalise_decodes_only_unreserved_escapes(path, expected):
    assert normalise_api_path(path) == expected


@pytest.mark.parametrize("path", ["/v1/..", "/v1/%2E", "/v1/.%2E/x", "/v1//x", "/v1/x/", "/v\\1"])
def test_normalise_refuses_what_could_resolve_elsewhere(path):
    with pytest.raises(PathRefused):
        normalise_api_path(path)


async def test_passthrough_paths_cannot_reach_other_routes(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path) as (mock, relay):
        auth = {
            "authorization": f"Bearer {relay.token}",
            "content-type": "application/json",
            "connection": "close",
        }
        for method, path in BYPASSES:
            for prefix in ("/api/v2/ai-gateway", "/api/v2/aibridge"):
                body = CHAT_BODY if method == "POST" else b""
                headers = {**auth, "content-length": str(len(body))}
                raw = request_bytes(method, prefix + path, headers, body)
                result = await exchange(relay.url, raw, quiet=0.5)
                assert [r.status for r in result.responses] == [400], path
                error = result.responses[0].json()
                if path.startswith("/openai"):
                    assert error["error"]["type"] == "invalid_request_error", path
                    assert "path not allowed" in error["error"]["message"]
                else:
                    assert error["type"] == "error", path
                    assert error["error"]["type"] == "invalid_request_error"
        assert mock.requests == []
        # Routes are matched on the normalised path, which is also what goes upstream.
        raw = request_bytes("GET", "/api/v2/ai-gateway/openai/v1/%6dodels", auth)
        result = await exchange(relay.url, raw, quiet=0.5)
        assert [r.status for r in result.responses] == [200]
        assert [r.path for r in mock.requests] == ["/v1/models"]


# -- request bodies: a deadline, and read before a concurrency slot is taken ----------------

SLOW_BODY_ENV = {
    "CODER_AI_GATEWAY_MAX_CONCURRENCY": "2",
    "CODER_AI_GATEWAY_REQUEST_BODY_TIMEOUT": "3s",
    "CODER_AI_GATEWAY_REQUEST_BODY_IDLE_TIMEOUT": "1s",
}


async def _read_until_closed(stream: trio.SocketStream) -> bytes:
    data = b""
    with trio.fail_after(15):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def _slow_body(url: str, token: str, *, trickle: bool, answers: list[bytes]) -> None:
    """Declare a large body, send 8 bytes, then trickle (or go silent); keep the answer."""
    head = request_bytes(
        "POST",
        "/api/v2/ai-gateway/openai/v1/chat/completions",
        {"authorization": f"Bearer {token}", "content-length": "100000"},
    )
    stream = await trio.open_tcp_stream(*host_port(url))
    async with stream:
        await stream.send_all(head + b'{"model"')
        async with trio.open_nursery() as nursery:
            if trickle:

                async def dribble() -> None:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        while True:
                            await trio.sleep(0.2)
                            await stream.send_all(b" ")

                nursery.start_soon(dribble)
            answers.append(await _read_until_closed(stream))
            nursery.cancel_scope.cancel()


async def test_slow_bodies_hold_no_slot_and_get_408(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path, extra_env=SLOW_BODY_ENV) as (mock, relay):
        await create_user(relay.db, "bob")
        bob, _ = await create_token(relay.db, "bob")
        answers: list[bytes] = []
        async with trio.open_nursery() as nursery:
            for i in range(4):  # twice MAX_CONCURRENCY
                nursery.start_soon(
                    partial(_slow_body, relay.url, relay.token, trickle=i % 2 == 0, answers=answers)
                )
            await trio.sleep(0.5)  # their heads have arrived; their bodies never will
            async with httpx.AsyncClient() as http:
                r = await http.post(
                    relay.gateway("openai") + "/v1/chat/completions",
                    headers={"authorization": f"Bearer {bob}"},
                    content=CHAT_BODY,
                )
            assert r.status_code == 200, r.text
        assert len(answers) == 4
        for answer in answers:  # read to EOF: the relay closed each connection
            responses: list = []
            parse_responses(answer, responses)
            assert [x.status for x in responses] == [408]
            assert responses[0].headers.get("connection") == "close"
            error = responses[0].json()["error"]
            assert error["type"] == "invalid_request_error"
            assert "not received in time" in error["message"]
        assert len(mock.requests) == 1  # only bob's


# -- request smuggling and h2c --------------------------------------------------------------


@pytest.mark.parametrize("te_first", [False, True])
async def test_content_length_with_transfer_encoding_is_refused_and_closed(
    pg_dsn, tmp_path, te_first
):
    async with mock_and_relay(pg_dsn, tmp_path) as (mock, relay):
        auth = f"Bearer {relay.token}"
        hidden = request_bytes(
            "GET", "/api/v2/ai-gateway/openai/v1/models", {"authorization": auth}
        )
        body = b"0\r\n\r\n" + hidden
        framing = {"content-length": str(len(body)), "transfer-encoding": "chunked"}
        if te_first:
            framing = dict(reversed(framing.items()))
        headers = {"authorization": auth, "content-type": "application/json", **framing}
        raw = request_bytes("POST", "/api/v2/ai-gateway/openai/v1/chat/completions", headers, body)
        result = await exchange(relay.url, raw, quiet=3)
        assert [r.status for r in result.responses] == [400]
        assert result.closed
        assert (
            "Content-Length and Transfer-Encoding" in result.responses[0].json()["error"]["message"]
        )
        assert mock.requests == []  # neither the request nor the hidden one ran


async def test_cleartext_http2_is_not_served(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path) as (_mock, relay):
        # An h2c upgrade is ignored: the request is answered in HTTP/1.1.
        upgrade = request_bytes(
            "GET",
            "/healthz",
            {
                "connection": "Upgrade, HTTP2-Settings, close",
                "upgrade": "h2c",
                "http2-settings": "AAMAAABkAARAAAAAAAIAAAAA",
            },
        )
        result = await exchange(relay.url, upgrade, quiet=3)
        assert [r.status for r in result.responses] == [200]
        assert result.responses[0].json() == {"status": "ok"}
        # Prior knowledge: the HTTP/2 preface gets an HTTP/1.1 answer, never a SETTINGS frame.
        stream = await trio.open_tcp_stream(*host_port(relay.url))
        async with stream:
            await stream.send_all(
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
            )
            reply = await _read_until_closed(stream)
        assert reply.startswith(b"HTTP/1.1 ")
        async with httpx.AsyncClient(http1=False, http2=True) as h2:
            with pytest.raises(httpx.HTTPError):
                await h2.get(relay.url + "/healthz")


def test_hypercorn_is_a_version_the_fixes_were_checked_against():
    """relay.hypercorn_fixes overrides private methods: re-read them on any upgrade."""
    assert version("hypercorn") in TESTED_VERSIONS
    hypercorn_config(load_options({}, warn=lambda line: None))
    assert hypercorn.trio.run.TCPServer is RelayTCPServer
    assert hypercorn.protocol.H11Protocol is RelayH11Protocol
    for name in ("_read_data", "_idle_timeout", "_initiate_server_close", "run"):
        assert callable(getattr(TCPServer, name))
    assert callable(H11Protocol._check_protocol)


# -- connections: closed when the client closes, and at most MAX_CONNECTIONS ----------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))  # the relay runs in the test's process


def _close_wait_sockets(port: int) -> int:
    """Server-side sockets of ``port`` the client closed and the relay has not (CLOSE-WAIT)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "08":
                    count += 1
    return count


async def _held_until_released(relay_port: int, baseline: int) -> None:
    # Generous deadline, far below the 75 s keep-alive timeout that held them before.
    with trio.fail_after(30):
        while _close_wait_sockets(relay_port) or _open_fds() > baseline + 5:
            await trio.sleep(0.1)


async def test_connections_the_client_closed_are_released(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path) as (_mock, relay):
        host, port = host_port(relay.url)
        baseline = _open_fds()
        healthz = request_bytes("GET", "/healthz")
        for i in range(300):
            stream = await trio.open_tcp_stream(host, port)
            if i % 3 == 1:  # a request head that never completes
                await stream.send_all(healthz[:20])
            elif i % 3 == 2:  # a whole request, then the client leaves a kept-alive connection
                await stream.send_all(healthz)
                assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 200")
            await stream.aclose()
        await _held_until_released(port, baseline)


async def test_connections_beyond_max_connections_are_refused(pg_dsn, tmp_path):
    env = {"CODER_AI_GATEWAY_MAX_CONNECTIONS": "5"}
    async with mock_and_relay(pg_dsn, tmp_path, extra_env=env) as (_mock, relay):
        host, port = host_port(relay.url)
        healthz = request_bytes("GET", "/healthz")
        held = []
        for _ in range(5):  # each served, then kept alive (and counted)
            stream = await trio.open_tcp_stream(host, port)
            await stream.send_all(healthz)
            assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 200")
            held.append(stream)
        result = await exchange(relay.url, healthz, quiet=3)
        assert [r.status for r in result.responses] == [503]
        assert result.closed
        refusal = result.responses[0]
        assert refusal.headers["connection"] == "close"
        message = "too many connections to this relay process (at most 5)"
        assert refusal.json()["error"]["message"] == message  # OpenAI's shape
        assert refusal.json()["type"] == "error"  # and Anthropic's
        # A connection the client closes frees its place.
        await held.pop().aclose()
        healthz_close = request_bytes("GET", "/healthz", {"connection": "close"})
        with trio.fail_after(30):
            while True:
                result = await exchange(relay.url, healthz_close, quiet=3)
                if [r.status for r in result.responses] == [200]:
                    break
                await trio.sleep(0.1)
        for stream in held:
            await stream.aclose()
