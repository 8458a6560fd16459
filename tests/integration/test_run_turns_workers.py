"""Turns between owners (WORKFLOW_RUNS_PER_OWNER) on a real redis-server with real `python -m
service worker` processes: the limit holds and one owner's runs start in the order they were
started, another owner's run starts within a second of a free runner behind 200 queued runs,
cancelled waiting runs never run, and a worker SIGKILLed while its run holds a turn leaks none."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from service import create_app
from service.model import parse_time
from service.run_api import runs_of
from service.runner.control import RunControl
from service.store import store_of
from tests.support import RedisServer, wait_until
from tests.support.endpoints import StepEndpoints
from tests.support.runs import finished, plan, step_running, wait_for_state
from tests.support.workers import Workers

pytestmark = pytest.mark.slow

LEASE = 1.5
# A queued run starts within 1 s of a free runner its owner's turn allows.
START_BUDGET = 1.0
ALICE, BOB = "alice", "bob"


@pytest.fixture(scope="module")
def endpoints() -> Iterator[StepEndpoints]:
    server = StepEndpoints().start()
    yield server
    server.close()


@pytest.fixture
def env(redis_server: RedisServer, endpoints: StepEndpoints) -> dict[str, str]:
    redis_server.flush()
    return {
        "WORKFLOW_STATE_URL": redis_server.url,
        "WORKFLOW_RUN_LEASE": str(LEASE),
        "WORKFLOW_STEP_ORIGINS": endpoints.url,
        "WORKFLOW_DEMO_STEP_SECONDS": "0.3",
    }


@pytest.fixture
def workers(env: dict[str, str]) -> Iterator[Workers]:
    owned = Workers(env)
    yield owned
    owned.close()


@pytest.fixture
def make_app(env: dict[str, str], workers: Workers) -> Iterator[Any]:
    """Make an app with a limit of runs per owner, and have the workers use it too."""
    made: list[Flask] = []

    def make(limit: int) -> RunControl:
        workers.env["WORKFLOW_RUNS_PER_OWNER"] = str(limit)
        app = create_app({"TESTING": True}, environ={**env, "WORKFLOW_RUNS_PER_OWNER": str(limit)})
        made.append(app)
        return runs_of(app)

    yield make
    for app in made:
        runs_of(app).close()
        store_of(app).close()


def start(control: RunControl, owner: str, names: list[str], steps: list[dict[str, Any]]) -> None:
    for name in names:
        control.create(owner, {"workflow_id": name, "steps": steps, "run": True})


def seconds(stamp: str) -> float:
    return parse_time(stamp).timestamp()


class Sampler:
    """Read the runs of some workflows every 20 ms: how many of them were running at once."""

    def __init__(self, control: RunControl, owner: str, names: list[str]) -> None:
        self.most = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=self._sample, args=(control, owner, names), daemon=True
        )
        self.thread.start()

    def _sample(self, control: RunControl, owner: str, names: list[str]) -> None:
        while not self.stop.wait(0.02):
            states = [control.store.get(owner, name).state for name in names]
            running = sum(1 for s in states if s and s["run"]["status"] == "running")
            self.most = max(self.most, running)

    def close(self) -> int:
        self.stop.set()
        self.thread.join(timeout=5)
        return self.most


def test_the_limit_holds_and_runs_start_in_the_order_they_were_started(
    workers: Workers, make_app: Any
):
    control = make_app(2)
    workers.start(count=4)
    names = [f"a{n:02d}" for n in range(10)]
    sampler = Sampler(control, ALICE, names)
    try:
        start(control, ALICE, names, plan(None))
        states = [wait_for_state(control.store, n, finished, owner=ALICE) for n in names]
    finally:
        most = sampler.close()
    assert most == 2  # four workers, never more than two of alice's runs on them
    assert all(state["status"] == "completed" for state in states)
    started = [seconds(state["run"]["started_at"]) for state in states]
    # Two turns free at once go to the next two runs, which two workers claim in either order:
    # a run starts no earlier than every run started two or more places before it.
    assert all(started[i] <= started[j] for j in range(len(started)) for i in range(j - 1))
    assert control.queue.turns() == []


def test_another_owner_starts_within_a_second_behind_200_queued_runs(
    workers: Workers, make_app: Any, endpoints: StepEndpoints
):
    control = make_app(1)
    workers.start(count=2)
    names = [f"a{n:03d}" for n in range(200)]
    start(control, ALICE, names, plan(f"{endpoints.url}/slow?seconds=1"))
    assert control.queued_by_owner()[ALICE] >= 199
    # One worker runs alice's one turn; the other is free.
    wait_for_state(control.store, "a000", step_running(0), owner=ALICE)
    start(control, BOB, ["b"], plan(None))
    run = wait_for_state(control.store, "b", finished, owner=BOB)["run"]
    assert seconds(run["started_at"]) - seconds(run["queued_at"]) <= START_BUDGET
    # Alice cancels her queued runs: none of them ever runs.
    for name in names[2:]:
        control.cancel(ALICE, name)
    wait_until(lambda: control.queue.turns() == [], timeout=20, interval=0.1)
    for name in names[2:]:
        state = control.store.get(ALICE, name).state
        assert state["status"] == "cancelled" and state["run"].get("started_at") is None
    assert [control.store.get(ALICE, n).state["status"] for n in names[:2]] == ["completed"] * 2


def test_a_worker_killed_while_its_run_holds_a_turn_leaks_no_turn(
    workers: Workers, make_app: Any, endpoints: StepEndpoints
):
    control = make_app(1)
    workers.start()
    workers.start()
    start(control, ALICE, ["a1"], plan(f"{endpoints.url}/slow?seconds=1.5"))
    start(control, ALICE, ["a2", "a3"], plan(None))
    state = wait_for_state(control.store, "a1", step_running(0, attempt=1), owner=ALICE)
    workers.by_pid(int(state["run"]["runner"].rsplit(":", 1)[1])).kill()
    # a1 is taken over under its turn, then a2 and a3 follow, one at a time.
    states = [
        wait_for_state(control.store, name, finished, timeout=30, owner=ALICE)
        for name in ("a1", "a2", "a3")
    ]
    assert [s["status"] for s in states] == ["completed"] * 3
    assert states[0]["run"]["attempt"] == 2
    assert seconds(states[0]["last_update"]) <= seconds(states[1]["run"]["started_at"])
    assert seconds(states[1]["last_update"]) <= seconds(states[2]["run"]["started_at"])
    wait_until(lambda: control.queue.turns() == [], timeout=5)
