"""The page shows the server's progress_percent (GET and the stream carry it); it computes none."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.pagekit import Server, expect_progress, open_page, progress_value

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# (current_step, steps): ratios whose percent needs Python's rounding (14.29, 66.67, 85.71, ...).
CASES = [(0, 7), (1, 3), (5, 7), (31, 33), (2, 6)]


def seed_at(server: Server, current: int, total: int, name: str) -> float:
    """Store a running workflow at `current` of `total` steps; return the summary's percent."""
    server.seed(
        {
            "workflow_id": name,
            "current_step": current,
            "steps": [{"action": f"step{i}", "status": "pending"} for i in range(total)],
        }
    )
    return server.summary()["progress_percent"]


def test_a_restored_workflow_shows_the_servers_percent(server: Server, page: Page) -> None:
    for current, total in CASES:
        percent = seed_at(server, current, total, f"restored_{current}_{total}")
        open_page(page, server)
        assert progress_value(page) == percent
        expect(page.locator("#progress-label")).to_have_text(f"{percent:g}%")


def test_a_followed_workflow_shows_the_servers_percent(server: Server, page: Page) -> None:
    open_page(page, server)
    expect(page.locator("#live-indicator")).to_have_text("Live")
    # The first workflow to appear opens; the page then follows it (and only it).
    for current, total in CASES:
        percent = seed_at(server, current, total, "followed")
        expect_progress(page, percent)
