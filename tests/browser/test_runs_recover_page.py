"""Runs that ask, report and recover, on the real server as a person sees them: a step of the
test's own endpoint blocks and the keyboard answers it, a failed run is retried from the page,
a long step's reports move its bar and task list; a reload at each point restores all of it.

The step endpoint is an HTTP server thread of this file: it records every call's body, asks
its question until a call carries the answer, fails a step's first call, and sends the progress
reports the test hands it through the call's `progress_url` and `progress_token`.
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.pagekit import FIELDS, QUESTION, Server, open_page, progress_value
from tests.support import Gunicorn, http, wait_until
from tests.support.endpoints import StepEndpoints
from tests.support.endpoints import _Handler as StepHandler

pytestmark = [pytest.mark.browser, pytest.mark.slow]

APPROVAL = "Wipe /workspace on 203.0.113.7 before syncing?"
SECRET = "civitai-s3cr3t-value"
RESUMED = "🔁 Workflow resumed after an interruption."
RUNNING_ON_SERVER = "⏳ Workflow is running on the server."
DONE = re.compile(r"^✅ (Workflow|Previous workflow) completed successfully!$")
FAILED = "❌ Previous workflow failed."
BLOCKED_CLASS = re.compile(r"\bblocked\b")


class _Handler(StepHandler):
    """This file's step paths; every call is recorded as StepEndpoints records them."""

    server: Any

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        path, _, query = self.path.partition("?")
        self.server.record(path, dict(self.headers), body)
        if path == "/ask":
            if body.get("input"):
                self._json(200, {"success": True, "message": "Host trusted"})
            else:
                self._json(
                    200, {"success": False, "blocked": {"message": QUESTION, "input": FIELDS}}
                )
        elif path == "/approve":
            if "input" in body:
                self._json(200, {"success": True, "message": "approved"})
            else:
                self._json(200, {"success": False, "blocked": {"message": APPROVAL, "input": []}})
        elif path == "/flaky":
            # Fails the step's first calls (one, or `fails=N`), then succeeds.
            fails = int(query.removeprefix("fails=") or 1)
            if body["step_attempt"] <= fails:
                self._json(200, {"success": False, "message": "rsync: connection closed"})
            else:
                self._json(200, {"success": True, "message": "synced"})
        elif path == "/long":
            self._json(200, self.server.long_step(body))
        else:
            self._json(200, {"success": True, "message": "done"})


class RecoverEndpoints(StepEndpoints):
    """Step endpoints that ask, fail once, or report the progress the test hands them."""

    def __init__(self) -> None:
        super().__init__()
        self.server.RequestHandlerClass = _Handler
        self.server.long_step = self.long_step
        self.reports: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.sent: list[int] = []  # the status of each progress report the service answered

    def bodies(self, path: str) -> list[dict[str, Any]]:
        """Return the bodies of the calls to `path` so far."""
        return [call["body"] for call in self.calls(path)]

    def long_step(self, body: dict[str, Any]) -> dict[str, Any]:
        """Send each report the test queues to the service; end the step at None."""
        headers = {"Authorization": f"Bearer {body['progress_token']}"}
        while True:
            try:
                report = self.reports.get(timeout=30)
            except queue.Empty:
                return {"success": False, "message": "the test sent no report"}
            if report is None:
                return {"success": True, "message": "all synced"}
            status, _, _ = http("POST", body["progress_url"], report, headers=headers)
            self.sent.append(status)

    def reset(self) -> None:
        """Forget the calls and reports of the test before."""
        with self.server.lock:
            self.server.calls.clear()
        self.sent.clear()
        while not self.reports.empty():
            self.reports.get_nowait()

    def close(self) -> None:
        """End a step still running, then stop serving."""
        self.reports.put(None)
        super().close()


@pytest.fixture(scope="module")
def endpoints() -> Iterator[RecoverEndpoints]:
    server = RecoverEndpoints().start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def recover_server(endpoints: RecoverEndpoints) -> Iterator[Server]:
    """The page's steps are Prepare (/ok), Configure (/ask: it asks) and Sync (/ok)."""
    directory = Path(tempfile.mkdtemp(prefix="wss-recover-page-"))
    steps = [
        {"action": "prepare", "label": "Prepare", "endpoint": f"{endpoints.url}/ok"},
        {"action": "configure", "label": "Configure", "endpoint": f"{endpoints.url}/ask"},
        {"action": "sync", "label": "Sync models", "endpoint": f"{endpoints.url}/ok"},
    ]
    (directory / "steps.json").write_text(json.dumps(steps))
    env = {
        "WORKFLOW_STATE_URL": f"file://{directory}/state/workflow_state.json",
        "WORKFLOW_STEPS_FILE": str(directory / "steps.json"),
        "WORKFLOW_STEP_DELAY_MS": "0",
        "WORKFLOW_STATE_TTL": "60",
        "WORKFLOW_RUN_WORKERS": "4",
    }
    gunicorn = Gunicorn(env, workers=2, log_path=directory / "gunicorn.log")
    gunicorn.env["WORKFLOW_SELF_URL"] = gunicorn.url  # where a step sends its progress
    server = Server(gunicorn.start())
    try:
        yield server
    finally:
        gunicorn.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def server(recover_server: Server, endpoints: RecoverEndpoints) -> Server:
    recover_server.clear()
    endpoints.reset()
    return recover_server


def steps_with(endpoints: RecoverEndpoints, **paths: str) -> list[dict[str, Any]]:
    """The page's three steps, each at the endpoint path given for it (default /ok)."""
    return [
        {
            "action": action,
            "status": "pending",
            "endpoint": f"{endpoints.url}{paths.get(action, '/ok')}",
        }
        for action in ("prepare", "configure", "sync")
    ]


def report(percent: int, message: str, *statuses: str) -> dict[str, Any]:
    """A progress report of the sync step: its percent, message and three tasks' statuses."""
    names = ("Download", "Unpack", "Verify")
    tasks = [{"name": n, "status": s} for n, s in zip(names, statuses, strict=True)]
    tasks[0]["note"] = "2.1 GB"
    return {"percent": percent, "message": message, "tasks": tasks}


def reload(page: Page) -> None:
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-workflow-ready", "true")


def run_and_open(
    server: Server,
    page: Page,
    steps: list[dict[str, Any]],
    until: Callable[[dict[str, Any]], bool] | None = None,
) -> str:
    """Start a run of `steps` on the server, wait until its state passes `until`, open it."""
    workflow_id = server.start_run(steps)["workflow_id"]
    if until:
        wait_until(lambda: until(server.workflow(workflow_id)), interval=0.05)
    page.goto(f"{server.url}/?workflow={workflow_id}")
    expect(page.locator("body")).to_have_attribute("data-workflow-ready", "true")
    return workflow_id


# Records every text #setup-result shows from now on (until the page is reloaded).
RECORD_RESULTS = """() => {
  const result = document.getElementById('setup-result');
  window.seenResults = [result.textContent];
  new MutationObserver(() => window.seenResults.push(result.textContent))
    .observe(result, { subtree: true, childList: true, characterData: true });
}"""


def seen_results(page: Page) -> list[str]:
    return page.evaluate("window.seenResults")


def expect_blocked_form(page: Page) -> None:
    """The blocked step, its question and its form, one input per field."""
    result = page.locator("#setup-result")
    expect(result).to_have_class("warning")
    expect(result).to_contain_text(QUESTION)
    card = page.locator('.workflow-step[data-action="configure"]')
    expect(card).to_have_class(BLOCKED_CLASS)
    form = result.locator("#step-input")
    expect(form).to_be_visible()
    names = form.evaluate("f => [...f.elements].filter(e => e.name).map(e => [e.name, e.type])")
    assert names == [
        ["folder", "text"],
        ["api_key", "password"],
        ["trust", "checkbox"],
        ["size", "select-one"],
        ["note", "text"],
    ]
    expect(form.locator('select[name="size"] option')).to_have_text(["Choose…", "50 GB", "100 GB"])
    expect(page.locator("#resume-workflow-btn")).to_be_visible()


def test_a_blocked_step_is_answered_from_the_keyboard_and_the_run_completes(
    server: Server, endpoints: RecoverEndpoints, context: BrowserContext
) -> None:
    page = open_page(context.new_page(), server)
    page.click('.tab-button[data-tab="vastai-setup"]')
    page.fill("#sshConnectionString", "ssh -p 2222 root@203.0.113.7")
    page.click("#run-workflow-btn")
    expect_blocked_form(page)
    state = server.state()
    workflow_id = state["workflow_id"]
    assert state["status"] == "blocked"
    assert state["steps"][1]["blocked"]["message"] == QUESTION
    assert len(endpoints.bodies("/ask")) == 1
    expect(page.get_by_label("Model folder")).to_be_focused()  # the step asked: focus moved

    # Another tab's Instances list marks it as needing input.
    lister = open_page(context.new_page(), server)
    lister.click('.tab-button[data-tab="instances"]')
    row = lister.locator(f'#instances-body tr[data-workflow-id="{workflow_id}"]')
    expect(row.locator(".badge")).to_have_text("Needs input")
    expect(row).to_have_class(re.compile(r"\bneeds-input\b"))
    expect(row.locator("a.workflow-link")).to_have_text("203.0.113.7")
    expect(row.locator(".steps")).to_have_text("Step 2 of 3 · 33.33%")
    lister.close()

    # A reload restores the question and the form, with focus on its first field.
    reload(page)
    expect_blocked_form(page)
    folder = page.get_by_label("Model folder")
    expect(folder).to_be_focused()
    page.evaluate(RECORD_RESULTS)

    # Keyboard only: type, Tab, Space, arrow, Enter.
    page.keyboard.type("/workspace/models")
    page.keyboard.press("Tab")
    expect(page.get_by_label("CivitAI API key")).to_be_focused()
    page.keyboard.type(SECRET)
    page.keyboard.press("Tab")
    expect(page.get_by_label("Trust this host key")).to_be_focused()
    page.keyboard.press("Space")
    page.keyboard.press("Tab")
    expect(page.get_by_label("Disk size")).to_be_focused()
    page.keyboard.press("ArrowDown")  # "50 GB"
    page.keyboard.press("Tab")
    expect(page.get_by_label("Note (optional)")).to_be_focused()  # left empty
    page.keyboard.press("Tab")
    expect(page.locator("#resume-workflow-btn")).to_be_focused()
    page.keyboard.press("Enter")

    result = page.locator("#setup-result")
    expect(result).to_have_text(DONE, timeout=15_000)
    expect(page.locator("#step-input")).to_have_count(0)
    expect(page.locator('.workflow-step[data-action="configure"]')).not_to_have_class(BLOCKED_CLASS)
    final = server.workflow(workflow_id)
    assert final["status"] == "completed"
    assert [step["status"] for step in final["steps"]] == ["completed"] * 3
    asked = endpoints.bodies("/ask")
    assert len(asked) == 2
    assert "input" not in asked[0]
    assert asked[1]["input"] == {
        "folder": "/workspace/models",
        "api_key": SECRET,
        "trust": True,
        "size": "50 GB",
    }
    assert len(endpoints.bodies("/ok")) == 2  # Prepare and Sync, once each
    expect(page.locator("#workflow-progress")).to_have_attribute("aria-valuenow", "100")
    # A person's resume is no interruption: the page never said it was taken over.
    assert not any(RESUMED in text for text in seen_results(page)), seen_results(page)
    # The secret reached the endpoint only: not the state the page reads.
    _, _, raw = http("GET", f"{server.url}/workflows/{workflow_id}")
    assert SECRET not in json.dumps(raw)


def test_a_failed_run_is_retried_from_the_page(
    server: Server, endpoints: RecoverEndpoints, page: Page
) -> None:
    workflow_id = run_and_open(
        server, page, steps_with(endpoints, configure="/flaky"), lambda s: s["status"] == "failed"
    )
    result = page.locator("#setup-result")
    retry = page.locator("#retry-workflow-btn")
    expect(result).to_have_text(FAILED)
    expect(result).to_have_class("error")
    expect(page.locator('.workflow-step[data-action="configure"]')).to_have_class(
        re.compile(r"\bfailed\b")
    )
    expect(retry).to_be_visible()
    expect(retry).to_have_text("Retry from step 2")

    reload(page)  # the failure and its button are still there
    expect(result).to_have_text(FAILED)
    expect(retry).to_have_text("Retry from step 2")

    page.evaluate(RECORD_RESULTS)
    retry.click()
    expect(result).to_have_text(DONE, timeout=15_000)
    expect(retry).to_be_hidden()
    final = server.workflow(workflow_id)
    assert final["status"] == "completed"
    assert [b["step_attempt"] for b in endpoints.bodies("/flaky")] == [1, 2]
    # Prepare ran once (not again on retry), Sync once after it.
    assert [b["action"] for b in endpoints.bodies("/ok")] == ["prepare", "sync"]
    assert not any(RESUMED in text for text in seen_results(page)), seen_results(page)


def test_a_long_steps_reports_move_its_bar_and_tasks_through_a_reload(
    server: Server, endpoints: RecoverEndpoints, page: Page
) -> None:
    workflow_id = run_and_open(server, page, steps_with(endpoints, sync="/long"))
    wait_until(lambda: endpoints.bodies("/long"), interval=0.05)
    card = page.locator('.workflow-step[data-action="sync"]')
    bar = card.get_by_role("progressbar", name="Progress of Sync models")
    tasks = card.get_by_role("list", name="Tasks of Sync models").get_by_role("listitem")
    overall = page.locator("#workflow-progress")

    endpoints.reports.put(report(40, "Copying models", "completed", "in_progress", "pending"))
    expect(bar).to_have_attribute("aria-valuenow", "40")
    expect(card.locator(".step-progress-message")).to_have_text("Copying models")
    expect(tasks).to_have_count(3)
    expect(tasks.nth(0)).to_contain_text("Download")
    expect(tasks.nth(0)).to_contain_text("2.1 GB")
    expect(tasks.nth(1)).to_contain_text("Running…")
    expect(overall).to_have_attribute("aria-valuenow", "80")  # (2 steps + 40 % of one) of 3
    assert server.workflow(workflow_id)["completed_percent"] == progress_value(page)
    expect(page.locator("#setup-result")).to_have_text(RUNNING_ON_SERVER)
    # The Instances list of another tab shows the same share.
    lister = open_page(page.context.new_page(), server)
    row = lister.locator(f'#instances-body tr[data-workflow-id="{workflow_id}"]')
    expect(row.locator(".steps")).to_have_text("Step 3 of 3 · 80%")
    lister.close()

    reload(page)  # mid-progress: all of it comes back from the stored state
    expect(bar).to_have_attribute("aria-valuenow", "40")
    expect(tasks).to_have_count(3)
    expect(tasks.nth(1)).to_contain_text("Running…")
    expect(overall).to_have_attribute("aria-valuenow", "80")
    expect(page.locator("#setup-result")).to_have_text(RUNNING_ON_SERVER)

    endpoints.reports.put(report(85, "Verifying", "completed", "completed", "in_progress"))
    expect(bar).to_have_attribute("aria-valuenow", "85")
    expect(card.locator(".step-progress-message")).to_have_text("Verifying")
    expect(tasks.nth(1)).to_contain_text("Done")
    expect(tasks.nth(2)).to_contain_text("Running…")
    expect(overall).to_have_attribute("aria-valuenow", "95")
    assert server.workflow(workflow_id)["completed_percent"] == progress_value(page)

    endpoints.reports.put(None)  # the step ends
    expect(page.locator("#setup-result")).to_have_text(DONE, timeout=15_000)
    expect(overall).to_have_attribute("aria-valuenow", "100")
    assert endpoints.sent == [200, 200]


def test_an_approval_is_given_from_the_keyboard(
    server: Server, endpoints: RecoverEndpoints, page: Page
) -> None:
    workflow_id = run_and_open(server, page, steps_with(endpoints, configure="/approve"))
    result = page.locator("#setup-result")
    expect(result).to_have_class("warning")
    expect(result).to_contain_text(APPROVAL)
    form = result.locator("#step-input")
    expect(form).to_be_visible()
    assert form.evaluate("f => [...f.elements].filter(e => e.name).length") == 0
    resume = page.locator("#resume-workflow-btn")
    expect(resume).to_be_focused()  # nothing to fill in: the answer is the button
    page.keyboard.press("Space")
    expect(result).to_have_text(DONE, timeout=15_000)
    asked = endpoints.bodies("/approve")
    assert len(asked) == 2 and asked[1]["input"] == {}
    assert server.workflow(workflow_id)["status"] == "completed"


def test_a_blocked_workflow_is_cancelled_from_its_form(
    server: Server, endpoints: RecoverEndpoints, page: Page
) -> None:
    workflow_id = run_and_open(
        server, page, steps_with(endpoints, configure="/ask"), lambda s: s["status"] == "blocked"
    )
    expect_blocked_form(page)
    page.locator("#cancel-blocked-btn").click()
    expect(page.locator("#setup-result")).to_have_text(re.compile(r"^⏹️ .*cancelled\.$"))
    expect(page.locator("#step-input")).to_have_count(0)
    expect(page.locator("#run-workflow-btn")).to_have_text("Run workflow")
    assert server.workflow(workflow_id)["status"] == "cancelled"
    assert len(endpoints.bodies("/ask")) == 1


def test_a_waiting_retry_says_when_and_a_live_failure_offers_retry(
    server: Server, endpoints: RecoverEndpoints, page: Page
) -> None:
    steps = steps_with(endpoints, configure="/flaky?fails=2")
    steps[1]["retry"] = {"max_attempts": 2, "backoff_seconds": 4}
    workflow_id = run_and_open(server, page, steps, lambda s: s["run"]["status"] == "waiting")
    card = page.locator('.workflow-step[data-action="configure"]')
    waiting = card.locator(".step-retry")
    countdown = re.compile(r"^Trying again in [1-5] s$")
    result = page.locator("#setup-result")
    expect(waiting).to_have_text(countdown)
    expect(card.locator(".step-note")).to_have_text("rsync: connection closed")
    expect(result).to_have_text(RUNNING_ON_SERVER)
    expect(page.locator("#run-workflow-btn")).to_have_text("Cancel")
    reload(page)
    expect(waiting).to_have_text(countdown)
    expect(result).to_have_text(RUNNING_ON_SERVER)

    # The second call fails too: its budget is spent, and the page, watching, offers Retry.
    retry = page.locator("#retry-workflow-btn")
    expect(result).to_have_text("❌ Workflow failed at step 2 (Configure).", timeout=15_000)
    expect(retry).to_have_text("Retry from step 2")
    expect(waiting).to_be_hidden()
    retry.focus()
    page.keyboard.press("Enter")
    expect(result).to_have_text(DONE, timeout=15_000)
    assert [b["step_attempt"] for b in endpoints.bodies("/flaky")] == [1, 2, 3]
    assert server.workflow(workflow_id)["steps"][1]["attempts"] == 3
