"""Recorded values a client chose (a session id, a prompt), holding markup, drawn
by the console in headless Chromium: shown as text, never run or parsed as HTML.

The ``page`` fixture fails a test on a script error or a CSP refusal, so an
inline handler the CSP blocked would fail it too, not only one that ran.
"""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any

import httpx

from tests.console.conftest import ConsoleRelay, sign_in
from tests.relay_harness import claude_code_turn

MARKUP = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


def test_markup_in_a_session_id_and_a_prompt_is_text(page: Any, console: ConsoleRelay) -> None:
    from playwright.sync_api import expect

    session = f"{MARKUP}-{uuid.uuid4()}"
    prompt = f'{MARKUP} & "quoted" </td></tr></table>'
    with httpx.Client(timeout=30) as client:
        response = client.post(
            **claude_code_turn(console.gateway("anthropic"), console.token, session, prompt)
        )
        assert response.status_code == 200
    found = console.run(
        partial(
            console.relay.wait_for_rows,
            "SELECT 1 FROM token_usages t JOIN interceptions i ON i.id = t.interception_id"
            " WHERE i.client_session_id = $1",
            session,
            count=1,
        )
    )
    assert len(found) == 1
    sign_in(page, console)
    row = page.get_by_test_id("session-row").filter(has_text=session)
    expect(row).to_have_count(1)
    row.get_by_test_id("session-link").click()
    expect(page.get_by_test_id("session-summary")).to_contain_text(session)
    page.get_by_test_id("interception-link").first.click()
    expect(page.get_by_test_id("interception-prompt")).to_have_text(prompt)
    for _ in range(3):  # the interception page, the session page, the sessions list
        assert page.evaluate("window.__xss") is None
        assert page.locator("main img, main script").count() == 0
        expect(page.get_by_text(session).first).to_be_visible()
        page.go_back()
