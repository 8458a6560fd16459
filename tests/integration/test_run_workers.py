"""Server runs on a real redis-server with real `python -m service worker` processes: a worker
killed mid-step is resumed by another, a paused one that wakes after a takeover writes nothing,
a cancel sent to another instance stops the step's call within a second, twenty runs share four
workers, a stopping worker hands its run back, and the CLI starts and cancels runs."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from service import create_app
from service.run_api import runs_of
from service.storage import RESYNC, StateStore
from service.store import store_of
from tests.support import ROOT, RedisServer, wait_until
from tests.support.endpoints import StepEndpoints
from tests.support.runs import OWNER, finished, plan, step_running, wait_for_state
from tests.support.workers import Workers

LEASE = 1.5
# Contract section 9: resumed within lease + 5 s of the kill; a cancel acts within 1 s.
RESUME_BUDGET = LEASE + 5
CANCEL_BUDGET = 1.0


@pytest.fixture(scope="module")
def endpoints() -> Iterator[StepEndpoints]:
    server = StepEndpoints().start()
    yield server
    server.close()


@pytest.fixture
def redis(redis_server: RedisServer) -> RedisServer:
    redis_server.flush()
    return redis_server


@pytest.fixture
def env(redis: RedisServer, endpoints: StepEndpoints) -> dict[str, str]:
    return {
        "WORKFLOW_STATE_URL": redis.url,
        "WORKFLOW_RUN_LEASE": str(LEASE),
        "WORKFLOW_STEP_ORIGINS": endpoints.url,
        "WORKFLOW_DEMO_STEP_SECONDS": "0.2",
    }


@pytest.fixture
def workers(env: dict[str, str]) -> Iterator[Workers]:
    owned = Workers(env)
    yield owned
    owned.close()


def instance(env: dict[str, str]) -> Flask:
    """Return an app on the test's Redis: one instance of the service."""
    return create_app({"TESTING": True}, environ=env)


@pytest.fixture
def apps(env: dict[str, str]) -> Iterator[list[Flask]]:
    made = [instance(env), instance(env)]
    yield made
    for app in made:
        runs_of(app).close()
        store_of(app).close()


def start_run(app: Flask, workflow_id: str, steps: list[dict[str, Any]]) -> None:
    client = app.test_client()
    body = {"workflow_id": workflow_id, "steps": steps}
    assert client.post("/workflow/state", json=body).status_code == 200
    assert client.post(f"/workflows/{workflow_id}/run").status_code == 202


def runner_pid(state: dict[str, Any]) -> int:
    return int(state["run"]["runner"].rsplit(":", 1)[1])


def calls_by_index(endpoints: StepEndpoints, workflow_id: str) -> dict[int, list[int]]:
    """Return, per step index, the attempts of the calls its endpoint received."""
    found: dict[int, list[int]] = {}
    for call in endpoints.calls():
        body = call["body"]
        if isinstance(body, dict) and body.get("workflow_id") == workflow_id:
            found.setdefault(body["index"], []).append(body["attempt"])
    return found


class Recorder:
    """Every version of one workflow the store publishes, with when this process saw it."""

    def __init__(self, store: StateStore, workflow_id: str) -> None:
        self.seen: list[tuple[float, dict[str, Any]]] = []
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._follow, args=(store, workflow_id), daemon=True)
        self.thread.start()
        assert self.ready.wait(5)

    def _follow(self, store: StateStore, workflow_id: str) -> None:
        for event in store.events(self.stop):
            if event is RESYNC:
                self.ready.set()
            elif event.workflow_id == workflow_id and event.json != "null":
                self.seen.append((time.monotonic(), json.loads(event.json)))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def test_a_worker_killed_mid_step_is_resumed_and_no_completed_step_runs_again(
    workers: Workers, apps: list[Flask], endpoints: StepEndpoints
):
    workers.start()
    workers.start()
    store = store_of(apps[0])
    url = endpoints.url
    start_run(apps[0], "kill", plan(f"{url}/ok", f"{url}/ok", f"{url}/slow?seconds=2", f"{url}/ok"))
    state = wait_for_state(store, "kill", step_running(2, attempt=1))
    # Killed once its call to the step's endpoint is under way.
    wait_until(lambda: calls_by_index(endpoints, "kill").get(2) == [1])
    victim = workers.by_pid(runner_pid(state))
    killed_at = time.monotonic()
    victim.kill()
    wait_for_state(store, "kill", step_running(2, attempt=2), timeout=RESUME_BUDGET + 2)
    assert time.monotonic() - killed_at <= RESUME_BUDGET
    state = wait_for_state(store, "kill", finished, timeout=20)
    assert state["status"] == "completed"
    assert runner_pid(state) != victim.pid
    assert [step["attempts"] for step in state["steps"]] == [1, 1, 2, 1]
    # Each step completed before the kill ran exactly once; the interrupted one twice.
    assert calls_by_index(endpoints, "kill") == {0: [1], 1: [1], 2: [1, 2], 3: [2]}


def test_a_paused_worker_that_wakes_after_a_takeover_writes_nothing(
    workers: Workers, apps: list[Flask], endpoints: StepEndpoints
):
    workers.start()
    workers.start()
    store = store_of(apps[0])
    recorder = Recorder(store, "pause")
    try:
        start_run(apps[0], "pause", plan(f"{endpoints.url}/slow?seconds=3", None))
        state = wait_for_state(store, "pause", step_running(0, attempt=1))
        # Paused once its call is under way: the endpoint answers while it sleeps.
        wait_until(lambda: calls_by_index(endpoints, "pause").get(0) == [1])
        paused = workers.by_pid(runner_pid(state))
        paused.pause()
        wait_for_state(store, "pause", step_running(0, attempt=2), timeout=RESUME_BUDGET + 2)
        taken_over_at = time.monotonic()
        # The paused runner's call answers while it sleeps: on waking it holds a result it
        # would write, and its lease renewal is due.
        paused.resume()
        state = wait_for_state(store, "pause", finished, timeout=20)
    finally:
        recorder.close()
    assert state["status"] == "completed" and state["run"]["attempt"] == 2
    wait_until(lambda: "attempt 1: superseded" in paused.output(), timeout=5)
    # From the takeover on, no version carries attempt 1, and step 0 completed only when the
    # new runner's own 3 s call answered, not when the old runner woke up with its answer.
    attempts = [s.get("run", {}).get("attempt") for _, s in recorder.seen]
    takeover = attempts.index(2)
    after = recorder.seen[takeover:]
    assert all(s["run"]["attempt"] == 2 for _, s in after)
    done_at = next(t for t, s in after if s["steps"][0]["status"] == "completed")
    assert done_at - taken_over_at > 2.5
    assert calls_by_index(endpoints, "pause")[0] == [1, 2]


def test_a_cancel_sent_to_another_instance_stops_the_step_call_within_a_second(
    workers: Workers, apps: list[Flask], endpoints: StepEndpoints
):
    worker = workers.start()
    first, second = apps
    store = store_of(first)
    start_run(first, "cancel", plan(f"{endpoints.url}/hold", None))
    wait_for_state(store, "cancel", step_running(0))
    hangups = len(endpoints.hangups())
    sent_at = time.monotonic()
    response = second.test_client().post("/workflows/cancel/cancel")
    assert response.status_code == 200
    cancelled = response.get_json()["state"]
    assert cancelled["status"] == "cancelled" and cancelled["steps"][0]["status"] == "cancelled"
    hung_up = wait_until(lambda: endpoints.hangups()[hangups:], timeout=5)[0]
    assert hung_up - sent_at < CANCEL_BUDGET
    wait_until(lambda: "attempt 1: cancelled" in worker.output(), timeout=5)
    assert store.get(OWNER, "cancel").state == cancelled  # the runner wrote nothing after


def test_twenty_runs_share_four_workers_and_all_complete(
    workers: Workers, apps: list[Flask], env: dict[str, str]
):
    store = store_of(apps[0])
    names = [f"many-{n}" for n in range(20)]
    for name in names:
        start_run(apps[0], name, plan(None, None))
    assert {store.get(OWNER, name).state["run"]["status"] for name in names} == {"queued"}
    # The claim deadlines (a lease, 1.5 s) lapse while the runs wait for workers.
    workers.start(count=4, WORKFLOW_DEMO_STEP_SECONDS="0.5")
    samples: list[list[str]] = []

    def all_done() -> bool:
        current = [store.get(OWNER, name).state for name in names]
        samples.append([state["run"]["status"] for state in current])
        return all(finished(state) for state in current)

    wait_until(all_done, timeout=60, interval=0.05)
    final = [store.get(OWNER, name).state for name in names]
    assert all(state["status"] == "completed" for state in final)
    # Never more than four at once; while they ran, the others showed as queued.
    assert max(sample.count("running") for sample in samples) <= 4
    assert any(sample.count("running") > 1 and sample.count("queued") > 0 for sample in samples)
    # Jobs waited far longer than a lease, yet none was taken over, and all four workers ran.
    assert all(state["run"]["attempt"] == 1 for state in final)
    assert len({state["run"]["runner"] for state in final}) == 4


def test_a_stopping_worker_hands_its_run_to_another_at_once(
    workers: Workers, apps: list[Flask], endpoints: StepEndpoints
):
    # A long lease: a takeover would take 30 s; the hand-back takes well under 2.
    slow = workers.start(WORKFLOW_RUN_LEASE="30")
    store = store_of(apps[0])
    start_run(apps[0], "handback", plan(f"{endpoints.url}/hold", None))
    wait_for_state(store, "handback", step_running(0, attempt=1))
    other = workers.start(WORKFLOW_RUN_LEASE="30")
    stopped_at = time.monotonic()
    assert slow.terminate(timeout=10) == 0
    assert time.monotonic() - stopped_at < 2
    state = wait_for_state(store, "handback", step_running(0, attempt=2), timeout=5)
    assert runner_pid(state) == other.pid
    assert time.monotonic() - stopped_at < 3
    assert "attempt 1: released" in slow.output()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_cli_starts_and_cancels_runs(
    workers: Workers, apps: list[Flask], env: dict[str, str], endpoints: StepEndpoints
):
    # A lease longer than a loaded machine takes to start the CLI twice: a queued run whose
    # claim deadline lapsed may be requested again, and the second `run` must meet a live one.
    full_env = {**os.environ, **env, "WORKFLOW_RUN_LEASE": "30"}
    store = store_of(apps[0])
    store.create(OWNER, {"workflow_id": "by-cli", "steps": plan(None, None)})
    store.create("alice", {"workflow_id": "held", "steps": plan(f"{endpoints.url}/hold")})
    started = cli(full_env, "run", "by-cli")
    assert started.returncode == 0, started.stderr
    assert "Queued run attempt 1 of workflow by-cli" in started.stdout
    assert cli(full_env, "run", "by-cli").returncode == 2  # already queued: run_active
    unknown = cli(full_env, "run", "nope")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("workflow-state: no workflow 'nope' for owner public: ")
    workers.start(WORKFLOW_RUN_LEASE="30")
    assert wait_for_state(store, "by-cli", finished)["status"] == "completed"
    assert cli(full_env, "run", "held", "--owner", "alice").returncode == 0
    wait_for_state(store, "held", step_running(0), owner="alice")
    cancelled = cli(full_env, "--json", "cancel", "held", "--owner", "alice")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["cancelled"] is True
    assert store.get("alice", "held").state["status"] == "cancelled"


def test_a_worker_refuses_the_file_backend():
    url = "file:///tmp/wss-no-worker/state.json"
    result = cli({**os.environ, "WORKFLOW_STATE_URL": url}, "worker", "--burst")
    assert result.returncode == 2
    assert "runs execute in the web processes" in result.stderr


def acl_commands(password: str) -> list[list[str]]:
    """Return deploy/redis.md's two ACL SETUSER commands (the service's, and runs' additions)."""
    text = (ROOT / "deploy" / "redis.md").read_text()
    found = []
    for line in text.splitlines():
        if line.startswith(("ACL SETUSER", "redis-cli ACL SETUSER")):
            words = shlex.split(line.replace("CHANGE-ME-TO-A-LONG-RANDOM-PASSWORD", password))
            found.append(words[1:] if words[0] == "redis-cli" else words)
    assert len(found) == 2, found
    return found


def test_runs_work_as_the_acl_user_of_redis_md(own_redis: RedisServer, endpoints: StepEndpoints):
    password = "runs-acl-password-for-tests"
    for command in acl_commands(password):
        own_redis.client().execute_command(*command)
    url = f"redis://workflow-state:{password}@127.0.0.1:{own_redis.port}/3"
    env = {
        "WORKFLOW_STATE_URL": url,
        "WORKFLOW_RUN_LEASE": str(LEASE),
        "WORKFLOW_DEMO_STEP_SECONDS": "0.1",
        "WORKFLOW_STEP_ORIGINS": endpoints.url,
    }
    owned = Workers(env)
    app = instance(env)
    try:
        owned.start(count=2)  # a pool, as deployments scale
        store = store_of(app)
        start_run(app, "acl", plan(None, f"{endpoints.url}/ok"))
        assert wait_for_state(store, "acl", finished)["status"] == "completed"
        assert cli({**os.environ, **env}, "run", "acl").returncode == 2  # finished is final
        text = app.test_client().get("/metrics").get_data(as_text=True)
        assert 'workflow_runs_total{outcome="completed"} 1.0' in text
        assert "NoPermission" not in owned.output()
    finally:
        runs_of(app).close()
        store_of(app).close()
        owned.close()
