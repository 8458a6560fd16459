"""Server runs on the file backend under the real server (gunicorn, gevent workers): the web
processes run the steps themselves, and when the worker running a workflow is killed another
one resumes it; a worker told to stop hands its run over at once."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.storage import StateStore, open_store
from tests.support import Gunicorn, http, wait_until
from tests.support.runs import finished, plan, step_running, wait_for_state

LEASE = 1.5
RESUME_BUDGET = LEASE + 5


@pytest.fixture
def state_url(tmp_path: Path) -> str:
    return f"file://{tmp_path}/state/workflow_state.json"


@pytest.fixture
def server(state_url: str) -> Iterator[Gunicorn]:
    env = {
        "WORKFLOW_STATE_URL": state_url,
        "WORKFLOW_RUN_LEASE": str(LEASE),
        "WORKFLOW_DEMO_STEP_SECONDS": "1",
        "WORKFLOW_RUN_WORKERS": "2",
    }
    started = Gunicorn(env, workers=2).start()
    yield started
    started.stop()


@pytest.fixture
def store(state_url: str) -> Iterator[StateStore]:
    opened = open_store(state_url)
    yield opened
    opened.close()


def start_run(server: Gunicorn, workflow_id: str, steps: list[dict[str, Any]]) -> None:
    body = {"workflow_id": workflow_id, "steps": steps}
    assert http("POST", f"{server.url}/workflow/state", body)[0] == 200
    assert http("POST", f"{server.url}/workflows/{workflow_id}/run")[0] == 202


def runner_pid(state: dict[str, Any]) -> int:
    return int(state["run"]["runner"].rsplit(":", 1)[1])


def test_another_web_worker_resumes_the_run_of_a_killed_one(server: Gunicorn, store: StateStore):
    start_run(server, "wf", plan(None, None, None, None))
    state = wait_for_state(store, "wf", step_running(1, attempt=1), timeout=15)
    victim = runner_pid(state)
    assert victim in server.worker_pids()
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    state = wait_for_state(store, "wf", step_running(1, attempt=2), timeout=RESUME_BUDGET + 2)
    assert time.monotonic() - killed_at <= RESUME_BUDGET
    assert runner_pid(state) != victim
    state = wait_for_state(store, "wf", finished, timeout=20)
    assert state["status"] == "completed"
    assert [step["attempts"] for step in state["steps"]] == [1, 2, 1, 1]


def test_a_stopping_web_worker_hands_its_run_over_at_once(server: Gunicorn, store: StateStore):
    start_run(server, "wf", plan(None, None, None))
    state = wait_for_state(store, "wf", step_running(1, attempt=1), timeout=15)
    stopping = runner_pid(state)
    stopped_at = time.monotonic()
    os.kill(stopping, signal.SIGTERM)  # what gunicorn does to a worker on HUP or max_requests
    state = wait_for_state(store, "wf", step_running(1, attempt=2), timeout=5)
    assert time.monotonic() - stopped_at < 4
    assert runner_pid(state) != stopping
    assert wait_for_state(store, "wf", finished, timeout=20)["status"] == "completed"
    wait_until(lambda: "attempt 1: released" in server.output(), timeout=5)
