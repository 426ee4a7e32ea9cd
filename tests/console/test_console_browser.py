"""Issue 20's "done when", as an operator does it: the console in headless Chromium.

Every test drives Debian's Chromium (tests/console/conftest.py) against the real
relay (hypercorn on loopback, PostgreSQL, the mock upstream). They share one
relay; a test that changes something shared (a provider) puts it back.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from relay.console import app as console_app
from tests.console.conftest import UI, ConsoleRelay, sign_in
from tests.console.pagecheck import check_page


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


@pytest.mark.parametrize("name", ["signin"])
def test_pages_fit_a_phone_and_a_desktop_and_are_accessible(
    page: Any, console: ConsoleRelay, screenshots: Path, name: str
) -> None:
    page.goto(console.ui("signin"))
    check_page(page, page.get_by_test_id("signin-token"))
    page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)
