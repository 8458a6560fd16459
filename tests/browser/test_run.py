"""The page runs a workflow: end to end, skipping, failing, cancelling, reloading mid-run."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from playwright.sync_api import Page, Route, expect

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
    assert failing_server.summary()["progress_percent"] == 66.67
    expect_progress(page, 66.67)
    expect(page.locator('.workflow-step[data-action="sync_instance"] .step-note')).to_contain_text(
        "Simulated failure"
    )
    expect(page.locator("#run-workflow-btn")).to_be_enabled()


def test_cancel(slow_server: Server, page: Page) -> None:
    open_page(page, slow_server)
    start_run(page, SSH)
    first = page.locator('.workflow-step[data-action="provision"]')
    expect(first).to_have_class(re.compile(r"\bin-progress\b"))
    page.click("#run-workflow-btn")  # now "Cancel"
    state = slow_server.wait_for_state(lambda s: s is not None and s["status"] == "cancelled")
    assert statuses(state) == ["cancelled", P, P]
    result = page.locator("#setup-result")
    expect(result).to_contain_text("cancelled")
    expect(result).to_have_class(re.compile(r"\bwarning\b"))
    expect(page.locator("#run-workflow-btn")).to_have_text("Run workflow")
    expect(page.locator("#run-workflow-btn")).to_be_enabled()
    expect(first).to_have_class(re.compile(r"\bcancelled\b"))
    expect(first).not_to_have_class(re.compile(r"\bin-progress\b"))


def test_reload_mid_run_restores_it_as_running(slow_server: Server, page: Page) -> None:
    open_page(page, slow_server)
    start_run(page, SSH)
    expect(page.locator('.workflow-step[data-action="provision"]')).to_have_class(
        re.compile(r"\bin-progress\b")
    )
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-workflow-ready", "true")
    result = page.locator("#setup-result")
    expect(result).to_have_text("⚠️ Workflow was in progress. You may need to restart it.")
    expect(result).to_have_class(re.compile(r"\bwarning\b"))
    assert selected_tab(page) == "vastai-setup"
    state = slow_server.state()
    assert state["status"] == "running"
    expect_steps(page, statuses(state), running=True)
    expect(page.locator("#sshConnectionString")).to_have_value(SSH)
    # This tab started the run, and the reload ended it: Run starts it again.
    run = page.locator("#run-workflow-btn")
    expect(run).to_be_enabled()
    expect(page.locator("#run-hint")).to_contain_text("reloaded")
    old_id = state["workflow_id"]
    run.click()
    restarted = slow_server.wait_for_state(lambda s: s["workflow_id"] != old_id)
    assert restarted["status"] == "running"
    status, history = slow_server.call("GET", "/workflow/history?limit=5")
    assert status == 200
    assert any(
        w["workflow_id"] == old_id and w["status"] == "cancelled" for w in history["workflows"]
    )
    page.click("#run-workflow-btn")  # Cancel, so the run does not outlive the test
    slow_server.wait_for_state(lambda s: s["status"] == "cancelled")


def test_step_with_an_endpoint_calls_the_host_application(host_server: Server, page: Page) -> None:
    calls: list[dict[str, Any]] = []

    def host_deploy(route: Route) -> None:
        calls.append({"body": json.loads(route.request.post_data or "{}")})
        route.fulfill(
            status=200,
            content_type="application/json",
            body=json.dumps({"success": True, "message": "Deployed v2"}),
        )

    page.route("**/host/deploy", host_deploy)
    open_page(page, host_server)
    expect(page.locator("#workflow-steps .step-label")).to_have_text(["Prepare", "Deploy app"])
    start_run(page, SSH)
    expect(page.locator("#setup-result")).to_have_text("✅ Workflow completed successfully!")
    assert len(calls) == 1
    body = calls[0]["body"]
    assert body["action"] == "deploy"
    assert body["ssh_connection"] == SSH
    assert body["workflow_id"] == host_server.state()["workflow_id"]
    expect(page.locator('.workflow-step[data-action="deploy"] .step-note')).to_have_text(
        "Deployed v2"
    )


def test_an_endpoint_error_fails_the_step(host_server: Server, page: Page, console) -> None:
    console.allow(r"status of 500")
    page.route(
        "**/host/deploy",
        lambda route: route.fulfill(
            status=500,
            content_type="application/json",
            body=json.dumps({"success": False, "message": "Disk full", "error": "deploy_failed"}),
        ),
    )
    open_page(page, host_server)
    start_run(page, SSH)
    result = page.locator("#setup-result")
    expect(result).to_have_class(re.compile(r"\berror\b"))
    expect(result).to_contain_text("Disk full")
    state = host_server.state()
    assert state["status"] == "failed"
    assert statuses(state) == ["completed", "failed"]


def test_slow_steps_come_from_the_steps_file(slow_server: Server, page: Page) -> None:
    open_page(page, slow_server)
    labels = [step["label"] for step in SLOW_STEPS]
    expect(page.locator("#workflow-steps .step-label")).to_have_text(labels)
