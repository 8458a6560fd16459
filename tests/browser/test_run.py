"""Run starts a workflow on the server and the page follows it: end to end, skipping, failing,
cancelling, and steps that call the host application's endpoints."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.pagekit import (
    DEFAULT_ACTIONS,
    SLOW_STEPS,
    P,
    Server,
    expect_progress,
    expect_steps,
    open_page,
    selected_tab,
    start_run,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SSH = "ssh -p 41022 root@203.0.113.7 -L 8080:localhost:8080"


def statuses(state: dict[str, Any] | None) -> list[str]:
    return [step["status"] for step in state["steps"]] if state else []


def test_run_end_to_end(server: Server, page: Page) -> None:
    open_page(page, server)
    start_run(page, SSH)
    expect(page.locator("#run-workflow-btn")).to_have_text("Cancel")
    result = page.locator("#setup-result")
    expect(result).to_have_text("✅ Workflow completed successfully!")
    expect(result).to_have_class(re.compile(r"\bsuccess\b"))
    expect_steps(page, ["completed"] * 6, running=False)
    expect_progress(page, 100)
    expect(page.locator("#run-workflow-btn")).to_have_text("Run workflow")
    expect(page.locator("#run-workflow-btn")).to_be_enabled()

    state = server.state()
    assert state["status"] == "completed"
    assert state["run"]["status"] == "done"  # the server ran it
    assert statuses(state) == ["completed"] * 6
    assert [step["action"] for step in state["steps"]] == list(DEFAULT_ACTIONS)
    assert state["ssh_connection"] == SSH
    assert server.summary()["progress_percent"] == 100.0

    # A refresh right after completion shows the final state (within the TTL).
    page.reload()
    expect(result).to_have_text("✅ Previous workflow completed successfully!")
    expect_steps(page, ["completed"] * 6, running=False)
    assert selected_tab(page) == "vastai-setup"


def test_disabled_steps_are_skipped(server: Server, page: Page) -> None:
    open_page(page, server)
    page.click('.tab-button[data-tab="vastai-setup"]')
    page.get_by_label("Enable Set up CivitDL").uncheck()
    page.get_by_label("Enable Verify Dependencies").uncheck()
    page.click("#run-workflow-btn")
    expect(page.locator("#setup-result")).to_have_text("✅ Workflow completed successfully!")
    state = server.state()
    assert statuses(state) == [
        "completed",
        "completed",
        "skipped",
        "completed",
        "completed",
        "skipped",
    ]
    assert state["status"] == "completed"
    cards = page.locator("#workflow-steps .workflow-step")
    expect(cards.nth(2)).to_have_class(re.compile(r"\bskipped\b"))
    expect(cards.nth(5)).to_have_class(re.compile(r"\bskipped\b"))
    # The choice survives a reload: the toggles follow the stored steps.
    page.reload()
    expect(page.get_by_label("Enable Set up CivitDL")).not_to_be_checked()
    expect(page.get_by_label("Enable Test SSH")).to_be_checked()


def test_failure_stops_the_run(failing_server: Server, page: Page) -> None:
    open_page(page, failing_server)
    start_run(page, SSH)
    result = page.locator("#setup-result")
    expect(result).to_have_class(re.compile(r"\berror\b"))
    expect(result).to_contain_text("Sync Instance")
    expect(result).to_contain_text("failed")
    expected = ["completed", "completed", "completed", "failed", P, P]
    expect_steps(page, expected, running=False)
    state = failing_server.state()
    assert state["status"] == "failed"
    assert statuses(state) == expected
    assert state["current_step"] == 3
    assert "WORKFLOW_DEMO_FAIL" in state["steps"][3]["data"]["message"]
    assert failing_server.summary()["progress_percent"] == 66.67  # the seed's formula
    expect_progress(page, 50)  # what a person sees: 3 of 6 steps done
    expect(page.locator('.workflow-step[data-action="sync_instance"] .step-note')).to_contain_text(
        "Simulated failure"
    )
    expect(page.locator("#run-workflow-btn")).to_be_enabled()


def test_cancel(slow_server: Server, page: Page) -> None:
    open_page(page, slow_server)
    start_run(page, SSH)
    running = page.locator(".workflow-step.in-progress")
    expect(running).to_have_count(1)
    page.click("#run-workflow-btn")  # now "Cancel"
    state = slow_server.wait_for_state(lambda s: s is not None and s["status"] == "cancelled")
    # The step running when the cancel landed is cancelled (the first, unless a loaded machine
    # let it finish first); those before it completed, those after it never ran.
    found = statuses(state)
    stopped = found.index("cancelled")
    assert found == ["completed"] * stopped + ["cancelled"] + [P] * (len(found) - stopped - 1)
    stopped_step = page.locator(f'.workflow-step[data-index="{stopped}"]')
    result = page.locator("#setup-result")
    expect(result).to_contain_text("cancelled")
    expect(result).to_have_class(re.compile(r"\bwarning\b"))
    expect(page.locator("#run-workflow-btn")).to_have_text("Run workflow")
    expect(page.locator("#run-workflow-btn")).to_be_enabled()
    expect(stopped_step).to_have_class(re.compile(r"\bcancelled\b"))
    expect(stopped_step).not_to_have_class(re.compile(r"\bin-progress\b"))


def test_steps_with_endpoints_call_the_host_application(host_server: Server, page: Page) -> None:
    open_page(page, host_server)
    expect(page.locator("#workflow-steps .step-label")).to_have_text(
        ["Prepare", "Deploy app", "Report"]
    )
    start_run(page, SSH)
    expect(page.locator("#setup-result")).to_have_text("✅ Workflow completed successfully!")
    calls = host_server.endpoints.calls("/ok")
    assert len(calls) == 2  # the server called them, once each
    body = calls[0]["body"]
    assert body["action"] == "deploy"
    assert body["ssh_connection"] == SSH
    assert body["workflow_id"] == host_server.state()["workflow_id"]
    # The answer's message is stored with the step and shown on its card.
    expect(page.locator('.workflow-step[data-action="deploy"] .step-note')).to_have_text("done")


def test_an_endpoint_failure_fails_the_step(host_fail_server: Server, page: Page) -> None:
    open_page(page, host_fail_server)
    start_run(page, SSH)
    result = page.locator("#setup-result")
    expect(result).to_have_class(re.compile(r"\berror\b"))
    expect(result).to_have_text("❌ Workflow failed at step 3 (Report).")
    expect(page.locator('.workflow-step[data-action="report"] .step-note')).to_have_text(
        "disk full"
    )
    state = host_fail_server.state()
    assert state["status"] == "failed"
    assert statuses(state) == ["completed", "completed", "failed"]


def test_slow_steps_come_from_the_steps_file(slow_server: Server, page: Page) -> None:
    open_page(page, slow_server)
    labels = [step["label"] for step in SLOW_STEPS]
    expect(page.locator("#workflow-steps .step-label")).to_have_text(labels)
