"""Fixtures for the page tests: Debian's Chromium through Playwright, against real gunicorn.

- The browser is pytest-playwright's session-wide one, launched from the system Chromium
  (never a downloaded browser). Without Chromium every test here is skipped, with the reason.
- Each test gets a fresh browser context whose pages load `/` under a Content-Security-Policy
  (the service's own, else `default-src 'self'`), so an inline script or style shows up as a
  console error; every console error and uncaught page error fails the test.
- Servers are started once per session, one per configuration, and emptied before each test.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, expect

from tests.browser.pagekit import CSP, Server, ServerPool
from tests.support import CHROMIUM, CHROMIUM_ARGS

PAGE_URL = re.compile(r"^http://127\.0\.0\.1:\d+/(\?.*)?$")  # the page itself, not its assets

expect.set_options(timeout=10_000)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    """Launch Debian's Chromium (never a downloaded one); skip when there is none."""
    if not CHROMIUM:
        message = "Chromium not installed: no /usr/bin/chromium and no `chromium` on PATH"
        print(message)
        pytest.skip(message)
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


# --- console watching -------------------------------------------------------------------------


class ConsoleWatch:
    """Collect console errors and uncaught page errors from every watched context."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.allowed: list[re.Pattern[str]] = []

    def attach(self, context: BrowserContext) -> None:
        """Listen to every page of `context`, present and future."""

        def on_console(message: Any) -> None:
            if message.type == "error":
                self.errors.append(f"console error: {message.text} ({message.location})")

        context.on("console", on_console)
        context.on("weberror", lambda error: self.errors.append(f"page error: {error.error}"))

    def allow(self, pattern: str) -> None:
        """Accept console errors matching `pattern` (e.g. the browser's note on a 401)."""
        self.allowed.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        """Return the errors no allowed pattern matches."""
        return [e for e in self.errors if not any(p.search(e) for p in self.allowed)]


@pytest.fixture
def console() -> Iterator[ConsoleWatch]:
    """Fail the test when a watched page logged a console error or threw."""
    watch = ConsoleWatch()
    yield watch
    assert watch.unexpected() == [], "the page logged errors"


def prepare_context(context: BrowserContext, watch: ConsoleWatch) -> BrowserContext:
    """Serve `/` with the service's CSP and watch the console of every page."""

    def add_csp(route: Any) -> None:
        response = route.fetch()
        headers = dict(response.headers)
        headers.setdefault("content-security-policy", CSP)  # the service may send its own
        route.fulfill(response=response, headers=headers)

    # A regex, not a Python predicate: the browser matches it without waiting on this process.
    context.route(PAGE_URL, add_csp)
    watch.attach(context)
    return context


@pytest.fixture
def context(new_context: Callable[..., BrowserContext], console: ConsoleWatch) -> BrowserContext:
    """A fresh context (own sessionStorage) with the CSP and the console watch."""
    return prepare_context(new_context(), console)


@pytest.fixture
def other_context(
    new_context: Callable[..., BrowserContext], console: ConsoleWatch
) -> Callable[..., BrowserContext]:
    """Make more contexts, e.g. a second browser window or a phone-sized one."""
    return lambda **kwargs: prepare_context(new_context(**kwargs), console)


@pytest.fixture(scope="session")
def server_pool() -> Iterator[ServerPool]:
    """Every server the page tests use, started lazily, stopped at the end."""
    directory = Path(tempfile.mkdtemp(prefix="wss-browser-"))
    pool = ServerPool(directory)
    yield pool
    pool.close()
    shutil.rmtree(directory, ignore_errors=True)


def _server(pool: ServerPool, name: str) -> Server:
    server = pool.get(name)
    server.clear()
    return server


@pytest.fixture
def server(server_pool: ServerPool) -> Server:
    """The default steps with 0.2 s demo steps; no state stored."""
    return _server(server_pool, "fast")


@pytest.fixture
def slow_server(server_pool: ServerPool) -> Server:
    """Three 2.5 s steps (WORKFLOW_STEPS_FILE); no state stored."""
    return _server(server_pool, "slow")


@pytest.fixture
def lease_server(server_pool: ServerPool) -> Server:
    """As slow_server, with a 1.5 s run lease (WORKFLOW_RUN_LEASE)."""
    return _server(server_pool, "lease")


@pytest.fixture
def failing_server(server_pool: ServerPool) -> Server:
    """The default steps, with WORKFLOW_DEMO_FAIL=sync_instance."""
    return _server(server_pool, "fail")


@pytest.fixture
def short_server(server_pool: ServerPool) -> Server:
    """The default steps; a finished workflow expires 2 s after it ends (WORKFLOW_STATE_TTL)."""
    return _server(server_pool, "short")


@pytest.fixture
def token_server(server_pool: ServerPool) -> Server:
    """The default steps behind WORKFLOW_STATE_TOKEN."""
    return _server(server_pool, "token")


@pytest.fixture
def host_server(server_pool: ServerPool) -> Server:
    """Three steps, the last two at a host application's endpoints (`/ok` twice)."""
    return _server(server_pool, "host")


@pytest.fixture
def host_fail_server(server_pool: ServerPool) -> Server:
    """As host_server, but the last step's endpoint answers `success: false` (`/fail`)."""
    return _server(server_pool, "host-fail")
