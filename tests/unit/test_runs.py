"""The rules of a server run (contract section 9), as pure functions over plain states."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service import create_app, model, runs
from service.errors import STATUS_BY_ERROR
from service.model import InvalidIndex, NoWorkflow, WorkflowFinished, format_time, parse_time
from service.runs import Fence

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
LEASE = 15.0
RUNNER = "host-a:101"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def workflow(statuses: tuple[str, ...] = ("pending", "pending", "pending")) -> dict[str, Any]:
    return {
        "workflow_id": "wf-1",
        "status": "running",
        "current_step": 0,
        "steps": [{"action": f"a{i}", "status": s} for i, s in enumerate(statuses)],
        "start_time": format_time(T0),
        "last_update": format_time(T0),
        "version": 7,
    }


def claimed(state: dict[str, Any] | None = None, now: float = 1) -> dict[str, Any]:
    """A workflow whose run attempt 1 was requested at T0 and claimed by RUNNER at `now`."""
    queued = runs.request_run(state or workflow(), now=T0, lease=LEASE)
    return runs.claim_run(queued, Fence(0, 1), RUNNER, now=at(now), lease=LEASE)


# --- request ------------------------------------------------------------------------------------


def test_request_queues_attempt_one_with_a_lease():
    state = workflow()
    before = copy.deepcopy(state)
    new = runs.request_run(state, now=T0, lease=LEASE)
    assert state == before  # the stored state is never changed in place
    assert new["status"] == "running"
    assert new["run"] == {
        "attempt": 1,
        "runner": None,
        "heartbeat": format_time(T0),
        "lease_expires": format_time(at(LEASE)),
        "status": "queued",
        "takeovers": 0,
        "queued_at": format_time(T0),
        "started_at": None,
        "failures": 0,
        "interruptions": 0,
        "call": None,
    }
    assert new["last_update"] == format_time(T0)
    assert runs.run_in_progress(new) and not runs.run_resumed(new)


def test_request_refuses_while_a_run_holds_a_live_lease():
    queued = runs.request_run(workflow(), now=T0, lease=LEASE)
    with pytest.raises(runs.RunActive) as refused:
        runs.request_run(queued, now=at(LEASE - 0.001), lease=LEASE)
    assert refused.value.code == "run_active"
    running = runs.claim_run(queued, Fence(0, 1), RUNNER, now=at(10), lease=LEASE)
    with pytest.raises(runs.RunActive):
        runs.request_run(running, now=at(20), lease=LEASE)  # renewed at 10: live until 25


def test_request_over_a_lapsed_run_takes_the_next_attempt():
    running = claimed(now=1)
    again = runs.request_run(running, now=at(1 + LEASE), lease=LEASE)
    assert again["run"]["attempt"] == 2 and again["run"]["status"] == "queued"
    assert again["run"]["runner"] is None
    assert runs.run_resumed(again)


def test_request_refuses_finished_and_missing_workflows():
    for status in ("completed", "failed", "cancelled"):
        with pytest.raises(WorkflowFinished):
            runs.request_run({**workflow(), "status": status}, now=T0, lease=LEASE)
    with pytest.raises(NoWorkflow):
        runs.request_run(None, now=T0, lease=LEASE)


def test_errors_answer_409_with_their_codes(tmp_path: Path):
    assert STATUS_BY_ERROR[runs.RunActive] == 409
    assert STATUS_BY_ERROR[runs.RunSuperseded] == 409
    app = create_app({"STATE_URL": f"file://{tmp_path}/state.json"})

    @app.get("/raise/<kind>")
    def _raise(kind: str) -> None:
        raise {"active": runs.RunActive, "superseded": runs.RunSuperseded}[kind]("told you")

    for kind, code in (("active", "run_active"), ("superseded", "run_superseded")):
        answer = app.test_client().get(f"/raise/{kind}")
        assert answer.status_code == 409
        assert answer.get_json() == {"success": False, "message": "told you", "error": code}


# --- claim and renew ----------------------------------------------------------------------------


def test_claim_makes_the_runner_hold_a_fresh_lease():
    state = claimed(now=3)
    assert {key: state["run"][key] for key in ("runner", "heartbeat", "started_at")} == {
        "runner": RUNNER,
        "heartbeat": format_time(at(3)),
        "started_at": format_time(at(3)),
    }
    assert state["run"]["attempt"] == 1 and state["run"]["status"] == "running"
    assert state["run"]["lease_expires"] == format_time(at(3 + LEASE))


def test_claim_needs_the_queued_attempt():
    queued = runs.request_run(workflow(), now=T0, lease=LEASE)
    with pytest.raises(runs.RunSuperseded) as refused:
        runs.claim_run(queued, Fence(0, 2), RUNNER, now=T0, lease=LEASE)
    assert refused.value.code == "run_superseded"


def test_a_claimed_attempt_is_never_claimed_twice_even_after_its_lease_lapsed():
    running = claimed(now=1)
    for when in (2, 1 + LEASE + 60):
        with pytest.raises(runs.RunSuperseded, match="already claimed by host-a:101"):
            runs.claim_run(running, Fence(0, 1), "host-b:202", now=at(when), lease=LEASE)


def test_renew_extends_the_lease_and_records_the_heartbeat():
    state = runs.renew_lease(claimed(now=1), Fence(0, 1), now=at(6), lease=LEASE)
    assert state["run"]["heartbeat"] == format_time(at(6))
    assert state["run"]["lease_expires"] == format_time(at(6 + LEASE))
    assert state["run"]["runner"] == RUNNER


def test_renew_after_the_lease_lapsed_is_accepted_while_nobody_took_over():
    late = runs.renew_lease(claimed(now=1), Fence(0, 1), now=at(40), lease=LEASE)
    assert runs.lease_live(late, at(41))


def test_a_queued_run_can_be_renewed_but_not_written_to_before_its_claim():
    queued = runs.request_run(workflow(), now=T0, lease=LEASE)
    pushed = runs.renew_lease(queued, Fence(0, 1), now=at(14), lease=LEASE)
    assert pushed["run"]["status"] == "queued"
    assert pushed["run"]["lease_expires"] == format_time(at(14 + LEASE))
    with pytest.raises(runs.RunSuperseded, match="has not been claimed"):
        runs.runner_step(queued, Fence(0, 1), 0, "in_progress", now=at(1))
    with pytest.raises(runs.RunSuperseded, match="has not been claimed"):
        runs.finish_run(queued, Fence(0, 1), "failed", now=at(1))


def test_renew_interval_is_a_third_of_the_lease():
    assert runs.renew_interval(15) == 5
    assert runs.renew_interval(0.3) == pytest.approx(0.1)


# --- a runner's writes -------------------------------------------------------------------------


def test_starting_a_step_makes_it_current_and_counts_the_attempt():
    state = runs.runner_step(claimed(), Fence(0, 1), 1, "in_progress", now=at(2))
    assert state["current_step"] == 1
    assert state["steps"][1] == {"action": "a1", "status": "in_progress", "attempts": 1}
    assert state["last_update"] == format_time(at(2))


def test_completing_a_step_stores_its_data():
    started = runs.runner_step(claimed(), Fence(0, 1), 0, "in_progress", now=at(2))
    done = runs.runner_step(started, Fence(0, 1), 0, "completed", {"host": "gpu-7"}, now=at(3))
    assert done["steps"][0] == {
        "action": "a0",
        "status": "completed",
        "attempts": 1,
        "data": {"host": "gpu-7"},
    }
    assert done["status"] == "running" and done["run"]["status"] == "running"


def test_a_failed_step_fails_the_workflow_and_ends_the_run_in_one_write():
    started = runs.runner_step(claimed(), Fence(0, 1), 2, "in_progress", now=at(2))
    failed = runs.runner_step(started, Fence(0, 1), 2, "failed", {"message": "no route"}, now=at(3))
    assert failed["steps"][2]["status"] == "failed"
    assert failed["steps"][2]["data"] == {"message": "no route"}
    assert failed["status"] == "failed"
    assert failed["run"]["status"] == "done"
    assert not runs.run_in_progress(failed)


def test_finish_completes_only_when_every_step_is_settled():
    state = claimed(workflow(("completed", "skipped", "pending")))
    with pytest.raises(ValueError, match=r"steps \[2\]"):
        runs.finish_run(state, Fence(0, 1), "completed", now=at(2))
    state = runs.runner_step(state, Fence(0, 1), 2, "in_progress", now=at(2))
    state = runs.runner_step(state, Fence(0, 1), 2, "completed", now=at(3))
    done = runs.finish_run(state, Fence(0, 1), "completed", now=at(4))
    assert done["status"] == "completed"
    assert done["run"]["status"] == "done" and done["run"]["attempt"] == 1
    assert not runs.run_in_progress(done)


def test_a_runner_may_not_run_a_settled_step_again():
    state = claimed(workflow(("completed", "skipped", "pending")))
    for index in (0, 1):
        with pytest.raises(InvalidIndex):
            runs.runner_step(state, Fence(0, 1), index, "in_progress", now=at(2))
    with pytest.raises(InvalidIndex):
        runs.runner_step(state, Fence(0, 1), 3, "in_progress", now=at(2))


def test_runner_writes_take_only_runner_statuses_and_object_data():
    with pytest.raises(ValueError):
        runs.runner_step(claimed(), Fence(0, 1), 0, "skipped", now=at(2))
    with pytest.raises(ValueError):
        runs.runner_step(claimed(), Fence(0, 1), 0, "completed", ["not", "an", "object"], now=at(2))
    with pytest.raises(ValueError):
        runs.finish_run(claimed(), Fence(0, 1), "cancelled", now=at(2))


def superseded_writes(state: dict[str, Any], attempt: int) -> list[Any]:
    """Every write a runner holding `attempt` can make, as thunks."""
    return [
        lambda: runs.claim_run(state, Fence(0, attempt), RUNNER, now=at(50), lease=LEASE),
        lambda: runs.renew_lease(state, Fence(0, attempt), now=at(50), lease=LEASE),
        lambda: runs.runner_step(state, Fence(0, attempt), 0, "in_progress", now=at(50)),
        lambda: runs.runner_step(state, Fence(0, attempt), 0, "completed", {"x": 1}, now=at(50)),
        lambda: runs.runner_step(
            state, Fence(0, attempt), 0, "failed", {"message": "m"}, now=at(50)
        ),
        lambda: runs.finish_run(state, Fence(0, attempt), "failed", now=at(50)),
        lambda: runs.finish_run(state, Fence(0, attempt), "completed", now=at(50)),
    ]


def test_a_superseded_runner_changes_nothing():
    # Runner 1 started step 0, then paused past its lease; the monitor took over (attempt 2)
    # and runner 2 claimed it and started the step again.
    state = runs.runner_step(claimed(now=1), Fence(0, 1), 0, "in_progress", now=at(2))
    state = runs.take_over(state, Fence(0, 1), now=at(1 + LEASE), lease=LEASE)
    state = runs.claim_run(state, Fence(0, 2), "host-b:202", now=at(17), lease=LEASE)
    state = runs.runner_step(state, Fence(0, 2), 0, "in_progress", now=at(18))
    frozen = copy.deepcopy(state)
    for write in superseded_writes(state, attempt=1):
        with pytest.raises(runs.RunSuperseded, match="superseded by attempt 2"):
            write()
    assert state == frozen
    assert state["steps"][0]["attempts"] == 2


def test_writes_after_the_run_ended_are_refused_as_superseded():
    cancelled = runs.cancel(
        runs.runner_step(claimed(), Fence(0, 1), 0, "in_progress", now=at(2)), now=at(3)
    )
    legacy = {**claimed(), "status": "cancelled"}  # PATCH {"status": "cancelled"} leaves run as is
    for state in (cancelled, legacy):
        frozen = copy.deepcopy(state)
        for write in superseded_writes(state, attempt=1):
            with pytest.raises(runs.RunSuperseded, match="has ended: the workflow is cancelled"):
                write()
        assert state == frozen


def test_writes_to_a_workflow_without_a_run_or_gone_are_refused_as_superseded():
    for state in (workflow(), None):
        for write in superseded_writes(state, attempt=1):
            with pytest.raises(runs.RunSuperseded):
                write()


# --- cancel -------------------------------------------------------------------------------------


def test_cancel_stops_the_running_step_the_workflow_and_the_run():
    state = runs.runner_step(claimed(), Fence(0, 1), 1, "in_progress", now=at(2))
    new = runs.cancel(state, now=at(3))
    assert [s["status"] for s in new["steps"]] == ["pending", "cancelled", "pending"]
    assert new["status"] == "cancelled"
    assert new["run"]["status"] == "done" and new["run"]["attempt"] == 1
    assert new["last_update"] == format_time(at(3))
    assert not runs.run_in_progress(new)


def test_cancel_of_a_queued_run_and_of_a_workflow_without_one():
    queued = runs.cancel(runs.request_run(workflow(), now=T0, lease=LEASE), now=at(1))
    assert queued["status"] == "cancelled" and queued["run"]["status"] == "done"
    plain = runs.cancel({**workflow(("completed", "in_progress", "pending"))}, now=at(1))
    assert plain["status"] == "cancelled" and "run" not in plain
    assert [s["status"] for s in plain["steps"]] == ["completed", "cancelled", "pending"]


def test_cancel_is_idempotent_and_finished_is_final():
    once = runs.cancel(claimed(), now=at(2))
    assert runs.cancel(once, now=at(3)) is None
    for status in ("completed", "failed"):
        with pytest.raises(WorkflowFinished):
            runs.cancel({**workflow(), "status": status}, now=at(2))
    with pytest.raises(NoWorkflow):
        runs.cancel(None, now=at(2))


# --- take over ----------------------------------------------------------------------------------


def test_take_over_requeues_the_next_attempt_and_the_step_counts_its_second_run():
    state = runs.runner_step(claimed(now=1), Fence(0, 1), 0, "in_progress", now=at(2))
    state = runs.runner_step(state, Fence(0, 1), 0, "completed", now=at(3))
    state = runs.runner_step(state, Fence(0, 1), 1, "in_progress", now=at(4))
    assert (
        runs.take_over(state, Fence(0, 1), now=at(1 + LEASE - 0.001), lease=LEASE) is None
    )  # live
    taken = runs.take_over(state, Fence(0, 1), now=at(1 + LEASE), lease=LEASE)
    shown = ("attempt", "runner", "heartbeat", "lease_expires", "status", "takeovers")
    assert {key: taken["run"][key] for key in shown} == {
        "attempt": 2,
        "runner": None,
        "heartbeat": format_time(at(1)),  # when the lost runner was last heard of
        "lease_expires": format_time(at(1 + 2 * LEASE)),
        "status": "queued",
        "takeovers": 1,
    }
    assert taken["run"]["interruptions"] == 1  # step 1's call was cut off
    assert taken["steps"][1]["status"] == "in_progress"  # until it is run again
    assert runs.run_resumed(taken) and runs.run_in_progress(taken)
    assert runs.remaining_steps(taken) == [1, 2]
    resumed = runs.claim_run(taken, Fence(0, 2), "host-b:202", now=at(17), lease=LEASE)
    resumed = runs.runner_step(resumed, Fence(0, 2), 1, "in_progress", now=at(18))
    assert resumed["steps"][1]["attempts"] == 2
    assert resumed["steps"][0] == {"action": "a0", "status": "completed", "attempts": 1}


def test_take_over_of_a_queued_run_nobody_claimed():
    queued = runs.request_run(workflow(), now=T0, lease=LEASE)
    taken = runs.take_over(queued, Fence(0, 1), now=at(LEASE), lease=LEASE)
    assert taken["run"]["attempt"] == 2 and taken["run"]["status"] == "queued"


def test_take_over_is_a_no_op_once_the_run_moved_on():
    state = claimed(now=1)
    late = at(1 + LEASE)
    first = runs.take_over(state, Fence(0, 1), now=late, lease=LEASE)
    assert runs.take_over(first, Fence(0, 1), now=late, lease=LEASE) is None  # a second monitor
    assert runs.take_over(runs.cancel(state, now=at(2)), Fence(0, 1), now=late, lease=LEASE) is None
    assert runs.take_over({**state, "status": "failed"}, Fence(0, 1), now=late, lease=LEASE) is None
    assert runs.take_over(workflow(), Fence(0, 1), now=late, lease=LEASE) is None
    assert runs.take_over(None, Fence(0, 1), now=late, lease=LEASE) is None
    renewed = runs.renew_lease(state, Fence(0, 1), now=at(10), lease=LEASE)
    assert runs.take_over(renewed, Fence(0, 1), now=late, lease=LEASE) is None


def test_take_over_fails_a_step_interrupted_too_often():
    state = claimed(now=1)
    for attempt in (1, 2, 3):
        if attempt > 1:
            state = runs.claim_run(
                state, Fence(0, attempt), RUNNER, now=at(100 * attempt), lease=LEASE
            )
        state = runs.runner_step(
            state, Fence(0, attempt), 0, "in_progress", now=at(100 * attempt + 1)
        )
        limited = runs.take_over(
            state, Fence(0, attempt), now=at(100 * attempt + 50), lease=LEASE, max_step_attempts=3
        )
        if attempt < 3:
            assert limited["run"]["status"] == "queued"
            state = limited
    assert limited["status"] == "failed"
    assert limited["steps"][0]["status"] == "failed"
    assert "interrupted 3 times" in limited["steps"][0]["data"]["message"]
    assert limited["run"]["status"] == "done" and limited["run"]["attempt"] == 4
    assert not runs.run_in_progress(limited)


# --- facts --------------------------------------------------------------------------------------


def test_remaining_steps_are_the_unsettled_ones_in_order():
    state = workflow(("completed", "failed", "skipped", "in_progress", "pending", "cancelled"))
    assert runs.remaining_steps(state) == [1, 3, 4, 5]
    assert runs.remaining_steps(workflow(("completed", "skipped"))) == []


def test_lease_facts_for_the_monitor():
    state = claimed(now=1)
    assert runs.lease_deadline(state) == parse_time(format_time(at(1 + LEASE)))
    assert runs.lease_live(state, at(1 + LEASE - 0.01))
    assert not runs.lease_expired(state, at(1 + LEASE - 0.01))
    assert runs.lease_expired(state, at(1 + LEASE)) and not runs.lease_live(state, at(1 + LEASE))
    # No active run: nothing is live, nothing is due.
    for other in (workflow(), runs.cancel(state, now=at(2)), None):
        assert runs.lease_deadline(other) is None
        assert not runs.lease_live(other, at(2)) and not runs.lease_expired(other, at(2))
    # A run whose deadline cannot be read is due at once rather than stuck forever.
    broken = {**state, "run": {**state["run"], "lease_expires": "whenever"}}
    assert runs.lease_expired(broken, T0)


def test_page_facts():
    assert not runs.run_in_progress(None) and not runs.run_resumed(None)
    assert not runs.run_in_progress(workflow()) and not runs.run_resumed(workflow())
    running = claimed()
    assert runs.run_in_progress(running) and not runs.run_resumed(running)
    legacy_cancel = {**running, "status": "cancelled"}
    assert not runs.run_in_progress(legacy_cancel)


def test_a_client_write_keeps_the_stored_run_whatever_it_sends():
    stored = claimed()
    forged = {**workflow(), "run": {"attempt": 99, "status": "done"}}
    assert model.keep_run_fields(stored, forged)["run"] == stored["run"]
    assert "run" not in model.keep_run_fields(workflow(), forged)
    assert "run" not in model.keep_run_fields(None, forged)
    other = {**forged, "workflow_id": "wf-2"}
    assert "run" not in model.keep_run_fields(stored, other)  # a new workflow starts without
