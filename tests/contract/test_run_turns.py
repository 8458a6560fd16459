"""Turns between owners (WORKFLOW_RUNS_PER_OWNER) on the queue, in this process: at most N runs
of one owner hold a turn, the others wait in start order without holding back another owner's,
an ended attempt hands its turn on, a cancelled waiting run never runs, a crash leaks no turn,
two processes racing never admit more than N, and the queued runs per owner are counted."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from service import create_app, runs
from service.run_api import runs_of
from service.runner.control import RunControl
from service.runner.monitor import LeaseMonitor
from service.runner.queue import RunQueue, job_id
from service.storage.keys import Keys
from service.store import store_of
from tests.conftest import backend_config
from tests.contract.test_run_routes import jobs, work_the_queue
from tests.support.runs import later, plan

ALICE, BOB = "alice", "bob"
LIMIT = 2


def turns_app(kind: str, request: pytest.FixtureRequest, tmp_path: Any, limit: int) -> Flask:
    return create_app(
        {"TESTING": True, **backend_config(kind, request, tmp_path)},
        environ={
            "WORKFLOW_DEMO_STEP_SECONDS": "0",
            "WORKFLOW_RUN_LEASE": "2",
            "WORKFLOW_RUNS_PER_OWNER": str(limit),
        },
    )


@pytest.fixture(params=["fakeredis", "redis"])
def app(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Flask]:
    made = turns_app(request.param, request, tmp_path, LIMIT)
    yield made
    runs_of(made).close()
    store_of(made).close()


def start(control: RunControl, owner: str, *names: str) -> None:
    for name in names:
        control.store.create(owner, {"workflow_id": name, "steps": plan(None)})
        control.start(owner, name)


def queued_jobs(control: RunControl) -> list[str]:
    """Return the queued jobs as `<owner>/<id>`, in queue order."""
    return [control.queue.queue.fetch_job(job).description.split(" ")[1] for job in jobs(control)]


def monitor_of(control: RunControl) -> LeaseMonitor:
    queue = control.queue
    return LeaseMonitor(control.store, control.settings, queue, control.observer, index=queue)


def owner_metric(app: Flask, owner: str) -> float | None:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    found = re.search(rf'^workflow_owner_runs_queued{{owner="{owner}"}} ([0-9.e+]+)$', text, re.M)
    return float(found.group(1)) if found else None


def test_runs_beyond_the_limit_wait_their_turn_in_start_order(app: Flask):
    control = runs_of(app)
    store = control.store
    start(control, ALICE, "a1", "a2", "a3", "a4", "a5")
    start(control, BOB, "b1")
    # Only two of alice's reach the queue: bob's run is next, not behind her three others.
    assert queued_jobs(control) == ["alice/a1", "alice/a2", "bob/b1"]
    assert {store.get(ALICE, n).state["run"]["status"] for n in ("a3", "a4", "a5")} == {"queued"}
    assert control.queued_by_owner() == {ALICE: 5, BOB: 1}
    assert owner_metric(app, ALICE) == 5 and owner_metric(app, BOB) == 1
    work_the_queue(app)
    states = {n: store.get(ALICE, n).state for n in ("a1", "a2", "a3", "a4", "a5")}
    assert all(state["status"] == "completed" for state in states.values())
    started = sorted(states, key=lambda n: states[n]["run"]["started_at"])
    assert started == ["a1", "a2", "a3", "a4", "a5"]
    assert all(s["run"]["queued_at"] <= s["run"]["started_at"] for s in states.values())
    assert control.queued_by_owner() == {}
    assert owner_metric(app, ALICE) is None
    assert control.queue.turns() == []


def test_a_cancelled_waiting_run_never_runs(app: Flask):
    control = runs_of(app)
    store = control.store
    start(control, ALICE, "a1", "a2", "a3")
    control.cancel(ALICE, "a3")
    # The monitor drops its place in the line at its next look...
    monitor_of(control).check_turns()
    assert [turn[1] for turn in control.queue.turns()] == ["a1", "a2"]
    control.cancel(ALICE, "a2")  # ...and one cancelled after its turn came never starts
    work_the_queue(app)
    assert store.get(ALICE, "a1").state["status"] == "completed"
    for name in ("a2", "a3"):
        state = store.get(ALICE, name).state
        assert state["status"] == "cancelled"
        assert state["run"].get("started_at") is None
        assert "attempts" not in state["steps"][0]
    assert control.queue.turns() == []


def test_a_turn_whose_worker_died_after_the_run_ended_is_handed_on(app: Flask):
    control = runs_of(app)
    store = control.store
    start(control, ALICE, "a1", "a2", "a3")
    control.queue.queue.empty()
    # A worker ran a1 to its end and was killed before it handed its turn on.
    fence = runs.fence_of(store.get(ALICE, "a1").state)
    assert fence is not None
    store.claim_run(ALICE, "a1", fence, "dead:1", lease=2)
    store.advance_run(ALICE, "a1", fence, 0, "in_progress")
    store.advance_run(ALICE, "a1", fence, 0, "completed")
    assert store.get(ALICE, "a1").state["status"] == "completed"
    monitor_of(control).check_turns()
    assert jobs(control) == [job_id(ALICE, "a3", runs.fence_of(store.get(ALICE, "a3").state))]
    assert sorted(t[1] for t in control.queue.turns() if not t[3]) == ["a2", "a3"]


def test_a_run_taken_over_keeps_its_turn(app: Flask):
    control = runs_of(app)
    store = control.store
    start(control, ALICE, "a1", "a2", "a3")
    control.queue.queue.empty()  # a worker took a1's and a2's jobs...
    fence = runs.fence_of(store.get(ALICE, "a1").state)
    claimed = store.claim_run(ALICE, "a1", fence, "dead:1", lease=0.05).state
    control.observer.leased(ALICE, "a1", runs.lease_deadline(claimed))
    time.sleep(0.06)  # ...and died running a1
    assert monitor_of(control).tick() == 1
    taken = runs.fence_of(store.get(ALICE, "a1").state)
    assert taken is not None and taken.attempt == 2
    # a1 runs again under its turn; a3 still waits (a2 holds the other turn).
    assert jobs(control) == [job_id(ALICE, "a1", taken)]
    held = {t[1]: t[2] for t in control.queue.turns() if not t[3]}
    assert held == {"a1": taken, "a2": runs.fence_of(store.get(ALICE, "a2").state)}
    # The waiting run's claim deadline is pushed, not taken over, however long it waits.
    assert monitor_of(control).check(ALICE, "a3", later(3600)) == 0


def test_two_processes_racing_never_admit_more_than_the_limit(app: Flask):
    control = runs_of(app)
    store = control.store
    names = [f"r{n}" for n in range(24)]
    for name in names:
        store.create(ALICE, {"workflow_id": name, "steps": plan(None)})
        store.request_run(ALICE, name, lease=60)
    keys = Keys(app.config["STATE_PREFIX"])
    # Each thread stands for a process with a RunQueue of its own.
    queues = [RunQueue(control.queue.connection, keys, per_owner=3) for _ in range(4)]
    barrier = threading.Barrier(len(queues))

    def admit(queue: RunQueue, mine: list[str]) -> None:
        barrier.wait()
        for name in mine:
            queue.dispatch(ALICE, name, runs.fence_of(store.get(ALICE, name).state))

    threads = [
        threading.Thread(target=admit, args=(queue, names[n :: len(queues)]))
        for n, queue in enumerate(queues)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(jobs(control)) == 3
    assert sum(1 for turn in control.queue.turns() if turn[3]) == 21


def test_without_a_limit_no_turns_are_kept(request: pytest.FixtureRequest, tmp_path: Any):
    app = turns_app("fakeredis", request, tmp_path, 0)
    try:
        control = runs_of(app)
        start(control, ALICE, "a1", "a2", "a3")
        assert len(jobs(control)) == 3
        assert control.queue.connection.keys("workflow:runs:*") == []
        assert control.queued_by_owner() == {ALICE: 3}
    finally:
        runs_of(app).close()
        store_of(app).close()
