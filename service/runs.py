"""The rules of a server run over plain state dicts.

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

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from . import model
from .model import (
    BLOCKED,
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
# Between two calls of a failing step: no runner, and the lease deadline is when to call again.
WAITING = "waiting"
DONE = "done"
RUN_STATUSES = (QUEUED, RUN_RUNNING, WAITING, DONE)
# Steps a run never runs (again).
SETTLED_STEPS = model.SETTLED_STEPS
# What a runner may write for one step, and how a run may end.
RUNNER_STEP_STATUSES = ("in_progress", "completed", "failed")
OUTCOMES = ("completed", "failed")
# A step's retry policy when it gives no value (see schema.RetryPolicy).
DEFAULT_BACKOFF = 2
DEFAULT_MAX_BACKOFF = 300
# The longest value a person's input may give a field.
INPUT_VALUE_MAX = 4096
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
    if not isinstance(run, dict) or run.get("status") not in (QUEUED, RUN_RUNNING, WAITING):
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

    A person's resume or retry starts a new run with no takeovers: only an interruption counts.
    """
    if state is None or not isinstance(state.get("run"), dict):
        return False
    takeovers = state["run"].get("takeovers")
    if isinstance(takeovers, int):
        return takeovers > 0
    attempt = state["run"].get("attempt")  # a run stored before takeovers were counted
    return isinstance(attempt, int) and attempt > 1


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


def _without(step: dict[str, Any], *keys: str) -> dict[str, Any]:
    for key in keys:
        step.pop(key, None)
    return step


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
    run = _new_run(state, now=now, lease=lease)
    lapsed = active_run(state)
    if lapsed is not None:
        # Replacing a run whose lease lapsed is a takeover: its runner was interrupted.
        run["takeovers"] = _count(lapsed, "takeovers") + 1
    return _with(state, now, status=RUNNING, run=run)


def _new_run(state: Mapping[str, Any], *, now: datetime, lease: float) -> dict[str, Any]:
    """Return a new queued run: the next attempt, no takeovers, a fresh retry budget."""
    previous = state.get("run")
    attempt = previous.get("attempt") if isinstance(previous, dict) else None
    return {
        "attempt": (attempt if isinstance(attempt, int) and attempt > 0 else 0) + 1,
        "runner": None,
        "heartbeat": format_time(now),
        "lease_expires": _stamp(now, lease),
        "status": QUEUED,
        "takeovers": 0,
        "queued_at": format_time(now),
        "started_at": None,
        "failures": 0,
        "interruptions": 0,
        "call": None,
    }


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
        _without({**step, "status": "cancelled"}, "retry_at")
        if step.get("status") in ("in_progress", BLOCKED)
        else step
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
    token_hash: str | None = None,
) -> dict[str, Any]:
    """Record what the runner holding `fence` did with step `index`.

    `in_progress` starts a call of the step: it becomes the current step, its old `data`,
    progress and retry time go, its `attempts` grows by one (so a step run again after an
    interruption shows 2) and the run records the call (`token_hash`: its progress token's).
    `completed` stores `data` (an object) when given. `failed` stores `data` (with its
    `message`) and fails the workflow and ends the run in the same write, so a crash cannot
    leave it half-failed. Either ends the call: its progress token is refused from then on.
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
        _without(step, "data", "retry_at", "progress", "tasks", "blocked")
        fields["current_step"] = index
        call = run.get("call")
        run = dict(run)
        if not isinstance(call, dict) or call.get("step") != index:
            # Another step: its own retry budget and interruption count.
            run["failures"] = 0
            run["interruptions"] = 0
        run["call"] = {"step": index, "token": token_hash}
        fields["run"] = run
    else:
        if data is not None:
            step["data"] = dict(data)
        step.pop("retry_at", None)
        run = {**run, "call": _ended(run.get("call"))}
        fields["run"] = run
    step["status"] = status
    if status == "failed":
        fields["status"] = "failed"
        fields["run"] = {**run, "status": DONE, "heartbeat": format_time(now)}
    return _with(state, now, steps=_replace_step(state, index, step), **fields)


def _ended(call: Any) -> dict[str, Any] | None:
    """Return a run's call with its progress token gone: the call has ended."""
    return {**call, "token": None} if isinstance(call, dict) else None


def advance(
    state: Mapping[str, Any] | None,
    fence: Fence,
    index: int,
    status: str,
    data: Mapping[str, Any] | None = None,
    *,
    now: datetime,
    token_hash: str | None = None,
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
    return runner_step(new, fence, remaining[0], "in_progress", now=now, token_hash=token_hash)


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
    done = {**run, "status": DONE, "heartbeat": format_time(now), "call": _ended(run.get("call"))}
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
        # The person sees an interruption (the page's 🔁), though no step call is counted.
        "takeovers": _count(run, "takeovers") + 1,
        "call": _ended(run.get("call")),
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
    assert state is not None and run is not None
    if run.get("status") == WAITING:
        return None  # a retry that is due is woken (wake_run), not taken over
    fields: dict[str, Any] = {}
    # Only a runner that died during a step's call interrupts it; a queued run whose job was
    # lost interrupted nothing.
    interrupted = run.get("status") == RUN_RUNNING and _calling(state, run) is not None
    interruptions = _count(run, "interruptions") + (1 if interrupted else 0)
    index = _calling(state, run)
    if max_step_attempts is not None and index is not None and interruptions >= max_step_attempts:
        step = state["steps"][index]
        message = (
            f"Step {index + 1} ({step.get('action')}) was interrupted {interruptions} times: "
            "its runner stopped before it answered; it is not run again"
        )
        failed = {**step, "status": "failed", "data": {"message": message}}
        fields["steps"] = _replace_step(state, index, failed)
        fields["status"] = "failed"
    next_run = {
        **run,
        "attempt": expired.attempt + 1,
        "runner": None,
        "heartbeat": run.get("heartbeat"),
        "lease_expires": _stamp(now, lease),
        "status": DONE if fields else QUEUED,
        "takeovers": _count(run, "takeovers") + 1,
        "interruptions": interruptions,
        "call": _ended(run.get("call")),
    }
    return _with(state, now, run=next_run, **fields)


def _count(run: Mapping[str, Any], key: str) -> int:
    value = run.get(key)
    return value if isinstance(value, int) and value > 0 else 0


def _calling(state: Mapping[str, Any], run: Mapping[str, Any]) -> int | None:
    """Return the index of the step whose call the run was making, or None."""
    steps = state.get("steps") or ()
    call = run.get("call")
    index = call.get("step") if isinstance(call, dict) else None
    if not isinstance(index, int):
        # A run stored before calls were recorded: its step in progress.
        index = next((i for i, s in enumerate(steps) if s.get("status") == "in_progress"), None)
    if index is None or not 0 <= index < len(steps):
        return None
    return index if steps[index].get("status") == "in_progress" else None


# --- a step that fails, asks or reports ----------------------------------------------------


def retry_delay(policy: Mapping[str, Any] | None, failures: int, jitter: float) -> float | None:
    """Return how long to wait before calling a step again after its `failures`-th failed call
    in this run, or None when its retry policy allows no more calls.

    `jitter` is a random number in [-1, 1]: the wait moves by up to 10 % of itself.
    """
    policy = policy if isinstance(policy, Mapping) else {}
    if failures >= policy.get("max_attempts", 1):
        return None
    backoff = policy.get("backoff_seconds", DEFAULT_BACKOFF)
    cap = policy.get("max_backoff_seconds", DEFAULT_MAX_BACKOFF)
    wait = min(backoff * 2 ** (failures - 1), cap)
    return max(0.0, wait * (1 + 0.1 * jitter))


def schedule_retry(
    state: Mapping[str, Any] | None,
    fence: Fence,
    index: int,
    message: str,
    *,
    now: datetime,
    wait: float,
) -> dict[str, Any]:
    """Record a failed call of step `index` that will be made again in `wait` seconds.

    The step stays `in_progress` with `retry_at` and the failure's message; the run becomes
    `waiting`: it holds no runner, and its lease deadline is the time of the next call, when a
    lease monitor wakes it (wake_run). A crash meanwhile changes nothing.
    """
    run = _fence(state, fence, claimed=True)
    assert state is not None
    step = _step_index(state, index)
    if step.get("status") != "in_progress":
        raise InvalidIndex(f"Step {index} is {step.get('status')}, not running")
    at = _stamp(now, wait)
    step["data"] = {"message": message}
    step["retry_at"] = at
    waiting = {
        **run,
        "runner": None,
        "heartbeat": format_time(now),
        "lease_expires": at,
        "status": WAITING,
        "failures": _count(run, "failures") + 1,
        "call": _ended(run.get("call")),
    }
    return _with(state, now, steps=_replace_step(state, index, step), run=waiting)


def note_failure(
    state: Mapping[str, Any] | None,
    fence: Fence,
    index: int,
    data: Mapping[str, Any] | None,
    *,
    now: datetime,
) -> dict[str, Any]:
    """Record the last failed call of step `index`: the step and the workflow fail."""
    new = runner_step(state, fence, index, "failed", data, now=now)
    run = dict(new["run"])
    run["failures"] = _count(run, "failures") + 1
    return {**new, "run": run}


def wake_run(
    state: Mapping[str, Any] | None, fence: Fence, *, now: datetime, lease: float
) -> dict[str, Any] | None:
    """Queue a waiting run whose retry time came, as the next attempt; None when it is not due
    or moved on (cancelled, deleted, woken by another monitor)."""
    run = active_run(state)
    if run is None or run.get("status") != WAITING or fence_of(state) != fence:
        return None
    if lease_live(state, now):
        return None
    assert state is not None
    queued = {
        **run,
        "attempt": fence.attempt + 1,
        "runner": None,
        "heartbeat": format_time(now),
        "lease_expires": _stamp(now, lease),
        "status": QUEUED,
        "queued_at": format_time(now),
        "started_at": None,
    }
    return _with(state, now, run=queued)


def block(
    state: Mapping[str, Any] | None,
    fence: Fence,
    index: int,
    question: Mapping[str, Any],
    *,
    now: datetime,
) -> dict[str, Any]:
    """Make step `index` and the workflow `blocked` with the step's question; the run ends.

    A blocked workflow holds no runner and no lease: a person's resume starts a new run.
    """
    run = _fence(state, fence, claimed=True)
    assert state is not None
    step = _step_index(state, index)
    _without(step, "retry_at", "data")
    step["status"] = BLOCKED
    step["blocked"] = {
        "message": question.get("message", ""),
        "input": [dict(field) for field in question.get("input", ())],
        "since": format_time(now),
    }
    done = {
        **run,
        "runner": None,
        "status": DONE,
        "heartbeat": format_time(now),
        "call": _ended(run.get("call")),
    }
    return _with(state, now, status=BLOCKED, steps=_replace_step(state, index, step), run=done)


def blocked_step(state: Mapping[str, Any] | None) -> int | None:
    """Return the index of the step that waits for the person, or None."""
    if state is None or state.get("status") != BLOCKED:
        return None
    for index, step in enumerate(state.get("steps") or ()):
        if step.get("status") == BLOCKED:
            return index
    return None


def check_input(state: Mapping[str, Any] | None, given: Any) -> dict[str, Any]:
    """Return the input a resume gives for the blocked step, checked against its fields.

    Raise NoWorkflow, NotBlocked, or InvalidInput (a required field missing, an unknown name,
    a wrong type, a choice not listed). A message never repeats a value: one may be secret.
    """
    if state is None:
        raise NoWorkflow("There is no such workflow to resume")
    index = blocked_step(state)
    if index is None:
        raise model.NotBlocked(
            f"Workflow {state['workflow_id']} is {state.get('status')}: it does not wait for input"
        )
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise model.InvalidInput("Invalid input: must be an object of field name to value")
    fields = state["steps"][index].get("blocked", {}).get("input") or []
    by_name = {field["name"]: field for field in fields if isinstance(field, dict)}
    for name in given:
        if name not in by_name:
            raise model.InvalidInput(f"Invalid input: the step asks for no field {name[:64]!r}")
    checked: dict[str, Any] = {}
    for name, field in by_name.items():
        kind = field.get("type")
        label = field.get("label") or name
        if name not in given:
            if field.get("required", True):
                raise model.InvalidInput(f"Invalid input: {name} ({label}) is required")
            continue
        value = given[name]
        if kind == "boolean":
            if not isinstance(value, bool):
                raise model.InvalidInput(f"Invalid input: {name} must be true or false")
        elif not isinstance(value, str):
            raise model.InvalidInput(f"Invalid input: {name} must be a string")
        elif kind == "choice" and value not in (field.get("choices") or ()):
            raise model.InvalidInput(f"Invalid input: {name} must be one of the listed choices")
        elif field.get("required", True) and kind != "boolean" and value == "":
            raise model.InvalidInput(f"Invalid input: {name} ({label}) is required")
        elif len(value) > INPUT_VALUE_MAX:
            raise model.InvalidInput(
                f"Invalid input: {name} must be at most {INPUT_VALUE_MAX} characters"
            )
        checked[name] = value
    return checked


def resume(
    state: Mapping[str, Any] | None, given: Any, *, now: datetime, lease: float
) -> dict[str, Any]:
    """Answer a blocked step: it becomes pending and a new run starts at it.

    The input itself is not stored here: it is kept apart from the state (see the storage's
    input methods), because a secret value must never be served.
    """
    check_input(state, given)
    assert state is not None
    index = blocked_step(state)
    assert index is not None
    step = _without(_step_index(state, index), "blocked", "retry_at")
    step["status"] = "pending"
    resumed = _with(state, now, status=RUNNING, steps=_replace_step(state, index, step))
    resumed["run"] = _new_run(state, now=now, lease=lease)
    return resumed


def retry(state: Mapping[str, Any] | None, *, now: datetime, lease: float) -> dict[str, Any]:
    """Run a failed workflow again from its failed step, with a fresh retry budget.

    The failed step and the steps after it that are not settled become pending; completed
    steps never run again; the steps' `attempts` keep counting.
    """
    if state is None:
        raise NoWorkflow("There is no such workflow to retry")
    if state.get("status") != "failed":
        raise model.NotFailed(
            f"Workflow {state['workflow_id']} is {state.get('status')}: only a failed workflow "
            "is retried"
        )
    steps = state.get("steps") or []
    first = next((i for i, step in enumerate(steps) if step.get("status") == "failed"), None)
    if first is None:
        first = next(
            (i for i, step in enumerate(steps) if step.get("status") not in SETTLED_STEPS),
            len(steps),
        )
    again = [
        _without({**step, "status": "pending"}, "retry_at", "progress", "tasks", "blocked")
        if position >= first and step.get("status") not in SETTLED_STEPS
        else step
        for position, step in enumerate(steps)
    ]
    fields: dict[str, Any] = {"status": RUNNING, "steps": again}
    if first < len(steps):
        fields["current_step"] = first
    retried = _with(state, now, **fields)
    retried["run"] = _new_run(state, now=now, lease=lease)
    return retried


# --- progress reports ------------------------------------------------------------------------

PROGRESS_TOKEN_PREFIX = "wfp1"


class ProgressRefused(StateError):
    """A progress report whose token names no running call of this step."""

    code = "forbidden"


class ProgressToken(NamedTuple):
    """What a progress token names: the owner, the incarnation and the run's attempt."""

    owner: str
    incarnation: int
    attempt: int


def idempotency_key(owner: str, workflow_id: str, incarnation: int, index: int) -> str:
    """Return the Idempotency-Key of every call of one step of one workflow incarnation."""
    named = f"{owner}\0{workflow_id}\0{incarnation}\0{index}".encode()
    return hashlib.sha256(named).hexdigest()[:32]


def make_progress_token(owner: str, fence: Fence, random_part: str) -> str:
    """Build a step call's progress token: it names its owner and run, and is unguessable."""
    encoded = base64.urlsafe_b64encode(owner.encode()).decode().rstrip("=")
    return f"{PROGRESS_TOKEN_PREFIX}.{encoded}.{fence.incarnation}.{fence.attempt}.{random_part}"


def token_hash(token: str) -> str:
    """Return what a run stores of a progress token (never the token itself)."""
    return hashlib.sha256(token.encode()).hexdigest()


def read_progress_token(token: Any) -> ProgressToken:
    """Return what a progress token names, or raise ProgressRefused."""
    if not isinstance(token, str) or len(token) > 512:
        raise ProgressRefused("A progress report needs its step call's progress_token")
    parts = token.split(".")
    if len(parts) != 5 or parts[0] != PROGRESS_TOKEN_PREFIX:
        raise ProgressRefused("Unknown progress token")
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        owner = base64.urlsafe_b64decode(padded.encode()).decode()
        return ProgressToken(owner, int(parts[2]), int(parts[3]))
    except (ValueError, UnicodeDecodeError):
        raise ProgressRefused("Unknown progress token") from None


def report_progress(
    state: Mapping[str, Any] | None,
    token: str,
    index: int,
    report: Mapping[str, Any],
    *,
    now: datetime,
) -> dict[str, Any]:
    """Store a running step's report on itself (`progress`, `tasks`) if its token is the call's.

    Unknown token, or a call that has ended → ProgressRefused (403); a token of an earlier run
    attempt of this workflow → RunSuperseded (409).
    """
    named = read_progress_token(token)
    if state is None or incarnation_of(state) != named.incarnation:
        raise ProgressRefused("Unknown progress token")
    run = state.get("run")
    if not isinstance(run, dict):
        raise ProgressRefused("Unknown progress token")
    if named.attempt < run.get("attempt", 0):
        raise RunSuperseded(
            f"Run attempt {named.attempt} of workflow {state['workflow_id']} was superseded by "
            f"attempt {run.get('attempt')}"
        )
    call = run.get("call")
    if (
        named.attempt != run.get("attempt")
        or not isinstance(call, dict)
        or not call.get("token")
        or not hmac.compare_digest(str(call["token"]), token_hash(token))
    ):
        raise ProgressRefused("Unknown progress token, or its step call has ended")
    if (
        call.get("step") != index
        or run.get("status") != RUN_RUNNING
        or state.get("status") != RUNNING
    ):
        raise ProgressRefused("The step call of this progress token has ended")
    step = _step_index(state, index)
    if step.get("status") != "in_progress":
        raise ProgressRefused("The step call of this progress token has ended")
    progress = dict(step.get("progress") or {})
    if "percent" in report:
        progress["percent"] = report["percent"]
    if "message" in report:
        progress["message"] = report["message"]
    progress["updated"] = format_time(now)
    step["progress"] = progress
    if "tasks" in report:
        step["tasks"] = [dict(task) for task in report["tasks"]]
    return _with(state, now, steps=_replace_step(state, index, step))
