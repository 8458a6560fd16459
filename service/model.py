"""The workflow state model: defaults, progress, summary and finished-is-final.

Plain functions over plain dicts. Nothing here does I/O or knows about HTTP or storage:
the clock and randomness come in as arguments, and rule violations are `StateError`s that
the API layer maps to status codes. The field rules themselves live in `schema`, the one
definition of every body; the model calls it and turns its `FieldError` into `InvalidState`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from . import schema
from .schema import ENCRYPTED_MARK

RUNNING = "running"
BLOCKED = schema.BLOCKED
FINISHED = frozenset({"completed", "failed", "cancelled"})
# Steps done for good: a run never runs them (again), and they count as done for a person.
SETTLED_STEPS = frozenset({"completed", "skipped"})

# Fields the server stamps on every write: whatever a client sends for them is replaced.
# `incarnation` is the version a workflow was created with: it tells a workflow from one
# deleted and created again under the same id.
SERVER_FIELDS = ("last_update", "version", "incarnation", "completed_percent")
# What a client may set on a step for server runs (at create, or by a PATCH of the step).
STEP_OPTIONS = ("timeout_seconds", "retry")
# Fields only server runs write, of the workflow and of each step: a client's write keeps the
# stored values whatever it sends (a client that GETs a state and POSTs it back changes none).
RUN_FIELDS = ("run", "blocked", "retry_at", "progress", "tasks", "attempts")
STEP_RUN_FIELDS = ("attempts", "blocked", "retry_at", "progress", "tasks")

WORKFLOW_ID_RE = schema.python_pattern(schema.WORKFLOW_ID_PATTERN)


class StateError(Exception):
    """A request the state rules refuse; `code` is the contract's snake_case error."""

    code = "invalid_state"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StateRequired(StateError):
    """The body carries no state at all."""

    code = "state_required"


class InvalidState(StateError):
    """A field breaks its rule; the message names the field."""

    code = "invalid_state"

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"Invalid field '{field}': {rule}")
        self.field = field


class InvalidIndex(StateError):
    """A step index that is not a step of the stored workflow."""

    code = "invalid_index"


class NoWorkflow(StateError):
    """There is no stored workflow to update."""

    code = "no_workflow"

    @classmethod
    def named(cls, workflow_id: str | None) -> NoWorkflow:
        """Return the refusal of a workflow id the owner does not have (or that expired)."""
        return cls(f"No workflow {workflow_id!r}")


class WorkflowMismatch(StateError):
    """The request's workflow_id guard differs from the stored workflow."""

    code = "workflow_mismatch"


class WorkflowFinished(StateError):
    """The stored workflow is finished, and finished is final."""

    code = "workflow_finished"


class PreconditionFailed(StateError):
    """If-Match names a version that is not the stored one."""

    code = "precondition_failed"


class WorkflowExists(StateError):
    """A create names a workflow id the owner already has (and it is not finished)."""

    code = "workflow_exists"


class TooManyWorkflows(StateError):
    """The owner already has the most unexpired workflows allowed."""

    code = "too_many_workflows"


class InvalidWorkflowId(StateError):
    """A workflow id given apart from a body (a URL, a CLI argument) breaks the id rule."""

    code = "invalid_workflow_id"


class InvalidCursor(StateError):
    """A list cursor that this service did not issue for this owner and filter."""

    code = "invalid_cursor"


class NotBlocked(StateError):
    """A resume of a workflow that does not wait for the person."""

    code = "not_blocked"


class NotFailed(StateError):
    """A retry of a workflow that has not failed."""

    code = "not_failed"


class InvalidInput(StateError):
    """A resume's input does not answer the blocked step's fields."""

    code = "invalid_input"


# --- time and identity -------------------------------------------------------------------


def format_time(moment: datetime) -> str:
    """Format a moment as UTC ISO-8601 with millisecond precision and a Z suffix."""
    # isoformat is C code; strftime was a tenth of a write's Python time.
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def parse_time(text: str) -> datetime:
    """Parse an ISO-8601 timestamp; a value without an offset is taken as UTC."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def new_workflow_id(now: datetime, random_hex: str) -> str:
    """Build a server-generated workflow id: workflow_<unix ms>_<random>."""
    return f"workflow_{int(now.timestamp() * 1000)}_{random_hex}"


# --- validation --------------------------------------------------------------------------


def is_encrypted(value: Any) -> bool:
    """Tell whether a field holds a sealed secret ({"$encrypted": token})."""
    return (
        isinstance(value, dict) and len(value) == 1 and isinstance(value.get(ENCRYPTED_MARK), str)
    )


def validate(state: dict[str, Any], *, stored: bool = False, merged: bool = False) -> None:
    """Raise InvalidState unless `state` satisfies every field rule of the contract.

    With `stored=True` the server-owned fields must be present too, and a sealed
    `ssh_connection` is accepted: that is the shape a backend holds. With `merged=True` it is
    a stored state a PATCH changed, whose id need not be one a new workflow may take.
    """
    check = schema.check_stored if stored else schema.check_merged if merged else schema.check_state
    try:
        check(state)
    except schema.FieldError as error:
        raise InvalidState(error.field, error.rule) from None


def require_object(body: Any) -> dict[str, Any]:
    """Return the body as a non-empty dict, or raise StateRequired."""
    if not isinstance(body, dict) or not body:
        raise StateRequired("State data is required: send a non-empty JSON object")
    return body


def new_state(body: Any, *, now: datetime, random_hex: str) -> dict[str, Any]:
    """Turn a POST body into a complete state (defaults filled, server fields stamped)."""
    body = require_object(body)
    stamp = format_time(now)
    # The contract's fields first, in a fixed order, so `redis-cli GET | jq .` reads well.
    state: dict[str, Any] = {
        "workflow_id": body["workflow_id"]
        if "workflow_id" in body
        else new_workflow_id(now, random_hex),
        "status": body.get("status", RUNNING),
        "current_step": body.get("current_step", 0),
        "steps": body.get("steps", []),
        "start_time": body.get("start_time", stamp),
    }
    for key, value in body.items():
        if key not in state and key not in SERVER_FIELDS:
            state[key] = value
    if state.get("ssh_connection") is None:
        state.pop("ssh_connection", None)
    validate(state)
    state["last_update"] = stamp
    return state


# --- reading a stored state ----------------------------------------------------------------


def parse_stored(raw: str | bytes) -> dict[str, Any]:
    """Parse and check a stored document; raise ValueError when it is not a valid state."""
    try:
        state = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise ValueError(f"not JSON: {error}") from None
    if not isinstance(state, dict):
        raise ValueError("not a JSON object")
    try:
        validate(state, stored=True)
    except InvalidState as error:
        raise ValueError(error.message) from None
    return state


def is_finished(state: Mapping[str, Any] | None) -> bool:
    """Tell whether a state is completed, failed or cancelled."""
    return state is not None and state.get("status") in FINISHED


def is_active(state: Mapping[str, Any] | None) -> bool:
    """Tell whether a state is not finished: running, or blocked waiting for the person."""
    return state is not None and state.get("status") in (RUNNING, BLOCKED)


def ttl_seconds(
    state: Mapping[str, Any], ttl: int, stale_ttl: int, failed_ttl: int | None = None
) -> int:
    """Return how long a freshly written state stays readable.

    Completed and cancelled: `ttl`; failed: `failed_ttl` (kept to be read and retried);
    running or blocked: `stale_ttl` after its last write.
    """
    if not is_finished(state):
        return stale_ttl
    if failed_ttl is not None and state.get("status") == "failed":
        return failed_ttl
    return ttl


def expires_at(
    state: Mapping[str, Any], ttl: int, stale_ttl: int, failed_ttl: int | None = None
) -> float:
    """Return the unix time a stored state expires: its last write plus its TTL."""
    return parse_time(state["last_update"]).timestamp() + ttl_seconds(
        state, ttl, stale_ttl, failed_ttl
    )


def progress_percent(state: Mapping[str, Any]) -> float:
    """Return (current_step + 1) / total_steps * 100, rounded to 2 decimals; 0 with no steps."""
    total = len(state.get("steps") or ())
    if not total:
        return 0
    percent = round((state["current_step"] + 1) / total * 100, 2)
    # A whole number as an int, as the 0: JSON then reads `50`, never `50` here and `50.0` there
    # (jq 1.6 prints 50.0 as 50, jq 1.7 as 50.0), and the CLI prints 50%.
    return int(percent) if percent.is_integer() else percent


def _whole(percent: float) -> float:
    # A whole number as an int: JSON then reads `50` everywhere, never `50.0` here and there.
    return int(percent) if float(percent).is_integer() else percent


def completed_percent(state: Mapping[str, Any]) -> float:
    """Return how much of the workflow is done, for a person, to 2 decimals (0 with no steps).

    Steps completed or skipped of all steps, plus the running step's own reported percent as
    a share of one step: a one-step workflow with nothing done is 0, not 100.
    """
    steps = state.get("steps") or ()
    if not steps:
        return 0
    done = 0.0
    for step in steps:
        status = step.get("status")
        if status in SETTLED_STEPS:
            done += 1
        elif status == "in_progress":
            progress = step.get("progress")
            percent = progress.get("percent") if isinstance(progress, dict) else None
            if isinstance(percent, (int, float)) and not isinstance(percent, bool):
                done += min(max(percent, 0), 100) / 100
    return _whole(round(done / len(steps) * 100, 2))


def summarize(state: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return the summary the contract defines for a state, or for no state."""
    if state is None:
        return {"active": False, "workflow_id": None, "status": None}
    return {
        "active": is_active(state),
        "workflow_id": state["workflow_id"],
        "status": state["status"],
        "current_step": state["current_step"],
        "total_steps": len(state["steps"]),
        "progress_percent": progress_percent(state),
        "completed_percent": completed_percent(state),
        "start_time": state["start_time"],
        "last_update": state["last_update"],
    }


# --- writes: each returns the new state, or None when the write changes nothing ------------


def keep_run_fields(current: Mapping[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """Return `new` with the run fields (RUN_FIELDS, STEP_RUN_FIELDS) as stored.

    A client's write never sets, changes or drops them: what it sends for them is replaced by
    the stored values of the same workflow (by step position), or dropped for a new one.
    """
    same = current is not None and current.get("workflow_id") == new.get("workflow_id")
    kept = {key: value for key, value in new.items() if key not in RUN_FIELDS}
    if same:
        assert current is not None
        kept.update((key, current[key]) for key in RUN_FIELDS if key in current)
    steps = kept.get("steps")
    if not isinstance(steps, list):
        return kept
    stored = current.get("steps") if same and current is not None else None
    stored = stored if isinstance(stored, list) else []
    if not any(
        isinstance(step, dict) and any(key in step for key in STEP_RUN_FIELDS)
        for step in (*steps, *stored)
    ):
        return kept
    rebuilt = []
    for position, step in enumerate(steps):
        if not isinstance(step, dict):
            rebuilt.append(step)
            continue
        clean = {key: value for key, value in step.items() if key not in STEP_RUN_FIELDS}
        if position < len(stored) and isinstance(stored[position], dict):
            clean.update((k, stored[position][k]) for k in STEP_RUN_FIELDS if k in stored[position])
        rebuilt.append(clean)
    kept["steps"] = rebuilt
    return kept


def _refuse_blocked(current: Mapping[str, Any] | None, fields: Mapping[str, Any]) -> None:
    """Raise InvalidState when a client's fields set `blocked` that the stored state lacks."""
    rule = "blocked is set only by the server, when a step asks the person"
    if fields.get("status") == BLOCKED and (current is None or current.get("status") != BLOCKED):
        raise InvalidState("status", rule)
    steps = fields.get("steps")
    if not isinstance(steps, list):
        return
    stored = (current or {}).get("steps") or []
    for position, step in enumerate(steps):
        if isinstance(step, dict) and step.get("status") == BLOCKED:
            before = stored[position] if position < len(stored) else None
            if not isinstance(before, dict) or before.get("status") != BLOCKED:
                raise InvalidState(f"steps[{position}].status", rule)


def check_if_match(current: Mapping[str, Any] | None, if_match: frozenset[str] | None) -> None:
    """Raise PreconditionFailed unless If-Match (a set of versions, or "*") fits `current`."""
    if if_match is None:
        return
    if current is None:
        raise PreconditionFailed("If-Match was given but there is no stored state")
    if "*" in if_match or str(current["version"]) in if_match:
        return
    raise PreconditionFailed(
        f"If-Match does not match the stored version {current['version']}; reload and retry"
    )


def _same_content(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Compare two states, ignoring the server-owned fields."""
    strip = set(SERVER_FIELDS)
    return {k: v for k, v in a.items() if k not in strip} == {
        k: v for k, v in b.items() if k not in strip
    }


def _guard_finished(current: Mapping[str, Any], candidate: Mapping[str, Any]) -> bool:
    """Return True when `candidate` repeats finished `current` exactly; raise if it changes it."""
    if _same_content(current, candidate):
        return True
    raise WorkflowFinished(
        f"Workflow {current['workflow_id']} is {current['status']}; a finished workflow is final"
    )


def apply_save(
    current: Mapping[str, Any] | None,
    candidate: dict[str, Any],
    body: Mapping[str, Any],
    if_match: frozenset[str] | None = None,
) -> dict[str, Any] | None:
    """Decide a POST: the state to store, or None when it repeats a finished state exactly."""
    check_if_match(current, if_match)
    if current is None or not is_finished(current):
        return candidate
    if current["workflow_id"] != candidate["workflow_id"]:
        return candidate
    if "start_time" not in body:
        # The server stamped start_time; a repeat without it still means the same state.
        candidate = {**candidate, "start_time": current["start_time"]}
    _guard_finished(current, candidate)
    return None


def _check_guard(current: Mapping[str, Any], guard: Any) -> None:
    if guard is None:
        return
    if not isinstance(guard, str):
        raise InvalidState("workflow_id", "must be a string")
    if guard != current["workflow_id"]:
        raise WorkflowMismatch(
            f"workflow_id {guard!r} is not the stored workflow {current['workflow_id']!r}"
        )


def parse_step_index(text: str) -> int:
    """Return the step index from a URL segment, or raise InvalidIndex.

    No workflow has more than MAX_STEPS steps, so an index past that is refused before any
    stored state is looked at (If-Match, a finished workflow): it is a bad request whatever
    is stored.
    """
    if not text.isascii() or not text.isdigit() or len(text) > 9 or int(text) >= schema.MAX_STEPS:
        raise InvalidIndex(
            f"Step index must be a whole number from 0 to {schema.MAX_STEPS - 1}, got {text[:20]!r}"
        )
    return int(text)


def parse_step_change(body: Any) -> dict[str, Any]:
    """Validate a step PATCH body before any storage work; return its parts."""
    if not isinstance(body, dict) or not body:
        raise StateRequired("Step data is required: send a JSON object with a 'status'")
    try:
        schema.check_step_change(body)
    except schema.FieldError as error:
        raise InvalidState(error.field, error.rule) from None
    return {
        "status": body["status"],
        "data": body.get("data"),
        "has_data": "data" in body,
        "guard": body.get("workflow_id"),
        "options": {key: body[key] for key in STEP_OPTIONS if key in body},
    }


def apply_step(
    current: Mapping[str, Any] | None,
    index: int,
    change: Mapping[str, Any],
    *,
    now: datetime,
    if_match: frozenset[str] | None = None,
) -> dict[str, Any] | None:
    """Decide a step PATCH: set one step's status (and data) and make it the current step."""
    if current is None:
        raise NoWorkflow("There is no workflow state to update")
    check_if_match(current, if_match)
    _check_guard(current, change["guard"])
    steps = current["steps"]
    if index >= len(steps):
        raise InvalidIndex(
            f"Step index {index} is out of range: the workflow has {len(steps)} steps"
        )
    step = dict(steps[index])
    step["status"] = change["status"]
    if change["has_data"] and change["data"] is not None:
        step["data"] = change["data"]
    step.update(change["options"])
    new = dict(current)
    new["steps"] = [*steps[:index], step, *steps[index + 1 :]]
    new["current_step"] = index
    if is_finished(current):
        _guard_finished(current, new)
        return None
    new["last_update"] = format_time(now)
    return new


def apply_merge(
    current: Mapping[str, Any] | None,
    body: Any,
    *,
    now: datetime,
    if_match: frozenset[str] | None = None,
) -> dict[str, Any] | None:
    """Decide a merge PATCH: replace top-level fields, then hold the result to the POST rules."""
    fields = require_object(body)
    if current is None:
        raise NoWorkflow("There is no workflow state to update")
    check_if_match(current, if_match)
    _check_guard(current, fields.get("workflow_id"))
    _refuse_blocked(current, fields)
    new = dict(current)
    new.update((k, v) for k, v in fields.items() if k not in SERVER_FIELDS)
    # Only an explicit null clears it: a stored secret no key could open reads as None, and a
    # merge that doesn't mention it must leave it for the storage layer to keep sealed.
    if "ssh_connection" in fields and fields["ssh_connection"] is None:
        new.pop("ssh_connection", None)
    validate(new, merged=True)
    if is_finished(current):
        _guard_finished(current, new)
        return None
    new["last_update"] = format_time(now)
    return new


def newly_finished(current: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> bool:
    """Tell whether a write finishes a workflow (so it belongs in the history once)."""
    if not is_finished(new):
        return False
    assert new is not None
    return not (
        current is not None
        and is_finished(current)
        and current["workflow_id"] == new["workflow_id"]
    )
