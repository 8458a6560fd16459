"""The controllers on their own: fed by fakes (no server calls, no DOM), inside Chromium.

The controllers under service/static/js/controllers/ touch no DOM, so every rule of
reconciliation can be checked by feeding them states and reading what they would show (`view()`).
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page

from tests.browser.pagekit import Server, open_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Fakes for a controller's parts, then a scenario that uses them and returns what it found.
PRELUDE = """
  const { WorkflowController } = await import('/static/js/controllers/workflow-controller.js');
  const { InstancesController } = await import('/static/js/controllers/instances-controller.js');
  const { StepCatalog } = await import('/static/js/controllers/catalog.js');
  const { runBody } = await import('/static/js/controllers/page-runner.js');
  const { WorkflowList } = await import('/static/js/live.js');
  const steps = [
    { action: 'a', label: 'Alpha' },
    { action: 'b', label: 'Beta', endpoint: '/host/b' },
    { action: 'c', label: 'Gamma' },
  ];
  const state = (version, fields = {}) => ({
    workflow_id: 'wf', status: 'running', current_step: 0, version,
    steps: steps.map(({ action }) => ({ action, status: 'pending' })), ...fields,
  });
  const serverRun = (attempt = 1, status = 'running') => ({ attempt, status, runner: 'h:1' });
  class Feed extends EventTarget {
    constructor() {
      super();
      this.stateUrl = null; this.started = false; this.seenVersions = []; this.followed = [];
    }
    follow({ streamUrl, stateUrl }) {
      this.stateUrl = stateUrl; this.started = true; this.followed.push(streamUrl);
    }
    stop() { this.started = false; }
    seen(version) { this.seenVersions.push(version); }
    refresh() {}
    push(body) { this.dispatchEvent(new CustomEvent('state', { detail: { body } })); }
  }
  const notFound = () =>
    Object.assign(new Error('No workflow'), { code: 'no_workflow', status: 404 });
  const stored = { state: null, percent: 0, workflows: {} };
  const client = {
    config: async () => ({ steps, step_delay_ms: 0, stream_url: '/workflow/state/stream' }),
    getState: async () => ({ state: stored.state, progressPercent: stored.percent }),
    getWorkflow: async (id) => {
      if (!(id in stored.workflows)) throw notFound();
      return { state: stored.workflows[id], progressPercent: stored.percent };
    },
  };
  const runner = {
    calls: [], answers: {},
    async start(request) { this.calls.push(['start', request]); return this.answers.start; },
    async resume(id) { this.calls.push(['resume', id]); return this.answers.resume; },
    async cancel(id) { this.calls.push(['cancel', id]); return this.answers.cancel; },
  };
  const feed = new Feed();
  const catalog = new StepCatalog();
  const events = [];
  const workflow = new WorkflowController({ client, feed, catalog, runner });
  for (const type of ['reveal', 'open']) {
    workflow.addEventListener(type, (e) => events.push([type, e.detail ?? null]));
  }
  const list = new EventTarget();
  const listPush = (type, detail) => list.dispatchEvent(new CustomEvent(type, { detail }));
  const instances = new InstancesController({ list, limit: 3 });
"""


def run(page: Page, scenario: str) -> Any:
    """Evaluate `scenario` (the body of an async function of the fakes) and return its result."""
    return page.evaluate(f"async () => {{ {PRELUDE} {scenario} }}")


@pytest.fixture
def page_with_modules(server: Server, page: Page) -> Page:
    """A page that can import the modules (the page's own app runs too, untouched)."""
    return open_page(page, server)


def test_only_a_higher_version_is_news(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        await workflow.init();
        feed.push({ progress_percent: 33.33, state: state(5) });
        const first = workflow.view().progress.percent;
        feed.push({ progress_percent: 66.67, state: state(4, { current_step: 1 }) });
        const afterOlder = workflow.view().progress.percent;
        feed.push({ progress_percent: 66.67, state: state(6, { current_step: 1 }) });
        return [first, afterOlder, workflow.view().progress.percent, workflow.current.version];
        """,
    )
    assert out == [33.33, 33.33, 66.67, 6]


def test_the_percent_of_a_written_state_arrives_with_the_feed(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        await workflow.init();
        const seen = [];
        const look = () => {
          const view = workflow.view();
          seen.push([view.progress.percent, view.steps[1].status]);
        };
        feed.push({ progress_percent: 33.33, state: state(5) });
        look();
        // A write answer (no percent): the step shows at once, the percent waits for the feed.
        const step1 = state(6, { current_step: 1 });
        step1.steps[1].status = 'in_progress';
        workflow.show(step1);
        look();
        const seenAtWrite = [...feed.seenVersions];
        feed.push({ progress_percent: 66.67, state: step1 });
        look();
        // Another workflow written without a percent starts from 0, not from the last one's.
        workflow.show(state(7, { workflow_id: 'other' }));
        look();
        return { seen, seenAtWrite, seenVersions: feed.seenVersions };
        """,
    )
    assert out["seen"] == [
        [33.33, "pending"],
        [33.33, "in_progress"],
        [66.67, "in_progress"],
        [0, "pending"],
    ]
    # Only versions held with their percent are "seen": polling must still fetch the others.
    assert out["seenAtWrite"] == [5]
    assert out["seenVersions"] == [5, 6]


def test_a_restored_workflow_is_revealed_with_its_message(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        const done = state(9, { status: 'failed', current_step: 1, ssh_connection: 'ssh x' });
        done.steps[0].status = 'completed';
        done.steps[1].status = 'failed';
        stored.state = done;
        stored.percent = 66.67;
        await workflow.init();
        const view = workflow.view();
        return {
          events, message: view.message, open: view.open,
          steps: view.steps.map((s) => s.status),
          arrows: view.arrows,
          progress: view.progress,
          run: view.run,
        };
        """,
    )
    assert out["events"] == [["open", "wf"], ["reveal", {"restored": True, "ssh": "ssh x"}]]
    assert out["open"] == "wf"
    assert out["message"] == {"key": "restored-failed", "kind": "error", "args": {}}
    assert out["steps"] == ["completed", "failed", "pending"]
    assert out["arrows"] == [
        {"completed": True, "loading": False},
        {"completed": False, "loading": False},
    ]
    assert out["progress"] == {"percent": 66.67, "step": 2, "total": 3, "status": "failed"}
    assert out["run"] == {"mode": "run", "disabled": False}


def test_a_server_run_says_so_and_any_tab_may_cancel_it(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        const seen = [];
        const look = () => {
          const view = workflow.view();
          seen.push({ message: view.message, run: view.run, hint: view.hint && view.hint.key,
                      stopOther: view.stopOther, locked: view.sshLocked });
        };
        const moving = state(4, { run: serverRun(1) });
        moving.steps[0].status = 'in_progress';
        stored.state = moving;
        await workflow.init();
        look();
        // Another runner took it over after an interruption (attempt 2).
        const resumed = state(5, { run: serverRun(2) });
        resumed.steps[0].status = 'in_progress';
        feed.push({ progress_percent: 33.33, state: resumed });
        look();
        runner.answers.cancel = { ...state(6, { status: 'cancelled', run: serverRun(2, 'done') }) };
        const cancelling = workflow.runOrCancel();
        look();
        await cancelling;
        look();
        return { seen, calls: runner.calls };
        """,
    )
    seen = out["seen"]
    assert seen[0]["message"] == {"key": "running-on-server", "kind": "info", "args": {}}
    assert seen[0]["run"] == {"mode": "cancel", "disabled": False}
    assert seen[0]["hint"] == "hint-server" and seen[0]["stopOther"] is False
    assert seen[0]["locked"] is True
    assert seen[1]["message"] == {"key": "resumed", "kind": "info", "args": {}}
    assert seen[2]["message"]["key"] == "cancelling"
    assert seen[2]["run"] == {"mode": "cancelling", "disabled": True}
    assert seen[3]["message"] == {"key": "cancelled", "kind": "warning", "args": {}}
    assert seen[3]["run"] == {"mode": "run", "disabled": False}
    assert out["calls"] == [["cancel", "wf"]]


def test_a_running_workflow_without_a_server_run_can_be_resumed(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        stored.state = state(3);  // running, no `run`: a client runs (or ran) its steps
        await workflow.init();
        const before = workflow.view();
        const moved = state(4, { current_step: 1 });
        moved.steps[0].status = 'completed';
        feed.push({ progress_percent: 66.67, state: moved });
        const afterMove = workflow.view().message;
        runner.answers.resume = state(5, { current_step: 1, run: serverRun(1, 'queued') });
        await workflow.runOrCancel();
        const after = workflow.view();
        return {
          before: { message: before.message.key, run: before.run, hint: before.hint.key,
                    stopOther: before.stopOther },
          afterMove, calls: runner.calls,
          after: { message: after.message.key, run: after.run, stopOther: after.stopOther },
        };
        """,
    )
    assert out["before"] == {
        "message": "restored-running",
        "run": {"mode": "resume", "disabled": False},
        "hint": "hint-orphan",
        "stopOther": True,
    }
    assert out["afterMove"] == {
        "key": "other-run-step",
        "kind": "info",
        "args": {"step": 2, "total": 3, "label": "Beta"},
    }
    assert out["calls"] == [["resume", "wf"]]
    # A queued run is a run in progress too (contract section 9: queued|running → ⏳).
    assert out["after"] == {
        "message": "running-on-server",
        "run": {"mode": "cancel", "disabled": False},
        "stopOther": False,
    }


def test_run_creates_a_workflow_on_the_server_and_follows_it(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        await workflow.init();  // no workflow: it follows the current one
        const followedFirst = [...feed.followed];
        workflow.setEnabled('c', false);
        const created = state(7, { workflow_id: 'new', run: serverRun(1, 'queued'),
                                   ssh_connection: 'ssh y' });
        runner.answers.start = created;
        events.length = 0;
        await workflow.runOrCancel({ ssh: '  ssh y ' });
        const [[, request]] = runner.calls;
        const during = workflow.view();
        const done = state(9, { workflow_id: 'new', status: 'completed',
                                run: serverRun(1, 'done') });
        done.steps.forEach((s) => { s.status = 'completed'; });
        feed.push({ progress_percent: 100, state: done });
        const after = workflow.view();
        return {
          followedFirst, followed: feed.followed, events, request,
          body: runBody({ id: 'x', plan: request.plan, ssh: request.ssh }),
          during: { message: during.message.key, run: during.run, open: during.open },
          after: { message: after.message.key, percent: after.progress.percent, run: after.run },
        };
        """,
    )
    assert out["followedFirst"] == ["/workflow/state/stream"]
    # Just created, it is the owner's current workflow: the open stream carries it on.
    assert out["followed"] == ["/workflow/state/stream"]
    assert out["events"] == [["open", "new"], ["reveal", {"restored": False, "ssh": "ssh y"}]]
    assert out["request"]["ssh"] == "ssh y"
    assert [step["enabled"] for step in out["request"]["plan"]] == [True, True, False]
    body = out["body"]
    assert body["run"] is True and body["status"] == "running" and body["ssh_connection"] == "ssh y"
    assert body["workflow_id"] == "x"
    assert [s["status"] for s in body["steps"]] == ["pending", "pending", "skipped"]
    assert body["steps"][1]["endpoint"] == "/host/b"  # what the server calls for it
    assert "endpoint" not in body["steps"][0]
    assert out["during"] == {
        "message": "running-on-server",
        "run": {"mode": "cancel", "disabled": False},
        "open": "new",
    }
    assert out["after"] == {
        "message": "completed",
        "percent": 100,
        "run": {"mode": "run", "disabled": False},
    }


def test_an_open_workflow_stays_open_when_another_becomes_current(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        stored.state = state(3);
        await workflow.init();
        // Another tab started a workflow: the current stream shows it. This page keeps its own
        // and follows it by its id from now on.
        feed.push({ progress_percent: 50, state: state(4, { workflow_id: 'theirs' }) });
        const view = workflow.view();
        feed.push({ progress_percent: 66.67, state: state(5, { current_step: 1 }) });
        return { followed: feed.followed, stateUrl: feed.stateUrl, open: view.open,
                 version: workflow.current.version, events };
        """,
    )
    assert out["followed"] == ["/workflow/state/stream", "/workflows/wf/stream"]
    assert out["stateUrl"] == "/workflows/wf"
    assert out["open"] == "wf"
    assert out["version"] == 5
    assert [event[0] for event in out["events"]] == ["open", "reveal"]


def test_opening_a_workflow_by_id(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        stored.workflows.mine = state(8, { workflow_id: 'mine', status: 'completed' });
        await workflow.init({ workflowId: 'mine' });
        const opened = { open: workflow.view().open, message: workflow.view().message.key,
                         followed: [...feed.followed] };
        await workflow.open('gone');
        const missing = workflow.view();
        return { opened, missing: { open: missing.open, message: missing.message,
                                    steps: missing.steps.map((s) => s.status) },
                 started: feed.started, events };
        """,
    )
    assert out["opened"] == {
        "open": "mine",
        "message": "restored-completed",
        "followed": ["/workflows/mine/stream"],
    }
    assert out["missing"] == {
        "open": None,
        "message": {"key": "not-found", "kind": "error", "args": {"id": "gone"}},
        "steps": ["pending"] * 3,
    }
    assert out["started"] is False  # nothing to follow
    assert [e for e in out["events"] if e[0] == "open"] == [
        ["open", "mine"],
        ["open", "gone"],
        ["open", None],
    ]


def test_new_setup_closes_the_open_workflow(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        const saved = state(3, { run: serverRun(1), ssh_connection: 'ssh z' });
        saved.steps[1].enabled = false;
        stored.state = saved;
        await workflow.init();
        const before = workflow.view();
        events.length = 0;
        workflow.close();
        const after = workflow.view();
        return { before: [before.newSetup, before.run.mode],
                 after: { newSetup: after.newSetup, run: after.run.mode, message: after.message.key,
                          enabled: after.steps.map((s) => s.enabled), locked: after.sshLocked },
                 events, started: feed.started };
        """,
    )
    assert out["before"] == [True, "cancel"]
    assert out["after"] == {
        "newSetup": False,
        "run": "run",
        "message": "idle",
        "enabled": [True, True, True],
        "locked": False,
    }
    assert out["events"] == [["open", None], ["reveal", {"restored": True, "ssh": ""}]]
    assert out["started"] is False


def test_an_expired_finished_workflow_stays_on_screen(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        stored.workflows.wf = state(2);
        await workflow.init({ workflowId: 'wf' });
        const done = state(3, { status: 'completed', current_step: 2 });
        done.steps.forEach((s) => { s.status = 'completed'; });
        feed.push({ progress_percent: 100, state: done });
        const message = workflow.message;
        feed.push({ progress_percent: 0, state: null });
        const view = workflow.view();
        return { current: workflow.current, kept: view.steps.map((s) => s.status),
                 percent: view.progress.percent, same: workflow.message === message,
                 key: message.key };
        """,
    )
    assert out["current"] is None
    assert out["kept"] == ["completed"] * 3 and out["percent"] == 100 and out["same"]
    assert out["key"] == "completed"


def test_a_deleted_running_workflow_empties_the_screen(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        stored.workflows.wf = state(3);
        await workflow.init({ workflowId: 'wf' });
        feed.push({ progress_percent: 0, state: null });
        const view = workflow.view();
        return { message: view.message.key, steps: view.steps.map((s) => s.status),
                 percent: view.progress.percent, labels: view.steps.map((s) => s.label) };
        """,
    )
    assert out == {
        "message": "cleared",
        "steps": ["pending"] * 3,
        "percent": 0,
        "labels": ["Alpha", "Beta", "Gamma"],
    }


def test_switches_follow_the_stored_steps_and_the_person(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        const saved = state(3, { status: 'completed', current_step: 2 });
        saved.steps[1].enabled = false;
        stored.state = saved;
        await workflow.init();
        const restored = workflow.view().steps.map((s) => s.enabled);
        workflow.setEnabled('b', true);
        workflow.setEnabled('c', false);
        return [restored, workflow.view().steps.map((s) => s.enabled)];
        """,
    )
    assert out == [[True, False, True], [True, True, False]]


def test_the_instances_list_follows_the_owners_workflows(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        const entry = (id, version, last, fields = {}) => ({
          workflow_id: id, status: 'running', current_step: 0, total_steps: 3,
          progress_percent: 33.33, start_time: last, last_update: last, active: true,
          version, ...fields,
        });
        const ids = () => instances.view().rows.map((r) => r.id);
        const seen = [];
        listPush('snapshot', { workflows: [
          entry('b', 5, '2026-12-01T10:00:02Z'),
          entry('a', 4, '2026-12-01T10:00:01Z', { status: 'completed', current_step: 2,
                                                  progress_percent: 100, active: false }),
        ] });
        seen.push(ids());
        listPush('entry', entry('a', 7, '2026-12-01T10:00:03.5Z', { status: 'completed' }));
        seen.push(ids());
        listPush('entry', entry('a', 6, '2026-12-01T10:00:09Z'));  // older news: ignored
        seen.push(ids());
        listPush('entry', entry('c', 8, '2026-12-01T10:00:03.5Z'));  // same time: id order
        listPush('entry', entry('d', 9, '2026-12-01T09:00:00Z'));  // beyond the limit of 3
        seen.push(ids());
        listPush('entry', { workflow_id: 'c', state: null });  // deleted or expired
        seen.push(ids());
        instances.setOpen('b');
        const rows = instances.view().rows;
        listPush('snapshot', { workflows: [entry('e', 10, '2026-12-01T11:00:00Z')] });
        seen.push(ids());
        return { seen, rows };
        """,
    )
    assert out["seen"] == [
        ["b", "a"],
        ["a", "b"],
        ["a", "b"],
        ["c", "a", "b"],
        ["a", "b", "d"],
        ["e"],  # a new snapshot is the whole list: what it lacks is gone
    ]
    rows = {row["id"]: row for row in out["rows"]}
    assert rows["b"] == {
        "id": "b",
        "href": "/?workflow=b",
        "status": "running",
        "step": 1,
        "total": 3,
        "percent": 33.33,
        "ssh": "",
        "updated": "2026-12-01T10:00:02Z",
        "open": True,
    }
    assert rows["a"]["open"] is False and rows["a"]["status"] == "completed"


def test_list_events_during_a_snapshot_land_after_it(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        let answer;
        const listClient = {
          token: null,
          listWorkflows: () => new Promise((resolve) => { answer = resolve; }),
        };
        const source = new WorkflowList(listClient, { streamUrl: null });
        const got = [];
        source.addEventListener('snapshot',
                                (e) => got.push(['snapshot', e.detail.workflows.length]));
        source.addEventListener('entry', (e) => got.push(['entry', e.detail.version]));
        source.started = true;
        const reading = source.snapshot();
        source.received({ workflow_id: 'x', version: 12 });  // newer than the list being read
        answer({ workflows: [{ workflow_id: 'x', version: 11 }], nextCursor: null });
        await reading;
        source.received({ workflow_id: 'x', version: 13 });
        source.stop();
        return got;
        """,
    )
    assert out == [["snapshot", 1], ["entry", 12], ["entry", 13]]
