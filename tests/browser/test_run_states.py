"""Runs that ask, report and recover, as the page draws them: a blocked step's form (answered
from the keyboard), Retry from the failed step, a running step's own progress, tasks and next
try, and the Instances list marking what needs input. The workflow comes from routes
(`FakeWorkflow`), so every state the run routes can answer is drawn here; the server's own
runs are exercised in test_server_runs.py and test_offline_and_history.py."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.pagekit import (
    FIELDS,
    QUESTION,
    FakeWorkflow,
    Server,
    axe_violations,
    open_page,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ID = "wf_fake"
STEPS = [
    {"action": "test_ssh", "label": "Test SSH"},
    {"action": "set_ui_home", "label": "Set UI Home"},
    {"action": "sync_instance", "label": "Sync Instance"},
]
BLOCKED_CLASS = re.compile(r"\bblocked\b")


def workflow(status: str, statuses: list[str], version: int = 10, **fields: Any) -> dict:
    """A stored state of the three steps with these statuses."""
    steps = [{**step, "status": s} for step, s in zip(STEPS, statuses, strict=True)]
    current = next((i for i, s in enumerate(statuses) if s not in ("completed", "skipped")), 0)
    return {
        "workflow_id": ID,
        "status": status,
        "current_step": current,
        "steps": steps,
        "version": version,
        "ssh_connection": "ssh -p 2222 root@203.0.113.7",
        "run": {"attempt": 1, "status": "done", "takeovers": 0},
        **fields,
    }


def blocked_state() -> dict:
    state = workflow("blocked", ["completed", "blocked", "pending"])
    state["steps"][1]["blocked"] = {
        "message": QUESTION,
        "input": FIELDS,
        "since": "2026-12-01T10:00:00Z",
    }
    return state


def running_state(version: int = 12, **run: Any) -> dict:
    state = workflow(
        "running",
        ["completed", "in_progress", "pending"],
        version,
        run={"attempt": 2, "status": "running", "takeovers": 0, **run},
    )
    return state


def open_fake(page: Page, server: Server, state: dict) -> FakeWorkflow:
    fake = FakeWorkflow(page, state)
    page.goto(f"{server.url}/?workflow={ID}")
    expect(page.locator("body")).to_have_attribute("data-workflow-ready", "true")
    return fake


def test_a_blocked_step_asks_and_the_keyboard_answers(server: Server, page: Page, console) -> None:
    console.allow(r"status of 400")  # the browser's note on the refused answer
    fake = open_fake(page, server, blocked_state())
    result = page.locator("#setup-result")
    expect(result).to_have_class("warning")
    expect(result).to_contain_text(QUESTION)
    expect(result).to_contain_text("Step 2 (Set UI Home) needs your answer")
    expect(page.locator('.workflow-step[data-action="set_ui_home"]')).to_have_class(BLOCKED_CLASS)
    form = result.locator("#step-input")
    expect(form).to_be_visible()
    expect(page.locator("#run-workflow-btn")).to_be_hidden()

    # One input per field, named by it, labelled (a screen reader reads the label).
    folder = page.get_by_label("Model folder")
    secret = page.get_by_label("CivitAI API key")
    trust = page.get_by_label("Trust this host key")
    size = page.get_by_label("Disk size")
    note = page.get_by_label("Note (optional)")
    expect(folder).to_have_attribute("name", "folder")
    expect(folder).to_have_attribute("type", "text")
    expect(folder).to_have_attribute("required", "")
    expect(secret).to_have_attribute("name", "api_key")
    expect(secret).to_have_attribute("type", "password")
    expect(trust).to_have_attribute("type", "checkbox")
    expect(size).to_have_attribute("name", "size")
    expect(size.locator("option")).to_have_text(["Choose…", "50 GB", "100 GB"])
    assert note.get_attribute("required") is None
    assert form.evaluate("f => [...f.elements].filter(e => e.name).map(e => e.name)") == [
        "folder",
        "api_key",
        "trust",
        "size",
        "note",
    ]

    # The step asked: focus is on the first field. The keyboard does the rest.
    expect(folder).to_be_focused()
    page.keyboard.type("/workspace/models")
    page.keyboard.press("Tab")
    expect(secret).to_be_focused()
    page.keyboard.type("s3cr3t")
    page.keyboard.press("Tab")
    expect(trust).to_be_focused()
    page.keyboard.press("Space")
    page.keyboard.press("Tab")
    expect(size).to_be_focused()
    page.keyboard.press("ArrowDown")  # "50 GB"
    page.keyboard.press("Tab")
    expect(note).to_be_focused()

    # The server refuses the answer: its reason shows, the form and its values stay.
    fake.answers["resume"] = (
        400,
        {"success": False, "error": "invalid_input", "message": "Disk size must be 100 GB here"},
    )
    page.keyboard.press("Tab")
    expect(page.locator("#resume-workflow-btn")).to_be_focused()
    page.keyboard.press("Enter")
    alert = form.get_by_role("alert")
    expect(alert).to_have_text("The answer was not accepted: Disk size must be 100 GB here")
    expect(folder).to_have_value("/workspace/models")
    expect(result).to_contain_text(QUESTION)
    expect(result).to_have_class("warning")

    # Answered again (Enter in a field submits): the run goes on.
    fake.answers["resume"] = (
        202,
        {"success": True, "message": "Workflow resumed", "state": running_state(11)},
    )
    size.focus()
    page.keyboard.press("ArrowDown")  # "100 GB"
    folder.focus()
    page.keyboard.press("Enter")
    expect(result).to_have_text("⏳ Workflow is running on the server.")
    expect(form).to_have_count(0)
    expect(page.locator("#run-workflow-btn")).to_have_text("Cancel")
    assert [name for name, _ in fake.requests] == ["resume", "resume"]
    assert fake.requests[0][1] == {
        "input": {
            "folder": "/workspace/models",
            "api_key": "s3cr3t",
            "trust": True,
            "size": "50 GB",
        }
    }
    assert fake.requests[1][1]["input"]["size"] == "100 GB"
    # Focus did not fall to the top of the page when the form went.
    assert page.evaluate("document.activeElement.id") == "vastai-setup"


def test_focus_moves_to_the_form_when_a_followed_step_blocks(server: Server, page: Page) -> None:
    fake = open_fake(page, server, running_state())
    run = page.locator("#run-workflow-btn")
    expect(run).to_have_text("Cancel")
    run.focus()
    blocked = blocked_state()
    fake.set(status="blocked", steps=blocked["steps"], run=blocked["run"])
    expect(page.get_by_label("Model folder")).to_be_focused()
    expect(page.locator("#setup-result")).to_contain_text(QUESTION)


def test_storage_down_turns_off_the_answer_until_it_is_back(
    server: Server, page: Page, console
) -> None:
    console.allow(r"status of 503")
    fake = open_fake(page, server, blocked_state())
    result = page.locator("#setup-result")
    resume = page.locator("#resume-workflow-btn")
    cancel = page.locator("#cancel-blocked-btn")
    page.get_by_label("Model folder").fill("kept while down")
    fake.storage_down = True
    expect(result).to_contain_text("The server cannot reach its storage right now.")
    expect(page.locator("#live-indicator")).to_have_text("Offline")
    for button in (resume, cancel):
        expect(button).to_be_disabled()
    fake.storage_down = False
    expect(result).to_contain_text(QUESTION)
    for button in (resume, cancel):
        expect(button).to_be_enabled()
    expect(page.get_by_label("Model folder")).to_have_value("kept while down")


def test_the_form_survives_a_reload_and_cancel_works(server: Server, page: Page) -> None:
    fake = open_fake(page, server, blocked_state())
    page.get_by_label("Model folder").fill("typed, then reloaded")
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-workflow-ready", "true")
    folder = page.get_by_label("Model folder")
    expect(folder).to_be_focused()  # rebuilt from the stored state
    expect(folder).to_have_value("")
    expect(page.locator("#setup-result")).to_contain_text(QUESTION)
    cancelled = workflow("cancelled", ["completed", "cancelled", "pending"], 11)
    fake.answers["cancel"] = (200, {"success": True, "state": cancelled})
    page.locator("#cancel-blocked-btn").click()
    expect(page.locator("#setup-result")).to_have_text("⏹️ Workflow was cancelled.")
    expect(page.locator("#step-input")).to_have_count(0)
    expect(page.locator("#run-workflow-btn")).to_have_text("Run workflow")
    assert fake.requests == [("cancel", None)]


def test_a_failed_workflow_retries_from_its_failed_step(server: Server, page: Page) -> None:
    failed = workflow("failed", ["completed", "completed", "failed"])
    failed["steps"][2]["data"] = {"message": "rsync: connection closed"}
    fake = open_fake(page, server, failed)
    result = page.locator("#setup-result")
    expect(result).to_have_text("❌ Previous workflow failed.")  # the button is beside it
    retry = page.locator("#retry-workflow-btn")
    expect(retry).to_have_text("Retry from step 3")
    fake.answers["retry"] = (
        202,
        {
            "success": True,
            "message": "Workflow retried",
            "state": workflow(
                "running",
                ["completed", "completed", "pending"],
                11,
                run={"attempt": 2, "status": "queued", "takeovers": 0},
            ),
        },
    )
    retry.focus()
    page.keyboard.press("Enter")
    expect(result).to_have_text("⏳ Workflow is running on the server.")
    expect(retry).to_be_hidden()
    assert fake.requests == [("retry", None)]


def test_a_running_step_shows_its_progress_tasks_and_next_try(server: Server, page: Page) -> None:
    state = running_state()
    state["steps"][1]["progress"] = {"percent": 40, "message": "Copying models", "updated": "x"}
    state["steps"][1]["tasks"] = [
        {"name": "Download", "status": "completed", "note": "2.1 GB"},
        {"name": "Unpack", "status": "in_progress"},
        {"name": "Verify", "status": "pending"},
    ]
    fake = open_fake(page, server, state)
    card = page.locator('.workflow-step[data-action="set_ui_home"]')
    bar = card.get_by_role("progressbar", name="Progress of Set UI Home")
    expect(bar).to_have_attribute("aria-valuenow", "40")
    expect(card.locator(".step-progress-message")).to_have_text("Copying models")
    tasks = card.get_by_role("list", name="Tasks of Set UI Home").get_by_role("listitem")
    expect(tasks).to_have_count(3)
    expect(tasks.nth(0)).to_contain_text("Download")
    expect(tasks.nth(0)).to_contain_text("Done")
    expect(tasks.nth(0)).to_contain_text("2.1 GB")
    expect(tasks.nth(1)).to_contain_text("Running…")
    # (1 step + 40 % of one) of 3
    expect(page.locator("#workflow-progress")).to_have_attribute("aria-valuenow", "46.67")
    expect(page.locator("#setup-result")).to_have_text("⏳ Workflow is running on the server.")
    assert axe_violations(page) == []

    # The step failed and waits for its next try: when shows on its card, counting down.
    at = datetime.now(UTC) + timedelta(seconds=12)
    steps = [dict(step) for step in state["steps"]]
    steps[1] = {
        **steps[1],
        "retry_at": at.isoformat().replace("+00:00", "Z"),
        "data": {"message": "Connection refused"},
        "progress": None,
        "tasks": [],
    }
    fake.set(steps=steps, run={**state["run"], "status": "waiting"})
    retry = card.locator(".step-retry")
    expect(retry).to_have_text(re.compile(r"^Trying again in (1[0-2]|[1-9]) s$"))
    first = retry.text_content()
    expect(retry).not_to_have_text(first, timeout=3000)  # it counts down
    expect(card.locator(".step-note")).to_have_text("Connection refused")
    expect(card.locator(".step-progress")).to_be_hidden()
    expect(page.locator("#run-workflow-btn")).to_have_text("Cancel")


def test_the_instances_list_marks_what_needs_input(server: Server, page: Page) -> None:
    def entry(workflow_id: str, status: str, **fields: Any) -> dict:
        return {
            "workflow_id": workflow_id,
            "status": status,
            "active": status in ("running", "blocked"),
            "current_step": 1,
            "total_steps": 4,
            "progress_percent": 50,
            "start_time": "2026-12-01T10:00:00Z",
            "last_update": "2026-12-01T10:00:00Z",
            "version": 3,
            **fields,
        }

    listed = [
        entry("wf_asks", "blocked", label="Ask me", completed_percent=25),
        entry("wf_runs", "running", ssh_connection="ssh -p 2222 root@203.0.113.7"),
    ]
    page.route(
        re.compile(r".*/workflows\?.*"),
        lambda route: route.fulfill(
            status=200,
            content_type="application/json",
            body=json.dumps({"success": True, "workflows": listed, "next_cursor": None}),
        ),
    )
    open_page(page, server)
    asks = page.locator('#instances-body tr[data-workflow-id="wf_asks"]')
    expect(asks.locator("a.workflow-link")).to_have_text("Ask me")
    expect(asks.locator(".badge")).to_have_text("Needs input")
    expect(asks).to_have_class(re.compile(r"\bneeds-input\b"))
    expect(asks.locator(".steps")).to_have_text("Step 2 of 4 · 25%")
    runs = page.locator('#instances-body tr[data-workflow-id="wf_runs"]')
    expect(runs.locator("a.workflow-link")).to_have_text("203.0.113.7")
    expect(runs.locator(".workflow-id")).to_have_text("wf_runs")
    expect(runs.locator(".steps")).to_have_text("Step 2 of 4 · 25%")  # 1 of 4 steps done
    assert axe_violations(page) == []


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_nothing_on_a_blocked_or_failed_workflow(
    scheme: str, server: Server, other_context, console
) -> None:
    console.allow(r"status of 400")
    page = other_context(color_scheme=scheme, reduced_motion="reduce").new_page()
    fake = open_fake(page, server, blocked_state())
    expect(page.locator("#step-input")).to_be_visible()
    assert axe_violations(page) == []
    # With the server's refusal showing.
    fake.answers["resume"] = (400, {"success": False, "error": "invalid_input", "message": "No."})
    page.get_by_label("Model folder").fill("x")
    page.get_by_label("CivitAI API key").fill("y")
    page.get_by_label("Disk size").select_option("50 GB")
    page.locator("#resume-workflow-btn").click()
    expect(page.locator("#step-input").get_by_role("alert")).to_contain_text("No.")
    assert axe_violations(page) == []
    # Failed, with Retry beside the error.
    fake.set(**workflow("failed", ["completed", "failed", "pending"]))
    expect(page.locator("#retry-workflow-btn")).to_have_text("Retry from step 2")
    assert axe_violations(page) == []
