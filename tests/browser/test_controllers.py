"""The controllers on their own: fed by fakes (no server calls, no DOM), inside Chromium.

The controllers under static/js/controllers/ touch no DOM, so every rule of reconciliation can
be checked by feeding them states and reading what they would show (`view()`).
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
  const steps = [
    { action: 'a', label: 'Alpha' },
    { action: 'b', label: 'Beta' },
    { action: 'c', label: 'Gamma' },
  ];
  const state = (version, fields = {}) => ({
    workflow_id: 'wf', status: 'running', current_step: 0, version,
    steps: steps.map(({ action }) => ({ action, status: 'pending' })), ...fields,
  });
  class Feed extends EventTarget {
    constructor() { super(); this.stateUrl = '/workflow/state'; this.seenVersions = []; }
    seen(version) { this.seenVersions.push(version); }
    refresh() {}
    push(body) { this.dispatchEvent(new CustomEvent('state', { detail: { body } })); }
  }
  const runner = {
    active: false, starting: false, cancelling: false, started: false, observed: [],
    isOther: (s) => Boolean(s) && s.status === 'running' && s.workflow_id !== 'mine',
    isOrphan: () => false,
    observe(s) { this.observed.push(s.version); },
  };
  const stored = { state: null, percent: 0 };
  const client = {
    config: async () => ({ steps, step_delay_ms: 0, stream_url: null }),
    getState: async () => ({ state: stored.state, progressPercent: stored.percent }),
  };
  const feed = new Feed();
  const catalog = new StepCatalog();
  const events = [];
  const workflow = new WorkflowController({ client, feed, catalog, createRunner: () => runner });
  for (const type of ['reveal', 'current', 'history']) {
    workflow.addEventListener(type, (e) => events.push([type, e.detail ?? null]));
  }
  const instances = new InstancesController({ client, catalog });
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
          events, message: view.message,
          steps: view.steps.map((s) => s.status),
          arrows: view.arrows,
          progress: view.progress,
          run: view.run,
        };
        """,
    )
    assert ["reveal", {"restored": True, "ssh": "ssh x"}] in out["events"]
    assert out["message"] == {"key": "restored-failed", "kind": "error", "args": {}}
    assert out["steps"] == ["completed", "failed", "pending"]
    assert out["arrows"] == [
        {"completed": True, "loading": False},
        {"completed": False, "loading": False},
    ]
    assert out["progress"] == {"percent": 66.67, "step": 2, "total": 3, "status": "failed"}
    assert out["run"] == {"mode": "run", "disabled": False}


def test_following_another_tabs_run_to_its_end(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        await workflow.init();
        events.length = 0;
        const moving = state(3, { current_step: 1 });
        moving.steps[0].status = 'completed';
        moving.steps[1].status = 'in_progress';
        feed.push({ progress_percent: 66.67, state: moving });
        const during = workflow.view();
        const failed = state(4, { status: 'failed', current_step: 1 });
        failed.steps[0].status = 'completed';
        failed.steps[1].status = 'failed';
        feed.push({ progress_percent: 66.67, state: failed });
        const after = workflow.view();
        return {
          events,
          during: { message: during.message, run: during.run, hint: during.hint && during.hint.key,
                    stopOther: during.stopOther, arrows: during.arrows,
                    current: during.steps.map((s) => s.current) },
          after: { message: after.message, run: after.run, hint: after.hint },
        };
        """,
    )
    assert [event[0] for event in out["events"]] == ["current", "reveal", "current", "history"]
    assert out["events"][1] == ["reveal", {"restored": False}]
    during = out["during"]
    assert during["message"] == {
        "key": "other-run-step",
        "kind": "info",
        "args": {"step": 2, "total": 3, "label": "Beta"},
    }
    assert during["run"] == {"mode": "run", "disabled": True}
    assert during["hint"] == "hint-other" and during["stopOther"] is True
    assert during["arrows"] == [
        {"completed": True, "loading": False},
        {"completed": False, "loading": True},
    ]
    assert during["current"] == [False, True, False]
    assert out["after"] == {
        "message": {"key": "failed-at", "kind": "error", "args": {"step": 2, "label": "Beta"}},
        "run": {"mode": "run", "disabled": False},
        "hint": None,
    }


def test_an_expired_finished_workflow_stays_on_screen(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        await workflow.init();
        const done = state(3, { status: 'completed', current_step: 2 });
        done.steps.forEach((s) => { s.status = 'completed'; });
        feed.push({ progress_percent: 100, state: done });
        const message = workflow.message;
        events.length = 0;
        feed.push({ progress_percent: 0, state: null });
        const view = workflow.view();
        return { events, current: workflow.current, kept: view.steps.map((s) => s.status),
                 percent: view.progress.percent, same: workflow.message === message };
        """,
    )
    assert out["current"] is None
    assert out["kept"] == ["completed"] * 3 and out["percent"] == 100 and out["same"]
    assert out["events"] == [["current", None], ["history", None]]


def test_a_cleared_running_workflow_empties_the_screen(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        await workflow.init();
        feed.push({ progress_percent: 33.33, state: state(3) });
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


def test_while_this_page_runs_only_newer_states_of_a_started_run_count(
    page_with_modules: Page,
) -> None:
    out = run(
        page_with_modules,
        """
        await workflow.init();
        runner.active = true;
        feed.push({ progress_percent: 33.33, state: state(3, { workflow_id: 'mine' }) });
        const beforeStart = workflow.current;
        runner.started = true;
        feed.push({ progress_percent: 33.33, state: state(4, { workflow_id: 'mine' }) });
        feed.push({ progress_percent: 33.33, state: state(2, { workflow_id: 'mine' }) });
        const view = workflow.view();
        return { beforeStart, observed: runner.observed, version: workflow.current.version,
                 locked: view.steps.every((s) => s.locked), sshLocked: view.sshLocked,
                 run: view.run, hint: view.hint };
        """,
    )
    assert out == {
        "beforeStart": None,
        "observed": [4],
        "version": 4,
        "locked": True,
        "sshLocked": True,
        "run": {"mode": "cancel", "disabled": False},
        "hint": None,
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


def test_the_instances_list_puts_the_current_workflow_first_once(page_with_modules: Page) -> None:
    out = run(
        page_with_modules,
        """
        catalog.set(steps);
        const running = state(5, { workflow_id: 'now', current_step: 1, ssh_connection: 'ssh a' });
        running.steps[0].status = 'completed';
        running.steps[1].status = 'in_progress';
        const failed = state(3, { workflow_id: 'old', status: 'failed', current_step: 2 });
        failed.steps[2].status = 'failed';
        instances.history = [failed, { ...running, status: 'completed' }];
        instances.setCurrent(running);
        return instances.view();
        """,
    )
    assert out["error"] is None
    assert [row["id"] for row in out["rows"]] == ["now", "old"]
    assert out["rows"][0]["note"] == {"kind": "current", "label": "Beta"}
    assert out["rows"][0]["done"] == 1 and out["rows"][0]["total"] == 3
    assert out["rows"][1]["note"] == {"kind": "failed", "label": "Gamma"}
    assert out["rows"][1]["ssh"] == ""
