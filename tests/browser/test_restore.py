"""The page restores a stored workflow on load: running, and finished within its TTL."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.pagekit import (
    DEFAULT_ACTIONS,
    DEFAULT_LABELS,
    P,
    Server,
    completed_percent,
    expect_steps,
    make_steps,
    open_page,
    progress_value,
    selected_tab,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RUNNING = ["completed", "completed", "in_progress", P, P, P]
FAILED = ["completed", "completed", "completed", "failed", P, P]
COMPLETED = ["completed"] * 6
CANCELLED = ["completed", "cancelled", P, P, P, P]

CASES = {
    # status: (step statuses, current_step, message, message class)
    "running": (RUNNING, 2, "⚠️ Workflow was in progress. You may need to restart it.", "warning"),
    "failed": (FAILED, 3, "❌ Previous workflow failed.", "error"),
    "completed": (COMPLETED, 5, "✅ Previous workflow completed successfully!", "success"),
    "cancelled": (CANCELLED, 1, "⏹️ Previous workflow was cancelled.", "warning"),
}


def seed_case(server: Server, status: str) -> dict[str, Any]:
    statuses, current, _, _ = CASES[status]
    return server.seed(
        {
            "workflow_id": f"seeded_{status}",
            "status": status,
            "current_step": current,
            "steps": make_steps(statuses),
            "ssh_connection": "ssh -p 41022 root@203.0.113.7",
        }
    )


def expect_restored(page: Page, server: Server, status: str) -> None:
    statuses, _, message, kind = CASES[status]
    assert selected_tab(page) == "vastai-setup"
    expect(page.locator("#vastai-setup")).to_be_visible()
    expect(page.locator("#instances")).to_be_hidden()
    actions = page.eval_on_selector_all(
        "#workflow-steps .workflow-step", "cards => cards.map(c => c.dataset.action)"
    )
    assert actions == list(DEFAULT_ACTIONS)
    expect(page.locator("#workflow-steps .step-label")).to_have_text(list(DEFAULT_LABELS))
    expect_steps(page, statuses, running=status == "running")
    assert progress_value(page) == completed_percent(server.workflow(f"seeded_{status}"))
    expect(page.locator("#setup-result")).to_have_text(message)
    expect(page.locator("#setup-result")).to_have_class(kind)  # exactly: one of the four
    expect(page.locator("#sshConnectionString")).to_have_value("ssh -p 41022 root@203.0.113.7")


@pytest.mark.parametrize("status", list(CASES))
def test_restore_on_load(status: str, server: Server, page: Page, context: BrowserContext) -> None:
    seed_case(server, status)
    expect_restored(open_page(page, server), server, status)
    # A second tab shows the same.
    expect_restored(open_page(context.new_page(), server), server, status)


def test_restored_percent_counts_the_steps_done(server: Server, page: Page) -> None:
    seed_case(server, "running")  # 2 of 6 steps done, the third running
    open_page(page, server)
    assert progress_value(page) == 33.33
    expect(page.locator("#progress-label")).to_have_text("33.33%")


def test_fresh_load_shows_instances_first(server: Server, page: Page) -> None:
    open_page(page, server)
    assert selected_tab(page) == "instances"
    expect(page.locator("#instances")).to_be_visible()
    expect(page.locator("#vastai-setup")).to_be_hidden()
    expect(page.locator("#workflow-steps .workflow-step")).to_have_count(6)
    expect(page.locator("#workflow-steps .workflow-arrow")).to_have_count(5)
    # Each arrow sits between two steps: step, arrow, step, ..., step.
    kinds = page.eval_on_selector_all(
        "#workflow-steps > *", "nodes => nodes.map(n => n.classList[0])"
    )
    assert kinds == ["workflow-step", "workflow-arrow"] * 5 + ["workflow-step"]
    expect_steps(page, [P] * 6, running=False)
    assert progress_value(page) == 0
    expect(page.locator("#run-workflow-btn")).to_be_enabled()


def test_finished_run_is_listed_on_the_instances_tab(server: Server, page: Page) -> None:
    seed_case(server, "completed")
    open_page(page, server)
    page.click('.tab-button[data-tab="instances"]')
    row = page.locator('#instances-body tr[data-workflow-id="seeded_completed"]')
    expect(row.locator(".badge")).to_have_text("Ready")
    expect(row.locator(".steps")).to_have_text("6 of 6 steps · 100%")
    link = row.locator("a.workflow-link")
    expect(link).to_have_text("203.0.113.7")  # named by its SSH host (it has no label)
    expect(row.locator(".workflow-id")).to_have_text("seeded_completed")
    expect(link).to_have_attribute("href", "/?workflow=seeded_completed")
    expect(row).to_have_class(re.compile(r"\bis-open\b"))  # the setup tab shows it


def test_a_running_workflow_no_server_run_drives_can_be_run(server: Server, page: Page) -> None:
    seed_case(server, "running")  # written by a client that runs steps itself: no `run`
    open_page(page, server)
    expect(page.locator("#setup-result")).to_have_text(CASES["running"][2])
    run = page.locator("#run-workflow-btn")
    expect(run).to_have_text("Run on the server")
    hint = page.locator("#run-hint")
    expect(hint).to_contain_text("Nothing runs this workflow on the server")
    expect(hint).to_contain_text("Run on the server runs its remaining steps here")
    expect(hint).to_contain_text("Delete removes it")
    expect(page.locator("#delete-workflow-btn")).to_be_visible()
    run.click()
    # The server runs its remaining steps (from the interrupted one) to the end.
    expect(page.locator("#setup-result")).to_have_text("✅ Workflow completed successfully!")
    state = server.state()
    assert state["workflow_id"] == "seeded_running"
    assert [step["status"] for step in state["steps"]] == ["completed"] * 6
    assert state["run"]["status"] == "done"


def test_a_running_workflow_no_server_run_drives_can_be_deleted(server: Server, page: Page) -> None:
    seed_case(server, "running")
    open_page(page, server)
    expect(page.locator("#setup-result")).to_have_text(CASES["running"][2])
    page.click("#delete-workflow-btn")
    expect(page.locator("#setup-result")).to_have_text("🗑️ Workflow seeded_running was deleted.")
    assert server.workflow("seeded_running") is None
    assert "workflow=" not in page.url  # nothing is open any more
    expect(page.locator("#run-workflow-btn")).to_have_text("Run workflow")
    expect(page.locator("#delete-workflow-btn")).to_be_hidden()
    expect(page.locator("#run-hint")).to_be_hidden()
    # It left the Instances list too.
    page.click('.tab-button[data-tab="instances"]')
    expect(page.locator('#instances-body tr[data-workflow-id="seeded_running"]')).to_have_count(0)
