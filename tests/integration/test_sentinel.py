"""Redis Sentinel: the store follows the master Sentinel names, through real failovers.

Every test starts its own group (tests/support/sentinel.py): redis-server master and replicas
and three redis-sentinel processes on free loopback ports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from service import create_app
from tests.conftest import steps
from tests.support import STATE, wait_until
from tests.support.sentinel import REDIS_SENTINEL, SKIP_REASON, SentinelGroup

pytestmark = pytest.mark.skipif(REDIS_SENTINEL is None, reason=SKIP_REASON)


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    """A started group (1 master, 1 replica, 3 sentinels)."""
    group = SentinelGroup(replicas=1).start()
    yield group
    print(group.logs())  # pytest shows it only when the test failed
    group.close()


@pytest.fixture
def make_app(group: SentinelGroup) -> Iterator[Callable[..., Flask]]:
    """Build in-process apps on the group's sentinel URL; close them after the test."""
    apps: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        app = create_app({"STATE_URL": group.url, **overrides})
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["workflow_stream_hub"].close()
        app.extensions["workflow_state"].close()


@pytest.fixture
def quiet_logs() -> Iterator[None]:
    """Keep thousands of request and outage log lines out of the report."""
    logging.disable(logging.ERROR)
    yield
    logging.disable(logging.NOTSET)


def answer(client, method: str, path: str, body=None) -> tuple[int, dict, float]:
    """Send one in-process request; return status, JSON body and seconds taken."""
    started = time.monotonic()
    response = client.open(path, method=method, json=body)
    return response.status_code, response.get_json() or {}, time.monotonic() - started


def assert_served_or_unavailable(status: int, body: dict, elapsed: float) -> None:
    """A route during a failover: served, or 503 backend_unavailable within 2 s, never a 500."""
    assert status in (200, 503), (status, body)
    if status == 503:
        assert body["error"] == "backend_unavailable", body
        assert "redis+sentinel://" in body["message"], body
    assert elapsed < 2.0, (status, body, elapsed)


def test_the_store_follows_the_master_sentinel_names_after_a_crash(group, make_app, quiet_logs):
    client = make_app().test_client()
    assert client.post(STATE, json={"workflow_id": "wf", "steps": steps(2)}).status_code == 200
    old = group.kill_master()
    killed = time.monotonic()

    def write_lands() -> bool:
        status, body, elapsed = answer(client, "PATCH", f"{STATE}/steps/0", {"status": "completed"})
        assert_served_or_unavailable(status, body, elapsed)
        return status == 200

    wait_until(write_lands, timeout=20, interval=0.01)
    promoted = group.wait_for_event("+switch-master", after=killed, timeout=1)
    new = group.current_master()
    assert new is not old
    state = client.get(STATE).get_json()["state"]
    assert state["steps"][0]["status"] == "completed"
    # The write is on the master the sentinels name, not somewhere else.
    assert new.client().get("workflow:state") is not None
    assert promoted - killed < 10


def test_a_demoted_master_answering_readonly_is_left_for_the_new_one(group, make_app, quiet_logs):
    """The old master lives on as a replica: every connection moves, no request gets a 500."""
    app = make_app()
    client = app.test_client()
    store = app.extensions["workflow_state"]
    assert client.post(STATE, json={"workflow_id": "wf", "steps": steps(2)}).status_code == 200
    assert client.get(STATE).status_code == 200  # the read connection is open, to the old master
    old = group.current_master()
    started = time.monotonic()
    group.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", group.service)
    group.wait_for_event("+switch-master", after=started, timeout=20)
    new = group.current_master()
    assert new is not old
    # What Sentinel does to the old master when it next looks at it (up to 10 s later).
    old.client().replicaof("127.0.0.1", new.port)
    wait_until(lambda: old.client().info("replication")["role"] == "slave", timeout=5)

    def write_lands() -> bool:
        status, body, elapsed = answer(client, "PATCH", f"{STATE}/steps/1", {"status": "completed"})
        assert_served_or_unavailable(status, body, elapsed)
        return status == 200

    wait_until(write_lands, timeout=5)
    assert client.get(STATE).status_code == 200
    # Both of the store's connections, the write one and the read one, are on the new master.
    assert store._dedicated("writes").connection.port == new.port
    assert store._dedicated("reads").connection.port == new.port
    assert b'"status":"completed"' in new.client().get("workflow:state")
