"""Redis Sentinel: the store follows the master Sentinel names, through real failovers.

Every test starts its own group (tests/support/sentinel.py): redis-server master and replicas
and three redis-sentinel processes on free loopback ports.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.conftest import steps
from tests.support import ROOT, STATE, free_port, wait_until
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
def backend(group: SentinelGroup) -> dict[str, Any]:
    """Put conftest's `make_app` apps on the group's sentinel URL."""
    return {"STATE_URL": group.url}


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
    assert new.client().get("workflow:{public}:state:wf") is not None
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
    # Every connection of the store's own (reads and write batches) is on the new master.
    assert store._idle
    assert {idle.connection.port for idle in store._idle} == {new.port}
    assert b'"status":"completed"' in new.client().get("workflow:{public}:state:wf")


def cut_off_and_fail_over(group: SentinelGroup, client, write) -> tuple[int, dict]:
    """Cut the replica off, make `write` on the master alone, crash it; return the answer.

    The replica is frozen (SIGSTOP) so that it cannot reconnect, and the master drops its link
    to it: what the master takes now reaches no replica. Then the master dies and the frozen
    replica, thawed, is promoted with what it had. Deterministic, unlike a race with the
    replication stream.
    """
    (replica,) = group.replicas()
    group.freeze(replica)
    try:
        group.master.client().client_kill_filter(_type="replica")
        response = write()
        old = group.kill_master()
    finally:
        group.thaw(replica)
    killed = time.monotonic()
    group.wait_for_event("+switch-master", after=killed, timeout=20)
    assert group.current_master() is replica and old is not replica
    wait_until(lambda: client.get(STATE).status_code == 200, timeout=5)
    return response.status_code, response.get_json()


def test_without_min_replicas_a_failover_can_lose_an_acknowledged_write(group, make_app):
    """Why MIN_REPLICAS exists: replication is asynchronous, a write is acknowledged first."""
    client = make_app(IO_TIMEOUT=0.25).test_client()
    assert client.post(STATE, json={"workflow_id": "wf", "steps": steps(2)}).status_code == 200
    wait_until(lambda: group.replicas()[0].client().get("workflow:{public}:state:wf") is not None)

    status, body = cut_off_and_fail_over(
        group, client, lambda: client.patch(f"{STATE}/steps/0", json={"status": "completed"})
    )
    assert status == 200  # acknowledged...
    acknowledged = body["state"]["version"]
    after = client.get(STATE).get_json()["state"]
    assert after["steps"][0]["status"] == "pending"  # ...and lost
    assert after["version"] < acknowledged


def test_with_min_replicas_the_same_write_is_refused_and_nothing_acknowledged_is_lost(
    group, make_app
):
    client = make_app(IO_TIMEOUT=0.25, MIN_REPLICAS=1).test_client()
    saved = client.post(STATE, json={"workflow_id": "wf", "steps": steps(2)})
    assert saved.status_code == 200
    acknowledged = saved.get_json()["state"]["version"]

    status, body = cut_off_and_fail_over(
        group, client, lambda: client.patch(f"{STATE}/steps/0", json={"status": "completed"})
    )
    assert status == 503 and body["error"] == "backend_unavailable"
    assert "may not be durable" in body["message"]
    after = client.get(STATE).get_json()["state"]
    assert after["version"] == acknowledged  # what was acknowledged survived the failover
    assert after["steps"][0]["status"] == "pending"  # the refused write did not


def test_deploy_sentinel_conf_runs_as_written(group, tmp_path):
    """deploy/sentinel.conf, with this machine's ports and directory, watches the master."""
    port = free_port()
    text = (ROOT / "deploy" / "sentinel.conf").read_text()
    text = text.replace("port 26379", f"port {port}").replace("bind 0.0.0.0", "bind 127.0.0.1")
    text = text.replace("dir /var/lib/redis-sentinel", f"dir {tmp_path}")
    text = text.replace("redis-a.internal 6379", f"127.0.0.1 {group.master.port}")
    config = tmp_path / "sentinel.conf"
    config.write_text(text)
    process = subprocess.Popen(
        [REDIS_SENTINEL, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        sentinel = redis.Redis(port=port, socket_timeout=2)
        state = wait_until(lambda: sentinel.sentinel_master("workflow-state"), timeout=10)
        assert state["is_master"] and not state["is_sdown"]
        assert state["down-after-milliseconds"] > 1000  # see the comment in the file
    finally:
        process.kill()
        process.wait(timeout=10)
