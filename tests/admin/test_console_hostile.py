"""The console as an attacker sees it: every value a client chooses, hostile.

Hypercorn on loopback and the real PostgreSQL; each API route is sent junk in
its path segments, query and body, and must answer a clear 4xx in the
console's JSON shape (never a 500), with the security headers on every answer.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import httpx
import pytest
import trio

from relay.auth import create_token, create_user
from relay.console import app as console_app
from relay.console import http as console_http
from relay.console.http import ConsoleRequest, Response, Route
from tests.admin.test_console_core import (
    ADMIN_TOKEN,
    SECURITY_HEADERS,
    Console,
    P,
    bearer,
    console,
    csrf_of,
)
from tests.raw_http import RawResponse, exchange, host_port, parse_responses, request_bytes
from tests.relay_harness import config_settled, running_relay

__all__ = ["console"]  # the fixture, used by name

JUNK_SEGMENTS = [
    "x" * 256,
    "%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E",
    "..",
    "%2e%2e",
    "'%3B--",
    "-1",
    "9" * 40,
    "relay_0123456789ab_" + "A" * 43,
    "%F0%9F%98%80",
    "%zz",
    "a%2Fb",
]
JUNK_QUERIES = [
    "limit=-1", "limit=0", "limit=abc", "limit=" + "9" * 40, "limit=1e9",
    "cursor=junk", "cursor=" + "A" * 10_000, "before=junk", "before=" + "9" * 30,
    "since=junk", "since=99999-01-01", "until=-1", "since=2026-13-45T99:99",
    "user=%3Cimg%3E", "model=" + "m" * 5000, "status=nope", "group_by=nope",
    "group_by=" + "x" * 300, "client=%FF", "provider=%E2%80%AE", "all=maybe",
    "dimension=;drop", "day=junk", "key=" + "k" * 10000,
]  # fmt: skip
JUNK_BODIES: list[bytes] = [
    b"",
    b"{",
    b"[]",
    b'"x"',
    b"null",
    b"1e999",
    b"[" * 5000 + b"]" * 5000,
    b'{"name": 5, "admin": "yes", "key": [], "type": {}, "members": 3}',
    b'{"name": "a\\u0000b", "user": "a\\u0000b", "group": "\\u0000"}',
    b'{"name": "' + b"n" * 60_000 + b'"}',
    b'{"name": "\\ud800"}',
    b"\xff\xfe",
    b'{"amount": 1e308, "limit": -1, "micros": 99999999999999999999999}',
]


def check_shape(response: httpx.Response, what: object) -> None:
    assert response.status_code < 500, (what, response.status_code, response.text[:500])
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (what, name)
    if response.status_code >= 400 and response.headers["content-type"] == "application/json":
        body = response.json()
        assert isinstance(body.get("error"), str) and isinstance(body.get("message"), str)


def concrete(pattern: str, value: str) -> str:
    return re.sub(r"\{[a-z_]+\}", value, pattern)


async def test_junk_in_every_route_s_path_and_query_is_a_4xx_never_a_500(console: Console) -> None:
    admin = bearer(console.admin_token)
    client = console.client
    for route in console_app.ROUTES:
        if route.method != "GET" or route.pattern == "api/tail":
            continue
        for value in JUNK_SEGMENTS:
            path = concrete(route.pattern, value)
            response = await client.get(P + path, headers=admin)
            check_shape(response, path)
        for query in JUNK_QUERIES:
            path = concrete(route.pattern, "k") + "?" + query
            response = await client.get(P + path, headers=admin)
            check_shape(response, path[:200])


async def test_junk_bodies_to_every_change_are_a_4xx_never_a_500(console: Console) -> None:
    admin = {**bearer(console.admin_token), "content-type": "application/json"}
    client = console.client
    for route in console_app.ROUTES:
        if route.method != "POST":
            continue
        for value in ("nobody", "x" * 256, "%00"[:0] + "a%20b"):
            path = concrete(route.pattern, value)
            for body in JUNK_BODIES:
                response = await client.post(P + path, headers=admin, content=body)
                check_shape(response, (path, body[:80]))


async def test_a_nul_anywhere_in_a_json_body_is_a_400_not_a_store_error(console: Console) -> None:
    admin = {**bearer(console.admin_token), "content-type": "application/json"}
    for path, body in [
        ("api/tokens", b'{"user": "nobody\\u0000"}'),  # reached PostgreSQL: a 500
        ("api/users", b'{"name": "a\\u0000b"}'),
        ("api/prices", b'{"provider_type": "openai", "model": "m\\u0000"}'),
    ]:
        response = await console.client.post(P + path, headers=admin, content=body)
        check_shape(response, path)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"] == "bad_request"
    # An escaped backslash before u0000 is text, not a NUL: decoded as usual.
    text = b'{"user": "no\\\\u0000body"}'
    response = await console.client.post(P + "api/tokens", headers=admin, content=text)
    assert response.status_code == 404 and "NUL" not in response.text


async def _raw_answer(url: str, data: bytes, more: bytes = b"", repeat: int = 0) -> RawResponse:
    """Send ``data``, then ``more`` up to ``repeat`` times while the answer is read
    (``RawResponse.headers["x-test-sent"]``: how many times ``more`` went out whole)."""
    host, port = host_port(url)
    responses: list[RawResponse] = []
    sent = 0

    async def send_more(stream: trio.SocketStream) -> None:
        nonlocal sent
        for _ in range(repeat):
            try:
                await stream.send_all(more)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            sent += 1

    with trio.fail_after(20):
        stream = await trio.open_tcp_stream(host, port)
        async with stream, trio.open_nursery() as nursery:
            await stream.send_all(data)
            nursery.start_soon(send_more, stream)
            buffer = b""
            while not responses:
                chunk = await stream.receive_some(65536)
                assert chunk, "closed without an answer"
                buffer = parse_responses(buffer + chunk, responses)
            nursery.cancel_scope.cancel()
    responses[0].headers["x-test-sent"] = str(sent)
    return responses[0]


async def test_a_huge_or_endless_body_is_413_after_at_most_64_kib(console: Console) -> None:
    async with console.sign_in() as client:
        csrf = csrf_of((await client.get(P + "sessions")).text)
        cookie = f"relay_console={client.cookies['relay_console']}"
    headers = {"cookie": cookie, "x-csrf-token": csrf, "content-type": "application/json"}
    megabyte = b"x" * (1 << 20)
    # Declared 100 MB: answered once 64 KiB are over, the other 99.9 MB never read.
    declared = request_bytes("POST", P + "api/users", {**headers, "content-length": "104857600"})
    answer = await _raw_answer(console.relay.url, declared, megabyte, repeat=100)
    assert answer.status == 413 and answer.json()["error"] == "too_large", answer
    assert answer.headers["connection"] == "close"
    assert int(answer.headers["x-test-sent"]) < 100  # answered with most of it unsent
    for name, value in SECURITY_HEADERS.items():
        assert answer.headers[name] == value
    # Chunked without an end.
    chunked = request_bytes("POST", P + "api/users", {**headers, "transfer-encoding": "chunked"})
    chunk = b"%x\r\n" % len(megabyte) + megabyte + b"\r\n"
    answer = await _raw_answer(console.relay.url, chunked, chunk, repeat=100)
    assert answer.status == 413 and answer.json()["error"] == "too_large"
    assert int(answer.headers["x-test-sent"]) < 100
    # The sign-in form too (no session yet).
    signin = request_bytes(
        "POST", P + "signin",
        {"content-type": "application/x-www-form-urlencoded", "content-length": "104857600"},
    )  # fmt: skip
    answer = await _raw_answer(console.relay.url, signin, megabyte, repeat=100)
    assert answer.status == 413


async def test_a_body_that_stops_coming_is_408(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console_http, "BODY_IDLE", 0.2)
    headers = {**bearer(console.admin_token), "content-type": "application/json"}
    slow = request_bytes("POST", P + "api/users", {**headers, "content-length": "100"}, b'{"na')
    answer = await _raw_answer(console.relay.url, slow)
    assert answer.status == 408 and answer.json()["error"] == "timeout", answer
    assert answer.headers["connection"] == "close"


async def test_a_handler_s_exception_is_a_json_500_that_tells_nothing(
    console: Console, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(req: ConsoleRequest) -> Response:
        raise RuntimeError("internal detail: SELECT secret FROM vault")

    monkeypatch.setattr(
        console_app, "ROUTES", [*console_app.ROUTES, Route("GET", "api/broken", broken)]
    )
    with caplog.at_level(logging.ERROR, logger="relay.console"):
        response = await console.client.get(P + "api/broken", headers=bearer(console.admin_token))
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal",
        "message": "the console failed to answer; see the relay's log",
    }
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    assert "vault" not in response.text
    assert "internal detail" in caplog.text  # the operator sees it in the log


async def test_escaped_separators_and_dots_name_no_static_file(console: Console) -> None:
    assert (await console.client.get(P + "static/pages/sessions.js")).status_code == 200
    for target in ("static/pages%2Fsessions.js", "static/%61pp.js", "static/app%2ejs"):
        raw = request_bytes("GET", P + target, {"connection": "close"})
        (answer,) = (await exchange(console.relay.url, raw)).responses
        assert answer.status == 404, target
        assert answer.headers["content-security-policy"] == console_app.CSP


async def test_origins_a_browser_can_send_from_elsewhere_are_refused(console: Console) -> None:
    async with console.sign_in() as client:
        csrf = csrf_of((await client.get(P + "sessions")).text)
        url = P + "api/users"
        host, port = host_port(console.relay.url)
        for origin in (
            f"http://{host}:{port + 1}",  # same site, another port: the cookie is sent
            f"https://{host}:{port}",  # over plain HTTP the scheme is not compared...
            "null",
            f"http://{host}:{port}.evil.example",
            f"http://evil.example#{host}:{port}",
            f"http://user@{host}:{port}",
        ):
            headers = {"x-csrf-token": csrf, "origin": origin}
            response = await client.post(url, json={"name": "mallory"}, headers=headers)
            expected = 200 if origin.startswith("https://") and "@" not in origin else 403
            assert response.status_code in (expected, 201), (origin, response.text)
            if expected == 200:
                await console.relay.db.execute("DELETE FROM users WHERE name = 'mallory'")
        # ...but an https console refuses an http origin.
        tls = {"x-forwarded-proto": "https", "x-csrf-token": csrf}
        response = await client.post(
            url, json={"name": "m2"}, headers={**tls, "origin": console.relay.url}
        )
        assert response.status_code == 403
    # No Host at all (HTTP/1.0): an Origin can name nothing it matches.
    raw = (
        f"POST {P}api/users HTTP/1.0\r\nauthorization: Bearer {console.admin_token}\r\n"
        f"origin: {console.relay.url}\r\ncontent-type: application/json\r\n"
        "content-length: 2\r\n\r\n{}"
    ).encode()
    (answer,) = (await exchange(console.relay.url, raw)).responses
    assert answer.status in (400, 403), answer


async def test_junk_forged_and_expired_cookies_sign_no_one_in(console: Console) -> None:
    db = console.relay.db
    async with console.sign_in() as signed:
        secret = signed.cookies["relay_console"]
        assert (await signed.get(P + "api/whoami")).status_code == 200
    whoami = P + "api/whoami"
    for cookie in (
        "relay_console=",
        "relay_console=" + "A" * 43,  # forged
        "relay_console=" + "A" * 10_000,
        "relay_console=%00%ff",
        "relay_console=\u00e9t\u00e9",
        "; ".join(f"relay_console={i}" for i in range(500)),
        "x=" + "y" * 12_000,
    ):
        raw = request_bytes("GET", whoami, {"cookie": cookie, "connection": "close"})
        answers = (await exchange(console.relay.url, raw)).responses
        assert answers and answers[0].status in (400, 401, 431), (cookie[:40], answers)
    # Someone else's cookie before one's own: the first relay_console is the one read.
    raw = request_bytes("GET", whoami, {"cookie": f"relay_console=forged; relay_console={secret}"})
    (answer,) = (await exchange(console.relay.url, raw)).responses
    assert answer.status == 401
    # An expired session is over, though its cookie is sent.
    await db.execute("UPDATE console_sessions SET expires_at = now() - interval '1 second'")
    raw = request_bytes("GET", whoami, {"cookie": f"relay_console={secret}"})
    (answer,) = (await exchange(console.relay.url, raw)).responses
    assert answer.status == 401


async def test_no_secret_reaches_a_log_line_an_answer_or_the_audit(
    console: Console, caplog: pytest.LogCaptureFixture
) -> None:
    secrets: list[str] = [console.admin_token, ADMIN_TOKEN]
    with caplog.at_level(logging.DEBUG):
        async with console.sign_in() as client:
            secrets.append(client.cookies["relay_console"])
            page = await client.get(P + "sessions")
            csrf = csrf_of(page.text)
            secrets.append(csrf)
            own = {"x-csrf-token": csrf}
            key = "sk-live-" + "k" * 40
            secrets.append(key)
            added = await client.post(
                P + "api/providers",
                json={"name": "leaky", "type": "openai", "base_url": "https://api.example.com",
                      "keys": [key]},
                headers=own,
            )  # fmt: skip
            assert added.status_code == 201, added.text
            made = await client.post(P + "api/tokens", json={"user": "root"}, headers=own)
            assert made.status_code == 201, made.text
            secrets.append(made.json()["token"])
            wrong = await client.post(
                P + "api/providers/leaky", json={"keys": [key, "bad\u0001"]}, headers=own
            )
            assert wrong.status_code == 400 and "control" in wrong.text
            answers = [added.text, wrong.text, (await client.get(P + "api/providers")).text]
            answers.append((await client.get(P + "api/audit")).text)
            await client.post(P + "signin", data={"token": ADMIN_TOKEN})
            bad = await client.post(P + "signin", data={"token": ADMIN_TOKEN + "x"})
            answers.append(bad.text)
            secrets.append(console.user_token)  # refused sign-ins are logged: not their token
            not_admin = await client.post(P + "signin", data={"token": console.user_token})
            assert not_admin.status_code == 403
            answers.append(not_admin.text)
    # The relay's and hypercorn's lines (the test's own HTTP client logs the cookie it got).
    relay_log = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''}"
        for r in caplog.records
        if not r.name.startswith(("httpx", "httpcore"))
    )
    assert "signed in" in relay_log and "sign-in refused (forbidden" in relay_log
    detail = await console.relay.db.fetchval("SELECT string_agg(detail::text, ' ') FROM audit_log")
    for secret in secrets:
        assert secret not in relay_log, secret[:12]
        assert secret not in (detail or "")
        for text in answers:
            assert secret not in text, secret[:12]


async def test_an_empty_admin_token_opens_nothing(pg_dsn: str, tmp_path: Path) -> None:
    async with running_relay(pg_dsn, tmp_path, {"CODER_AI_GATEWAY_ADMIN_TOKEN": ""}) as relay:
        db = relay.db
        await create_user(db, "root", admin=True)
        await config_settled(relay.app)
        async with httpx.AsyncClient(base_url=relay.url) as client:
            for value in ("Bearer", "Bearer null", "Basic Og==", 'Bearer ""'):
                headers = {"authorization": value}
                assert (await client.get(P + "api/whoami", headers=headers)).status_code == 401
            signin = await client.post(P + "signin", data={"token": ""})
            assert signin.status_code == 401 and "set-cookie" not in signin.headers
            # A session row made when ADMIN_TOKEN was empty (or forged so) does not open.
            await db.execute(
                "INSERT INTO console_sessions (id, actor_name, csrf, admin_token_hash, expires_at) "
                "VALUES ($1, 'admin-token', 'c', $2, now() + interval '1 hour')",
                hashlib.sha256(b"forged-secret").digest(),
                hashlib.sha256(b"").digest(),
            )
            client.cookies.set("relay_console", "forged-secret")
            assert (await client.get(P + "api/whoami")).status_code == 401
            token, _ = await create_token(db, "root")
            assert (await client.get(P + "api/whoami", headers=bearer(token))).status_code == 200
