"""The engine (service/runner/engine.py) on every backend, in this process: a run's steps in
order, failures, the allow-list of step endpoints, and the ways an attempt stops early (a
cancel, a takeover, a stopping process), each within a second and writing nothing after."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from service import runs, schema
from service.config import origin
from service.runner.engine import (
    CANCELLED_OUTCOME,
    COMPLETED,
    FAILED_OUTCOME,
    RELEASED,
    SUPERSEDED,
    RunResult,
    RunSettings,
    run_workflow,
)
from service.runner.steps import StepSettings
from service.runs import Fence
from service.storage import StateStore
from tests.support import wait_until
from tests.support.endpoints import StepEndpoints
from tests.support.runs import (
    OWNER,
    open_test_store,
    plan,
    step_running,
    store_config,
    wait_for_state,
)

LEASE = 3.0
# The contract's "within 1 s".
BUDGET = 1.0


@pytest.fixture(scope="module")
def endpoints() -> Iterator[StepEndpoints]:
    server = StepEndpoints().start()
    yield server
    server.close()


@pytest.fixture
def store(backend: dict[str, Any]) -> Iterator[StateStore]:
    opened = open_test_store(backend)
    yield opened
    opened.close()


def settings(*origins: str, **step: Any) -> RunSettings:
    step_settings = StepSettings(
        **{"self_url": "http://127.0.0.1:1", "timeout": 10.0, "demo_seconds": 0.0, **step}
    )
    return RunSettings(LEASE, step_settings, frozenset(origin(o) for o in origins))


def start(store: StateStore, *endpoints: str | None, workflow_id: str = "wf") -> Fence:
    """Create a workflow with these steps and queue its run; return the run's fence."""
    store.create(OWNER, {"workflow_id": workflow_id, "steps": plan(*endpoints)})
    return runs.fence_of(store.request_run(OWNER, workflow_id, lease=LEASE).state)


def in_background(
    store: StateStore, attempt: Fence, run_settings: RunSettings, **extra: Any
) -> Future[RunResult]:
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(run_workflow, store, OWNER, "wf", attempt, run_settings, **extra)
    pool.shutdown(wait=False)
    return future


def hung_up(endpoints: StepEndpoints, seen: int) -> float:
    """Return when the next caller of /hold hung up (after the `seen` first ones)."""
    return wait_until(lambda: endpoints.hangups()[seen:], timeout=5)[0]


def test_a_run_performs_each_step_in_order_and_completes(store: StateStore):
    attempt = start(store, None, None, None)
    result = run_workflow(store, OWNER, "wf", attempt, settings())
    assert result.outcome == COMPLETED
    state = store.get(OWNER, "wf").state
    assert state["status"] == "completed" and state["run"]["status"] == "done"
    assert [s["status"] for s in state["steps"]] == ["completed"] * 3
    assert [s["attempts"] for s in state["steps"]] == [1, 1, 1]
    assert [s["data"] for s in state["steps"]] == [{"message": f"s{i} done"} for i in range(3)]


def test_a_run_skips_settled_steps(store: StateStore, endpoints: StepEndpoints):
    store.create(
        OWNER,
        {
            "workflow_id": "wf",
            "steps": [
                {"action": "a", "status": "completed", "endpoint": f"{endpoints.url}/ok?a"},
                {"action": "b", "status": "skipped", "endpoint": f"{endpoints.url}/ok?b"},
                {"action": "c", "status": "pending", "endpoint": f"{endpoints.url}/ok?c"},
            ],
        },
    )
    attempt = runs.fence_of(store.request_run(OWNER, "wf", lease=LEASE).state)
    before = len(endpoints.calls("/ok"))
    assert run_workflow(store, OWNER, "wf", attempt, settings(endpoints.url)).outcome == COMPLETED
    called = endpoints.calls("/ok")[before:]
    assert [call["body"]["action"] for call in called] == ["c"]


def test_a_failing_step_fails_the_workflow_with_its_message(
    store: StateStore, endpoints: StepEndpoints
):
    attempt = start(store, f"{endpoints.url}/ok", f"{endpoints.url}/fail", None)
    result = run_workflow(store, OWNER, "wf", attempt, settings(endpoints.url))
    assert result.outcome == FAILED_OUTCOME
    state = store.get(OWNER, "wf").state
    assert state["status"] == "failed" and state["run"]["status"] == "done"
    assert [s["status"] for s in state["steps"]] == ["completed", "failed", "pending"]
    assert state["steps"][1]["data"] == {"free": 0, "message": "disk full"}


@pytest.mark.parametrize("path", ["/deep", "/nan"])
def test_an_answer_no_client_could_store_fails_its_step_and_the_workflow_stays_readable(
    store: StateStore, endpoints: StepEndpoints, path: str
):
    attempt = start(store, f"{endpoints.url}{path}", None)
    assert run_workflow(store, OWNER, "wf", attempt, settings(endpoints.url)).outcome == (
        FAILED_OUTCOME
    )
    for _ in range(2):  # a read that moved the workflow aside as corrupt would lose it here
        snapshot = store.get(OWNER, "wf")
        assert snapshot.state is not None
        schema.loads(snapshot.json)  # what a browser's JSON.parse reads, no NaN or Infinity
    step = snapshot.state["steps"][0]
    assert step["status"] == "failed"
    assert step["data"]["message"].startswith(f"Step endpoint {endpoints.url}{path} answered 200")


def test_an_endpoint_outside_the_allowed_origins_is_never_called(
    store: StateStore, endpoints: StepEndpoints
):
    target = f"{endpoints.url}/ok?secret-target"
    store.create(
        OWNER,
        {"workflow_id": "wf", "steps": plan(target), "ssh_connection": "ssh root@10.0.0.9"},
    )
    attempt = runs.fence_of(store.request_run(OWNER, "wf", lease=LEASE).state)
    result = run_workflow(store, OWNER, "wf", attempt, settings("https://ops.example.com"))
    assert result.outcome == FAILED_OUTCOME
    message = store.get(OWNER, "wf").state["steps"][0]["data"]["message"]
    assert (
        f"origin http://127.0.0.1:{endpoints.port} is neither in WORKFLOW_STEP_ORIGINS" in message
    )
    assert not [call for call in endpoints.calls() if "secret-target" in json.dumps(call)]


def test_the_allowed_origins_come_from_the_setting_and_the_steps_file(tmp_path, endpoints):
    steps_file = tmp_path / "steps.json"
    steps_file.write_text(json.dumps([{"action": "a", "endpoint": "https://Ops.Example.com/a"}]))
    config = {
        **store_config({"STATE_URL": f"file://{tmp_path}/s.json"}),
        "STEPS_FILE": str(steps_file),
        "STEP_ORIGINS": (origin(endpoints.url),),
        "STATE_TOKEN": "t0ken",
    }
    made = RunSettings.from_config(config)
    assert made.origins == {"https://ops.example.com:443", origin(endpoints.url)}
    # Paths on this service carry the bearer token; absolute endpoints never do.
    assert made.step.self_headers == {"Authorization": "Bearer t0ken"}


def test_a_cancel_interrupts_the_step_call_within_a_second(
    store: StateStore, endpoints: StepEndpoints
):
    attempt = start(store, f"{endpoints.url}/hold", None)
    hangups = len(endpoints.hangups())
    future = in_background(store, attempt, settings(endpoints.url))
    wait_for_state(store, "wf", step_running(0))
    cancelled_at = time.monotonic()
    cancelled = store.cancel(OWNER, "wf").state
    assert future.result(timeout=5).outcome == CANCELLED_OUTCOME
    assert time.monotonic() - cancelled_at < BUDGET
    assert hung_up(endpoints, hangups) - cancelled_at < BUDGET
    assert store.get(OWNER, "wf").state == cancelled  # the runner wrote nothing after


def test_a_superseded_runner_stops_within_a_second_and_writes_nothing(
    store: StateStore, endpoints: StepEndpoints
):
    attempt = start(store, f"{endpoints.url}/hold", None)
    hangups = len(endpoints.hangups())
    future = in_background(store, attempt, settings(endpoints.url))
    wait_for_state(store, "wf", step_running(0))
    # Another runner's monitor took the run (as a takeover would, but without waiting).
    taken_at = time.monotonic()
    taken = store.release_run(OWNER, "wf", attempt, lease=LEASE).state
    result = future.result(timeout=5)
    assert result.outcome == SUPERSEDED
    assert hung_up(endpoints, hangups) - taken_at < BUDGET
    assert store.get(OWNER, "wf").state == taken


def test_a_stopping_process_hands_its_run_back(store: StateStore, endpoints: StepEndpoints):
    attempt = start(store, f"{endpoints.url}/hold", None)
    stop = threading.Event()
    future = in_background(store, attempt, settings(endpoints.url), stop=stop)
    wait_for_state(store, "wf", step_running(0))
    stopped_at = time.monotonic()
    stop.set()
    result = future.result(timeout=5)
    assert time.monotonic() - stopped_at < BUDGET
    following = attempt._replace(attempt=attempt.attempt + 1)
    assert (result.outcome, result.next_fence) == (RELEASED, following)
    state = store.get(OWNER, "wf").state
    assert (state["run"]["status"], state["run"]["attempt"]) == ("queued", following.attempt)
    assert state["steps"][0]["status"] == "in_progress"  # the next attempt runs it again
    # And the next attempt does, counting it.
    result = run_workflow(store, OWNER, "wf", following, settings(endpoints.url, timeout=0.5))
    assert result.outcome == FAILED_OUTCOME  # /hold never answers: timed out
    assert store.get(OWNER, "wf").state["steps"][0]["attempts"] == 2


def test_an_attempt_that_is_not_queued_is_not_run(store: StateStore):
    attempt = start(store, None)
    store.claim_run(OWNER, "wf", attempt, "other:1", lease=LEASE)
    before = store.get(OWNER, "wf").state
    assert run_workflow(store, OWNER, "wf", attempt, settings()).outcome == SUPERSEDED
    following = attempt._replace(attempt=attempt.attempt + 1)
    assert run_workflow(store, OWNER, "wf", following, settings()).outcome == SUPERSEDED
    assert store.get(OWNER, "wf").state == before
