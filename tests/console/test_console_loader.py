"""The shell's page loader (static/app.js) in headless Chromium."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from relay.console import app as console_app
from tests.console.conftest import ConsoleRelay, sign_in


def test_the_loader_marks_the_page_and_says_when_its_module_is_missing(
    page: Any, console: ConsoleRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A page the dispatcher knows but whose module (static/pages/<name>.js) the package lacks.
    monkeypatch.setattr(console_app, "PAGES", [*console_app.PAGES, ("not-there", "notthere")])
    sign_in(page, console)
    nav = page.get_by_test_id("nav")
    expect(nav.get_by_role("link", name="Sessions")).to_have_attribute("aria-current", "page")
    expect(nav.get_by_role("link", name="Spend")).not_to_have_attribute("aria-current", "page")
    page.goto(console.ui("not-there"))
    expect(page.get_by_role("heading", name="Not available")).to_be_visible()
    expect(page.get_by_test_id("page-unavailable")).to_have_text(
        "The notthere page is not available in this relay."
    )
    expect(nav.locator('[aria-current="page"]')).to_have_count(0)
