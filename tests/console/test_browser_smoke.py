"""The browser set-up itself: Debian's Chromium, driven by Playwright, reaches the relay."""

from __future__ import annotations

import json
from typing import Any

from tests.console.conftest import ConsoleRelay


def test_chromium_loads_a_page_of_the_relay(page: Any, console: ConsoleRelay) -> None:
    response = page.goto(console.url + "/healthz")
    assert response is not None and response.status == 200
    assert json.loads(page.locator("body").inner_text()) == {"status": "ok"}
    assert "HeadlessChrome" in page.evaluate("navigator.userAgent")
