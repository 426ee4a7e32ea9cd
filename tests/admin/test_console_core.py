"""The console's core: sign-in, sessions, CSRF, the dispatcher and the static files.

The real relay (hypercorn on loopback, the real PostgreSQL) driven with httpx,
and raw HTTP where httpx would normalise the path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.auth import create_token, create_user, revoke_token, set_admin
from relay.console import app as console_app
from relay.console.app import handle_console
from relay.console.http import ConsoleRequest, Response, Route, json_response
from tests.raw_http import exchange, request_bytes
from tests.relay_harness import RunningRelay, config_settled, running_relay

ADMIN_TOKEN = "console-test-admin-token-0123456789"
P = "/api/v2/ai-gateway/admin/ui/"
ALIAS = "/api/v2/aibridge/admin/ui/"
PAGES = [
    "sessions",
    "sessions/some%20key",
    "interceptions/0190f0f0-0000-7000-8000-000000000000",
    "spend",
    "providers",
    "access",
    "tail",
    "audit",
]
# Every API path of the contract (docs/console.md), answered or not yet by this tree.
API_GETS = [
    "api/whoami",
    "api/sessions",
    "api/sessions/k",
    "api/interceptions/x",
    "api/spend",
    "api/spend.csv",
    "api/budgets",
    "api/providers",
    "api/users",
    "api/groups",
    "api/tokens",
    "api/audit",
    "api/tail",
]
API_POSTS = [
    "api/providers",
    "api/providers/openai/disable",
    "api/users/bob/admin",
    "api/tokens/0123456789ab/revoke",
    "api/budgets",
]
SECURITY_HEADERS = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "content-security-policy": console_app.CSP,
}


@dataclass
class Console:
    relay: RunningRelay
    client: httpx.AsyncClient
    admin_token: str  # a relay token of the admin user "root"
    user_token: str  # a relay token of "alice", not an admin

    @contextlib.asynccontextmanager
    async def sign_in(self, token: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
        """A new client (its own cookie jar) signed in with ``token``."""
        async with httpx.AsyncClient(base_url=self.relay.url) as client:
            response = await client.post(P + "signin", data={"token": token or self.admin_token})
            assert response.status_code == 303, response.text
            yield client


@pytest.fixture
async def console(pg_dsn: str, tmp_path: Path) -> AsyncIterator[Console]:
    env = {"CODER_AI_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
    async with running_relay(pg_dsn, tmp_path, env) as relay:
        await create_user(relay.db, "root", admin=True)
        admin_token, _ = await create_token(relay.db, "root")
        await config_settled(relay.app)
        async with httpx.AsyncClient(base_url=relay.url) as client:
            yield Console(relay, client, admin_token, relay.token)


def csrf_of(html: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]*)">', html)
    assert found is not None, html
    return found.group(1)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_signing_in_sets_a_strict_http_only_cookie_and_opens_the_console(
    console: Console,
) -> None:
    client = console.client
    form = await client.get(P + "signin")
    assert form.status_code == 200
    assert 'data-testid="signin-token"' in form.text
    for name, value in SECURITY_HEADERS.items():
        assert form.headers[name] == value

    response = await client.post(P + "signin", data={"token": console.admin_token})
    assert response.status_code == 303
    assert response.headers["location"] == P + "sessions"
    cookie = response.headers["set-cookie"]
    assert re.fullmatch(
        r"relay_console=[A-Za-z0-9_-]{43}; Path=/api/v2/; Max-Age=28800; HttpOnly; SameSite=Strict",
        cookie,
    ), cookie  # over plain HTTP: not Secure
    assert console.admin_token not in cookie

    page = await client.get(P + "sessions")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    for name, value in SECURITY_HEADERS.items():
        assert page.headers[name] == value
    assert '<body data-page="sessions" data-base="/api/v2/ai-gateway/admin/ui/"' in page.text
    assert len(csrf_of(page.text)) == 43
    assert "<script>" not in page.text and "style=" not in page.text  # the CSP allows neither
    for path, name in [("sessions/a%20b", "session"), ("interceptions/1", "interception")]:
        shell = await client.get(P + path)
        assert f'data-page="{name}"' in shell.text
    who = await client.get(P + "api/whoami")
    assert who.json() == {"user_id": who.json()["user_id"], "name": "root", "via": "console"}
    assert who.headers["content-security-policy"] == console_app.CSP
    # The prefix alone and the prefix without its slash lead to the sessions page.
    assert (await client.get(P)).headers["location"] == P + "sessions"
    assert (await client.get(P[:-1])).headers["location"] == P
    # The alias prefix: the same cookie (Path=/api/v2/), links under the alias.
    alias = await client.get(ALIAS + "spend")
    assert alias.status_code == 200 and f'data-base="{ALIAS}"' in alias.text

    # ADMIN_TOKEN signs in too, as "admin-token"; a sign-in goes on to where it was sent from.
    other = httpx.AsyncClient(base_url=console.relay.url)
    async with other:
        bounced = await other.get(P + "providers")
        assert bounced.status_code == 303
        assert bounced.headers["location"] == P + "signin?next=providers"
        signin = await other.post(P + "signin", data={"token": ADMIN_TOKEN, "next": "providers"})
        assert signin.headers["location"] == P + "providers"
        assert (await other.get(P + "api/whoami")).json() == {
            "user_id": None,
            "name": "admin-token",
            "via": "console",
        }
        # A page path keeps its escapes on the way through the sign-in form.
        async with httpx.AsyncClient(base_url=console.relay.url) as fresh:  # signed out
            bounced = await fresh.get(P + "sessions/a%20b")
            assert bounced.headers["location"] == P + "signin?next=sessions/a%2520b"
            form = await fresh.get(bounced.headers["location"])
            assert '<input type="hidden" name="next" value="sessions/a%20b">' in form.text
        signin = await other.post(
            P + "signin", data={"token": ADMIN_TOKEN, "next": "sessions/a%20b"}
        )
        assert signin.headers["location"] == P + "sessions/a%20b"
        crlf = await other.post(
            P + "signin", data={"token": ADMIN_TOKEN, "next": "sessions/x\r\nX: y"}
        )
        assert crlf.headers["location"] == P + "sessions/x%0D%0AX%3A%20y"
        # next is a page of the console or nothing: never another site.
        for hostile in ("//evil.example/x", "https://evil.example/", "../../x", "api/whoami"):
            again = await other.post(P + "signin", data={"token": ADMIN_TOKEN, "next": hostile})
            assert again.headers["location"] == P + "sessions", hostile


async def test_the_cookie_is_secure_over_tls(console: Console) -> None:
    services = console.relay.app.services
    assert services is not None
    body = f"token={console.admin_token}".encode()

    async def sign_in(scheme: str) -> tuple[int, dict[bytes, bytes]]:
        sent: list[dict[str, Any]] = []
        received = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            return received.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "scheme": scheme,
            "method": "POST",
            "path": P + "signin",
            "raw_path": (P + "signin").encode(),
            "query_string": b"",
            "headers": [
                (b"host", b"relay.example"),
                (b"content-type", b"application/x-www-form-urlencoded"),
                (b"origin", f"{scheme}://relay.example".encode()),
            ],
        }
        await handle_console(scope, receive, send, services)
        return sent[0]["status"], dict(sent[0]["headers"])

    status, headers = await sign_in("https")
    assert status == 303
    assert headers[b"set-cookie"].endswith(b"; HttpOnly; SameSite=Strict; Secure")
    status, headers = await sign_in("http")
    assert status == 303
    assert headers[b"set-cookie"].endswith(b"; HttpOnly; SameSite=Strict")


async def test_behind_a_tls_terminating_proxy_the_cookie_is_secure_and_its_host_accepted(
    console: Console,
) -> None:
    """The relay speaks plain HTTP to a proxy in front that says what the browser used."""
    token = {"token": console.admin_token}
    browser_origin = {"origin": "https://relay.example"}
    client = console.client
    for proxy in (
        {"x-forwarded-proto": "https", "x-forwarded-host": "relay.example"},
        {"forwarded": 'for=10.0.0.1;proto=https;host="relay.example", proto=http'},
    ):
        signin = await client.post(P + "signin", data=token, headers={**proxy, **browser_origin})
        assert signin.status_code == 303, (proxy, signin.text)
        assert signin.headers["set-cookie"].endswith("; HttpOnly; SameSite=Strict; Secure")
        # Over TLS, an http origin is another origin.
        downgraded = await client.post(
            P + "signin", data=token, headers={**proxy, "origin": "http://relay.example"}
        )
        assert downgraded.status_code == 403
    # Without the proxy's word, the browser's origin is not this request's host.
    refused = await client.post(P + "signin", data=token, headers=browser_origin)
    assert refused.status_code == 403
    plain = await client.post(P + "signin", data=token, headers={"x-forwarded-proto": "http"})
    assert plain.status_code == 303 and not plain.headers["set-cookie"].endswith("Secure")


async def test_a_non_admin_is_refused_everywhere_and_no_credential_is_sent_to_sign_in(
    console: Console, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay.console")
    client = console.client
    # Sign-in: a user's valid token that is not an admin's is 403, an unknown one 401.
    refused = await client.post(P + "signin", data={"token": console.user_token})
    assert refused.status_code == 403
    assert "not an admin" in refused.text and "set-cookie" not in refused.headers
    as_json = await client.post(P + "signin", json={"token": console.user_token})
    assert as_json.status_code == 403 and as_json.json()["error"] == "forbidden"
    for wrong in ("relay_0123456789ab_" + "A" * 43, "nonsense", ""):
        unknown = await client.post(P + "signin", data={"token": wrong})
        assert unknown.status_code == 401 and "set-cookie" not in unknown.headers
    # Refusals are logged with a token's public id at most, never the token.
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "relay.console")
    assert "sign-in refused (forbidden, relay_" in logged
    assert "sign-in refused (unknown, relay_0123456789ab_…)" in logged
    assert console.user_token not in logged and "A" * 43 not in logged and "nonsense" not in logged

    user = bearer(console.user_token)
    for page in PAGES:
        assert (await client.get(P + page, headers=user)).status_code == 403, page
        nothing = await client.get(P + page)
        assert nothing.status_code == 303, page
        assert nothing.headers["location"].startswith(P + "signin?next=")
    for path in API_GETS:
        response = await client.get(P + path, headers=user)
        assert response.status_code == 403 and response.json()["error"] == "forbidden", path
        nothing = await client.get(P + path)
        assert nothing.status_code == 401 and nothing.json()["error"] == "unauthorized", path
        unknown = await client.get(P + path, headers=bearer("relay_0123456789ab_" + "A" * 43))
        assert unknown.status_code == 401, path
    for path in API_POSTS:
        response = await client.post(P + path, headers=user, json={})
        assert response.status_code == 403 and response.json()["error"] == "forbidden", path
        assert (await client.post(P + path, json={})).status_code == 401, path

    # An admin's bearer token opens the pages and the API.
    admin = bearer(console.admin_token)
    assert (await client.get(P + "spend", headers=admin)).status_code == 200
    who = await client.get(P + "api/whoami", headers=admin)
    assert who.json()["name"] == "root" and who.json()["via"] == "api"
    assert (await client.get(P + "api/whoami", headers=bearer(ADMIN_TOKEN))).status_code == 200

    # The admin API of before: ADMIN_TOKEN or an admin user's token; 403 for a user's.
    for path in ("/api/v2/ai-gateway/admin/interceptions", "/api/v2/aibridge/admin/usage"):
        assert (await client.get(path, headers=bearer(ADMIN_TOKEN))).status_code == 200
        assert (await client.get(path, headers=admin)).status_code == 200
        forbidden = await client.get(path, headers=user)
        assert forbidden.status_code == 403 and forbidden.json()["error"] == "forbidden"
        assert (await client.get(path)).status_code == 401
        assert (await client.get(path, headers=bearer("relay_0123456789ab_x"))).status_code == 401


async def test_changes_need_the_csrf_token_and_the_console_s_origin(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, dict[str, str]]] = []

    async def change(req: ConsoleRequest, name: str) -> Response:
        body = await req.json(dict[str, str])
        calls.append((name, body))
        return json_response({"changed": name, "by": req.actor.name})

    async def change_by_form(req: ConsoleRequest) -> Response:
        calls.append(("form", await req.form()))
        return json_response({"ok": True})

    monkeypatch.setattr(
        console_app,
        "ROUTES",
        [
            *console_app.ROUTES,
            Route("POST", "api/things/{name}", change),
            Route("POST", "api/form", change_by_form),
        ],
    )
    async with console.sign_in() as client:
        csrf = csrf_of((await client.get(P + "sessions")).text)
        url = P + "api/things/a%2Fb"  # {name} is one decoded segment: "a/b"

        missing = await client.post(url, json={"x": "1"})
        assert missing.status_code == 403 and missing.json()["error"] == "csrf"
        wrong = await client.post(url, json={"x": "1"}, headers={"x-csrf-token": csrf[:-1] + "A"})
        assert wrong.status_code == 403 and wrong.json()["error"] == "csrf"
        no_form_field = await client.post(P + "api/form", data={"csrf": "nope"})
        assert no_form_field.status_code == 403 and no_form_field.json()["error"] == "csrf"
        other_site = {"x-csrf-token": csrf, "origin": "https://evil.example"}
        foreign = await client.post(url, json={"x": "1"}, headers=other_site)
        assert foreign.status_code == 403 and foreign.json()["error"] == "forbidden"
        null_origin = await client.post(
            url, json={}, headers={"x-csrf-token": csrf, "origin": "null"}
        )
        assert null_origin.status_code == 403
        assert calls == []  # nothing refused reached the handler

        own = {"x-csrf-token": csrf, "origin": console.relay.url}
        done = await client.post(url, json={"x": "1"}, headers=own)
        assert done.status_code == 200, done.text
        assert done.json() == {"changed": "a/b", "by": "root"}
        by_form = await client.post(P + "api/form", data={"csrf": csrf, "k": "v"})
        assert by_form.status_code == 200
        assert calls == [("a/b", {"x": "1"}), ("form", {"csrf": csrf, "k": "v"})]
        bad_body = await client.post(url, content=b"{", headers=own)
        assert bad_body.status_code == 400 and bad_body.json()["error"] == "bad_request"

        # A bearer credential carries no cookie: no CSRF token needed, the Origin still checked.
        admin = bearer(console.admin_token)
        bare = httpx.AsyncClient(base_url=console.relay.url)
        async with bare:
            assert (await bare.post(url, json={}, headers=admin)).status_code == 200
            foreign_bearer = await bare.post(
                url, json={}, headers={**admin, "origin": "http://evil.example"}
            )
            assert foreign_bearer.status_code == 403

        # Sign-in from another site is refused; sign-out needs the CSRF token too.
        bare_signin = await console.client.post(
            P + "signin",
            data={"token": console.admin_token},
            headers={"origin": "http://evil.example"},
        )
        assert bare_signin.status_code == 403 and "set-cookie" not in bare_signin.headers
        assert (await client.post(P + "signout")).status_code == 403
        assert (await client.get(P + "api/whoami")).status_code == 200


async def test_sign_out_and_revocations_end_a_live_session(console: Console) -> None:
    db = console.relay.db
    async with console.sign_in() as client:
        csrf = csrf_of((await client.get(P + "sessions")).text)
        out = await client.post(P + "signout", data={"csrf": csrf})
        assert out.status_code == 303 and out.headers["location"] == P + "signin"
        assert out.headers["set-cookie"].startswith("relay_console=; Path=/api/v2/; Max-Age=0")
    assert await db.fetchval("SELECT count(*) FROM console_sessions") == 0

    # The cookie of a signed-out session opens nothing, even if a browser kept it.
    old = client.cookies.get("relay_console") or ""
    stale = httpx.AsyncClient(base_url=console.relay.url, cookies={"relay_console": old})
    async with stale:
        assert (await stale.get(P + "api/whoami")).status_code == 401

    # Revoking the token the session was opened with ends it.
    token, row = await create_token(db, "root")
    async with console.sign_in(token) as client:
        assert (await client.get(P + "api/whoami")).status_code == 200
        await revoke_token(db, row.id)
        assert (await client.get(P + "api/whoami")).status_code == 401
        assert (await client.get(P + "sessions")).status_code == 303

    # Taking the admin role away ends it; giving it back does not revive it.
    async with console.sign_in() as client:
        assert (await client.get(P + "api/whoami")).status_code == 200
        await set_admin(db, "root", False)
        assert (await client.get(P + "api/whoami")).status_code == 401
        await set_admin(db, "root", True)
        assert (await client.get(P + "api/whoami")).status_code == 401

    # A session opened with ADMIN_TOKEN ends when the relay's ADMIN_TOKEN is another.
    async with console.sign_in(ADMIN_TOKEN) as client:
        assert (await client.get(P + "api/whoami")).status_code == 200
        services = console.relay.app.services
        assert services is not None
        original = services.options
        services.options = dataclasses.replace(
            original, admin_token="another-admin-token-0123456789"
        )
        try:
            assert (await client.get(P + "api/whoami")).status_code == 401
        finally:
            services.options = original


async def test_only_listed_static_files_and_known_paths_are_served(console: Console) -> None:
    client = console.client
    script = await client.get(P + "static/app.js")
    assert script.status_code == 200
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "import(`./pages/${page}.js`)" in script.text
    assert (await client.get(P + "static/ui.js")).status_code == 200
    style = await client.get(ALIAS + "static/style.css")
    assert style.status_code == 200 and style.headers["content-type"] == "text/css; charset=utf-8"
    assert "@media (max-width: 640px)" in style.text
    for name in ("shell.html", "signin.html", "pages/README.md", "", "pages", "nope.js"):
        assert (await client.get(P + "static/" + name)).status_code == 404, name
    assert (await client.post(P + "static/app.js")).status_code == 405

    # Paths an HTTP client would normalise, sent as they are.
    for target in (
        "static/../app.py",
        "static/../../console/app.py",
        "static/%2e%2e/app.py",
        "static/%2E%2E%2Fapp.py",
        "static/..%2fauth.py",
        "static/pages/../../http.py",
        "static/pages%2F..%2F..%2Fapp.py",
        "static/.%2fapp.js",
        "static//app.js",
        "static/app.js%00",
        "static/%252e%252e/app.py",
    ):
        raw = request_bytes("GET", P + target, {"connection": "close"})
        (answer,) = (await exchange(console.relay.url, raw)).responses
        assert answer.status in (400, 404), (target, answer.status)
        assert b"def " not in answer.body and b"import" not in answer.body

    admin = bearer(console.admin_token)
    unknown = await client.get(P + "api/no/such/thing", headers=admin)
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
    assert (await client.get(P + "nowhere", headers=admin)).status_code == 404
    wrong = await client.post(P + "api/whoami", headers=admin)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET"
    assert (await client.delete(P + "api/whoami", headers=admin)).status_code == 405
    assert (await client.post(P + "sessions", headers=admin)).status_code == 405
    assert (await client.get(P + "signout")).status_code == 405
    nul = await client.get(P + "api/whoami?user=%00", headers=admin)
    assert nul.status_code == 400 and nul.json()["error"] == "bad_request"
    long_segment = await client.get(P + "sessions/" + "k" * 257, headers=admin)
    assert long_segment.status_code == 404
