"""Runs at scale: 2,000 workflows of 3 zero-second steps from 20 owners, started at once on 8
runners (a real redis-server, a `python -m service worker` pool of 8, WORKFLOW_RUNS_PER_OWNER=2).

Every run completes, every step runs exactly once, no run waits more than a second while a
runner was free that its owner's turn allowed, and the real server's /healthz answers
throughout. Its own marker: `pytest -m scale` runs it alone, `-m "not scale"` leaves it out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from service import create_app
from service.model import parse_time
from service.run_api import runs_of
from service.storage.keys import Keys
from service.store import store_of
from tests.support import Gunicorn, RedisServer, wait_until
from tests.support.processes import http
from tests.support.runs import finished, plan
from tests.support.workers import Workers

pytestmark = [pytest.mark.slow, pytest.mark.scale, pytest.mark.timeout(900)]

OWNERS = 20
PER_OWNER = 100
RUNNERS = 8
LIMIT = 2
# A queued run starts within 1 s of a free runner its owner's turn allows.
START_BUDGET = 1.0
# /healthz answers within this, every time it is asked.
HEALTH_BUDGET = 2.0


def seconds(stamp: str) -> float:
    return parse_time(stamp).timestamp()


@pytest.fixture
def env(redis_server: RedisServer) -> dict[str, str]:
    redis_server.flush()
    return {
        "WORKFLOW_STATE_URL": redis_server.url,
        "WORKFLOW_DEMO_STEP_SECONDS": "0",
        "WORKFLOW_RUNS_PER_OWNER": str(LIMIT),
        "WORKFLOW_STATE_MAX_WORKFLOWS": str(PER_OWNER * 2),
        # Finished workflows stay readable until the test has looked at them all.
        "WORKFLOW_STATE_TTL": "3600",
    }


@pytest.fixture
def workers(env: dict[str, str]) -> Iterator[Workers]:
    owned = Workers(env)
    yield owned
    owned.close()


@pytest.fixture
def server(env: dict[str, str]) -> Iterator[Gunicorn]:
    started = Gunicorn(env, workers=1).start()
    yield started
    started.stop()


class Health:
    """Ask the server's /healthz every 0.2 s; remember every answer that was not a quick 200."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.asked = 0
        self.bad: list[tuple[int, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._ask, daemon=True)
        self.thread.start()

    def _ask(self) -> None:
        while not self.stop.wait(0.2):
            began = time.monotonic()
            try:
                status = http("GET", f"{self.url}/healthz", timeout=HEALTH_BUDGET)[0]
            except OSError:
                status = 0
            took = time.monotonic() - began
            self.asked += 1
            if status != 200 or took > HEALTH_BUDGET:
                self.bad.append((status, took))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


class Capacity:
    """Sample, every 0.1 s, whether a runner was free: an RQ worker idle, the queue empty."""

    def __init__(self, redis: RedisServer) -> None:
        self.client = redis.client()
        # (time, a runner free)
        self.samples: list[tuple[float, bool]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        queue = f"rq:queue:{Keys().run_queue()}"
        while not self.stop.wait(0.1):
            workers = sorted(self.client.smembers("rq:workers"))
            pipe = self.client.pipeline(transaction=False)
            pipe.llen(queue)
            for worker in workers:
                pipe.hget(worker, "state")
            queued, *states = pipe.execute()
            self.samples.append((time.time(), queued == 0 and b"idle" in states))

    def stretches(self, held: list[tuple[float, float]]) -> list[tuple[float, float]]:
        """Return when a runner was free while fewer than LIMIT of `held`, one owner's runs
        (claimed, ended), held one: (from, to)."""
        found: list[tuple[float, float]] = []
        opened: float | None = None
        for at, free in self.samples:
            if free and sum(1 for began, ended in held if began <= at < ended) < LIMIT:
                opened = at if opened is None else opened
            elif opened is not None:
                found.append((opened, at))
                opened = None
        return found

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.client.close()


def test_two_thousand_runs_of_twenty_owners_on_eight_runners(
    env: dict[str, str], workers: Workers, server: Gunicorn, redis_server: RedisServer
):
    app = create_app({"TESTING": True}, environ=env)
    control = runs_of(app)
    store = store_of(app)
    health = Health(server.url)
    owners = [f"owner{n:02d}" for n in range(OWNERS)]
    capacity = Capacity(redis_server)
    # Interleaved: every owner's runs are requested from the start.
    wanted = [(owner, f"wf-{n:03d}") for n in range(PER_OWNER) for owner in owners]
    try:
        workers.start(count=RUNNERS)

        def start(pair: tuple[str, str]) -> None:
            owner, name = pair
            control.create(
                owner, {"workflow_id": name, "steps": plan(None, None, None), "run": True}
            )

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(start, wanted))
        remaining = set(wanted)

        def all_done() -> bool:
            for owner, name in sorted(remaining):
                state = store.get(owner, name).state
                if state is not None and finished(state):
                    remaining.discard((owner, name))
            return not remaining

        wait_until(all_done, timeout=600, interval=1.0)
    finally:
        health.close()
        capacity.close()
        runs_of(app).close()
    states: dict[tuple[str, str], dict[str, Any]] = {
        pair: store.get(*pair).state for pair in wanted
    }
    store.close()
    assert all(state["status"] == "completed" for state in states.values())
    assert {step["attempts"] for s in states.values() for step in s["steps"]} == {1}
    assert {s["run"]["attempt"] for s in states.values()} == {1}
    assert health.asked > 0 and health.bad == []
    late: list[tuple[str, str, float]] = []
    for owner in owners:
        mine = {name: s["run"] for (who, name), s in states.items() if who == owner}
        # Each run held a runner from its claim to its last write (the state is the truth).
        held = [
            (seconds(run["started_at"]), seconds(states[owner, name]["last_update"]))
            for name, run in mine.items()
        ]
        stretches = capacity.stretches(held)
        for name, run in mine.items():
            queued, started = seconds(run["queued_at"]), seconds(run["started_at"])
            # Late: a free runner its owner's limit allowed went unused for more than a second.
            for begin, end in stretches:
                if min(end, started) - max(begin, queued) > START_BUDGET:
                    late.append((owner, name, started - queued))
                    break
    assert late == []
