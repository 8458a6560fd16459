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
  // Each call is recorded; an answer that is an Error is thrown (as an ApiError would be).
  const runner = {
    calls: [], answers: {},
    async answer(name, ...args) {
      this.calls.push([name, ...args]);
      const answer = this.answers[name];
      if (answer instanceof Error) throw answer;
      return answer;
    },
    start(request) { return this.answer('start', request); },
    run(id) { return this.answer('run', id); },
    resume(id, input) { return this.answer('resume', id, input); },
    retry(id) { return this.answer('retry', id); },
    cancel(id) { return this.answer('cancel', id); },
    remove(id) { return this.answer('remove', id); },
  };
  const { ApiError } = await import('/static/js/state-client.js');
  const apiError = (code, text, status = 400) => new ApiError(text, { code, status });
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
        const step = (version, current) => {
          const moved = state(version, { current_step: current });
          for (let i = 0; i < current; i += 1) moved.steps[i].status = 'completed';
          return moved;
        };
        feed.push({ state: step(5, 1) });
        const first = workflow.view().progress.percent;
        feed.push({ state: step(4, 0) });
        const afterOlder = workflow.view().progress.percent;
        feed.push({ state: step(6, 2) });
        return [first, afterOlder, workflow.view().progress.percent, workflow.current.version];
        """,
    )
    assert out == [33.33, 33.33, 66.67, 6]


def test_the_percent_is_how_much_is_done(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        const { completedPercent, entryPercent } =
          await import('/static/js/controllers/states.js');
        const made = (...statuses) => statuses.map((status, i) => ({ action: `s${i}`, status }));
        const cases = {
          // the server's own field wins
          given: completedPercent({ completed_percent: 42.5, steps: made('pending') }),
          // a one-step workflow with nothing done is 0 (the seed's progress_percent says 100)
          oneStep: completedPercent({ steps: made('in_progress') }),
          none: completedPercent({ steps: [] }),
          noState: completedPercent(null),
          skippedCounts: completedPercent({ steps: made('completed', 'skipped', 'pending') }),
          // plus the running step's own progress, as a share of one step
          partial: completedPercent({ steps: [
            { action: 'a', status: 'completed' },
            { action: 'b', status: 'in_progress', progress: { percent: 50 } },
            { action: 'c', status: 'pending' },
          ] }),
          thirds: completedPercent({ steps: made('completed', 'completed', 'failed') }),
          entryGiven: entryPercent({ completed_percent: 12.5, status: 'running', total_steps: 4 }),
          entryRunning: entryPercent({ status: 'running', current_step: 1, total_steps: 3 }),
          entryDone: entryPercent({ status: 'completed', current_step: 2, total_steps: 3 }),
          entryEmpty: entryPercent({ status: 'running', current_step: 0, total_steps: 0 }),
        };
        // The controller shows it for every state, whatever brought it (a write answer too).
        await workflow.init();
        const written = state(6, { current_step: 1 });
        written.steps[0].status = 'completed';
        written.steps[1].status = 'in_progress';
        written.steps[1].progress = { percent: 25, message: 'half way', updated: 'x' };
        workflow.show(written);
        cases.shown = workflow.view().progress.percent;
        workflow.show(state(7, { completed_percent: 90 }));
        cases.shownGiven = workflow.view().progress.percent;
        return { cases, seenVersions: feed.seenVersions };
        """,
    )
    assert out["cases"] == {
        "given": 42.5,
        "oneStep": 0,
        "none": 0,
        "noState": 0,
        "skippedCounts": 66.67,
        "partial": 50,
        "thirds": 66.67,
        "entryGiven": 12.5,
        "entryRunning": 33.33,
        "entryDone": 100,
        "entryEmpty": 0,
        "shown": 41.67,
        "shownGiven": 90,
    }
    # Every state shown is held in full: polling may answer 304 for it.
    assert out["seenVersions"] == [6, 7]


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
    assert out["progress"] == {"percent": 33.33, "step": 2, "total": 3, "status": "failed"}
    assert out["run"] == {"mode": "run", "disabled": False}


def test_a_server_run_says_so_and_any_tab_may_cancel_it(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        const seen = [];
        const look = () => {
          const view = workflow.view();
          seen.push({ message: view.message, run: view.run, hint: view.hint && view.hint.key,
                      remove: view.remove, locked: view.sshLocked });
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
    assert seen[0]["hint"] == "hint-server" and seen[0]["remove"] is None
    assert seen[0]["locked"] is True
    assert seen[1]["message"] == {"key": "resumed", "kind": "info", "args": {}}
    assert seen[2]["message"]["key"] == "cancelling"
    assert seen[2]["run"] == {"mode": "cancelling", "disabled": True}
    assert seen[3]["message"] == {"key": "cancelled", "kind": "warning", "args": {}}
    assert seen[3]["run"] == {"mode": "run", "disabled": False}
    assert out["calls"] == [["cancel", "wf"]]


def test_a_running_workflow_without_a_server_run_can_be_run(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        stored.state = state(3);  // running, no `run`: a client runs (or ran) its steps
        await workflow.init();
        const before = workflow.view();
        const moved = state(4, { current_step: 1 });
        moved.steps[0].status = 'completed';
        feed.push({ state: moved });
        const afterMove = workflow.view().message;
        runner.answers.run = state(5, { current_step: 1, run: serverRun(1, 'queued') });
        await workflow.runOrCancel();
        const after = workflow.view();
        return {
          before: { message: before.message.key, run: before.run, hint: before.hint.key,
                    remove: before.remove },
          afterMove, calls: runner.calls,
          after: { message: after.message.key, run: after.run, remove: after.remove },
        };
        """,
    )
    assert out["before"] == {
        "message": "restored-running",
        "run": {"mode": "run-remaining", "disabled": False},
        "hint": "hint-orphan",
        "remove": {"disabled": False},
    }
    assert out["afterMove"] == {
        "key": "other-run-step",
        "kind": "info",
        "args": {"step": 2, "total": 3, "label": "Beta"},
    }
    assert out["calls"] == [["run", "wf"]]
    # A queued run is a run in progress too (queued, running or waiting → ⏳).
    assert out["after"] == {
        "message": "running-on-server",
        "run": {"mode": "cancel", "disabled": False},
        "remove": None,
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
    # Nothing to open: the current workflow's stream only finds one...
    assert out["followedFirst"] == ["/workflow/state/stream"]
    # ...and the workflow just created is followed by its id.
    assert out["followed"] == ["/workflow/state/stream", "/workflows/new/stream"]
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


def test_an_open_workflow_is_followed_by_its_id(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        stored.state = state(3);
        await workflow.init();  // the current workflow: found once, then followed by its id
        // News of another workflow (one that was open before) changes nothing here.
        feed.push({ state: state(4, { workflow_id: 'theirs' }) });
        const view = workflow.view();
        feed.push({ state: state(5, { current_step: 1 }) });
        return { followed: feed.followed, stateUrl: feed.stateUrl, open: view.open,
                 version: workflow.current.version, events };
        """,
    )
    assert out["followed"] == ["/workflows/wf/stream"]
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
        "name": "b",
        "href": "/?workflow=b",
        "status": "running",
        "needsInput": False,
        "step": 1,
        "total": 3,
        "percent": 0,  # no step done yet (the seed's progress_percent says 33.33)
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


# --- runs that ask, report and recover ------------------------------------------------------

# A workflow whose second step waits for the person, asking for one field of each type.
BLOCKED = """
  const blockedState = (version, fields = {}) => {
    const s = state(version, { status: 'blocked', current_step: 1,
                               run: serverRun(1, 'done'), ...fields });
    s.steps[0].status = 'completed';
    s.steps[1].status = 'blocked';
    s.steps[1].blocked = {
      message: 'Trust the host key SHA256:abc?',
      since: '2026-12-01T10:00:00Z',
      input: [
        { name: 'folder', label: 'Model folder', type: 'text' },
        { name: 'api_key', label: 'API key', type: 'secret', required: false },
        { name: 'trust', label: 'Trust this host', type: 'boolean' },
        { name: 'size', label: 'Disk size', type: 'choice', choices: ['50 GB', '100 GB'] },
        { name: 'odd', type: 'unknown' },
      ],
    };
    return s;
  };
"""
# ...and opened, as the page opens `?workflow=wf`.
OPEN_BLOCKED = (
    BLOCKED
    + """
  stored.workflows.wf = blockedState(4);
  await workflow.init({ workflowId: 'wf' });
"""
)


def field(name: str, label: str, kind: str, choices=(), required: bool = True) -> dict:
    """A form field as the controller gives it to the view."""
    return {
        "name": name,
        "label": label,
        "type": kind,
        "choices": list(choices),
        "required": required,
    }


def test_a_blocked_workflow_asks_for_its_fields(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        OPEN_BLOCKED
        + """
        const view = workflow.view();
        return { blocked: view.blocked, message: view.message, run: view.run,
                 steps: view.steps.map((s) => [s.status, s.current]), remove: view.remove,
                 retry: view.retry, hint: view.hint, locked: view.sshLocked };
        """,
    )
    assert out["blocked"] == {
        "key": "wf:1:2026-12-01T10:00:00Z",
        "step": 2,
        "label": "Beta",
        "message": "Trust the host key SHA256:abc?",
        "fields": [
            field("folder", "Model folder", "text"),
            field("api_key", "API key", "secret", required=False),
            field("trust", "Trust this host", "boolean"),
            field("size", "Disk size", "choice", ["50 GB", "100 GB"]),
            # An unknown type is asked as text; a field without a label is labelled by its name.
            field("odd", "odd", "text"),
        ],
        "error": None,
        "disabled": False,
    }
    assert out["message"] == {
        "key": "blocked",
        "kind": "warning",
        "args": {"step": 2, "label": "Beta", "detail": "Trust the host key SHA256:abc?"},
    }
    # The form holds the way on (Resume, Cancel): the Run button has nothing to do.
    assert out["run"] == {"mode": "none", "disabled": False}
    assert out["steps"] == [["completed", False], ["blocked", True], ["pending", False]]
    assert out["remove"] is None and out["retry"] is None and out["hint"] is None
    assert out["locked"] is True


def test_an_answer_resumes_and_a_refused_one_keeps_the_form(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        OPEN_BLOCKED
        + """
        const input = { folder: '/models', trust: true, size: '50 GB' };
        const refusal = "Field 'size' must be one of 50 GB, 100 GB";
        runner.answers.resume = apiError('invalid_input', refusal);
        const answering = workflow.answer(input);
        const during = workflow.view();
        await answering;
        const refused = workflow.view();
        const resumed = state(6, { current_step: 1,
                                   run: { ...serverRun(2, 'queued'), takeovers: 0 } });
        resumed.steps[0].status = 'completed';
        runner.answers.resume = resumed;
        await workflow.answer({ ...input, size: '100 GB' });
        const after = workflow.view();
        return {
          calls: runner.calls,
          during: { message: during.message.key, disabled: during.blocked.disabled },
          refused: { blocked: Boolean(refused.blocked), error: refused.blocked.error,
                     message: refused.message.key },
          after: { blocked: after.blocked, message: after.message.key, run: after.run },
        };
        """,
    )
    assert out["calls"] == [
        ["resume", "wf", {"folder": "/models", "trust": True, "size": "50 GB"}],
        ["resume", "wf", {"folder": "/models", "trust": True, "size": "100 GB"}],
    ]
    assert out["during"] == {"message": "resuming", "disabled": True}
    # Refused: the form stays with the server's reason; the status line asks again.
    assert out["refused"] == {
        "blocked": True,
        "error": {
            "key": "input-error",
            "kind": "error",
            "args": {"detail": "Field 'size' must be one of 50 GB, 100 GB"},
        },
        "message": "blocked",
    }
    # Resumed: a new run (attempt 2) is no takeover, so no 🔁.
    assert out["after"] == {
        "blocked": None,
        "message": "running-on-server",
        "run": {"mode": "cancel", "disabled": False},
    }


def test_a_blocked_workflow_can_be_cancelled(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        OPEN_BLOCKED
        + """
        const cancelled = blockedState(5, { status: 'cancelled' });
        cancelled.steps[1].status = 'cancelled';
        runner.answers.cancel = cancelled;
        await workflow.cancel();
        const view = workflow.view();
        return { calls: runner.calls, blocked: view.blocked, message: view.message.key,
                 run: view.run };
        """,
    )
    assert out["calls"] == [["cancel", "wf"]]
    assert out["blocked"] is None and out["message"] == "cancelled"
    assert out["run"] == {"mode": "run", "disabled": False}


def test_a_failed_workflow_offers_retry_from_its_failed_step(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        const failed = state(7, { status: 'failed', current_step: 1, run: serverRun(1, 'done') });
        failed.steps[0].status = 'completed';
        failed.steps[1].status = 'failed';
        stored.workflows.wf = failed;
        await workflow.init({ workflowId: 'wf' });
        const before = workflow.view();
        runner.answers.retry = apiError('not_failed', 'The workflow is not failed', 409);
        await workflow.retry();
        const refused = workflow.view().message;
        const again = state(9, { current_step: 1,
                                 run: { ...serverRun(2, 'queued'), takeovers: 0 } });
        again.steps[0].status = 'completed';
        runner.answers.retry = again;
        await workflow.retry();
        const after = workflow.view();
        // A failed workflow that expired cannot be retried: it is no longer on the server.
        const failedAgain = { ...failed, version: 10 };
        feed.push({ state: failedAgain });
        const failedView = workflow.view().retry;
        feed.push({ state: null });
        return { before: before.retry, beforeMessage: before.message.key, refused,
                 after: { retry: after.retry, message: after.message.key, run: after.run },
                 failedView, expired: workflow.view().retry, calls: runner.calls };
        """,
    )
    assert out["before"] == {"step": 2, "disabled": False}
    assert out["beforeMessage"] == "restored-failed"
    assert out["refused"] == {
        "key": "retry-error",
        "kind": "error",
        "args": {"detail": "That workflow has not failed, so there is nothing to retry."},
    }
    assert out["calls"] == [["retry", "wf"], ["retry", "wf"]]
    assert out["after"] == {
        "retry": None,
        "message": "running-on-server",
        "run": {"mode": "cancel", "disabled": False},
    }
    assert out["failedView"] == {"step": 2, "disabled": False}
    assert out["expired"] is None


def test_a_running_step_shows_its_progress_tasks_and_next_try(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        const moving = state(5, { current_step: 1, run: serverRun(1) });
        moving.steps[0].status = 'completed';
        moving.steps[0].tasks = [{ name: 'old', status: 'completed' }];  // a done step's: not shown
        moving.steps[1].status = 'in_progress';
        moving.steps[1].progress = { percent: 40, message: 'Copying models', updated: 'x' };
        moving.steps[1].tasks = [
          { name: 'Download', status: 'completed', note: '2.1 GB' },
          { name: 'Unpack', status: 'in_progress' },
          { status: 'pending' },  // no name: left out
        ];
        stored.workflows.wf = moving;
        await workflow.init({ workflowId: 'wf' });
        const shown = workflow.view();
        // The step failed and waits for its next try.
        const waiting = state(6, { current_step: 1, run: serverRun(1, 'waiting') });
        waiting.steps[0].status = 'completed';
        waiting.steps[1].status = 'in_progress';
        waiting.steps[1].retry_at = '2026-12-01T10:00:12Z';
        waiting.steps[1].data = { message: 'Connection refused' };
        feed.push({ state: waiting });
        const wait = workflow.view();
        return {
          steps: shown.steps.map(({ status, progress, tasks, retryAt }) =>
            ({ status, progress, tasks, retryAt })),
          percent: shown.progress.percent,
          waiting: { step: wait.steps[1], message: wait.message.key, run: wait.run },
        };
        """,
    )
    assert out["steps"] == [
        {"status": "completed", "progress": None, "tasks": [], "retryAt": None},
        {
            "status": "in_progress",
            "progress": {"percent": 40, "message": "Copying models"},
            "tasks": [
                {"name": "Download", "status": "completed", "note": "2.1 GB"},
                {"name": "Unpack", "status": "in_progress", "note": ""},
            ],
            "retryAt": None,
        },
        {"status": "pending", "progress": None, "tasks": [], "retryAt": None},
    ]
    assert out["percent"] == 46.67  # (1 step + 40 % of one) of 3
    step = out["waiting"]["step"]
    assert step["retryAt"] == "2026-12-01T10:00:12Z"
    assert step["note"] == "Connection refused"  # the last failure
    # A waiting run is a run in progress: the server says when to try again; any tab may cancel.
    assert out["waiting"]["message"] == "running-on-server"
    assert out["waiting"]["run"] == {"mode": "cancel", "disabled": False}


def test_resumed_after_an_interruption_only_after_a_takeover(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        const said = (run) => {
          workflow.show(state(workflow.current ? workflow.current.version + 1 : 1, { run }));
          workflow.sayProgress(null, workflow.current);
          return workflow.view().message.key;
        };
        await workflow.init();
        return [
          said({ attempt: 1, status: 'running', takeovers: 0 }),
          // a person's resume or retry raised the attempt: no takeover
          said({ attempt: 3, status: 'running', takeovers: 0 }),
          said({ attempt: 3, status: 'running', takeovers: 1 }),
          // a server that does not count takeovers: the attempt tells
          said({ attempt: 2, status: 'running' }),
          said({ attempt: 1, status: 'queued' }),
        ];
        """,
    )
    running, resumed = "running-on-server", "resumed"
    assert out == [running, running, resumed, resumed, running]


def test_offline_turns_off_what_needs_the_server_and_back(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        OPEN_BLOCKED
        + """
        const look = () => {
          const v = workflow.view();
          return { message: v.message.key, kind: v.message.kind, run: v.run.disabled,
                   blocked: v.blocked && v.blocked.disabled, offline: v.offline };
        };
        const online = look();
        workflow.setOffline('storage');  // it answers, but its storage is down
        const storage = look().message;
        workflow.setOffline('network');  // it cannot be reached
        const offline = look();
        await workflow.answer({ folder: 'x' });  // nothing is sent while offline
        await workflow.cancel();
        // A failed one's Retry and an unattended one's Delete are off too.
        const failed = state(5, { status: 'failed', current_step: 0 });
        failed.steps[0].status = 'failed';
        feed.push({ state: failed });
        const failedView = workflow.view().retry;
        const orphan = state(6);
        workflow.show(orphan, { force: true });
        const orphanView = workflow.view();
        workflow.setOffline(null);
        return { online, storage, offline, calls: runner.calls, failedView,
                 orphan: { remove: orphanView.remove, run: orphanView.run },
                 back: workflow.view().message.key,
                 backRemove: workflow.view().remove };
        """,
    )
    assert out["online"] == {
        "message": "blocked",
        "kind": "warning",
        "run": False,
        "blocked": False,
        "offline": False,
    }
    assert out["storage"] == "storage-down"
    assert out["offline"] == {
        "message": "offline",
        "kind": "warning",
        "run": True,
        "blocked": True,
        "offline": True,
    }
    assert out["calls"] == []
    assert out["failedView"] == {"step": 1, "disabled": True}
    assert out["orphan"] == {
        "remove": {"disabled": True},
        "run": {"mode": "run-remaining", "disabled": True},
    }
    # Back online: what was said before shows again, and everything is on again.
    assert out["back"] == "failed-at"
    assert out["backRemove"] == {"disabled": False}


def test_an_unattended_workflow_can_be_deleted(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        stored.workflows.wf = state(3);  // running, nothing runs it
        await workflow.init({ workflowId: 'wf' });
        events.length = 0;
        runner.answers.remove = undefined;
        await workflow.remove();
        const view = workflow.view();
        return { calls: runner.calls, events, open: view.open, message: view.message,
                 run: view.run, remove: view.remove, started: feed.started };
        """,
    )
    assert out["calls"] == [["remove", "wf"]]
    assert out["events"] == [["open", None]]
    assert out["open"] is None and out["started"] is False
    assert out["message"] == {"key": "deleted", "kind": "info", "args": {"id": "wf"}}
    assert out["run"] == {"mode": "run", "disabled": False} and out["remove"] is None


def test_a_record_from_the_history_is_shown_read_only(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        stored.workflows.wf = state(3, { run: serverRun(1) });
        await workflow.init({ workflowId: 'wf' });
        events.length = 0;
        const record = state(2, { workflow_id: 'old', status: 'failed', current_step: 2,
                                  ssh_connection: 'ssh root@198.51.100.4' });
        record.steps[0].status = 'completed';
        record.steps[1].enabled = false;
        record.steps[1].status = 'skipped';
        record.steps[2].status = 'failed';
        workflow.showRecord(record);
        const view = workflow.view();
        return { events, open: view.open, message: view.message, run: view.run,
                 retry: view.retry, steps: view.steps.map((s) => [s.status, s.enabled]),
                 started: feed.started };
        """,
    )
    assert out["events"] == [
        ["open", None],
        ["reveal", {"restored": True, "ssh": "ssh root@198.51.100.4"}],
    ]
    assert out["open"] is None and out["started"] is False  # nothing to follow
    assert out["message"] == {
        "key": "record",
        "kind": "info",
        "args": {"outcome": "failed at step 3 (Gamma)"},
    }
    # Nothing to retry on the server; Run starts a new workflow with the same switches.
    assert out["run"] == {"mode": "run", "disabled": False} and out["retry"] is None
    assert out["steps"] == [["completed", True], ["skipped", False], ["failed", True]]


def test_instances_name_workflows_and_mark_those_that_need_input(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        const { hostOf } = await import('/static/js/controllers/states.js');
        const hosts = [
          'ssh -p 2222 root@203.0.113.7',
          'ssh -p 41022 root@203.0.113.7 -L 8080:localhost:8080',
          'ssh -i ~/.ssh/id -o StrictHostKeyChecking=no admin@gpu.example.com',
          'root@198.51.100.9:2200',
          'ssh://root@198.51.100.10:22',
          'ssh -p2222 user@[2001:db8::1]',
          'ssh',
          '',
        ].map(hostOf);
        const names = new EventTarget();
        names.asked = [];
        names.lookup = (id) => names.asked.push(id);
        const source = new EventTarget();
        const listed = new InstancesController({ list: source, names });
        const entry = (id, fields = {}) => ({
          workflow_id: id, status: 'running', current_step: 1, total_steps: 4,
          last_update: '2026-12-01T10:00:00Z', version: 1, ...fields,
        });
        source.dispatchEvent(new CustomEvent('snapshot', { detail: { workflows: [
          entry('labelled', { label: 'My 4090 box', ssh_connection: 'ssh root@203.0.113.7' }),
          entry('by-host', { ssh_connection: 'ssh -p 2222 root@203.0.113.7' }),
          entry('plain', { label: null, ssh_connection: null }),
          entry('asking', { status: 'blocked', completed_percent: 25 }),
        ] } }));
        const before = listed.view().rows.map((r) => [r.id, r.name]);
        // An entry that does not say what names it was looked up, once.
        names.dispatchEvent(new CustomEvent('name', { detail: {
          workflow_id: 'asking', label: null, ssh_connection: 'ssh root@198.51.100.4' } }));
        source.dispatchEvent(new CustomEvent('entry', { detail: entry('asking',
          { status: 'blocked', completed_percent: 25, version: 2 }) }));
        const rows = listed.view().rows;
        return { hosts, before, asked: names.asked,
                 rows: rows.map(({ id, name, status, needsInput, percent, ssh }) =>
                   ({ id, name, status, needsInput, percent, ssh })) };
        """,
    )
    assert out["hosts"] == [
        "203.0.113.7",
        "203.0.113.7",
        "gpu.example.com",
        "198.51.100.9",
        "198.51.100.10",
        "2001:db8::1",
        "",
        "",
    ]
    assert dict(out["before"])["asking"] == "asking"  # its id, until its name is known
    assert out["asked"] == ["asking"]
    rows = {row["id"]: row for row in out["rows"]}
    assert rows["labelled"]["name"] == "My 4090 box"
    assert rows["labelled"]["ssh"] == "ssh root@203.0.113.7"  # the label hides the host: shown
    assert rows["by-host"]["name"] == "203.0.113.7" and rows["by-host"]["ssh"] == ""
    assert rows["plain"]["name"] == "plain"
    assert rows["asking"] == {
        "id": "asking",
        "name": "198.51.100.4",
        "status": "blocked",
        "needsInput": True,
        "percent": 25,
        "ssh": "",
    }
    assert rows["by-host"]["percent"] == 25  # 1 of 4 steps before its current one


def test_recently_finished_workflows_come_from_the_history(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        const history = new EventTarget();
        history.reads = 0;
        history.refresh = () => { history.reads += 1; };
        const give = (workflows) =>
          history.dispatchEvent(new CustomEvent('history', { detail: { workflows } }));
        const source = new EventTarget();
        const push = (type, detail) => source.dispatchEvent(new CustomEvent(type, { detail }));
        const listed = new InstancesController({ list: source, history, recentLimit: 2 });
        const entry = (id, status, version) => ({
          workflow_id: id, status, current_step: 0, total_steps: 3, version,
          last_update: `2026-12-01T10:00:0${version}Z`,
        });
        const finished = (id, status, at) => {
          const s = state(1, { workflow_id: id, status, current_step: 2, last_update: at,
                               label: id === 'labelled' ? 'Old box' : undefined });
          s.steps.forEach((step) => { step.status = 'completed'; });
          if (status === 'failed') { s.steps[2].status = 'failed'; s.steps[2].label = 'Sync'; }
          return s;
        };
        const reads = [];
        const twoListed = [entry('live', 'running', 1), entry('done', 'completed', 2)];
        push('snapshot', { workflows: twoListed });
        reads.push(history.reads);  // the first snapshot reads the history
        give([finished('done', 'completed', 'a'), finished('gone', 'failed', 'b'),
              finished('gone', 'failed', 'c'), finished('labelled', 'cancelled', 'd'),
              finished('more', 'completed', 'e')]);
        const first = listed.view().recent.map((r) => r.id);
        push('snapshot', { workflows: twoListed });
        reads.push(history.reads);  // nothing new: not read again
        push('entry', entry('live', 'running', 3));
        reads.push(history.reads);
        push('entry', entry('live', 'completed', 4));  // it finished
        reads.push(history.reads);
        push('entry', { workflow_id: 'done', state: null });  // it expired
        reads.push(history.reads);
        const after = listed.view().recent;
        return { reads, first, after, record: listed.record('gone').last_update,
                 none: listed.record('nothing') };
        """,
    )
    assert out["reads"] == [1, 1, 1, 2, 3]
    # Not those still listed above, one per workflow, at most recentLimit.
    assert out["first"] == ["gone", "labelled"]
    assert out["after"] == [
        {
            "id": "done",
            "name": "done",
            "status": "completed",
            "done": 3,
            "total": 3,
            "failedStep": 0,
            "failedLabel": "",
            "updated": "a",
        },
        {
            "id": "gone",
            "name": "gone",
            "status": "failed",
            "done": 2,
            "total": 3,
            "failedStep": 3,
            "failedLabel": "Sync",
            "updated": "b",
        },
    ]
    assert out["record"] == "b" and out["none"] is None


def test_a_page_that_names_no_workflow_finds_one_then_follows_it_by_id(
    page_with_modules: Page,
) -> None:
    out = run(
        page_with_modules,
        """
        await workflow.init();  // no current workflow: the current one's stream finds one
        const finding = { followed: [...feed.followed], stateUrl: feed.stateUrl };
        feed.push({ state: null });  // the stream's first answer: still none
        feed.push({ state: state(3, { workflow_id: 'found', run: serverRun(1) }) });
        const found = { followed: [...feed.followed], stateUrl: feed.stateUrl,
                        open: workflow.openId };
        // From now on only news of that workflow counts, whatever becomes current.
        feed.push({ state: state(4, { workflow_id: 'other' }) });
        return { finding, found, open: workflow.openId, version: workflow.current.version,
                 events };
        """,
    )
    assert out["finding"] == {"followed": ["/workflow/state/stream"], "stateUrl": "/workflow/state"}
    assert out["found"] == {
        "followed": ["/workflow/state/stream", "/workflows/found/stream"],
        "stateUrl": "/workflows/found",
        "open": "found",
    }
    assert out["open"] == "found" and out["version"] == 3
    assert out["events"] == [["open", "found"], ["reveal", {"restored": False, "ssh": ""}]]
