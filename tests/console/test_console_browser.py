"""Issue 20's "done when", as an operator does it: the console in headless Chromium.

Every test drives Debian's Chromium (tests/console/conftest.py) against the real
relay (hypercorn on loopback, PostgreSQL, the mock upstream). They share one
relay; a test that changes something shared (a provider) puts it back.
"""

from __future__ import annotations

import re
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from relay.auth import set_admin
from relay.console import app as console_app
from relay.testing.mock_upstream.tool_script import round_usage
from tests.agent_clis import CLAUDE
from tests.console.claude_run import MODEL, run_claude_code
from tests.console.conftest import PHONE, UI, ConsoleRelay, sign_in
from tests.console.pagecheck import check_page
from tests.relay_harness import config_settled


def test_an_admin_signs_in_and_out(page: Any, console: ConsoleRelay) -> None:
    # A page asked for before signing in leads to the sign-in form, and back after it.
    page.goto(console.ui("audit"))
    expect(page).to_have_url(console.ui("signin?next=audit"))
    page.get_by_label("Admin token").fill(console.admin_token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(console.ui("audit"))
    expect(page.get_by_test_id("actor")).to_have_text("ops")
    cookie = next(c for c in page.context.cookies() if c["name"] == "relay_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/api/v2/" and not cookie["secure"]  # plain http here
    page.get_by_test_id("signout").click()
    expect(page).to_have_url(re.compile(re.escape(console.ui("signin"))))
    page.goto(console.ui("sessions"))
    expect(page).to_have_url(console.ui("signin?next=sessions"))
    # The relay's ADMIN_TOKEN signs in too.
    sign_in(page, console, console.legacy_admin_token)
    expect(page.get_by_test_id("actor")).to_have_text("admin-token")


def test_a_wrong_token_is_refused_at_sign_in(page: Any, console: ConsoleRelay) -> None:
    page.goto(console.ui("signin"))
    page.get_by_test_id("signin-token").fill("relay_nope_" + "x" * 32)
    page.get_by_test_id("signin-submit").click()
    expect(page.get_by_test_id("signin-error")).to_contain_text("not valid")
    assert not [c for c in page.context.cookies() if c["name"] == "relay_console"]


def test_a_signed_in_admin_whose_role_is_taken_away_is_signed_out(
    page: Any, console: ConsoleRelay
) -> None:
    token = console.user_token("dave")
    console.run(set_admin, console.relay.db, "dave", True)
    sign_in(page, console, token)
    expect(page.get_by_test_id("actor")).to_have_text("dave")
    # The sessions page's own fetch done first (a 401 to it would navigate on its own).
    page.wait_for_load_state("networkidle")
    console.run(set_admin, console.relay.db, "dave", False)  # relay users admin dave --revoke
    page.goto(console.ui("providers"))
    expect(page).to_have_url(console.ui("signin?next=providers"))
    status = page.evaluate("async (u) => (await fetch(u)).status", console.ui("api/providers"))
    assert status == 401
    # Given back, the role does not revive the ended session.
    console.run(set_admin, console.relay.db, "dave", True)
    page.goto(console.ui("providers"))
    expect(page).to_have_url(console.ui("signin?next=providers"))


def _page_paths() -> list[str]:
    """A path for every page the console has (its own table: a new page is checked too)."""
    fill = {"key": "some-session", "id": str(uuid.uuid4())}
    return [
        re.sub(r"\{(\w+)\}", lambda m: fill[m.group(1)], pattern)
        for pattern, _module in console_app.PAGES
    ]


def _api_calls() -> list[tuple[str, str]]:
    """(method, path) for every route of the console's API."""
    return [(route.method, re.sub(r"\{\w+\}", "x", route.pattern)) for route in console_app.ROUTES]


def test_a_non_admin_token_is_refused_on_every_page_and_api_call(
    page: Any, console: ConsoleRelay
) -> None:
    # Sign-in: refused, and no session cookie.
    page.goto(console.ui("signin"))
    page.get_by_test_id("signin-token").fill(console.token)
    page.get_by_test_id("signin-submit").click()
    expect(page.get_by_test_id("signin-error")).to_contain_text("not an admin")
    assert not [c for c in page.context.cookies() if c["name"] == "relay_console"]
    # Each page, opened in the browser with the token as a bearer credential.
    page.context.set_extra_http_headers({"Authorization": f"Bearer {console.token}"})
    pages = _page_paths()
    assert len(pages) >= 8
    for path in pages:
        response = page.goto(console.ui(path))
        assert response is not None and response.status == 403, path
        expect(page.get_by_test_id("page-error")).to_contain_text("not an admin")
    page.context.set_extra_http_headers({})
    # Each API call, from the browser's request context (its cookies: none).
    calls = _api_calls()
    assert ("GET", "api/whoami") in calls
    for method, path in calls:
        response = page.request.fetch(
            console.ui(path),
            method=method,
            headers={"Authorization": f"Bearer {console.token}"},
            data="{}" if method == "POST" else None,
            max_redirects=0,
        )
        assert (response.status, response.json()) == (
            403,
            {"error": "forbidden", "message": "this credential is not an admin's"},
        ), (method, path)
        # And with no credential at all: 401.
        response = page.request.fetch(console.ui(path), method=method, max_redirects=0)
        assert response.status == 401, (method, path)


def test_a_change_without_the_csrf_token_is_refused(page: Any, console: ConsoleRelay) -> None:
    sign_in(page, console)
    # The sessions page fetches its list as it loads: were that answered 401 after the
    # sign-out below, app.js would navigate to sign-in in the middle of the evaluate.
    page.wait_for_load_state("networkidle")
    # From the page itself (its cookie, its origin): sign-out without its CSRF
    # field is refused, and the session lives on; with it, it signs out.
    refused, done = page.evaluate(
        """async (base) => {
            const csrf = document.querySelector('meta[name="csrf-token"]').content;
            const post = (body) => fetch(base + "signout", {
                method: "POST", redirect: "manual", body: new URLSearchParams(body)});
            const refused = await post({});
            const after = await fetch(base + "api/whoami");
            const done = await post({csrf});
            const gone = await fetch(base + "api/whoami");
            return [[refused.status, after.status], [done.type, gone.status]];
        }""",
        UI,
    )
    assert refused == [403, 200]
    assert done == ["opaqueredirect", 401]


def test_an_api_change_without_the_csrf_token_is_refused(page: Any, console: ConsoleRelay) -> None:
    sign_in(page, console)
    answers = page.evaluate(
        """async (base) => {
            const csrf = document.querySelector('meta[name="csrf-token"]').content;
            const post = async (headers) => {
                const r = await fetch(base + "api/providers/openai/disable", {
                    method: "POST", body: "{}",
                    headers: {"content-type": "application/json", ...headers}});
                return [r.status, await r.json()];
            };
            const providers = async () =>
                (await (await fetch(base + "api/providers")).json()).providers
                    .filter((p) => p.name === "openai").map((p) => p.enabled);
            return {
                bare: await post({}),
                wrong: await post({"x-csrf-token": csrf.slice(0, -1) + "x"}),
                after: await providers(),
            };
        }""",
        UI,
    )
    csrf = {"error": "csrf", "message": "the CSRF token is missing or wrong"}
    assert answers == {"bare": [403, csrf], "wrong": [403, csrf], "after": [True]}


def ask(console: ConsoleRelay, provider: str, token: str | None = None) -> httpx.Response:
    """One small request through the relay, as a client of ``provider`` sends it."""
    token = token or console.token
    if provider == "anthropic":
        return httpx.post(
            console.gateway("anthropic") + "/v1/messages",
            headers={"x-api-key": token, "anthropic-version": "2023-06-01"},
            json={
                "model": "claude-haiku-4-5",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
    return httpx.post(
        console.gateway(provider) + "/v1/chat/completions",
        headers={"authorization": f"Bearer {token}"},
        json={"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "hi"}]},
    )


def settled(console: ConsoleRelay) -> None:
    """Once the relay has taken in every configuration change made so far."""
    console.run(config_settled, console.relay.app)


def test_an_operator_disables_a_provider_and_its_requests_are_refused(
    page: Any, console: ConsoleRelay
) -> None:
    assert ask(console, "openai").status_code == 200
    sign_in(page, console)
    page.goto(console.ui("providers"))
    row = page.get_by_test_id("provider-row-openai")
    expect(row).to_have_attribute("data-enabled", "true")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("provider-toggle-openai").click()
    expect(row).to_have_attribute("data-enabled", "false")
    expect(page.get_by_test_id("status")).to_have_text("Disabled openai.")
    settled(console)
    refused = ask(console, "openai")
    assert refused.status_code == 503, refused.text
    assert "disabled" in refused.json()["error"]["message"]
    assert ask(console, "anthropic").status_code == 200  # the others go on
    # Enabled again from the page: served again.
    page.get_by_test_id("provider-toggle-openai").click()
    expect(row).to_have_attribute("data-enabled", "true")
    settled(console)
    assert ask(console, "openai").status_code == 200
    # Both changes are in the audit table: who, what, on what.
    page.goto(console.ui("audit"))
    rows = page.get_by_test_id("audit-table").locator('tr[data-target="openai"]')
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("provider.enable")
    expect(rows.nth(1)).to_contain_text("provider.disable")
    expect(rows.nth(1)).to_contain_text("ops")


def test_an_operator_revokes_a_token_and_requests_with_it_are_refused(
    page: Any, console: ConsoleRelay
) -> None:
    token = console.user_token("carol")
    token_id = token.split("_")[1]
    assert ask(console, "anthropic", token).status_code == 200
    sign_in(page, console)
    page.goto(console.ui("access"))
    row = page.get_by_test_id(f"token-row-{token_id}")
    expect(row).to_have_attribute("data-status", "active")
    assert token not in page.content()  # only its id is ever shown
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id(f"token-revoke-{token_id}").click()
    expect(row).to_have_attribute("data-status", "revoked")
    settled(console)
    refused = ask(console, "anthropic", token)
    assert refused.status_code == 401, refused.text
    assert refused.json()["type"] == "error"  # in Anthropic's own error shape


@pytest.mark.parametrize("name", ["signin"])
def test_pages_fit_a_phone_and_a_desktop_and_are_accessible(
    page: Any, console: ConsoleRelay, screenshots: Path, name: str
) -> None:
    page.goto(console.ui("signin"))
    check_page(page, page.get_by_test_id("signin-token"))
    page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)


def test_the_live_tail_receives_a_request(page: Any, console: ConsoleRelay) -> None:
    sign_in(page, console)
    page.goto(console.ui("tail"))
    expect(page.get_by_test_id("tail-state")).to_have_text("live")
    answer = ask(console, "openai")
    assert answer.status_code == 200
    item = page.get_by_test_id("tail-list").get_by_test_id("tail-item").first
    expect(item).to_have_attribute("data-id", answer.headers["x-relay-interception-id"])
    expect(item).to_contain_text("gpt-4.1-mini")


# -- a Claude Code run, found in the console ------------------------------------------


@pytest.fixture(scope="module")
def claude_code_session(
    console: ConsoleRelay, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str, uuid.UUID]:
    """One real ``claude -p`` run through the relay (the mock has it Read a file):
    its session id, the file's path and the interception that called the tool."""
    if not CLAUDE:
        pytest.skip("no Claude Code CLI: run `just clients`")
    session, path = run_claude_code(console, tmp_path_factory.mktemp("claude"), console.token)
    rows = console.run(
        partial(
            console.relay.wait_for_rows,
            "SELECT i.id FROM interceptions i JOIN tool_usages t ON t.interception_id = i.id "
            "WHERE i.client_session_id = $1 AND t.name = 'Read'",
            session,
        )
    )
    return session, path, rows[0]["id"]


def test_an_operator_finds_a_claude_code_session_and_its_tool_call_and_tokens(
    page: Any, console: ConsoleRelay, claude_code_session: tuple[str, str, uuid.UUID]
) -> None:
    session, path, interception_id = claude_code_session
    sign_in(page, console)
    # The sessions page, narrowed to Claude Code's.
    client = page.get_by_test_id("sessions-filter-client")
    client.fill("claude-code")
    client.press("Enter")
    expect(page).to_have_url(re.compile(r"[?&]client=claude-code"))
    # The list is drawn again once its "Loading…" note clears.
    expect(page.get_by_test_id("sessions-note")).to_have_text("")
    row = page.locator(f'[data-testid="session-row"][data-session-id="{session}"]')
    expect(row).to_contain_text("claude-code")
    expect(row).to_contain_text(MODEL)
    row.get_by_test_id("session-link").click()
    # The session: its requests in order, the one that called Read among them.
    expect(page.get_by_test_id("session-id")).to_contain_text(session)
    requests = page.get_by_test_id("session-interception-row")
    expect(requests.first).to_be_visible()
    assert requests.count() >= 2  # the tool call, then the answer to its result
    called = page.locator(f'[data-testid="session-interception-row"][data-id="{interception_id}"]')
    expect(called).to_contain_text("Read")
    called.get_by_test_id("interception-link").click()
    # The interception: the tool call with its input, and the tokens the mock reported.
    expect(page).to_have_url(console.ui(f"interceptions/{interception_id}"))
    tool = page.get_by_test_id("interception-tool-call")
    expect(tool).to_have_count(1)
    expect(tool.get_by_test_id("interception-tool-name")).to_have_text("Read")
    expect(tool.get_by_test_id("interception-tool-input")).to_contain_text(path)
    expect(page.get_by_test_id("interception-model")).to_contain_text(MODEL)
    usage = round_usage(0)
    cells = page.get_by_test_id("interception-token-row").locator("td")
    expect(cells.nth(1)).to_have_text(str(usage["input_tokens"]))
    expect(cells.nth(2)).to_have_text(str(usage["output_tokens"]))
    expect(cells.nth(3)).to_have_text(str(usage["cache_read_input_tokens"]))
    expect(page.get_by_test_id("interception-total")).to_contain_text("$")  # priced


def test_an_operator_filters_spend_by_model(
    page: Any, console: ConsoleRelay, claude_code_session: tuple[str, str, uuid.UUID]
) -> None:
    assert ask(console, "openai").status_code == 200  # a second model: gpt-4.1-mini
    console.run(partial(console.relay.wait_for_rows, "SELECT 1 FROM interceptions"))
    requests = console.run(
        console.relay.db.fetchval, "SELECT count(*) FROM interceptions WHERE model = $1", MODEL
    )
    sign_in(page, console)
    page.goto(console.ui("spend"))
    expect(page.get_by_test_id("spend-chart").locator("canvas")).to_have_count(1)
    rows = page.get_by_test_id("spend-row")
    expect(rows.and_(page.locator('[data-value="gpt-4.1-mini"]'))).to_have_count(1)
    assert rows.count() >= 2
    model = page.get_by_test_id("spend-filter-model")
    model.fill(MODEL)
    model.press("Enter")
    expect(page).to_have_url(re.compile(rf"[?&]model={re.escape(MODEL)}"))
    expect(page.get_by_test_id("spend-note")).not_to_have_text("Loading…")
    expect(rows).to_have_count(1)
    expect(rows).to_have_attribute("data-value", MODEL)
    expect(rows.locator("td").nth(1)).to_have_text(str(requests))
    expect(page.get_by_test_id("spend-totals")).to_contain_text(f"Total: {requests} requests")
    expect(page.get_by_test_id("spend-csv")).to_have_attribute(
        "href", re.compile(rf"api/spend\.csv\?.*model={re.escape(MODEL)}")
    )


# -- every page: layout at 390 and 1280 px, accessibility, a screenshot --------------

# Page name → (path below the console's prefix, the test id to wait for). In the
# order of docs/console.md's Tour; the tests before these have filled the relay.
TOUR: dict[str, tuple[str, str]] = {
    "signin": ("signin", "signin-token"),
    "sessions": ("sessions", "session-row"),
    "session": ("sessions/{key}", "session-interception-row"),
    "interception": ("interceptions/{id}", "interception-tool-call"),
    "spend": ("spend", "spend-row"),
    "providers": ("providers", "providers-list"),
    "access": ("access", "tokens-table"),
    "tail": ("tail", "tail-list"),
    "audit": ("audit", "audit-table"),
}


# Also shown at a phone's width in docs/console.md.
PHONE_SHOTS = {"sessions", "interception"}


def test_the_tour_names_every_page() -> None:
    assert {module for _pattern, module in console_app.PAGES} | {"signin"} == set(TOUR)


def test_docs_console_md_shows_every_page_of_the_tour() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs"
    text = (docs / "console.md").read_text()
    shots = [*TOUR, *(f"{name}-phone" for name in PHONE_SHOTS)]
    for shot in shots:
        assert f"](img/console/{shot}.png)" in text, shot
        assert (docs / "img" / "console" / f"{shot}.png").is_file(), shot


@pytest.mark.parametrize("name", list(TOUR))
def test_each_page_fits_a_phone_and_a_desktop_is_accessible_and_is_shot(
    page: Any, console: ConsoleRelay, screenshots: Path, request: pytest.FixtureRequest, name: str
) -> None:
    path, ready = TOUR[name]
    if "{" in path:
        # The Claude Code run's session and its interception that called a tool.
        _session, _file, interception_id = request.getfixturevalue("claude_code_session")
        found = page.request.get(
            console.ui(f"api/interceptions/{interception_id}"),
            headers={"Authorization": f"Bearer {console.admin_token}"},
        )
        assert found.ok, found.text()
        path = path.format(id=interception_id, key=found.json()["session_key"])
    if name != "signin":
        sign_in(page, console)
    page.goto(console.ui(path))
    if name == "tail":
        expect(page.get_by_test_id("tail-state")).to_have_text("live")
        assert ask(console, "anthropic").status_code == 200
        assert ask(console, "openai").status_code == 200
        expect(page.get_by_test_id("tail-item")).to_have_count(2)
        ready = "tail-item"
    # The picture first, as drawn at 1280 px (after the resizes of the checks a
    # page may still be redrawing its plots for the last width).
    expect(page.get_by_test_id(ready).first).to_be_visible()
    page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)
    check_page(page, page.get_by_test_id(ready))
    if name in PHONE_SHOTS:
        page.set_viewport_size(PHONE)
        page.goto(page.url)
        expect(page.get_by_test_id(ready).first).to_be_visible()
        page.screenshot(path=str(screenshots / f"{name}-phone.png"), full_page=True)
