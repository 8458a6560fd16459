"""Other tabs follow a run live (stream, or polling when there is none) and never overwrite it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
from playwright.sync_api import BrowserContext, Page, Route, expect

from tests.browser.pagekit import P, Server, expect_steps, open_page, selected_tab, start_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Records every class a step card takes, so a test can tell the page showed each step running.
RECORD_STEP_CLASSES = """() => {
  window.seenClasses = {};
  const note = (card) => {
    const seen = (window.seenClasses[card.dataset.action] ||= []);
    for (const name of card.classList) if (!seen.includes(name)) seen.push(name);
  };
  const root = document.getElementById('workflow-steps');
  new MutationObserver((changes) => {
    for (const change of changes) {
      const targets = change.type === 'childList' ? [...change.addedNodes] : [change.target];
      for (const node of targets) {
        if (node.classList && node.classList.contains('workflow-step')) note(node);
      }
    }
  }).observe(root, { subtree: true, childList: true, attributeFilter: ['class'] });
}"""


def without_stream(page: Page) -> None:
    """Make GET /workflow/config say there is no stream, as on a server without one."""

    def handle(route: Route) -> None:
        response = route.fetch()
        body = response.json()
        body["stream_url"] = None
        route.fulfill(response=response, body=json.dumps(body))

    page.route("**/workflow/config", handle)


def test_second_tab_follows_a_whole_run_live(server: Server, context: BrowserContext) -> None:
    watcher = open_page(context.new_page(), server)
    expect(watcher.locator("#live-indicator")).to_have_text("Live")
    assert selected_tab(watcher) == "instances"
    watcher.evaluate(RECORD_STEP_CLASSES)

    runner = open_page(context.new_page(), server)
    start_run(runner)
    expect(runner.locator("#setup-result")).to_have_text("✅ Workflow completed successfully!")

    # The watcher, never reloaded, ends on the same picture...
    expect(watcher.locator("#setup-result")).to_have_text("✅ Workflow completed successfully!")
    expect_steps(watcher, ["completed"] * 6, running=False)
    assert selected_tab(watcher) == "vastai-setup"  # a workflow appeared: its tab opened
    # ...having shown every step running on the way.
    seen = watcher.evaluate("window.seenClasses")
    for action in server.state()["steps"]:
        assert "in-progress" in seen[action["action"]], seen


@pytest.mark.parametrize("live", ["stream", "polling"])
def test_another_tab_follows_the_server_run_and_may_cancel_it(
    live: str, slow_server: Server, page: Page, other_context: Callable[..., BrowserContext]
) -> None:
    watcher = other_context().new_page()
    if live == "polling":
        without_stream(watcher)
    open_page(watcher, slow_server)
    expect(watcher.locator("#live-indicator")).to_have_text(
        "Live" if live == "stream" else "Polling"
    )

    open_page(page, slow_server)
    start_run(page)
    # Each step takes 2.5 s, longer than a poll: the watcher sees each one run.
    expect_steps(watcher, ["in_progress", P, P], running=True)
    expect_steps(watcher, ["completed", "in_progress", P], running=True, timeout=6)
    expect(watcher.locator("#setup-result")).to_have_text("⏳ Workflow is running on the server.")
    expect(watcher.locator("#run-hint")).to_contain_text("Any tab can cancel it")
    # The server runs it, so any tab may stop it.
    cancel = watcher.locator("#run-workflow-btn")
    expect(cancel).to_have_text("Cancel")
    cancel.click()
    expect(watcher.locator("#setup-result")).to_have_text("⏹️ Workflow was cancelled.")
    expect(page.locator("#setup-result")).to_have_text("⏹️ Workflow was cancelled.")
    state = slow_server.state()
    assert state["status"] == "cancelled"
    # The step running when the cancel landed (the second, unless a loaded machine was slow to
    # click) is cancelled; those before it completed, those after it never ran.
    statuses = [step["status"] for step in state["steps"]]
    stopped = statuses.index("cancelled")
    assert stopped >= 1 and statuses == ["completed"] * stopped + ["cancelled"] + [P] * (
        len(statuses) - stopped - 1
    )
    for tab in (watcher, page):
        expect(tab.locator("#run-workflow-btn")).to_have_text("Run workflow")
        expect(tab.locator("#run-hint")).to_be_hidden()


def test_a_tab_opened_mid_run_shows_the_server_run(
    slow_server: Server, page: Page, other_context: Callable[..., BrowserContext]
) -> None:
    open_page(page, slow_server)
    start_run(page)
    expect(page.locator('.workflow-step[data-action="provision"]')).to_have_class(
        re.compile(r"\bin-progress\b")
    )
    other = open_page(other_context().new_page(), slow_server)
    result = other.locator("#setup-result")
    expect(result).to_have_text("⏳ Workflow is running on the server.")
    expect(result).to_have_class("info")
    expect(other.locator("#run-workflow-btn")).to_have_text("Cancel")
    expect(other.locator("#delete-workflow-btn")).to_be_hidden()
    page.click("#run-workflow-btn")  # Cancel, from the tab that started it
    expect(result).to_have_text("⏹️ Workflow was cancelled.")
    expect(other.locator("#run-workflow-btn")).to_be_enabled()


def test_stream_failure_falls_back_to_polling(server: Server, page: Page, console) -> None:
    console.allow(r"status of 404")  # the browser's own note on the refused stream
    page.route(
        "**/workflow/state/stream",
        lambda route: route.fulfill(
            status=404,
            content_type="application/json",
            body=json.dumps({"success": False, "message": "Not found", "error": "not_found"}),
        ),
    )
    open_page(page, server)
    expect(page.locator("#live-indicator")).to_have_text("Polling")
    server.seed(
        {
            "workflow_id": "seeded_after_load",
            "status": "failed",
            "current_step": 0,
            "steps": [{"action": "test_ssh", "status": "failed"}],
        }
    )
    expect(page.locator("#setup-result")).to_contain_text("Workflow failed")
    expect(page.locator('.workflow-step[data-action="test_ssh"]')).to_have_class(
        re.compile(r"\bfailed\b")
    )


def test_without_a_stream_the_page_never_asks_for_one(server: Server, page: Page) -> None:
    streams: list[str] = []
    page.on("request", lambda request: "/stream" in request.url and streams.append(request.url))
    without_stream(page)
    open_page(page, server)
    expect(page.locator("#live-indicator")).to_have_text("Polling")
    start_run(page)
    expect(page.locator("#setup-result")).to_have_text("✅ Workflow completed successfully!")
    # The Instances list polls GET /workflows instead of its stream.
    page.click('.tab-button[data-tab="instances"]')
    row = page.locator(f'#instances-body tr[data-workflow-id="{server.state()["workflow_id"]}"]')
    expect(row.locator(".badge")).to_have_text("Ready")
    assert streams == []


def test_the_page_uses_eventsource_for_the_stream(server: Server, page: Page) -> None:
    kinds: list[str] = []
    page.on(
        "request",
        lambda request: (
            request.url.endswith("/workflow/state/stream") and kinds.append(request.resource_type)
        ),
    )
    open_page(page, server)
    expect(page.locator("#live-indicator")).to_have_text("Live")
    assert kinds and set(kinds) == {"eventsource"}
