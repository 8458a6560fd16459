"""The progress bar shows how much of a workflow is done: the state's `completed_percent`, or the
same rule (steps completed or skipped ÷ all steps, plus the running step's own progress) where
the server does not send it yet. A one-step workflow with nothing done shows 0, not 100."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.pagekit import (
    Server,
    completed_percent,
    expect_progress,
    open_page,
    progress_value,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Step statuses of running workflows whose percents need rounding (14.29, 66.67, 71.43, ...).
CASES = [
    ["in_progress"] + ["pending"] * 6,
    ["completed", "in_progress", "pending"],
    ["completed"] * 4 + ["skipped", "in_progress", "pending"],
    ["completed"] * 31 + ["in_progress", "pending"],
    ["completed", "skipped", "in_progress", "pending", "pending", "pending"],
]


def seed(server: Server, statuses: list[str], name: str) -> float:
    """Store a running workflow whose steps have `statuses`; return the percent a person sees."""
    state = server.seed(
        {
            "workflow_id": name,
            "current_step": statuses.index("in_progress"),
            "steps": [{"action": f"step{i}", "status": s} for i, s in enumerate(statuses)],
        }
    )
    return completed_percent(state)


def test_a_restored_workflow_shows_how_much_is_done(server: Server, page: Page) -> None:
    for number, statuses in enumerate(CASES):
        percent = seed(server, statuses, f"restored_{number}")
        open_page(page, server)
        assert progress_value(page) == percent
        expect(page.locator("#progress-label")).to_have_text(f"{percent:g}%")


def test_a_one_step_workflow_with_nothing_done_shows_0(server: Server, page: Page) -> None:
    # The seed's progress_percent says 100 for it (step 1 of 1): a person must not read that.
    state = server.seed(
        {"workflow_id": "one_step", "steps": [{"action": "only", "status": "in_progress"}]}
    )
    assert server.summary()["progress_percent"] == 100
    open_page(page, server)
    assert completed_percent(state) == 0
    expect(page.locator("#progress-label")).to_have_text("0%")
    assert progress_value(page) == 0
    # The Instances list says the same.
    page.click('.tab-button[data-tab="instances"]')
    row = page.locator('#instances-body tr[data-workflow-id="one_step"]')
    expect(row.locator(".steps")).to_have_text("Step 1 of 1 · 0%")


def test_a_followed_workflow_shows_how_much_is_done(server: Server, page: Page) -> None:
    open_page(page, server)
    expect(page.locator("#live-indicator")).to_have_text("Live")
    # The first workflow to appear opens; the page then follows it (and only it).
    for statuses in CASES:
        percent = seed(server, statuses, "followed")
        expect_progress(page, percent)
