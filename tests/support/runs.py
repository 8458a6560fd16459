"""What the run tests share: a store or an app on a test's backend, workflows to run, and
waiting for a run to reach a state."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from service import runs
from service.config import from_env
from service.runs import Fence
from service.storage import StateStore
from service.store import build_store
from tests.support.processes import http, wait_until

OWNER = "public"


def store_config(backend: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """Return a full config (defaults, then the test backend's storage, then `overrides`)."""
    return {**from_env({}, cwd="/nonexistent"), **backend, **overrides}


def open_test_store(backend: dict[str, Any], **overrides: Any) -> StateStore:
    """Open a store on the test's backend (the conftest `backend` fixture's config)."""
    return build_store(store_config(backend, **overrides))


def plan(*endpoints: str | None, status: str = "pending") -> list[dict[str, Any]]:
    """Return one step per endpoint (None: the built-in simulator), named s0, s1, ..."""
    made = []
    for index, endpoint in enumerate(endpoints):
        step: dict[str, Any] = {"action": f"s{index}", "status": status, "label": f"S{index}"}
        if endpoint is not None:
            step["endpoint"] = endpoint
        made.append(step)
    return made


def fence(store: StateStore, attempt: int, workflow_id: str = "wf", owner: str = OWNER) -> Fence:
    """Return the fence of attempt `attempt` of the workflow as stored (its incarnation)."""
    state = store.get(owner, workflow_id).state
    return Fence(0 if state is None else runs.incarnation_of(state), attempt)


def calling(
    store: StateStore, workflow_id: str = "wf", owner: str = OWNER, steps: int = 2
) -> tuple[Fence, str]:
    """Store a workflow whose run is calling its first step, as a runner leaves it; return the
    run's fence and the call's progress token."""
    plan = [{"action": f"step{n}", "status": "pending"} for n in range(steps)]
    created = store.create(owner, {"workflow_id": workflow_id, "steps": plan}, run_lease=60)
    held = Fence(created.state["incarnation"], 1)
    store.claim_run(owner, workflow_id, held, "test:1", lease=60)
    token = runs.make_progress_token(owner, held, "t" + workflow_id)
    store.runner_step(owner, workflow_id, held, 0, "in_progress", token_hash=runs.token_hash(token))
    return held, token


def later(seconds: float) -> datetime:
    """Return the moment `seconds` from now (UTC)."""
    return datetime.now(UTC) + timedelta(seconds=seconds)


def wait_for_state(
    store: StateStore,
    workflow_id: str,
    condition: Callable[[dict[str, Any]], Any],
    timeout: float = 20,
    owner: str = OWNER,
) -> dict[str, Any]:
    """Poll the workflow until `condition(state)` holds; return that state."""

    def check() -> dict[str, Any] | None:
        state = store.get(owner, workflow_id).state
        return state if state is not None and condition(state) else None

    return wait_until(check, timeout=timeout, interval=0.02)


def finished(state: dict[str, Any]) -> bool:
    """Tell whether a workflow is completed, failed or cancelled."""
    return state["status"] in ("completed", "failed", "cancelled")


def step_running(index: int, attempt: int | None = None) -> Callable[[dict[str, Any]], bool]:
    """Return a condition: step `index` is in progress; with `attempt`, started by the runner
    of that run attempt, for the `attempt`-th time (a step first interrupted, then resumed)."""

    def condition(state: dict[str, Any]) -> bool:
        step = state["steps"][index]
        if step["status"] != "in_progress":
            return False
        if attempt is None:
            return True
        run = state.get("run") or {}
        return (
            run.get("attempt") == attempt
            and run.get("status") == "running"
            and step.get("attempts") == attempt
        )

    return condition


def run_path_steps(base: str, workflow_id: str, timeout: float = 30) -> dict[str, Any]:
    """Create and run, through the server at `base`, a workflow whose steps' endpoints are
    paths on it (the built-in simulator's); return the state once the run has ended."""
    steps = [
        {"action": action, "status": "pending", "endpoint": f"/workflow/actions/{action}"}
        for action in ("test_ssh", "set_ui_home")
    ]
    body = {"workflow_id": workflow_id, "run": True, "steps": steps}
    status, _, answer = http("POST", f"{base}/workflows", body)
    assert status == 201, answer

    def ended() -> dict[str, Any] | None:
        state = http("GET", f"{base}/workflows/{workflow_id}")[2]["state"]
        return state if finished(state) else None

    return wait_until(ended, timeout=timeout, interval=0.1)
