"""What the page tests share: server configurations, the state API, and page probes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, Route, expect

from tests.support import STATE, Gunicorn, http, wait_until
from tests.support.endpoints import StepEndpoints
from tests.support.routes import WORKFLOWS

CSP = "default-src 'self'; frame-ancestors 'none'"
P = "pending"
TOKEN = "browser-test-token"
DEFAULT_ACTIONS = (
    "test_ssh",
    "set_ui_home",
    "setup_civitdl",
    "sync_instance",
    "install_custom_nodes",
    "verify_dependencies",
)
DEFAULT_LABELS = (
    "Test SSH",
    "Set UI Home",
    "Set up CivitDL",
    "Sync Instance",
    "Install Custom Nodes",
    "Verify Dependencies",
)
SLOW_STEPS = [
    {"action": "provision", "label": "Provision disk"},
    {"action": "warm_cache", "label": "Warm cache"},
    {"action": "verify", "label": "Verify"},
]
# A blocked step's question and fields: one of each type, and an optional one.
QUESTION = "The host key of 203.0.113.7 is SHA256:4f9…; trust it and pick the model folder."
FIELDS = [
    {"name": "folder", "label": "Model folder", "type": "text"},
    {"name": "api_key", "label": "CivitAI API key", "type": "secret"},
    {"name": "trust", "label": "Trust this host key", "type": "boolean"},
    {"name": "size", "label": "Disk size", "type": "choice", "choices": ["50 GB", "100 GB"]},
    {"name": "note", "label": "Note", "type": "text", "required": False},
]
# The host application's step answers from a real endpoint server the pool starts (`/ok`,
# `/fail`: tests/support/endpoints.py); its URL is filled in then.
HOST_STEPS = [
    {"action": "prepare", "label": "Prepare"},
    {"action": "deploy", "label": "Deploy app", "endpoint": "{endpoints}/ok"},
    {"action": "report", "label": "Report", "endpoint": "{endpoints}/{report}"},
]

# --- servers ----------------------------------------------------------------------------------


class Server:
    """A running gunicorn plus helpers for the state API."""

    def __init__(
        self, gunicorn: Gunicorn, token: str | None = None, endpoints: StepEndpoints | None = None
    ) -> None:
        self.gunicorn = gunicorn
        self.url = gunicorn.url
        self.token = token
        self.endpoints = endpoints

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Send one API request (with the token when the server needs one)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        status, _, parsed = http(method, self.url + path, body, headers=headers)
        return status, parsed

    def state(self) -> dict[str, Any] | None:
        """Return the stored state of the current workflow (or None)."""
        status, body = self.call("GET", STATE)
        assert status == 200, body
        return body["state"]

    def workflow(self, workflow_id: str) -> dict[str, Any] | None:
        """Return the stored state of workflow `workflow_id` (None when there is none)."""
        status, body = self.call("GET", f"{WORKFLOWS}/{workflow_id}")
        assert status in (200, 404), body
        return body["state"] if status == 200 else None

    def workflows(self) -> list[dict[str, Any]]:
        """Return every workflow of the list (entries: summary + version), newest first."""
        found: list[dict[str, Any]] = []
        cursor = None
        while True:
            query = f"?status=all&limit=100{f'&cursor={cursor}' if cursor else ''}"
            status, body = self.call("GET", WORKFLOWS + query)
            assert status == 200, body
            found += body["workflows"]
            cursor = body["next_cursor"]
            if not cursor:
                return found

    def start_run(self, steps: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        """Create a workflow of `steps` and start its server run; return the stored state."""
        body = {"steps": steps, "status": "running", "current_step": 0, "run": True, **fields}
        status, answer = self.call("POST", WORKFLOWS, body)
        assert status == 201, answer
        return answer["state"]

    def summary(self) -> dict[str, Any]:
        """Return GET /workflow/state/summary's summary."""
        status, body = self.call("GET", "/workflow/state/summary")
        assert status == 200, body
        return body["summary"]

    def seed(self, state: dict[str, Any]) -> dict[str, Any]:
        """Store `state` with POST and return what was stored."""
        status, body = self.call("POST", "/workflow/state", state)
        assert status == 200, body
        return body["state"]

    def clear(self) -> None:
        """Delete every workflow of the owner (running ones are cancelled first)."""
        for entry in self.workflows():
            path = f"{WORKFLOWS}/{entry['workflow_id']}"
            if entry["status"] == "running":
                status, body = self.call("POST", f"{path}/cancel")
                assert status in (200, 404, 409), body
            status, body = self.call("DELETE", path)
            assert status in (200, 404), body
        status, body = self.call("DELETE", STATE)
        assert status == 200, body

    def wait_for_state(self, check: Callable[[dict[str, Any] | None], bool], timeout: float = 15):
        """Poll the stored state until `check` accepts it; return it."""
        found: list[Any] = []

        def accepted() -> bool:
            state = self.state()
            if check(state):
                found.append(state)
                return True
            return False

        wait_until(accepted, timeout=timeout, interval=0.05)
        return found[0]


class ServerPool:
    """Start each server configuration once per session, on first use."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.servers: dict[str, Server] = {}
        self.endpoints: list[StepEndpoints] = []

    def get(self, name: str) -> Server:
        if name not in self.servers:
            self.servers[name] = self.start(name)
        return self.servers[name]

    def steps_file(self, name: str, steps: list[dict[str, Any]]) -> str:
        path = self.directory / f"{name}-steps.json"
        path.write_text(json.dumps(steps))
        return str(path)

    def start(self, name: str) -> Server:
        env = {
            "WORKFLOW_STATE_URL": f"file://{self.directory}/{name}/workflow_state.json",
            "WORKFLOW_DEMO_STEP_SECONDS": "0.2",
            "WORKFLOW_STEP_DELAY_MS": "0",
            "WORKFLOW_STATE_TTL": "60",
            # Each web process runs workflows itself (file backend): room for several at once.
            "WORKFLOW_RUN_WORKERS": "4",
        }
        token = None
        endpoints = None
        if name == "slow":
            # Steps longer than the 2 s poll, so another tab sees each one happen.
            env["WORKFLOW_STEPS_FILE"] = self.steps_file(name, SLOW_STEPS)
            env["WORKFLOW_DEMO_STEP_SECONDS"] = "2.5"
        elif name == "lease":
            # Slow steps and a short lease: a run whose runner dies is taken over quickly.
            env["WORKFLOW_STEPS_FILE"] = self.steps_file(name, SLOW_STEPS)
            env["WORKFLOW_DEMO_STEP_SECONDS"] = "2.5"
            env["WORKFLOW_RUN_LEASE"] = "1.5"
        elif name == "fail":
            env["WORKFLOW_DEMO_FAIL"] = "sync_instance"
        elif name == "short":
            # Finished workflows expire 2 s after they end (they then live on in the history).
            env["WORKFLOW_STATE_TTL"] = "2"
        elif name == "token":
            env["WORKFLOW_STATE_TOKEN"] = token = TOKEN
        elif name in ("host", "host-fail"):
            endpoints = StepEndpoints().start()
            self.endpoints.append(endpoints)
            report = "fail" if name == "host-fail" else "ok"
            fill = {"endpoints": endpoints.url, "report": report}
            steps = [
                {**step, "endpoint": step["endpoint"].format(**fill)}
                if "endpoint" in step
                else step
                for step in HOST_STEPS
            ]
            env["WORKFLOW_STEPS_FILE"] = self.steps_file(name, steps)
            env["WORKFLOW_DEMO_STEP_SECONDS"] = "0.1"
        elif name != "fast":
            raise ValueError(name)
        log = self.directory / f"{name}-gunicorn.log"
        return Server(Gunicorn(env, workers=2, log_path=log).start(), token, endpoints)

    def close(self) -> None:
        """Stop every server fast: SIGINT to all at once, then SIGKILL workers still busy.

        Test servers need no graceful stop, and an open stream would hold a worker for
        gunicorn's whole graceful timeout. Killing the workers (not the master) lets the
        master reap them, so no zombie is left behind.
        """
        gunicorns = [s.gunicorn for s in self.servers.values() if s.gunicorn.process]
        for gunicorn in gunicorns:
            if gunicorn.process.poll() is None:
                os.killpg(gunicorn.process.pid, signal.SIGINT)
        deadline = time.monotonic() + 1
        for gunicorn in gunicorns:
            process = gunicorn.process
            try:
                process.wait(timeout=max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for pid in gunicorn.worker_pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=5)
        for gunicorn in gunicorns:
            gunicorn.stop()  # closes its log
        for endpoints in self.endpoints:
            endpoints.close()


# --- page helpers -----------------------------------------------------------------------------


def open_page(page: Page, server: Server) -> Page:
    """Load the page and wait until initWorkflow() has restored the state."""
    page.goto(server.url + "/")
    expect(page.locator("body")).to_have_attribute("data-workflow-ready", "true")
    return page


def make_steps(statuses: list[str], actions: tuple[str, ...] = DEFAULT_ACTIONS) -> list[dict]:
    """Steps for a seeded state (no labels: the page takes them from the config)."""
    return [{"action": a, "status": s} for a, s in zip(actions, statuses, strict=True)]


def step_classes(page: Page) -> list[set[str]]:
    """The class sets of the step cards, in order."""
    return [
        set(c)
        for c in page.eval_on_selector_all(
            "#workflow-steps .workflow-step", "cards => cards.map(c => [...c.classList])"
        )
    ]


def arrow_classes(page: Page) -> list[set[str]]:
    """The class sets of the arrows, in order."""
    return [
        set(c)
        for c in page.eval_on_selector_all(
            "#workflow-steps .workflow-arrow", "arrows => arrows.map(a => [...a.classList])"
        )
    ]


STATUS_CLASS = {"in_progress": "in-progress", "completed": "completed", "failed": "failed"}
CONTRACT_CLASSES = {"in-progress", "completed", "failed"}


def expect_steps(page: Page, statuses: list[str], running: bool, timeout: float = 10) -> None:
    """Wait until cards and arrows show `statuses` (contract classes only)."""
    want_steps = [{STATUS_CLASS[s]} if s in STATUS_CLASS else set() for s in statuses]
    want_arrows = []
    for status in statuses[:-1]:
        classes = set()
        if status == "completed":
            classes.add("completed")
        if running and status == "in_progress":
            classes.add("loading")
        want_arrows.append(classes)

    def shown() -> tuple[list[set[str]], list[set[str]]]:
        steps = [c & CONTRACT_CLASSES for c in step_classes(page)]
        arrows = [c & {"completed", "loading"} for c in arrow_classes(page)]
        return steps, arrows

    try:
        wait_until(lambda: shown() == (want_steps, want_arrows), timeout=timeout, interval=0.05)
    except AssertionError:
        wanted = (want_steps, want_arrows)
        raise AssertionError(f"page shows {shown()}, expected {wanted}") from None


def completed_percent(state: dict[str, Any]) -> float:
    """The percent a person sees for `state`: its `completed_percent`, else the same rule.

    Steps completed or skipped, divided by all steps, times 100, plus the running step's own
    `progress.percent` as a share of one step, to 2 decimals; 0 without steps.
    """
    if isinstance(state.get("completed_percent"), int | float):
        return state["completed_percent"]
    steps = state.get("steps") or []
    if not steps:
        return 0
    done = 0.0
    for step in steps:
        if step["status"] in ("completed", "skipped"):
            done += 1
        elif step["status"] == "in_progress" and isinstance(step.get("progress"), dict):
            done += min(100, max(0, step["progress"].get("percent") or 0)) / 100
    return round(done / len(steps) * 100, 2)


def progress_value(page: Page) -> float:
    """aria-valuenow of #workflow-progress, as a number."""
    return float(page.get_attribute("#workflow-progress", "aria-valuenow"))


def expect_progress(page: Page, percent: float, timeout: float = 10) -> None:
    """Wait until aria-valuenow of #workflow-progress is `percent`."""
    wait_until(lambda: progress_value(page) == percent, timeout=timeout, interval=0.05)


def selected_tab(page: Page) -> str:
    """The data-tab of the selected tab button."""
    return page.get_attribute('.tab-button[aria-selected="true"]', "data-tab")


def start_run(page: Page, ssh: str | None = None) -> None:
    """Open the VastAI Setup tab (typing `ssh` when given) and press Run."""
    page.click('.tab-button[data-tab="vastai-setup"]')
    if ssh is not None:
        page.fill("#sshConnectionString", ssh)
    page.click("#run-workflow-btn")


# --- a workflow with the newer run states, served to the page by routes -------------------------


class FakeWorkflow:
    """One workflow the page reads through routes instead of the server: its GET route (which the
    page polls: the config it gets says there is no stream) and its run routes, whose requests
    are recorded and answered from `answers` (route name → (status, body)).

    For states the server may not produce yet (a blocked step, a step's own progress and tasks,
    a waiting retry), so the page's drawing of them is checked as a person sees it.
    """

    def __init__(self, page: Page, state: dict[str, Any]) -> None:
        self.state = state
        self.requests: list[tuple[str, Any]] = []
        self.answers: dict[str, tuple[int, Any]] = {}
        self.storage_down = False  # the GET route answers 503 backend_unavailable
        self.path = f"{WORKFLOWS}/{state['workflow_id']}"
        page.route("**/workflow/config", self.config)
        page.route(f"**{self.path}", self.get)
        page.route(f"**{self.path}/*", self.act)

    def set(self, **fields: Any) -> None:
        """Change the stored state (a newer version): the page sees it at its next poll."""
        self.state = {**self.state, **fields, "version": self.state["version"] + 1}

    def body(self) -> dict[str, Any]:
        active = self.state["status"] in ("running", "blocked")
        return {"success": True, "active": active, "state": self.state}

    def config(self, route: Route) -> None:
        response = route.fetch()
        body = response.json()
        body["stream_url"] = None
        route.fulfill(response=response, body=json.dumps(body))

    def get(self, route: Route) -> None:
        if route.request.method != "GET":
            route.fallback()
            return
        if self.storage_down:
            down = {"success": False, "error": "backend_unavailable", "message": "Storage is down"}
            route.fulfill(status=503, content_type="application/json", body=json.dumps(down))
            return
        route.fulfill(status=200, content_type="application/json", body=json.dumps(self.body()))

    def act(self, route: Route) -> None:
        name = route.request.url.rsplit("/", 1)[-1]
        body = route.request.post_data_json if route.request.post_data else None
        self.requests.append((name, body))
        status, answer = self.answers.get(name, (404, {"success": False, "error": "not_found"}))
        if status < 300 and isinstance(answer, dict) and "state" in answer:
            self.state = answer["state"]
        route.fulfill(status=status, content_type="application/json", body=json.dumps(answer))


AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]


def axe_violations(page: Page) -> list[str]:
    """Run axe-core (vendored in tests only; the page never loads it) on the page as it is now.

    Returns one line per violating node, empty when the page is clean.
    """
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(AXE.read_text(encoding="utf-8"))  # evaluated by the test, not by the page
    found = page.evaluate(
        """async (tags) => {
          const result = await axe.run(document, { runOnly: { type: 'tag', values: tags } });
          return result.violations.flatMap((v) => v.nodes.map((n) =>
            `${v.id} (${v.impact}): ${n.target.join(' ')}: ${n.failureSummary}`));
        }""",
        AXE_TAGS,
    )
    return list(found)
