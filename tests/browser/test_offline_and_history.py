"""Against real gunicorn: the page says when the server cannot be reached and turns off what
needs it until it is back; finished runs move from the Instances list to "Recently finished"
(the history) and open read-only; the open workflow is followed by its id, never through the
owner's current one; and axe-core finds nothing on the page in its states."""

from __future__ import annotations

import os
import re
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.pagekit import (
    P,
    Server,
    axe_violations,
    make_steps,
    open_page,
    start_run,
)
from tests.support import Gunicorn, http

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ORPHAN_SAYS = "⚠️ Workflow was in progress. You may need to restart it."
OFFLINE_SAYS = "Cannot reach the server"


def orphan(workflow_id: str) -> dict:
    """A running workflow that no server run drives (a client that ran steps itself saved it)."""
    return {
        "workflow_id": workflow_id,
        "status": "running",
        "current_step": 1,
        "steps": make_steps(["completed", "in_progress", P, P, P, P]),
        "ssh_connection": "ssh -p 2222 root@203.0.113.7",
    }


class Restartable:
    """A gunicorn of its own, which a test can cut off (SIGKILL) and start again on its port."""

    def __init__(self, directory: Path) -> None:
        env = {
            "WORKFLOW_STATE_URL": f"file://{directory}/workflow_state.json",
            "WORKFLOW_DEMO_STEP_SECONDS": "0.2",
            "WORKFLOW_STEP_DELAY_MS": "0",
        }
        self.gunicorn = Gunicorn(env, workers=1, log_path=directory / "gunicorn.log")
        self.url = self.gunicorn.url

    def start(self) -> None:
        self.gunicorn.start()

    def kill(self) -> None:
        """The server is gone at once, as when its host went down."""
        process = self.gunicorn.process
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        self.gunicorn.process = None
        self.gunicorn.log.close()

    def stop(self) -> None:
        if self.gunicorn.process is not None:
            self.kill()


@pytest.fixture
def restartable() -> Iterator[Restartable]:
    with tempfile.TemporaryDirectory(prefix="wss-offline-") as directory:
        server = Restartable(Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()


def test_offline_is_said_and_what_needs_the_server_waits_for_it(
    restartable: Restartable, page: Page, console
) -> None:
    # The browser notes each refused connection while the server is down.
    console.allow(r"net::ERR_|status of 50\d")
    status, _, body = http("POST", restartable.url + "/workflow/state", orphan("wf_offline"))
    assert status == 200, body
    page.goto(restartable.url + "/")
    expect(page.locator("body")).to_have_attribute("data-workflow-ready", "true")
    result = page.locator("#setup-result")
    run = page.locator("#run-workflow-btn")
    delete = page.locator("#delete-workflow-btn")
    pill = page.locator("#live-indicator")
    expect(result).to_have_text(ORPHAN_SAYS)
    expect(run).to_have_text("Run on the server")
    expect(pill).to_have_text("Live")

    restartable.kill()
    expect(result).to_contain_text(OFFLINE_SAYS)
    expect(result).to_have_class("warning")
    expect(pill).to_have_text("Offline")
    for button in (run, delete):
        expect(button).to_be_disabled()

    restartable.start()
    expect(result).to_have_text(ORPHAN_SAYS, timeout=15_000)
    expect(pill).not_to_have_text("Offline")
    for button in (run, delete):
        expect(button).to_be_enabled()
    # And what it offers works again.
    run.click()
    expect(result).to_have_text("✅ Workflow completed successfully!")


def test_finished_runs_move_to_recently_finished_and_open_read_only(
    short_server: Server, page: Page
) -> None:
    open_page(page, short_server)
    page.click('.tab-button[data-tab="instances"]')  # picked: it stays on this tab
    state = short_server.start_run(make_steps([P] * 6), label="Recent box")
    workflow_id = state["workflow_id"]
    row = page.locator(f'#instances-body tr[data-workflow-id="{workflow_id}"]')
    expect(row.locator("a.workflow-link")).to_have_text("Recent box")
    expect(row.locator(".badge")).to_have_text("Ready")
    # 2 s after it ended it leaves the list, and its record shows below, apart from the list.
    expect(row).to_have_count(0, timeout=15_000)
    recent = page.locator(f'#recent-body tr[data-workflow-id="{workflow_id}"]')
    expect(page.locator("#recent")).to_be_visible()
    expect(page.get_by_role("heading", name="Recently finished")).to_be_visible()
    expect(recent.locator(".badge")).to_have_text("Ready")
    expect(recent.locator(".steps")).to_have_text("6 of 6 steps done")
    view = recent.get_by_role("button", name="Recent box (view its record)")
    expect(view).to_be_visible()
    view.focus()
    page.keyboard.press("Enter")
    # Read-only: nothing is open on the server (the address names none); Run starts anew.
    result = page.locator("#setup-result")
    expect(result).to_contain_text("📜 From the history: this run completed.")
    expect(page.locator("#workflow-steps .workflow-step.completed")).to_have_count(6)
    expect(page.locator("#workflow-progress")).to_have_attribute("aria-valuenow", "100")
    assert "workflow=" not in page.url
    expect(page.locator("#run-workflow-btn")).to_have_text("Run workflow")
    expect(page.locator("#retry-workflow-btn")).to_be_hidden()


def test_the_open_workflow_is_followed_by_its_id_after_a_reload(
    slow_server: Server, context: BrowserContext
) -> None:
    page = context.new_page()
    streams: list[str] = []
    page.on("request", lambda r: "/stream" in r.url and streams.append(r.url.split("/", 3)[3]))
    open_page(page, slow_server)
    start_run(page, "ssh mine")
    expect(page.locator("#run-workflow-btn")).to_have_text("Cancel")
    mine = slow_server.state()["workflow_id"]
    streams.clear()  # before it, with nothing open, the page was finding the current one
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-workflow-ready", "true")
    # Another workflow becomes the owner's current one: this page stays on its own.
    theirs = slow_server.start_run(make_steps([P] * 3, ("provision", "warm_cache", "verify")))
    expect(page.locator('.workflow-step[data-action="warm_cache"]')).to_have_class(
        re.compile(r"\b(in-progress|completed)\b"), timeout=15_000
    )
    assert page.evaluate("new URLSearchParams(location.search).get('workflow')") == mine
    expect(page.locator("#sshConnectionString")).to_have_value("ssh mine")
    # Every stream this page opened since the reload for a workflow was that workflow's own.
    followed = [s for s in streams if s != "workflows/stream"]
    assert followed and set(followed) == {f"workflows/{mine}/stream"}, streams

    # A page that names no workflow finds the current one and follows it by its id at once.
    other = context.new_page()
    found: list[str] = []
    other.on("request", lambda r: "/stream" in r.url and found.append(r.url.split("/", 3)[3]))
    open_page(other, slow_server)
    expect(other.locator("#run-workflow-btn")).to_have_text("Cancel")
    assert (
        other.evaluate("new URLSearchParams(location.search).get('workflow')")
        == theirs["workflow_id"]
    )
    assert "workflow/state/stream" not in found, found
    assert f"workflows/{theirs['workflow_id']}/stream" in found, found


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_nothing_on_the_page_in_its_states(
    scheme: str, short_server: Server, other_context: Callable[..., BrowserContext]
) -> None:
    page = other_context(color_scheme=scheme, reduced_motion="reduce").new_page()

    def clean(where: str) -> None:
        found = axe_violations(page)
        assert found == [], f"{where}: {found}"

    open_page(page, short_server)
    clean("a fresh load (Instances)")
    page.click('.tab-button[data-tab="vastai-setup"]')
    clean("an empty setup")
    # Running on the server, with the hint and Cancel.
    start_run(page, "ssh -p 2222 root@203.0.113.7")
    expect(page.locator("#run-workflow-btn")).to_have_text("Cancel")
    clean("a run on the server")
    expect(page.locator("#setup-result")).to_have_text("✅ Workflow completed successfully!")
    clean("a completed run")
    # A running workflow that nothing drives: Run on the server and Delete.
    short_server.seed(orphan(f"wf_axe_{scheme}"))
    page.goto(f"{short_server.url}/?workflow=wf_axe_{scheme}")
    expect(page.locator("#delete-workflow-btn")).to_be_visible()
    clean("a running workflow that nothing drives")
    # The Instances list with a recently finished run, and that run's record.
    page.click('.tab-button[data-tab="instances"]')
    expect(page.locator("#recent")).to_be_visible(timeout=15_000)
    clean("Instances with recently finished runs")
    page.locator("#recent-body button.record-link").first.click()
    expect(page.locator("#setup-result")).to_contain_text("From the history")
    clean("a record from the history")
