"""Runs that ask, report and recover, as pure rules (service/runs.py, service/model.py): retry
backoff and its wait, a blocked step and the person's answer, a retry after a failure, takeovers
and interruptions, progress reports fenced by their call's token, the run fields a client never
writes, the person-facing percent and how long a failed workflow is kept."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from service import create_app, model, runs
from service.model import InvalidInput, NotBlocked, NotFailed, NoWorkflow, format_time
from service.runs import Fence, ProgressRefused, RunSuperseded
from tests.unit.test_runs import LEASE, RUNNER, T0, at
from tests.unit.test_runs import workflow as base_workflow

OWNER = "public"
SECRET = "hunter2-SECRET"
QUESTION = {
    "message": "Trust host key?",
    "input": [
        {"name": "trust", "type": "boolean"},
        {"name": "password", "label": "Password", "type": "secret"},
        {"name": "region", "type": "choice", "choices": ["eu", "us"]},
        {"name": "note", "type": "text", "required": False},
    ],
}
ANSWER = {"trust": True, "password": SECRET, "region": "eu"}


def workflow(*statuses: str) -> dict[str, Any]:
    return base_workflow(statuses)


def calling(
    state: dict[str, Any] | None = None, *, attempt: int = 1, now: float = 1, token: str = "t"
) -> dict[str, Any]:
    """Queue (attempt 1) or take the queued run `attempt`, claim it and start its first
    remaining step, whose progress token hashes to token_hash(`token`)."""
    if state is None:
        state = runs.request_run(workflow("pending", "pending"), now=T0, lease=LEASE)
    fence = Fence(0, attempt)
    state = runs.claim_run(state, fence, RUNNER, now=at(now), lease=LEASE)
    index = runs.remaining_steps(state)[0]
    return runs.runner_step(
        state, fence, index, "in_progress", now=at(now), token_hash=runs.token_hash(token)
    )


# --- retry_delay ---------------------------------------------------------------------------------


def test_the_wait_doubles_after_each_failed_call_until_max_attempts():
    policy = {"max_attempts": 5, "backoff_seconds": 2, "max_backoff_seconds": 300}
    waits = [runs.retry_delay(policy, failures, 0.0) for failures in range(1, 6)]
    assert waits == [2, 4, 8, 16, None]


def test_the_wait_is_capped_by_max_backoff_seconds():
    policy = {"max_attempts": 10, "backoff_seconds": 100, "max_backoff_seconds": 150}
    assert [runs.retry_delay(policy, k, 0.0) for k in (1, 2, 3, 9)] == [100, 150, 150, 150]
    assert runs.retry_delay(policy, 10, 0.0) is None


@pytest.mark.parametrize("jitter", [-1.0, -0.5, 0.0, 0.37, 1.0])
def test_jitter_moves_the_wait_by_at_most_ten_percent(jitter: float):
    policy = {"max_attempts": 4, "backoff_seconds": 10}
    for failures, base in ((1, 10), (2, 20), (3, 40)):
        wait = runs.retry_delay(policy, failures, jitter)
        assert wait is not None
        assert base * 0.9 - 1e-9 <= wait <= base * 1.1 + 1e-9
        assert wait == pytest.approx(base * (1 + 0.1 * jitter))


def test_the_defaults_make_one_call_and_back_off_two_seconds():
    assert runs.retry_delay(None, 1, 0.0) is None
    assert runs.retry_delay({}, 1, 0.0) is None
    assert runs.retry_delay({"max_attempts": 3}, 1, 0.0) == 2
    assert runs.retry_delay({"max_attempts": 3}, 2, 0.0) == 4
    assert runs.retry_delay({"max_attempts": 3}, 3, 0.0) is None
    # backoff 0: called again at once, never a negative wait.
    assert runs.retry_delay({"max_attempts": 2, "backoff_seconds": 0}, 1, -1.0) == 0


# --- schedule_retry and wake_run -----------------------------------------------------------------


def waiting(now: float = 5, wait: float = 4) -> dict[str, Any]:
    return runs.schedule_retry(calling(), Fence(0, 1), 0, "disk full", now=at(now), wait=wait)


def test_a_failed_call_to_be_made_again_leaves_the_run_waiting_without_a_runner():
    state = waiting()
    run, step = state["run"], state["steps"][0]
    assert state["status"] == "running"
    assert (run["status"], run["runner"], run["failures"]) == ("waiting", None, 1)
    assert step["status"] == "in_progress"
    assert step["retry_at"] == format_time(at(9))
    assert step["data"] == {"message": "disk full"}
    assert run["lease_expires"] == step["retry_at"]
    assert runs.run_in_progress(state)
    assert runs.lease_live(state, at(8.9)) and runs.lease_expired(state, at(9))
    # The call ended: nothing holds the step's progress token any more.
    assert not run["call"]["token"]


def test_only_a_claimed_run_schedules_a_retry_of_a_running_step():
    queued = runs.request_run(workflow("pending"), now=T0, lease=LEASE)
    with pytest.raises(RunSuperseded):
        runs.schedule_retry(queued, Fence(0, 1), 0, "x", now=at(1), wait=1)
    with pytest.raises(RunSuperseded):
        runs.schedule_retry(calling(), Fence(0, 2), 0, "x", now=at(1), wait=1)


def test_a_waiting_run_is_woken_only_when_due_and_only_once():
    state = waiting()
    assert runs.wake_run(state, Fence(0, 1), now=at(8.99), lease=LEASE) is None
    woken = runs.wake_run(state, Fence(0, 1), now=at(9), lease=LEASE)
    assert woken is not None
    run = woken["run"]
    assert (run["attempt"], run["status"], run["runner"]) == (2, "queued", None)
    assert run["lease_expires"] == format_time(at(9 + LEASE))
    assert run["queued_at"] == format_time(at(9)) and run["started_at"] is None
    assert run["failures"] == 1  # the retry budget of this run goes on
    assert run["takeovers"] == 0 and not runs.run_resumed(woken)
    # Once: the same fence, or the new queued one, wakes nothing more.
    assert runs.wake_run(woken, Fence(0, 1), now=at(30), lease=LEASE) is None
    assert runs.wake_run(woken, Fence(0, 2), now=at(30), lease=LEASE) is None
    # A due retry is woken, never taken over as an interruption.
    assert runs.take_over(state, Fence(0, 1), now=at(30), lease=LEASE) is None


def test_the_woken_run_calls_the_same_step_again_counting_its_attempts_and_failures():
    woken = runs.wake_run(waiting(), Fence(0, 1), now=at(9), lease=LEASE)
    again = calling(woken, attempt=2, now=10)
    step = again["steps"][0]
    assert (step["status"], step["attempts"]) == ("in_progress", 2)
    assert "retry_at" not in step and "data" not in step
    assert again["run"]["failures"] == 1
    second = runs.schedule_retry(again, Fence(0, 2), 0, "still full", now=at(11), wait=8)
    assert second["run"]["failures"] == 2
    failed = runs.note_failure(
        calling(runs.wake_run(second, Fence(0, 2), now=at(19), lease=LEASE), attempt=3, now=20),
        Fence(0, 3),
        0,
        {"message": "gave up"},
        now=at(21),
    )
    assert failed["status"] == "failed" and failed["run"]["status"] == "done"
    assert failed["steps"][0] == {
        "action": "a0",
        "status": "failed",
        "attempts": 3,
        "data": {"message": "gave up"},
    }


def test_a_cancel_of_a_waiting_run_ends_it_and_drops_retry_at():
    cancelled = runs.cancel(waiting(), now=at(6))
    assert cancelled["status"] == "cancelled" and cancelled["run"]["status"] == "done"
    assert "retry_at" not in cancelled["steps"][0]
    assert runs.wake_run(cancelled, Fence(0, 1), now=at(30), lease=LEASE) is None


# --- block ---------------------------------------------------------------------------------------


def blocked(now: float = 3) -> dict[str, Any]:
    return runs.block(calling(), Fence(0, 1), 0, QUESTION, now=at(now))


def test_a_blocked_answer_blocks_the_step_and_the_workflow_and_ends_the_run():
    state = blocked()
    assert state["status"] == "blocked"
    step = state["steps"][0]
    assert step["status"] == "blocked"
    assert step["blocked"] == {
        "message": "Trust host key?",
        "input": QUESTION["input"],
        "since": format_time(at(3)),
    }
    assert "data" not in step and "retry_at" not in step
    assert state["run"]["status"] == "done" and state["run"]["runner"] is None
    assert not runs.run_in_progress(state) and runs.lease_deadline(state) is None
    assert model.is_active(state) and model.summarize(state)["active"] is True
    assert runs.blocked_step(state) == 0
    # Its runner can write nothing more.
    with pytest.raises(RunSuperseded):
        runs.runner_step(state, Fence(0, 1), 0, "completed", now=at(4))


def test_an_approval_asks_for_no_input():
    state = runs.block(calling(), Fence(0, 1), 0, {"message": "Go?", "input": []}, now=at(3))
    assert state["steps"][0]["blocked"]["input"] == []
    assert runs.check_input(state, {}) == {}
    assert runs.check_input(state, None) == {}


# --- check_input ---------------------------------------------------------------------------------


def test_valid_input_is_returned_and_an_optional_field_may_be_left_out():
    state = blocked()
    assert runs.check_input(state, ANSWER) == ANSWER
    assert runs.check_input(state, {**ANSWER, "note": ""}) == {**ANSWER, "note": ""}
    assert runs.check_input(state, {**ANSWER, "trust": False})["trust"] is False


@pytest.mark.parametrize(
    "given",
    [
        {"trust": True, "region": "eu"},  # required password missing
        {"password": SECRET, "region": "eu"},  # required boolean missing
        {**ANSWER, "password": ""},  # a required text left empty
        {**ANSWER, "bogus": SECRET},  # a name the step did not ask for
        {**ANSWER, "trust": SECRET},  # a boolean given as a string
        {**ANSWER, "trust": 1},
        {**ANSWER, "password": 12345},  # a secret given as a number
        {**ANSWER, "password": True},
        {**ANSWER, "region": SECRET},  # a choice not listed
        {**ANSWER, "region": "EU"},
        {**ANSWER, "note": SECRET * 1000},  # longer than a value may be
        [SECRET],  # not an object
        SECRET,
    ],
)
def test_input_that_does_not_answer_the_fields_is_refused_without_repeating_a_value(given: Any):
    state = blocked()
    before = copy.deepcopy(state)
    with pytest.raises(InvalidInput) as refused:
        runs.check_input(state, given)
    assert refused.value.code == "invalid_input"
    assert SECRET not in refused.value.message and "12345" not in refused.value.message
    with pytest.raises(InvalidInput):
        runs.resume(state, given, now=at(10), lease=LEASE)
    assert state == before


@pytest.mark.parametrize("status", ["running", "completed", "failed", "cancelled"])
def test_input_for_a_workflow_that_does_not_wait_is_not_blocked(status: str):
    state = {**workflow("pending"), "status": status}
    with pytest.raises(NotBlocked) as refused:
        runs.check_input(state, ANSWER)
    assert refused.value.code == "not_blocked"
    with pytest.raises(NotBlocked):
        runs.resume(state, ANSWER, now=at(10), lease=LEASE)
    with pytest.raises(NoWorkflow):
        runs.check_input(None, ANSWER)


# --- resume --------------------------------------------------------------------------------------


def test_a_resume_makes_the_blocked_step_pending_and_queues_a_new_run():
    state = blocked()
    resumed = runs.resume(state, ANSWER, now=at(10), lease=LEASE)
    assert resumed["status"] == "running"
    step = resumed["steps"][0]
    assert step["status"] == "pending" and "blocked" not in step
    assert step["attempts"] == 1  # attempts keep counting
    run = resumed["run"]
    assert (run["attempt"], run["status"], run["runner"]) == (2, "queued", None)
    assert (run["takeovers"], run["failures"], run["interruptions"]) == (0, 0, 0)
    assert run["lease_expires"] == format_time(at(10 + LEASE))
    assert not runs.run_resumed(resumed)  # a person's resume is not an interruption
    assert runs.fence_of(resumed) == Fence(0, 2)
    # The answer is not in the state: it is kept apart.
    assert SECRET not in json.dumps(resumed)
    # The new run starts at the blocked step.
    started = calling(resumed, attempt=2, now=11)
    assert started["current_step"] == 0 and started["steps"][0]["attempts"] == 2


def test_a_resume_after_a_takeover_shows_no_interruption():
    taken = runs.take_over(calling(), Fence(0, 1), now=at(1 + LEASE), lease=LEASE)
    assert runs.run_resumed(taken)
    state = runs.block(calling(taken, attempt=2, now=20), Fence(0, 2), 0, QUESTION, now=at(21))
    resumed = runs.resume(state, ANSWER, now=at(30), lease=LEASE)
    assert resumed["run"]["takeovers"] == 0 and not runs.run_resumed(resumed)


# --- retry ---------------------------------------------------------------------------------------


def failed_workflow() -> dict[str, Any]:
    state = workflow("completed", "failed", "in_progress", "skipped", "pending")
    state["status"] = "failed"
    state["current_step"] = 1
    state["steps"][0]["attempts"] = 1
    state["steps"][0]["data"] = {"host": "gpu-7"}
    state["steps"][1].update(attempts=3, data={"message": "disk full"}, retry_at=format_time(T0))
    state["steps"][2].update(progress={"percent": 10}, tasks=[{"name": "x", "status": "pending"}])
    state["run"] = {**runs.request_run(workflow(), now=T0, lease=LEASE)["run"], "attempt": 4}
    state["run"].update(status="done", failures=3, takeovers=1, interruptions=1)
    return state


def test_a_retry_runs_again_from_the_failed_step_with_a_fresh_budget():
    state = failed_workflow()
    retried = runs.retry(state, now=at(10), lease=LEASE)
    assert retried["status"] == "running" and retried["current_step"] == 1
    assert [s["status"] for s in retried["steps"]] == [
        "completed",
        "pending",
        "pending",
        "skipped",
        "pending",
    ]
    assert retried["steps"][0] == state["steps"][0]  # completed: untouched
    assert retried["steps"][3] == state["steps"][3]
    assert retried["steps"][1]["attempts"] == 3  # attempts keep counting
    assert "retry_at" not in retried["steps"][1]
    assert "progress" not in retried["steps"][2] and "tasks" not in retried["steps"][2]
    run = retried["run"]
    assert (run["attempt"], run["status"]) == (5, "queued")
    assert (run["failures"], run["takeovers"], run["interruptions"]) == (0, 0, 0)
    assert not runs.run_resumed(retried)
    assert runs.remaining_steps(retried) == [1, 2, 4]


@pytest.mark.parametrize("status", ["running", "blocked", "completed", "cancelled"])
def test_only_a_failed_workflow_is_retried(status: str):
    with pytest.raises(NotFailed) as refused:
        runs.retry({**workflow("pending"), "status": status}, now=at(1), lease=LEASE)
    assert refused.value.code == "not_failed"
    with pytest.raises(NoWorkflow):
        runs.retry(None, now=at(1), lease=LEASE)


def test_a_workflow_failed_by_its_runner_is_retried_with_failures_zero():
    failed = runs.note_failure(calling(), Fence(0, 1), 0, {"message": "boom"}, now=at(2))
    assert failed["run"]["failures"] == 1
    retried = runs.retry(failed, now=at(3), lease=LEASE)
    assert retried["run"]["failures"] == 0 and retried["run"]["attempt"] == 2
    again = calling(retried, attempt=2, now=4)
    assert again["steps"][0]["attempts"] == 2 and again["run"]["failures"] == 0


# --- takeovers and interruptions -----------------------------------------------------------------


def test_a_takeover_of_a_running_call_counts_a_takeover_and_an_interruption():
    taken = runs.take_over(calling(), Fence(0, 1), now=at(1 + LEASE), lease=LEASE)
    run = taken["run"]
    assert (run["attempt"], run["status"], run["takeovers"], run["interruptions"]) == (
        2,
        "queued",
        1,
        1,
    )
    assert runs.run_resumed(taken)


def test_a_takeover_of_a_queued_run_counts_no_interruption():
    queued = runs.request_run(workflow("pending"), now=T0, lease=LEASE)
    taken = runs.take_over(queued, Fence(0, 1), now=at(LEASE), lease=LEASE)
    run = taken["run"]
    assert (run["attempt"], run["status"], run["takeovers"], run["interruptions"]) == (
        2,
        "queued",
        1,
        0,
    )
    # A claimed run that started no step yet interrupted nothing either.
    claimed = runs.claim_run(queued, Fence(0, 1), RUNNER, now=at(1), lease=LEASE)
    taken = runs.take_over(claimed, Fence(0, 1), now=at(1 + LEASE), lease=LEASE)
    assert (taken["run"]["takeovers"], taken["run"]["interruptions"]) == (1, 0)


def test_a_step_interrupted_max_step_attempts_times_fails_with_the_workflow():
    state = calling()
    for attempt in (1, 2, 3):
        now = attempt * 100
        state = runs.take_over(
            state, Fence(0, attempt), now=at(now), lease=LEASE, max_step_attempts=3
        )
        if attempt < 3:
            assert state["run"]["interruptions"] == attempt
            state = calling(state, attempt=attempt + 1, now=now + 1)
    assert state["status"] == "failed" and state["run"]["status"] == "done"
    step = state["steps"][0]
    assert (step["status"], step["attempts"]) == ("failed", 3)
    assert "interrupted 3 times" in step["data"]["message"]
    assert state["run"]["interruptions"] == 3 and state["run"]["takeovers"] == 3


def test_failed_calls_do_not_count_as_interruptions():
    woken = runs.wake_run(waiting(), Fence(0, 1), now=at(9), lease=LEASE)
    again = calling(woken, attempt=2, now=10)
    assert again["run"]["interruptions"] == 0
    taken = runs.take_over(again, Fence(0, 2), now=at(10 + LEASE), lease=LEASE)
    assert taken["run"]["interruptions"] == 1 and taken["status"] == "running"


# --- progress reports ----------------------------------------------------------------------------


def token(attempt: int = 1, random_part: str = "r4nd0m-part") -> str:
    return runs.make_progress_token(OWNER, Fence(0, attempt), random_part)


REPORT = {
    "percent": 40,
    "message": "copying",
    "tasks": [{"name": "copy", "status": "in_progress"}, {"name": "verify", "status": "pending"}],
}


def test_a_report_with_the_current_calls_token_is_stored_on_its_step():
    state = calling(token=token())
    reported = runs.report_progress(state, token(), 0, REPORT, now=at(4))
    step = reported["steps"][0]
    assert step["progress"] == {"percent": 40, "message": "copying", "updated": format_time(at(4))}
    assert step["tasks"] == REPORT["tasks"]
    assert reported["last_update"] == format_time(at(4))
    assert model.completed_percent(reported) == 20  # 0.4 of one step of two
    # A later report keeps what it does not say again.
    later = runs.report_progress(reported, token(), 0, {"percent": 80}, now=at(5))
    assert later["steps"][0]["progress"] == {
        "percent": 80,
        "message": "copying",
        "updated": format_time(at(5)),
    }
    assert later["steps"][0]["tasks"] == REPORT["tasks"]


@pytest.mark.parametrize(
    "given",
    [
        None,
        "",
        "garbled",
        "wfp1.x.y.z.w",
        "wfp1....",
        token(random_part="another-random"),  # well formed, but not the call's
        runs.make_progress_token("someone-else", Fence(0, 1), "r4nd0m-part"),
        runs.make_progress_token(OWNER, Fence(9, 1), "r4nd0m-part"),  # another incarnation
        "wfp1." + "A" * 600,
    ],
)
def test_an_unknown_or_garbled_token_is_forbidden(given: Any):
    state = calling(token=token())
    with pytest.raises(ProgressRefused) as refused:
        runs.report_progress(state, given, 0, REPORT, now=at(4))
    assert refused.value.code == "forbidden"


def test_a_token_names_one_step_only():
    state = calling(token=token())
    with pytest.raises(ProgressRefused):
        runs.report_progress(state, token(), 1, REPORT, now=at(4))


def test_a_token_of_an_earlier_attempt_is_superseded():
    first = calling(token=token(1))
    taken = runs.take_over(first, Fence(0, 1), now=at(1 + LEASE), lease=LEASE)
    second = calling(taken, attempt=2, now=20, token=token(2, "second"))
    with pytest.raises(RunSuperseded) as refused:
        runs.report_progress(second, token(1), 0, REPORT, now=at(21))
    assert refused.value.code == "run_superseded"
    assert runs.report_progress(second, token(2, "second"), 0, REPORT, now=at(21))


def test_a_token_whose_call_ended_is_forbidden():
    state = calling(token=token())
    done = runs.advance(
        state,
        Fence(0, 1),
        0,
        "completed",
        now=at(5),
        token_hash=runs.token_hash(token(random_part="next-step")),
    )
    assert done["steps"][0]["status"] == "completed"
    for index in (0, 1):
        with pytest.raises(ProgressRefused) as refused:
            runs.report_progress(done, token(), index, REPORT, now=at(6))
        assert refused.value.code == "forbidden"
    # The call ended by a retry wait, a block or a cancel: the same.
    ended = [
        runs.schedule_retry(state, Fence(0, 1), 0, "x", now=at(5), wait=1),
        runs.block(state, Fence(0, 1), 0, QUESTION, now=at(5)),
        runs.cancel(state, now=at(5)),
    ]
    for after in ended:
        with pytest.raises((ProgressRefused, RunSuperseded)) as refused:
            runs.report_progress(after, token(), 0, REPORT, now=at(6))
        assert refused.value.code == "forbidden", after["run"]


def test_a_step_started_again_drops_its_old_progress():
    state = runs.report_progress(calling(token=token()), token(), 0, REPORT, now=at(4))
    taken = runs.take_over(state, Fence(0, 1), now=at(4 + LEASE), lease=LEASE)
    again = calling(taken, attempt=2, now=30)
    assert "progress" not in again["steps"][0] and "tasks" not in again["steps"][0]


# --- the run fields a client never writes --------------------------------------------------------


def served() -> dict[str, Any]:
    """A stored workflow with every server-owned run field set."""
    state = runs.report_progress(calling(token=token()), token(), 0, REPORT, now=at(4))
    state["steps"][1].update(retry_at=format_time(at(9)), blocked={"message": "m", "input": []})
    state["attempts"] = 2
    state["blocked"] = {"message": "top"}
    state["retry_at"] = format_time(at(9))
    state["progress"] = {"percent": 1}
    state["tasks"] = []
    return state


def test_a_client_write_keeps_every_stored_run_field_whatever_it_sends():
    current = served()
    sent = copy.deepcopy(current)
    sent["run"] = {"attempt": 99, "status": "done"}
    sent["attempts"] = 0
    sent["blocked"] = None
    sent["retry_at"] = "never"
    sent["progress"] = {"percent": 100}
    sent["tasks"] = [{"name": "forged", "status": "completed"}]
    sent["steps"][0].update(attempts=50, progress={"percent": 100}, tasks=[], retry_at="x")
    sent["steps"][1]["blocked"] = {"message": "forged"}
    sent["steps"][0]["status"] = "completed"  # what a client may change, it changes
    kept = model.keep_run_fields(current, sent)
    for key in model.RUN_FIELDS:
        if key in current:
            assert kept[key] == current[key], key
    for position in (0, 1):
        for key in model.STEP_RUN_FIELDS:
            assert kept["steps"][position].get(key) == current["steps"][position].get(key), key
    assert kept["steps"][0]["status"] == "completed"


def test_a_client_write_that_leaves_the_run_fields_out_drops_none():
    current = served()
    sent = {
        key: value for key, value in copy.deepcopy(current).items() if key not in model.RUN_FIELDS
    }
    sent["steps"] = [
        {k: v for k, v in step.items() if k not in model.STEP_RUN_FIELDS} for step in sent["steps"]
    ]
    kept = model.keep_run_fields(current, sent)
    assert kept == current


def test_a_new_workflow_or_another_id_gets_no_run_field_from_the_client():
    forged = {
        "workflow_id": "other",
        "run": {"attempt": 5},
        "attempts": 3,
        "steps": [{"action": "a", "status": "pending", "attempts": 4, "progress": {}}],
    }
    for current in (None, served()):
        kept = model.keep_run_fields(current, copy.deepcopy(forged))
        assert "run" not in kept and "attempts" not in kept
        assert kept["steps"] == [{"action": "a", "status": "pending"}]


@pytest.fixture
def client(tmp_path: Path) -> FlaskClient:
    app = create_app({"TESTING": True, "STATE_URL": f"file://{tmp_path}/state/s.json"})
    return app.test_client()


def refused_as_invalid_state(answer: Any) -> None:
    assert answer.status_code == 400, answer.get_json()
    body = answer.get_json()
    assert body["success"] is False and body["error"] == "invalid_state", body


def test_a_client_cannot_set_blocked_through_the_api(client: FlaskClient):
    steps = [{"action": "a", "status": "pending"}, {"action": "b", "status": "pending"}]
    blocked_steps = [{"action": "a", "status": "blocked"}, {"action": "b", "status": "pending"}]
    refused_as_invalid_state(
        client.post("/workflows", json={"workflow_id": "x", "status": "blocked", "steps": steps})
    )
    refused_as_invalid_state(
        client.post("/workflows", json={"workflow_id": "x", "steps": blocked_steps})
    )
    refused_as_invalid_state(
        client.post(
            "/workflow/state", json={"workflow_id": "y", "status": "blocked", "steps": steps}
        )
    )
    refused_as_invalid_state(
        client.post("/workflow/state", json={"workflow_id": "y", "steps": blocked_steps})
    )
    assert client.post("/workflows", json={"workflow_id": "z", "steps": steps}).status_code == 201
    refused_as_invalid_state(client.patch("/workflows/z", json={"status": "blocked"}))
    refused_as_invalid_state(client.patch("/workflows/z", json={"steps": blocked_steps}))
    refused_as_invalid_state(client.patch("/workflows/z/steps/0", json={"status": "blocked"}))
    refused_as_invalid_state(client.patch("/workflow/state", json={"status": "blocked"}))
    refused_as_invalid_state(client.patch("/workflow/state/steps/0", json={"status": "blocked"}))
    state = client.get("/workflows/z").get_json()["state"]
    assert state["status"] == "running"
    assert [s["status"] for s in state["steps"]] == ["pending", "pending"]


def test_a_client_post_of_a_state_changes_no_run_field(client: FlaskClient):
    sent = {
        "workflow_id": "r",
        "steps": [{"action": "a", "status": "pending", "attempts": 7, "progress": {"percent": 9}}],
        "attempts": 3,
        "retry_at": "2030-01-01T00:00:00Z",
    }
    made = client.post("/workflow/state", json=sent)
    assert made.status_code in (200, 201), made.get_json()
    state = client.get("/workflows/r").get_json()["state"]
    assert "attempts" not in state and "retry_at" not in state and "run" not in state
    assert "attempts" not in state["steps"][0] and "progress" not in state["steps"][0]
    # Started on the server, then a seed client GETs it and POSTs it back changed.
    assert client.post("/workflows/r/run").status_code == 202
    stored = client.get("/workflows/r").get_json()["state"]
    back = copy.deepcopy(stored)
    back["run"] = {"attempt": 1000, "status": "done", "runner": "me"}
    back["steps"][0]["attempts"] = 42
    back["steps"][0]["tasks"] = [{"name": "forged", "status": "completed"}]
    assert client.post("/workflow/state", json=back).status_code in (200, 201)
    # The server's run goes on meanwhile (this app runs it): only the forged values must not
    # be there.
    after = client.get("/workflows/r").get_json()["state"]
    assert after["run"]["attempt"] == stored["run"]["attempt"] == 1
    assert after["run"]["runner"] != "me"
    assert after["steps"][0].get("attempts") in (None, 1)
    assert after["steps"][0].get("tasks") != back["steps"][0]["tasks"]
    patched = client.patch("/workflows/r", json={"run": {"attempt": 2000}, "attempts": 5})
    assert patched.status_code in (200, 400), patched.get_json()
    after = client.get("/workflows/r").get_json()["state"]
    assert after["run"]["attempt"] == 1 and "attempts" not in after


# --- completed_percent ---------------------------------------------------------------------------


def percent_of(*steps: dict[str, Any]) -> float:
    return model.completed_percent({"steps": list(steps)})


def test_completed_percent_counts_settled_steps_and_the_running_steps_share():
    pending, done = {"status": "pending"}, {"status": "completed"}
    skipped, failed = {"status": "skipped"}, {"status": "failed"}
    assert model.completed_percent({"steps": []}) == 0
    assert percent_of(pending) == 0  # nothing done on a one-step workflow: 0, not 100
    assert percent_of({"status": "in_progress"}) == 0
    assert percent_of({"status": "in_progress", "progress": {"percent": 50}}) == 50
    assert percent_of(done) == 100
    assert percent_of(done, pending, pending) == 33.33
    assert percent_of(done, skipped, pending) == 66.67
    assert percent_of(done, failed, pending) == 33.33
    running = {"status": "in_progress", "progress": {"percent": 33.333}}
    assert percent_of(done, skipped, running, pending) == 58.33
    assert percent_of(done, {"status": "in_progress", "progress": {"percent": 250}}) == 100
    assert percent_of(done, {"status": "in_progress", "progress": {"percent": True}}) == 50
    # A settled step's stale progress counts nothing more than the step.
    assert percent_of({**done, "progress": {"percent": 10}}, pending) == 50


def test_summaries_carry_completed_percent_beside_the_seeds_progress_percent():
    state = {**workflow("completed", "in_progress", "pending", "pending"), "current_step": 1}
    state["steps"][1]["progress"] = {"percent": 50}
    summary = model.summarize(state)
    assert summary["completed_percent"] == 37.5
    assert summary["progress_percent"] == 50  # the seed's formula, unchanged


# --- how long a finished workflow is kept --------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("completed", 30),
        ("cancelled", 30),
        ("failed", 7200),
        ("running", 86400),
        ("blocked", 86400),
    ],
)
def test_a_failed_workflow_is_kept_for_the_failed_ttl(status: str, expected: int):
    state = {**workflow("pending"), "status": status}
    assert model.ttl_seconds(state, 30, 86400, 7200) == expected
    assert model.expires_at(state, 30, 86400, 7200) == T0.timestamp() + expected
