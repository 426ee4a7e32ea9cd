"""The read pages (sessions, session, interception, spend) in headless Chromium:
each draws what the API answers, with no script error and no CSP refusal
(the ``page`` fixture fails the test on either)."""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any

import httpx

from tests.console.conftest import ConsoleRelay, sign_in
from tests.console.pagecheck import check_page
from tests.relay_harness import claude_code_turn


def claude_code_requests(console: ConsoleRelay, session: str, n: int) -> None:
    with httpx.Client(timeout=30) as client:
        for turn in range(n):
            response = client.post(
                **claude_code_turn(
                    console.gateway("anthropic"),
                    console.token,
                    session,
                    f"weather in Paris? ({turn})",
                )
            )
            assert response.status_code == 200
    found = console.run(
        partial(
            console.relay.wait_for_rows,
            "SELECT 1 FROM token_usages t JOIN interceptions i ON i.id = t.interception_id"
            " WHERE i.client_session_id = $1",
            session,
            count=n,
        )
    )
    assert len(found) == n


def test_from_the_sessions_list_to_a_tool_call_and_the_spend_of_its_model(
    page: Any, console: ConsoleRelay
) -> None:
    from playwright.sync_api import expect

    session = f"read-pages-{uuid.uuid4()}"
    claude_code_requests(console, session, 2)
    sign_in(page, console)

    row = page.locator(f'[data-testid="session-row"][data-session-id="{session}"]')
    expect(row).to_have_count(1)
    expect(row).to_contain_text("claude-code")
    check_page(page, row)
    row.get_by_test_id("session-link").click()

    expect(page.get_by_test_id("session-summary")).to_contain_text(session)
    expect(page.get_by_test_id("session-requests")).to_have_text("2")
    requests = page.get_by_test_id("session-interception-row")
    expect(requests).to_have_count(2)
    expect(requests.first).to_contain_text("get_weather")
    check_page(page, requests.first)
    requests.first.get_by_test_id("interception-link").click()

    tool = page.get_by_test_id("interception-tool-call")
    expect(tool).to_have_count(1)
    expect(tool.get_by_test_id("interception-tool-name")).to_have_text("get_weather")
    expect(tool.get_by_test_id("interception-tool-input")).to_contain_text("Paris")
    expect(page.get_by_test_id("interception-prompt")).to_have_text("weather in Paris? (0)")
    expect(page.get_by_test_id("interception-token-row")).to_have_count(1)
    expect(page.get_by_test_id("interception-status")).to_contain_text("completed")
    check_page(page, tool)
    page.get_by_test_id("interception-session-link").click()
    expect(page.get_by_test_id("session-interception-row")).to_have_count(2)

    page.goto(console.ui("spend"))
    expect(page.get_by_test_id("spend-chart").locator("canvas")).to_have_count(1)
    expect(page.get_by_test_id("spend-tokens-chart").locator("canvas")).to_have_count(1)
    expect(page.locator('[data-testid="spend-row"][data-value="mock-tool"]')).to_have_count(1)
    model = page.get_by_test_id("spend-filter-model")
    model.fill("no-such-model")
    model.dispatch_event("change")
    expect(page.get_by_test_id("spend-row")).to_have_count(0)
    assert "model=no-such-model" in page.url  # the filter is kept in the URL
    model.fill("mock-tool")
    model.dispatch_event("change")
    expect(page.get_by_test_id("spend-row")).to_have_count(1)
    expect(page.get_by_test_id("spend-csv")).to_have_attribute(
        "href", "/api/v2/ai-gateway/admin/ui/api/spend.csv?model=mock-tool&group_by=model"
    )
    expect(page.get_by_test_id("budgets-table")).to_be_visible()
    check_page(page, page.get_by_test_id("spend-chart").locator("canvas"))
    page.reload()  # the filter survives a reload: it is in the URL
    expect(model).to_have_value("mock-tool")
    expect(page.get_by_test_id("spend-row")).to_have_count(1)


def test_unknown_session_and_interception_say_so(page: Any, console: ConsoleRelay) -> None:
    from playwright.sync_api import expect

    sign_in(page, console)
    page.goto(console.ui("sessions/k.junk"))
    expect(page.get_by_test_id("session-error")).to_have_text("There is no such session.")
    page.goto(console.ui(f"interceptions/{uuid.uuid4()}"))
    expect(page.get_by_test_id("interception-error-page")).to_have_text(
        "There is no such interception."
    )
