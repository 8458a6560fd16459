"""Runs live on the server (contract section 9) and an owner has many workflows (section 8):
a reload or a closed tab never stops a run, several run at once, the Instances list follows
them all live, and the address keeps the open workflow."""

from __future__ import annotations

import os
import re
import signal
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.pagekit import (
    P,
    Server,
    expect_steps,
    open_page,
    selected_tab,
    start_run,
)
from tests.support import SSEClient, wait_until
from tests.support.routes import WORKFLOWS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RUNNING_ON_SERVER = "⏳ Workflow is running on the server."
RESUMED = "🔁 Workflow resumed after an interruption."
DONE = re.compile(r"^✅ (Workflow|Previous workflow) completed successfully!$")
IN_PROGRESS = re.compile(r"\bin-progress\b")

# Records the text of every row the Instances list ever drew, per workflow id.
RECORD_ROWS = """() => {
  window.seenRows = {};
  const note = () => {
    for (const row of document.querySelectorAll('#instances-body tr')) {
      const seen = (window.seenRows[row.dataset.workflowId] ||= []);
      const text = row.querySelector('.badge').textContent + ' | ' +
        row.querySelector('.steps').textContent;
      if (!seen.includes(text)) seen.push(text);
    }
  };
  new MutationObserver(note).observe(document.getElementById('instances-body'),
                                     { subtree: true, childList: true, characterData: true });
}"""


def open_id(page: Page) -> str | None:
    """The workflow the page's address names (`?workflow=<id>`)."""
    return page.evaluate("new URLSearchParams(location.search).get('workflow')")


def states_until_finished(stream: SSEClient, timeout: float = 30) -> list[dict[str, Any]]:
    """Every state a workflow's stream delivers, until one is finished."""
    states: list[dict[str, Any]] = []
    while not states or states[-1]["status"] == "running":
        event = stream.next(timeout=timeout)
        if event.get("event") == "state" and event["json"]["state"] is not None:
            states.append(event["json"]["state"])
    return states


def test_a_run_goes_on_through_a_reload_and_a_closed_tab(
    slow_server: Server, context: BrowserContext
) -> None:
    page = open_page(context.new_page(), slow_server)
    start_run(page, "ssh root@203.0.113.9")
    expect(page.locator('.workflow-step[data-action="provision"]')).to_have_class(IN_PROGRESS)
    workflow_id = slow_server.state()["workflow_id"]
    assert open_id(page) == workflow_id  # the address keeps the open workflow
    # Everything the server stores for this workflow from now on, as it happens.
    stream = SSEClient(f"{slow_server.url}{WORKFLOWS}/{workflow_id}/stream")
    try:
        # A reload mid-step: the run goes on, and the page says the server runs it.
        page.reload()
        expect(page.locator("body")).to_have_attribute("data-workflow-ready", "true")
        result = page.locator("#setup-result")
        expect(result).to_have_text(RUNNING_ON_SERVER)
        expect(result).to_have_class("info")
        assert open_id(page) == workflow_id
        assert selected_tab(page) == "vastai-setup"
        expect(page.locator("#run-workflow-btn")).to_have_text("Cancel")
        expect(page.locator("#run-hint")).to_contain_text("runs on the server")
        expect(page.locator("#sshConnectionString")).to_have_value("ssh root@203.0.113.9")

        # Close the tab: with no page open the run moves to the next step...
        page.close()
        slow_server.wait_for_state(lambda s: s["steps"][1]["status"] != P)
        # ...and a new tab (no address of its own) opens it and follows it to its end.
        fresh = open_page(context.new_page(), slow_server)
        assert open_id(fresh) == workflow_id
        expect(fresh.locator("#setup-result")).to_have_text(RUNNING_ON_SERVER)
        expect(fresh.locator("#setup-result")).to_have_text(DONE, timeout=15_000)
        expect_steps(fresh, ["completed"] * 3, running=False)
        states = states_until_finished(stream)
    finally:
        stream.close()

    final = slow_server.workflow(workflow_id)
    assert final["status"] == "completed"
    assert [step["status"] for step in final["steps"]] == ["completed"] * 3
    assert final["run"]["attempt"] == 1 and final["run"]["status"] == "done"  # one runner
    # No state ever stored a failed step (a reload of the old page-run did, 1 time in 3).
    assert states and states[-1]["version"] == final["version"]
    assert all(step["status"] != "failed" for state in states for step in state["steps"])
    status, history = slow_server.call("GET", "/workflow/history?limit=10")
    assert status == 200
    (kept,) = [w for w in history["workflows"] if w["workflow_id"] == workflow_id]
    assert [step["status"] for step in kept["steps"]] == ["completed"] * 3


def test_two_runs_at_once_and_the_instances_list_follows_both(
    slow_server: Server, context: BrowserContext
) -> None:
    lister = open_page(context.new_page(), slow_server)
    assert selected_tab(lister) == "instances"
    lister.click('.tab-button[data-tab="instances"]')  # picked: it stays on this tab
    expect(lister.locator("#live-indicator")).to_have_text("Live")
    lister.evaluate(RECORD_ROWS)

    one = open_page(context.new_page(), slow_server)
    start_run(one, "ssh one")
    expect(one.locator("#run-workflow-btn")).to_have_text("Cancel")
    first = open_id(one)
    # A second tab opens the running one; New setup starts another beside it.
    two = open_page(context.new_page(), slow_server)
    assert open_id(two) == first
    two.click("#new-workflow-btn")
    expect(two.locator("#sshConnectionString")).to_have_value("")
    two.fill("#sshConnectionString", "ssh two")
    two.click("#run-workflow-btn")
    expect(two.locator("#run-workflow-btn")).to_have_text("Cancel")
    second = open_id(two)
    assert second and second != first

    def running_step(workflow_id: str) -> bool:
        state = slow_server.workflow(workflow_id)
        return any(step["status"] == "in_progress" for step in state["steps"])

    # Both run at once: a step of each is in progress at the same moment.
    wait_until(lambda: running_step(first) and running_step(second), interval=0.05)

    # The list, never reloaded, shows both, running, then finished.
    row_of = "#instances-body tr[data-workflow-id={!r}]".format
    rows = {wid: lister.locator(row_of(wid)) for wid in (first, second)}
    for row in rows.values():
        expect(row.locator(".badge")).to_have_text("Running")
    for row in rows.values():
        expect(row.locator(".badge")).to_have_text("Ready", timeout=20_000)
        expect(row.locator(".steps")).to_have_text("3 of 3 steps · 100%")
    seen = lister.evaluate("window.seenRows")
    for wid in (first, second):
        # It moved live: step by step, each with the share of its steps done.
        assert "Running | Step 2 of 3 · 33.33%" in seen[wid], seen[wid]
        assert "Ready | 3 of 3 steps · 100%" in seen[wid], seen[wid]
    # Newest change first; each row opens its workflow.
    ids = lister.eval_on_selector_all(
        "#instances-body tr", "rows => rows.map(r => r.dataset.workflowId)"
    )
    assert set(ids[:2]) == {first, second}
    assert rows[first].locator("a").get_attribute("href") == f"/?workflow={first}"

    # Each tab kept its own workflow and saw it end.
    for tab, wid in ((one, first), (two, second)):
        expect(tab.locator("#setup-result")).to_have_text("✅ Workflow completed successfully!")
        assert open_id(tab) == wid
    # A reload reopens the workflow that was open, not the owner's current one (the second).
    one.reload()
    expect(one.locator("body")).to_have_attribute("data-workflow-ready", "true")
    assert open_id(one) == first
    result = one.locator("#setup-result")
    expect(result).to_have_text("✅ Previous workflow completed successfully!")
    expect(one.locator("#sshConnectionString")).to_have_value("ssh one")
    two.reload()
    expect(two.locator("#sshConnectionString")).to_have_value("ssh two")
    assert open_id(two) == second

    # A row of the list opens its workflow in the page.
    assert selected_tab(lister) == "instances"
    rows[first].locator("a").click()
    assert selected_tab(lister) == "vastai-setup"
    expect(lister.locator("#sshConnectionString")).to_have_value("ssh one")
    wait_until(lambda: open_id(lister) == first)
    expect(rows[first]).to_have_class(re.compile(r"\bis-open\b"))


def test_a_run_taken_over_after_its_runner_died_says_so(
    lease_server: Server, page: Page, console
) -> None:
    # The page's stream may have been served by the killed process: the browser notes the cut.
    console.allow(r"ERR_INCOMPLETE_CHUNKED_ENCODING|ERR_EMPTY_RESPONSE|ERR_CONNECTION_RESET")
    open_page(page, lease_server)
    start_run(page)
    result = page.locator("#setup-result")
    expect(result).to_have_text(RUNNING_ON_SERVER)
    state = lease_server.wait_for_state(
        lambda s: s["run"]["status"] == "running" and s["steps"][0]["status"] == "in_progress"
    )
    # SIGKILL the web process running it mid-step; another one takes it over after the lease.
    os.kill(int(state["run"]["runner"].rsplit(":", 1)[1]), signal.SIGKILL)
    expect(result).to_have_text(RESUMED, timeout=15_000)
    expect(result).to_have_class("info")
    # A reload while the taken-over run goes on says the same.
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-workflow-ready", "true")
    expect(result).to_have_text(RESUMED)
    expect(result).to_have_text("✅ Workflow completed successfully!", timeout=20_000)
    final = lease_server.state()
    assert final["run"]["attempt"] == 2
    assert [step["status"] for step in final["steps"]] == ["completed"] * 3


def test_an_unknown_workflow_says_so(server: Server, page: Page, console) -> None:
    console.allow(r"status of 404")  # the browser's note on GET /workflows/<id>
    page.goto(server.url + "/?workflow=workflow_0_nothere")
    expect(page.locator("body")).to_have_attribute("data-workflow-ready", "true")
    result = page.locator("#setup-result")
    expect(result).to_contain_text("There is no workflow workflow_0_nothere")
    expect(result).to_have_class("error")
    assert open_id(page) is None  # nothing is open: a reload opens the current workflow
    expect(page.locator("#run-workflow-btn")).to_be_enabled()
