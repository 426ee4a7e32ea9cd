"""The operator's console (docs/console.md) driven in a real browser.

Debian's headless Chromium (/usr/bin/chromium, installed by ``.ci/browser``,
part of ``just test``) driven by Playwright's sync API; Playwright never
downloads a browser of its own. One browser and one relay serve every test of
this package (each test gets its own browser context, so its own cookies):

- the relay is the real one (hypercorn on loopback, the test run's PostgreSQL,
  tests/relay_harness.py) in front of the bundled mock upstream. It runs in a
  thread of its own with its own trio loop, because Playwright's sync calls
  block the thread they are made in; ``ConsoleRelay.run`` runs a coroutine in
  the relay's loop from a test.
- screenshots go to the directory named by ``RELAY_CONSOLE_SCREENSHOTS``
  (``just screenshots`` sets it to docs/img/console), else to a temporary one.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from relay.auth import create_token, create_user
from relay.testing.mock_upstream.server import MockUpstream
from tests.conftest import PgCluster
from tests.relay_harness import RunningRelay, config_settled, mock_and_relay

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps trying to reach
# Google's hosts, which this machine's closed network refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI = "/api/v2/ai-gateway/admin/ui/"
ADMIN_TOKEN = "console-admin-token-0123456789abcdef"
ADMIN_USER = "ops"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

T = TypeVar("T")

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="no /usr/bin/chromium: run `just browser`"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(needs_chromium)


@dataclass
class ConsoleRelay:
    """The relay the console tests share, running in its own thread and trio loop."""

    relay: RunningRelay
    mock: MockUpstream
    trio_token: trio.lowlevel.TrioToken
    admin_token: str  # a relay token of the admin user "ops"
    legacy_admin_token: str = ADMIN_TOKEN  # the relay's ADMIN_TOKEN: an admin credential too
    users: dict[str, str] = field(default_factory=dict)  # name -> token

    @property
    def url(self) -> str:
        return self.relay.url

    @property
    def token(self) -> str:
        """A token of the ordinary (non-admin) user "alice"."""
        return self.relay.token

    def ui(self, path: str = "") -> str:
        return self.relay.url + UI + path

    def gateway(self, provider: str) -> str:
        return self.relay.gateway(provider)

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)`` in the relay's trio loop, from a test's thread."""
        return trio.from_thread.run(fn, *args, trio_token=self.trio_token)

    def user_token(self, name: str) -> str:
        """A token of a new ordinary user ``name`` (made once)."""
        if name not in self.users:

            async def make() -> str:
                db = self.relay.db
                await create_user(db, name)
                token, _ = await create_token(db, name)
                await config_settled(self.relay.app)
                return token

            self.users[name] = self.run(make)
        return self.users[name]


@pytest.fixture(scope="package")
def console(pg_cluster: PgCluster, pg_template: str) -> Iterator[ConsoleRelay]:
    """One relay (and mock upstream) for the whole package, on a database of its own."""
    data_dir = Path(tempfile.mkdtemp(prefix="relay-console-"))
    started: queue.Queue[ConsoleRelay | BaseException] = queue.Queue()
    holder: dict[str, trio.Event] = {}

    async def main() -> None:
        stop = holder["stop"] = trio.Event()
        # The database is made and dropped from a worker thread: tests/conftest.py
        # does it with asyncio.run, which refuses to run in a thread where
        # Playwright's sync API keeps its asyncio loop.
        await trio.to_thread.run_sync(pg_cluster.start)
        dsn = await trio.to_thread.run_sync(pg_cluster.create_database, pg_template)
        try:
            async with mock_and_relay(
                dsn, data_dir, extra_env={"CODER_AI_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
            ) as (mock, relay):
                # The operator: a user with the admin role (`relay users admin ops`).
                await create_user(relay.db, ADMIN_USER, admin=True)
                admin_user_token, _ = await create_token(relay.db, ADMIN_USER)
                await config_settled(relay.app)
                started.put(
                    ConsoleRelay(relay, mock, trio.lowlevel.current_trio_token(), admin_user_token)
                )
                await stop.wait()
        except BaseException as exc:
            started.put(exc)
            raise
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(pg_cluster.start)
                await trio.to_thread.run_sync(pg_cluster.drop_database, dsn)

    thread = threading.Thread(target=trio.run, args=(main,), name="console-relay", daemon=True)
    thread.start()
    got = started.get(timeout=120)
    if isinstance(got, BaseException):
        thread.join(timeout=30)
        raise got
    try:
        yield got
    finally:
        trio.from_thread.run_sync(holder["stop"].set, trio_token=got.trio_token)
        thread.join(timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, one for the whole package (a fresh profile of its own)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # launch() gives the browser a new empty user data directory, removed at close.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page in a new browser context (no cookies) at 1280 px; fails the test on a
    script error in the page (a CSP refusal or an exception in a page module)."""
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(10_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda message: (
            errors.append(message.text)
            if message.type == "error" and "Content Security Policy" in message.text
            else None
        ),
    )
    try:
        yield page
    finally:
        context.close()
    assert not errors, errors


@pytest.fixture(scope="package")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: $RELAY_CONSOLE_SCREENSHOTS, else a temporary directory."""
    named = os.environ.get("RELAY_CONSOLE_SCREENSHOTS")
    directory = Path(named) if named else tmp_path_factory.mktemp("console-screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def sign_in(page: Any, console: ConsoleRelay, token: str | None = None) -> None:
    """Sign in through the form, as an operator does; ends on the sessions page."""
    from playwright.sync_api import expect

    page.goto(console.ui("signin"))
    page.get_by_test_id("signin-token").fill(token or console.admin_token)
    page.get_by_test_id("signin-submit").click()
    expect(page).to_have_url(console.ui("sessions"))
