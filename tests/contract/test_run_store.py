"""The run writes of the storage interface (DESIGN section 2), on every backend: each is one
locked write under the rules of service/runs.py, fenced on the run's attempt; client writes
neither forge nor drop `run`; a scan finds the active runs and the lapsed ones."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from service import model, runs
from service.storage import StateStore
from tests.support import wait_until
from tests.support.runs import OWNER, fence, later, open_test_store, plan

LEASE = 30.0


@pytest.fixture
def store(backend: dict[str, Any]) -> Iterator[StateStore]:
    opened = open_test_store(backend)
    yield opened
    opened.close()


def queued(store: StateStore, workflow_id: str = "wf", steps: int = 3) -> dict[str, Any]:
    store.create(OWNER, {"workflow_id": workflow_id, "steps": plan(*[None] * steps)})
    return store.request_run(OWNER, workflow_id, lease=LEASE).state


def claimed(store: StateStore, workflow_id: str = "wf", lease: float = LEASE) -> dict[str, Any]:
    attempt = queued(store, workflow_id)["run"]["attempt"]
    return store.claim_run(
        OWNER, workflow_id, fence(store, attempt, workflow_id), "host:1", lease=lease
    ).state


def test_a_run_goes_from_queued_to_done_through_fenced_writes(store: StateStore):
    state = queued(store)
    assert state["run"]["status"] == "queued" and state["run"]["attempt"] == 1
    with pytest.raises(runs.RunActive):
        store.request_run(OWNER, "wf", lease=LEASE)
    state = store.claim_run(OWNER, "wf", fence(store, 1), "host:1", lease=LEASE).state
    assert (state["run"]["status"], state["run"]["runner"]) == ("running", "host:1")
    state = store.runner_step(OWNER, "wf", fence(store, 1), 0, "in_progress").state
    assert state["steps"][0] == {**state["steps"][0], "status": "in_progress", "attempts": 1}
    state = store.runner_step(OWNER, "wf", fence(store, 1), 0, "completed", {"host": "gpu"}).state
    assert state["steps"][0]["data"] == {"host": "gpu"}
    before = state["run"]["lease_expires"]
    time.sleep(0.002)
    assert (
        store.renew_lease(OWNER, "wf", fence(store, 1), lease=LEASE).state["run"]["lease_expires"]
        > before
    )
    for index in (1, 2):
        store.runner_step(OWNER, "wf", fence(store, 1), index, "in_progress")
        store.runner_step(OWNER, "wf", fence(store, 1), index, "completed")
    state = store.finish_run(OWNER, "wf", fence(store, 1), "completed").state
    assert (state["status"], state["run"]["status"]) == ("completed", "done")
    assert store.get(OWNER, "wf").state == state


def test_a_write_naming_another_attempt_changes_nothing(store: StateStore):
    state = claimed(store)
    for write in (
        lambda: store.claim_run(OWNER, "wf", fence(store, 2), "host:2", lease=LEASE),
        lambda: store.renew_lease(OWNER, "wf", fence(store, 2), lease=LEASE),
        lambda: store.runner_step(OWNER, "wf", fence(store, 2), 0, "in_progress"),
        lambda: store.finish_run(OWNER, "wf", fence(store, 0), "failed"),
        lambda: store.release_run(OWNER, "wf", fence(store, 2), lease=LEASE),
        # The attempt that holds the run cannot claim it twice.
        lambda: store.claim_run(OWNER, "wf", fence(store, 1), "host:2", lease=LEASE),
    ):
        with pytest.raises(runs.RunSuperseded):
            write()
    assert store.get(OWNER, "wf").state == state


def test_a_takeover_happens_once_and_only_after_the_lease(store: StateStore):
    claimed(store, lease=1.0)
    store.runner_step(OWNER, "wf", fence(store, 1), 0, "in_progress")
    assert store.take_over(OWNER, "wf", fence(store, 1), lease=LEASE) is None  # the lease is live
    taken = wait_until(
        lambda: store.take_over(OWNER, "wf", fence(store, 1), lease=LEASE), timeout=5
    )
    deadline = model.parse_time(store.get(OWNER, "wf").state["run"]["heartbeat"])
    assert taken.state["last_update"] >= model.format_time(deadline + timedelta(seconds=1))
    run = taken.state["run"]
    assert (run["attempt"], run["status"], run["runner"]) == (2, "queued", None)
    assert (
        store.take_over(OWNER, "wf", fence(store, 1), lease=LEASE) is None
    )  # another monitor was first
    with pytest.raises(runs.RunSuperseded):  # the old runner wakes up
        store.runner_step(OWNER, "wf", fence(store, 1), 0, "completed")
    store.claim_run(OWNER, "wf", fence(store, 2), "host:2", lease=LEASE)
    state = store.runner_step(OWNER, "wf", fence(store, 2), 0, "in_progress").state
    assert state["steps"][0]["attempts"] == 2  # the interrupted step runs again, counted


def test_a_released_run_is_queued_as_the_next_attempt(store: StateStore):
    claimed(store)
    state = store.release_run(OWNER, "wf", fence(store, 1), lease=0.0).state
    assert (state["run"]["attempt"], state["run"]["status"]) == (2, "queued")
    with pytest.raises(runs.RunSuperseded):
        store.renew_lease(OWNER, "wf", fence(store, 1), lease=LEASE)


def test_cancel_ends_the_run_and_the_runner_is_refused(store: StateStore):
    claimed(store)
    store.runner_step(OWNER, "wf", fence(store, 1), 0, "in_progress")
    state = store.cancel(OWNER, "wf").state
    assert state["status"] == "cancelled"
    assert state["steps"][0]["status"] == "cancelled"
    assert state["run"]["status"] == "done"
    with pytest.raises(runs.RunSuperseded):
        store.runner_step(OWNER, "wf", fence(store, 1), 0, "completed")
    assert store.cancel(OWNER, "wf").state == state  # again: nothing changes
    store.create(OWNER, {"workflow_id": "done", "status": "completed"})
    with pytest.raises(model.WorkflowFinished):
        store.cancel(OWNER, None)  # the current workflow
    with pytest.raises(model.NoWorkflow):
        store.cancel(OWNER, "nope")


def test_clients_neither_forge_nor_drop_a_run(store: StateStore):
    forged = {"attempt": 7, "runner": "me:1", "heartbeat": "x", "lease_expires": "y", "status": "x"}
    made = store.create(OWNER, {"workflow_id": "new", "steps": plan(None), "run": forged}).state
    assert "run" not in made
    saved = store.save(OWNER, {"workflow_id": "saved", "steps": plan(None), "run": True}).state
    assert "run" not in saved
    state = claimed(store)
    run = state["run"]
    # A whole-state POST of the same workflow, a merge and a step PATCH keep the stored run.
    assert store.save(OWNER, {"workflow_id": "wf", "steps": plan(None, None)}).state["run"] == run
    assert store.merge(OWNER, "wf", {"note": 1, "run": forged}).state["run"] == run
    assert store.merge(OWNER, "wf", {"run": None}).state["run"] == run
    patched = store.update_step(OWNER, "wf", 0, {"status": "completed"}).state
    assert patched["run"] == run
    # Finished is final: repeating a finished state without its run is accepted as a repeat.
    done = store.merge(OWNER, "wf", {"status": "cancelled"}).state
    repeat = {k: v for k, v in done.items() if k not in ("run", "version", "last_update")}
    assert store.save(OWNER, repeat).state == done


def test_create_can_queue_a_run_in_the_same_write(store: StateStore):
    state = store.create(OWNER, {"workflow_id": "wf", "steps": plan(None)}, run_lease=LEASE).state
    assert state["run"]["status"] == "queued" and state["run"]["attempt"] == 1


def test_the_scan_finds_active_runs_and_the_lapsed_ones(store: StateStore):
    claimed(store, "running-live")
    claimed(store, "running-lapsed", lease=0.01)
    queued(store, "waiting")
    store.create("bob", {"workflow_id": "no-run", "steps": plan(None)})
    store.create("bob", {"workflow_id": "done", "status": "completed"})
    time.sleep(0.02)
    active = {(due.owner, due.workflow_id, due.status) for due in store.active_runs()}
    assert active == {
        (OWNER, "running-live", "running"),
        (OWNER, "running-lapsed", "running"),
        (OWNER, "waiting", "queued"),
    }
    assert [due.workflow_id for due in store.runs_due(later(0))] == ["running-lapsed"]
    assert {due.workflow_id for due in store.runs_due(later(LEASE + 1))} == {
        "running-live",
        "running-lapsed",
        "waiting",
    }
    assert store.active_runs(["bob"]) == []
