"""A workflow deleted and created again under the same id is a new incarnation: a paused runner
of the old one that wakes up writes nothing into the new one, and the new one's run starts at
once (on Redis its jobs do not collide with the old one's).

The runner of the first incarnation is paused (SIGSTOP) in the middle of its second step; the
workflow is deleted and created again with other steps and run; the old runner is resumed while
the new one runs. Each new step must be called once, answer for itself, and the run must finish
under its first attempt."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.storage import StateStore, open_store
from tests.support import Gunicorn, RedisServer, http, wait_until
from tests.support.endpoints import StepEndpoints
from tests.support.runs import finished, plan, wait_for_state
from tests.support.workers import Workers

# Long enough that a run waiting for a takeover (the old defect on Redis) is plainly late.
LEASE = 8.0
START_BUDGET = 2.0


@pytest.fixture
def endpoints() -> Iterator[StepEndpoints]:
    server = StepEndpoints().start()
    yield server
    server.close()


def steps(endpoints: StepEndpoints, **seconds: float) -> list[dict[str, Any]]:
    """Steps named by `seconds`' keys whose endpoint answers after that long, naming them."""
    made = plan(*(f"{endpoints.url}/echo?seconds={s}" for s in seconds.values()))
    for step, action in zip(made, seconds, strict=True):
        step["action"] = action
    return made


def calls(endpoints: StepEndpoints, action: str) -> int:
    return sum(
        1
        for call in endpoints.calls("/echo")
        if isinstance(call["body"], dict) and call["body"].get("action") == action
    )


def create_and_run(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create a workflow with `"run": true`; return the state created."""
    status, _, answer = http("POST", f"{url}/workflows", {**body, "run": True})
    assert status == 201, answer
    return answer["state"]


def runner_pid(state: dict[str, Any]) -> int:
    return int(state["run"]["runner"].rsplit(":", 1)[1])


def check_new_incarnation(
    url: str,
    store: StateStore,
    endpoints: StepEndpoints,
    pause: Callable[[int], None],
    go_on: Callable[[], None],
) -> None:
    """Run a first incarnation, pause its runner mid-step, create the workflow again, resume the
    old runner while the new one runs; check the new incarnation ran as if alone."""
    first = create_and_run(
        url, {"workflow_id": "fs1", "steps": steps(endpoints, a=0.3, b=2.5, c=0.3)}
    )
    assert first["incarnation"] == first["version"]
    second = wait_for_state(
        store, "fs1", lambda s: s["steps"][1]["status"] == "in_progress", timeout=15
    )
    wait_until(lambda: calls(endpoints, "b") == 1, timeout=5)
    pause(runner_pid(second))
    try:
        assert http("DELETE", f"{url}/workflows/fs1")[0] == 200
        created_at = time.monotonic()
        again = create_and_run(
            url, {"workflow_id": "fs1", "steps": steps(endpoints, x=0.3, y=3, z=1)}
        )
        assert again["incarnation"] == again["version"] > first["incarnation"]
        started = wait_for_state(
            store, "fs1", lambda s: s["steps"][0]["status"] != "pending", timeout=LEASE
        )
        assert time.monotonic() - created_at < START_BUDGET, "the new run waited for a lease"
        assert started["incarnation"] == again["incarnation"]
        # The old runner wakes while the new one runs y; its step's answer is in by then.
        wait_for_state(store, "fs1", lambda s: s["steps"][1]["status"] == "in_progress")
    finally:
        go_on()
    state = wait_for_state(store, "fs1", finished, timeout=20)
    assert state["status"] == "completed"
    assert [step["data"]["action"] for step in state["steps"]] == ["x", "y", "z"]
    assert state["run"]["attempt"] == 1  # never taken over, never superseded
    assert [calls(endpoints, action) for action in "xyz"] == [1, 1, 1]
    assert calls(endpoints, "c") == 0  # the old incarnation's last step never ran


def test_a_paused_web_runner_writes_nothing_into_the_workflow_created_again(
    tmp_path: Path, endpoints: StepEndpoints
):
    state_url = f"file://{tmp_path}/state/workflow_state.json"
    env = {
        "WORKFLOW_STATE_URL": state_url,
        "WORKFLOW_RUN_LEASE": str(LEASE),
        "WORKFLOW_STEP_ORIGINS": endpoints.url,
    }
    server = Gunicorn(env, workers=2).start()
    store = open_store(state_url)
    paused: list[int] = []

    def pause(pid: int) -> None:
        assert pid in server.worker_pids()
        os.kill(pid, signal.SIGSTOP)
        paused.append(pid)

    def go_on() -> None:
        while paused:
            os.kill(paused.pop(), signal.SIGCONT)

    try:
        check_new_incarnation(server.url, store, endpoints, pause, go_on)
        wait_until(lambda: "attempt 1: superseded" in server.output(), timeout=10)
    finally:
        go_on()
        store.close()
        server.stop()


def test_a_paused_worker_writes_nothing_into_the_workflow_created_again_which_runs_at_once(
    redis_server: RedisServer, endpoints: StepEndpoints
):
    redis_server.flush()
    env = {
        "WORKFLOW_STATE_URL": redis_server.url,
        "WORKFLOW_RUN_LEASE": str(LEASE),
        "WORKFLOW_STEP_ORIGINS": endpoints.url,
    }
    workers = Workers(env)
    server = Gunicorn(env, workers=1).start()
    store = open_store(redis_server.url)

    def go_on() -> None:
        for worker in workers.started:
            if worker.paused:
                worker.resume()

    try:
        workers.start()
        workers.start()
        pause = lambda pid: workers.by_pid(pid).pause()  # noqa: E731
        check_new_incarnation(server.url, store, endpoints, pause, go_on)
        wait_until(lambda: "attempt 1: superseded" in workers.output(), timeout=10)
    finally:
        store.close()
        server.stop()
        workers.close()
