"""Runs when a Redis restarts without its data, on real redis-servers with real workers.

- The queue's Redis (WORKFLOW_QUEUE_URL, apart from the state's) loses the jobs, the lease index
  and the counters in the middle of fifty runs: every run still completes, and within a lease
  (+ 5 s) of the restart every runner is busy again: no run waits for a job that is gone.
- The one Redis that holds both loses everything: the runs whose state is gone end without
  writing anything, and an admin's `owner=*` lists every owner that writes again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from flask import Flask

from service import create_app
from service.run_api import runs_of
from service.store import store_of
from tests.support import RedisServer, wait_until
from tests.support.runs import OWNER, finished, plan
from tests.support.workers import Workers

LEASE = 1.5
BUDGET = LEASE + 5
RUNNERS = 4


@pytest.fixture
def queue_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


def app_for(env: dict[str, str]) -> Flask:
    return create_app({"TESTING": True}, environ=env)


def close(app: Flask) -> None:
    runs_of(app).close()
    store_of(app).close()


def test_fifty_runs_complete_when_the_queue_redis_loses_its_data(
    redis_server: RedisServer, queue_redis: RedisServer
):
    redis_server.flush()
    env = {
        "WORKFLOW_STATE_URL": redis_server.url,
        "WORKFLOW_QUEUE_URL": queue_redis.url,
        "WORKFLOW_RUN_LEASE": str(LEASE),
        "WORKFLOW_DEMO_STEP_SECONDS": "0.3",
        "WORKFLOW_STATE_TTL": "300",  # finished runs stay readable to the end of the test
    }
    workers = Workers(env)
    app = app_for(env)
    store = store_of(app)
    control = runs_of(app)
    names = [f"run-{n}" for n in range(50)]
    try:
        workers.start(count=RUNNERS // 2)
        workers.start(count=RUNNERS // 2)
        for name in names:
            control.create(
                OWNER, {"workflow_id": name, "steps": plan(None, None, None), "run": True}
            )

        def states() -> list[dict]:
            return [store.get(OWNER, name).state for name in names]

        wait_until(lambda: sum(finished(s) for s in states()) >= 8, timeout=30)
        queue_redis.stop()
        queue_redis.start()  # no persistence: the jobs, the lease index and the counters are gone
        restarted = time.monotonic()
        # Sample how many runs hold a runner, until all are done.
        samples: list[tuple[float, int, int]] = []

        def all_done() -> bool:
            now = states()
            running = sum(s["run"]["status"] == "running" for s in now)
            left = sum(not finished(s) for s in now)
            samples.append((time.monotonic() - restarted, running, left))
            return left == 0

        wait_until(all_done, timeout=90, interval=0.05)
        assert {s["status"] for s in states()} == {"completed"}
        # No step ran more than twice (once more at most, for a run interrupted by the restart).
        assert max(step["attempts"] for s in states() for step in s["steps"]) <= 2
        # From a lease (+ 5 s) after the restart on, no runner stays idle while runs wait:
        # the runs whose jobs were lost were found and queued again.
        idle_since, longest = None, 0.0
        for at, running, left in samples:
            if at < BUDGET:
                continue
            if running < min(RUNNERS, left):
                idle_since = at if idle_since is None else idle_since
                longest = max(longest, at - idle_since)
            else:
                idle_since = None
        assert longest < 2.0, f"runners idle for {longest:.1f} s while runs waited"
    finally:
        close(app)
        workers.close()


def test_runs_whose_state_is_gone_end_without_writing_and_owners_come_back(
    own_redis: RedisServer,
):
    env = {
        "WORKFLOW_STATE_URL": own_redis.url,
        "WORKFLOW_RUN_LEASE": str(LEASE),
        "WORKFLOW_DEMO_STEP_SECONDS": "1",
        "WORKFLOW_STATE_ADMINS": "root",
        "WORKFLOW_STATE_USER_HEADER": "X-User",
        "WORKFLOW_STATE_TRUSTED_PROXIES": "127.0.0.1",
    }
    workers = Workers(env)
    app = app_for(env)
    store = store_of(app)
    control = runs_of(app)
    owners = ["alice", "bob", "carol"]
    try:
        workers.start(count=2)
        for owner in owners:
            control.create(owner, {"workflow_id": "wf", "steps": plan(None, None), "run": True})
        wait_until(
            lambda: (
                sum(
                    (store.get(owner, "wf").state or {}).get("run", {}).get("status") == "running"
                    for owner in owners
                )
                == 2
            ),
            timeout=20,
        )
        own_redis.stop()
        own_redis.start()  # every state, counter, index and job is gone
        # Each runner ends at its next write (a renewal within a third of a lease)...
        wait_until(lambda: workers.output().count(": superseded") >= 2, timeout=BUDGET + 5)
        # ...which found its workflow gone and wrote nothing: no owner's key came back (the
        # run counters of /metrics live on beside them, outside any owner).
        assert own_redis.client().keys("workflow:{*") == []
        # Owners that write again are known again, to an admin's owner=*.
        client = app.test_client()
        for owner in ("alice", "carol"):
            response = client.post(
                "/workflows",
                json={"workflow_id": "again", "steps": plan(None)},
                headers={"X-User": owner},
                environ_base={"REMOTE_ADDR": "127.0.0.1"},
            )
            assert response.status_code == 201, response.get_json()
        listed = client.get(
            "/workflows?owner=*",
            headers={"X-User": "root"},
            environ_base={"REMOTE_ADDR": "127.0.0.1"},
        ).get_json()
        assert sorted(entry["owner"] for entry in listed["workflows"]) == ["alice", "carol"]
    finally:
        close(app)
        workers.close()
