"""The rules of a server run (contract section 9) over plain state dicts.

Storage applies these under the workflow's lock, exactly as it applies `model`'s writes: each
function takes the stored state (or None) and returns the state to store, or None when the write
changes nothing. Nothing here does I/O; the clock and the lease length come in as arguments.

A run lives in the state's `run` field: `{"attempt", "runner", "heartbeat", "lease_expires",
"status"}`. A runner holds a `Fence`: the workflow's *incarnation* (the version it was created
with, in the state's `incarnation`) and the run's `attempt`, which only ever grows within an
incarnation (a new run and every takeover add one). Every write a runner makes names its fence,
and a write naming any other is refused with RunSuperseded and changes nothing. That is what
keeps a paused runner that wakes up after another took over, or after its workflow was deleted
and created again under the same id, from touching the state. docs/runs.md tells the story.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from .model import (
    RUNNING,
    InvalidIndex,
    NoWorkflow,
    StateError,
    WorkflowFinished,
    format_time,
    is_finished,
    parse_time,
)

QUEUED = "queued"
RUN_RUNNING = "running"
DONE = "done"
RUN_STATUSES = (QUEUED, RUN_RUNNING, DONE)
# Steps a run never runs (again).
SETTLED_STEPS = frozenset({"completed", "skipped"})
# What a runner may write for one step, and how a run may end.
RUNNER_STEP_STATUSES = ("in_progress", "completed", "failed")
OUTCOMES = ("completed", "failed")
# A runner renews its lease this many times per lease: two renewals may fail before it lapses.
RENEWALS_PER_LEASE = 3


class Fence(NamedTuple):
    """What a runner holds: the workflow's incarnation and the run's attempt.

    Tuples compare in order, so a later incarnation, then a later attempt, is the greater.
    """

    incarnation: int
    attempt: int


class RunActive(StateError):
    """A run of this workflow is queued or running and its lease is live."""

    code = "run_active"


class RunSuperseded(StateError):
    """The writer's attempt is no longer the workflow's run: it must stop and change nothing.

    Also what a runner gets when its run ended under it (cancelled, workflow finished or gone):
    for a runner every such refusal means the same thing, stop now.
    """

    code = "run_superseded"


# --- reading -----------------------------------------------------------------------------------


def incarnation_of(state: Mapping[str, Any]) -> int:
    """Return the version the workflow was created with (0 for one stored before it was kept)."""
    incarnation = state.get("incarnation")
    return incarnation if isinstance(incarnation, int) else 0


def fence_of(state: Mapping[str, Any] | None) -> Fence | None:
    """Return the fence of the state's active run, or None when there is no active run."""
    run = active_run(state)
    if run is None:
        return None
    assert state is not None
    return Fence(incarnation_of(state), run["attempt"])


def renew_interval(lease: float) -> float:
    """Return how often a runner renews a lease of `lease` seconds."""
    return lease / RENEWALS_PER_LEASE


def active_run(state: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Return the state's run when it is queued or running on a running workflow, else None."""
    if state is None or state.get("status") != RUNNING:
        return None
    run = state.get("run")
    if not isinstance(run, dict) or run.get("status") not in (QUEUED, RUN_RUNNING):
        return None
    return run


def lease_deadline(state: Mapping[str, Any] | None) -> datetime | None:
    """Return when the active run's lease lapses, or None when there is no active run."""
    run = active_run(state)
    if run is None:
        return None
    try:
        return parse_time(run["lease_expires"])
    except (KeyError, TypeError, ValueError):
        # A run without a readable deadline can never be shown live: let it be taken over.
        return datetime.min.replace(tzinfo=UTC)


def lease_live(state: Mapping[str, Any] | None, now: datetime) -> bool:
    """Tell whether the state has an active run whose lease has not lapsed at `now`."""
    deadline = lease_deadline(state)
    return deadline is not None and now < deadline


def lease_expired(state: Mapping[str, Any] | None, now: datetime) -> bool:
    """Tell whether the state has an active run whose lease lapsed: a takeover is due."""
    deadline = lease_deadline(state)
    return deadline is not None and now >= deadline


def remaining_steps(state: Mapping[str, Any]) -> list[int]:
    """Return the indexes of the steps a run still has to run, in order."""
    return [
        index
        for index, step in enumerate(state.get("steps") or ())
        if step.get("status") not in SETTLED_STEPS
    ]


def run_in_progress(state: Mapping[str, Any] | None) -> bool:
    """Tell whether a server run is queued or running for this workflow (the page's ⏳)."""
    return active_run(state) is not None


def run_resumed(state: Mapping[str, Any] | None) -> bool:
    """Tell whether this workflow's run was taken over after an interruption (the page's 🔁).

    Attempt 1 is the first runner; only a takeover (or a new request over a lapsed run, which
    is the same thing) gives a later attempt, because a finished workflow never runs again.
    """
    if state is None or not isinstance(state.get("run"), dict):
        return False
    attempt = state["run"].get("attempt")
    return isinstance(attempt, int) and attempt > 1


def carry_run(current: Mapping[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """Return `new` with the stored run kept: a client's write never sets or drops `run`."""
    new = {key: value for key, value in new.items() if key != "run"}
    if current is not None and "run" in current and current["workflow_id"] == new["workflow_id"]:
        new["run"] = current["run"]
    return new


# --- helpers -----------------------------------------------------------------------------------


def _stamp(moment: datetime, seconds: float) -> str:
    return format_time(moment + timedelta(seconds=seconds))


def _with(state: Mapping[str, Any], now: datetime, **fields: Any) -> dict[str, Any]:
    new = dict(state)
    new.update(fields)
    new["last_update"] = format_time(now)
    return new


def _replace_step(
    state: Mapping[str, Any], index: int, step: dict[str, Any]
) -> list[dict[str, Any]]:
    steps = state["steps"]
    return [*steps[:index], step, *steps[index + 1 :]]


def _fence(
    state: Mapping[str, Any] | None, fence: Fence, *, claimed: bool = False
) -> dict[str, Any]:
    """Return the run a runner holding `fence` may write to, or raise RunSuperseded.

    With `claimed`, the run must also be running: steps are written only after a claim.
    """
    attempt = fence.attempt
    if state is None:
        raise RunSuperseded(f"Run attempt {attempt}: the workflow no longer exists")
    run = state.get("run")
    name = state["workflow_id"]
    if incarnation_of(state) != fence.incarnation:
        raise RunSuperseded(
            f"Run attempt {attempt} of workflow {name}: the workflow was deleted and created "
            "again since"
        )
    if not isinstance(run, dict):
        raise RunSuperseded(f"Run attempt {attempt}: workflow {name} has no server run")
    if run.get("attempt") != attempt:
        raise RunSuperseded(
            f"Run attempt {attempt} of workflow {name} was superseded by attempt "
            f"{run.get('attempt')}"
        )
    if is_finished(state) or run.get("status") == DONE:
        raise RunSuperseded(
            f"Run attempt {attempt} of workflow {name} has ended: the workflow is {state['status']}"
        )
    if claimed and run.get("status") != RUN_RUNNING:
        raise RunSuperseded(f"Run attempt {attempt} of workflow {name} has not been claimed")
    return run


def _step_index(state: Mapping[str, Any], index: int) -> dict[str, Any]:
    steps = state["steps"]
    if not 0 <= index < len(steps):
        raise InvalidIndex(
            f"Step index {index} is out of range: the workflow has {len(steps)} steps"
        )
    return dict(steps[index])


# --- the page and the routes -------------------------------------------------------------------


def request_run(state: Mapping[str, Any] | None, *, now: datetime, lease: float) -> dict[str, Any]:
    """Queue a run of the workflow's remaining steps (POST /workflows/<id>/run).

    The new run takes the next attempt and a lease of `lease` seconds: the time a runner has to
    claim it before it counts as lost. A run whose lease lapsed is replaced (that is a takeover);
    a live one → RunActive; a finished workflow → WorkflowFinished (finished is final).
    """
    if state is None:
        raise NoWorkflow("There is no such workflow to run")
    name = state["workflow_id"]
    if is_finished(state):
        raise WorkflowFinished(
            f"Workflow {name} is {state['status']}; a finished workflow is final"
        )
    if lease_live(state, now):
        run = state["run"]
        raise RunActive(
            f"Workflow {name} already has a {run['status']} run (attempt {run['attempt']})"
        )
    previous = state.get("run")
    attempt = previous.get("attempt") if isinstance(previous, dict) else None
    run = {
        "attempt": (attempt if isinstance(attempt, int) and attempt > 0 else 0) + 1,
        "runner": None,
        "heartbeat": format_time(now),
        "lease_expires": _stamp(now, lease),
        "status": QUEUED,
        "queued_at": format_time(now),
    }
    return _with(state, now, status=RUNNING, run=run)


def cancel(state: Mapping[str, Any] | None, *, now: datetime) -> dict[str, Any] | None:
    """Cancel the workflow: its running step and itself become cancelled, its run ends.

    Works with or without a server run (the page's own runs are cancelled the same way).
    A cancelled workflow → None (nothing changes); completed or failed → WorkflowFinished.
    """
    if state is None:
        raise NoWorkflow("There is no such workflow to cancel")
    if state.get("status") == "cancelled":
        return None
    if is_finished(state):
        raise WorkflowFinished(
            f"Workflow {state['workflow_id']} is {state['status']}; a finished workflow is final"
        )
    steps = [
        {**step, "status": "cancelled"} if step.get("status") == "in_progress" else step
        for step in state["steps"]
    ]
    fields: dict[str, Any] = {"status": "cancelled", "steps": steps}
    run = state.get("run")
    if isinstance(run, dict) and run.get("status") != DONE:
        fields["run"] = {**run, "status": DONE}
    return _with(state, now, **fields)


# --- runners -----------------------------------------------------------------------------------


def claim_run(
    state: Mapping[str, Any] | None,
    fence: Fence,
    runner: str,
    *,
    now: datetime,
    lease: float,
) -> dict[str, Any]:
    """Make `runner` (host:pid) the runner of the queued run `fence` names, with a fresh lease.

    Only a queued run can be claimed. A running one, even with a lapsed lease, needs a takeover
    first: a second claim of the same attempt would give two runners one fencing token.
    """
    run = _fence(state, fence)
    assert state is not None
    if run.get("status") != QUEUED:
        raise RunSuperseded(
            f"Run attempt {fence.attempt} of workflow {state['workflow_id']} is already claimed by "
            f"{run.get('runner')}"
        )
    claimed = {
        **run,
        "runner": runner,
        "heartbeat": format_time(now),
        "lease_expires": _stamp(now, lease),
        "status": RUN_RUNNING,
        "started_at": format_time(now),
    }
    return _with(state, now, run=claimed)


def renew_lease(
    state: Mapping[str, Any] | None, fence: Fence, *, now: datetime, lease: float
) -> dict[str, Any]:
    """Extend the lease of the run `fence` names to `now + lease` (a heartbeat).

    Accepted even after the lease lapsed, as long as nobody took over: the attempt, not the
    clock, decides who the runner is. A queued run can be renewed too: that is how the lease
    monitor pushes the claim deadline of a run whose job still waits in the queue.
    """
    run = _fence(state, fence)
    assert state is not None
    renewed = {**run, "heartbeat": format_time(now), "lease_expires": _stamp(now, lease)}
    return _with(state, now, run=renewed)


def runner_step(
    state: Mapping[str, Any] | None,
    fence: Fence,
    index: int,
    status: str,
    data: Mapping[str, Any] | None = None,
    *,
    now: datetime,
) -> dict[str, Any]:
    """Record what the runner holding `fence` did with step `index`.

    `in_progress` starts the step: it becomes the current step, its old `data` goes and its
    `attempts` grows by one (so a step run again after an interruption shows 2). `completed`
    stores `data` (an object) when given. `failed` stores `data` (with its `message`) and fails
    the workflow and ends the run in the same write, so a crash cannot leave it half-failed.
    """
    if status not in RUNNER_STEP_STATUSES:
        raise ValueError(
            f"a runner writes a step {', '.join(RUNNER_STEP_STATUSES)}, not {status!r}"
        )
    if data is not None and not isinstance(data, Mapping):
        raise ValueError("step data must be an object")
    run = _fence(state, fence, claimed=True)
    assert state is not None
    step = _step_index(state, index)
    fields: dict[str, Any] = {}
    if status == "in_progress":
        if step.get("status") in SETTLED_STEPS:
            raise InvalidIndex(
                f"Step {index} is {step['status']}; a run never runs a settled step again"
            )
        previous = step.get("attempts")
        step["attempts"] = (previous if isinstance(previous, int) and previous > 0 else 0) + 1
        step.pop("data", None)
        fields["current_step"] = index
    elif data is not None:
        step["data"] = dict(data)
    step["status"] = status
    if status == "failed":
        fields["status"] = "failed"
        fields["run"] = {**run, "status": DONE, "heartbeat": format_time(now)}
    return _with(state, now, steps=_replace_step(state, index, step), **fields)


def advance(
    state: Mapping[str, Any] | None,
    fence: Fence,
    index: int,
    status: str,
    data: Mapping[str, Any] | None = None,
    *,
    now: datetime,
) -> dict[str, Any]:
    """Record step `index`'s outcome and, in the same write, go on: start the next step.

    `completed` → the next step not completed or skipped becomes `in_progress` (as
    `runner_step` starts it), or, when none is left, the run finishes `completed`. `failed`
    fails the workflow as `runner_step` does. One write per step instead of two, and no moment
    between two steps where a crash leaves neither in progress.
    """
    new = runner_step(state, fence, index, status, data, now=now)
    if status != "completed":
        return new
    remaining = remaining_steps(new)
    if not remaining:
        return finish_run(new, fence, "completed", now=now)
    return runner_step(new, fence, remaining[0], "in_progress", now=now)


def finish_run(
    state: Mapping[str, Any] | None, fence: Fence, outcome: str, *, now: datetime
) -> dict[str, Any]:
    """End the run `fence` names with the workflow `completed` (every step settled) or `failed`."""
    if outcome not in OUTCOMES:
        raise ValueError(f"a run ends {' or '.join(OUTCOMES)}, not {outcome!r}")
    run = _fence(state, fence, claimed=True)
    assert state is not None
    if outcome == "completed" and remaining_steps(state):
        raise ValueError(
            f"workflow {state['workflow_id']} cannot complete: steps {remaining_steps(state)} "
            "have not run"
        )
    done = {**run, "status": DONE, "heartbeat": format_time(now)}
    return _with(state, now, status=outcome, run=done)


def release_run(
    state: Mapping[str, Any] | None, fence: Fence, *, now: datetime, lease: float
) -> dict[str, Any]:
    """Hand the running run `fence` names back to the queue as the next attempt (a worker stops).

    What a runner that is told to shut down does instead of letting its lease lapse: the run
    is queued again at once, under a new attempt (so the stopping runner's late writes are
    refused), with a claim deadline of `lease` seconds. The interrupted step stays
    `in_progress` until the next runner starts it again.
    """
    run = _fence(state, fence, claimed=True)
    assert state is not None
    queued = {
        **run,
        "attempt": fence.attempt + 1,
        "runner": None,
        "lease_expires": _stamp(now, lease),
        "status": QUEUED,
    }
    return _with(state, now, run=queued)


def take_over(
    state: Mapping[str, Any] | None,
    expired: Fence,
    *,
    now: datetime,
    lease: float,
    max_step_attempts: int | None = None,
) -> dict[str, Any] | None:
    """Requeue a run whose lease lapsed under `expired`, as the next attempt.

    None when there is nothing to take over: the run moved on (someone else took over, it
    ended, the workflow finished or is gone) or its lease is live again. The interrupted step
    stays `in_progress` until the next runner starts it again (its `attempts` + 1 then). With
    `max_step_attempts`, a step already started that many times is not run again: it fails,
    and the workflow with it, so a step that kills its runner every time cannot loop forever.
    """
    if fence_of(state) != expired or lease_live(state, now):
        return None
    run = active_run(state)
    assert state is not None
    fields: dict[str, Any] = {}
    if max_step_attempts is not None:
        for index, step in enumerate(state["steps"]):
            tries = step.get("attempts")
            if (
                step.get("status") == "in_progress"
                and isinstance(tries, int)
                and tries >= max_step_attempts
            ):
                message = (
                    f"Step {index} ({step.get('action')}) was interrupted {tries} times: "
                    "its runner stopped before it answered; it is not run again"
                )
                failed = {**step, "status": "failed", "data": {"message": message}}
                fields["steps"] = _replace_step(state, index, failed)
                fields["status"] = "failed"
                break
    next_run = {
        "attempt": expired.attempt + 1,
        "runner": None,
        "heartbeat": run.get("heartbeat"),
        "lease_expires": _stamp(now, lease),
        "status": DONE if fields else QUEUED,
    }
    return _with(state, now, run=next_run, **fields)
