"""The providers, access, audit and live tail pages in headless Chromium (Debian's).

Each page is driven as an operator would: the buttons, the confirmation
dialogs, the forms; what the server then holds is checked in the database.
"""

from __future__ import annotations

from typing import Any

import httpx
from playwright.sync_api import expect

from tests.console.conftest import ConsoleRelay, sign_in

KEY = "sk-ant-pages-test-key-0123456789"


def test_providers_page_adds_disables_and_enables_with_masked_keys(
    page: Any, console: ConsoleRelay
) -> None:
    sign_in(page, console)
    page.goto(console.ui("providers"))
    page.get_by_test_id("provider-add").locator("summary").click()
    page.get_by_test_id("provider-add-name").fill("pages-extra")
    page.get_by_test_id("provider-add-type").select_option("openai")
    page.get_by_test_id("provider-add-base-url").fill("https://pages.example.test/v1/")
    page.get_by_test_id("provider-add-keys").fill(KEY)
    page.get_by_test_id("provider-add-submit").click()
    row = page.get_by_test_id("provider-row-pages-extra")
    expect(row).to_have_attribute("data-enabled", "true")
    expect(page.get_by_test_id("provider-keys-pages-extra")).to_have_text("sk-…6789")
    assert KEY not in page.content()

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("provider-toggle-pages-extra").click()
    expect(row).to_have_attribute("data-enabled", "false")
    enabled = console.run(
        console.relay.db.fetchval, "SELECT enabled FROM providers WHERE name = 'pages-extra'"
    )
    assert enabled is False
    page.get_by_test_id("provider-toggle-pages-extra").click()  # enabling asks nothing
    expect(row).to_have_attribute("data-enabled", "true")

    # Edit without touching the keys keeps them.
    page.get_by_test_id("provider-edit-pages-extra").click()
    page.get_by_test_id("provider-edit-base-url").fill("https://moved.example.test/v1/")
    page.get_by_test_id("provider-edit-submit").click()
    expect(page.get_by_test_id("status")).to_have_text("Updated pages-extra.")
    keys = console.run(
        console.relay.db.fetchval, "SELECT keys FROM providers WHERE name = 'pages-extra'"
    )
    assert list(keys) == [KEY]

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("provider-remove-pages-extra").click()
    expect(row).to_have_count(0)

    page.get_by_test_id("prices").locator("summary").click()
    page.get_by_test_id("price-set-type").select_option("openai")
    page.get_by_test_id("price-set-model").fill("pages-model")
    page.get_by_test_id("price-set-input").fill("2.5")
    page.get_by_test_id("price-set-output").fill("10")
    page.get_by_test_id("price-set-submit").click()
    price = page.get_by_test_id("price-row-openai-pages-model")
    expect(price).to_contain_text("$2.5")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("price-remove-openai-pages-model").click()
    expect(price).to_have_count(0)

    page.goto(console.ui("audit"))
    table = page.get_by_test_id("audit-table")
    expect(table.locator('tr[data-target="pages-extra"]')).to_have_count(5)
    expect(table.locator('tr[data-target="openai/pages-model"]')).to_have_count(2)
    assert KEY not in page.content()


def test_access_page_creates_a_token_once_and_revokes_it(page: Any, console: ConsoleRelay) -> None:
    sign_in(page, console)
    page.goto(console.ui("access"))
    page.get_by_test_id("user-create-name").fill("pages-user")
    page.get_by_test_id("user-create-submit").click()
    expect(page.get_by_test_id("user-row-pages-user")).to_be_visible()
    page.get_by_test_id("token-create-user").select_option("pages-user")
    page.get_by_test_id("token-create-submit").click()
    token = page.get_by_test_id("token-created-value").inner_text()
    assert token.startswith("relay_")
    token_id = token.split("_")[1]
    row = page.get_by_test_id(f"token-row-{token_id}")
    expect(row).to_have_attribute("data-status", "active")
    ok = httpx.get(
        console.gateway("openai") + "/v1/models", headers={"authorization": f"Bearer {token}"}
    )
    assert ok.status_code == 200

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id(f"token-revoke-{token_id}").click()
    expect(row).to_have_attribute("data-status", "revoked")
    page.reload()
    expect(page.get_by_test_id(f"token-row-{token_id}")).to_be_visible()
    assert token not in page.content()  # shown once, never again

    # A budget for the user, set from the page, shows how much of it is used.
    page.get_by_test_id("budget-name").fill("pages-user-monthly")
    page.get_by_test_id("budget-scope").select_option("user")
    page.get_by_test_id("budget-subject").fill("pages-user")
    page.get_by_test_id("budget-limit").fill("5")
    page.get_by_test_id("budget-set-submit").click()
    expect(page.get_by_test_id("budget-row-pages-user-monthly")).to_contain_text("$5.0000")
    expect(page.get_by_test_id("budget-used-pages-user-monthly")).to_have_text("0%")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("budget-remove-pages-user-monthly").click()
    expect(page.get_by_test_id("budget-row-pages-user-monthly")).to_have_count(0)

    def refused() -> bool:
        answer = httpx.get(
            console.gateway("openai") + "/v1/models", headers={"authorization": f"Bearer {token}"}
        )
        return answer.status_code == 401

    expect_eventually(refused)


def expect_eventually(check: Any) -> None:
    import time

    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, "not within 10 s"
        time.sleep(0.05)


def test_tail_page_receives_a_request_and_pauses(page: Any, console: ConsoleRelay) -> None:
    sign_in(page, console)
    page.goto(console.ui("tail"))
    expect(page.get_by_test_id("tail-state")).to_have_text("live")

    def ask() -> str:
        answer = httpx.post(
            console.gateway("anthropic") + "/v1/messages",
            headers={"x-api-key": console.token, "anthropic-version": "2023-06-01"},
            json={
                "model": "mock-text",
                "max_tokens": 10,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        assert answer.status_code == 200, answer.text
        return answer.headers["x-relay-interception-id"]

    first = ask()
    items = page.get_by_test_id("tail-list").get_by_test_id("tail-item")
    expect(items.first).to_have_attribute("data-id", first)
    page.get_by_test_id("tail-pause").click()
    expect(page.get_by_test_id("tail-pause")).to_have_attribute("aria-pressed", "true")
    second = ask()
    expect(page.get_by_test_id("tail-buffered")).to_have_text("1 waiting")
    expect(items.first).to_have_attribute("data-id", first)
    page.get_by_test_id("tail-pause").click()
    expect(items.first).to_have_attribute("data-id", second)
