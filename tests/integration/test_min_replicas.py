"""WORKFLOW_STATE_MIN_REPLICAS: a write is acknowledged only once that many replicas have it.

Real redis-server processes: a master with one replica, and a master with none.
"""

from __future__ import annotations

import logging
import re
import shlex
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import steps
from tests.support import REDIS_SERVER, ROOT, STATE, RedisServer
from tests.support.sentinel import SentinelGroup

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="needs a real redis-server")


@pytest.fixture
def pair() -> Iterator[SentinelGroup]:
    """A master and one replica in sync (no sentinels)."""
    group = SentinelGroup(replicas=1, sentinels=0).start()
    yield group
    group.close()


@pytest.fixture
def backend() -> dict[str, Any]:
    """Nothing: each test gives conftest's `make_app` the URL of its own servers."""
    return {}


def client_of(make_app, url: str, **config):
    return make_app(STATE_URL=url, **config).test_client()


def test_an_acknowledged_write_is_already_on_the_replica(pair, make_app):
    client = client_of(make_app, pair.master_url, MIN_REPLICAS=1)
    replica = pair.nodes[1].client()
    for index in range(20):
        if index == 0:
            response = client.post(STATE, json={"workflow_id": "wf", "steps": steps(20)})
        else:
            response = client.patch(f"{STATE}/steps/{index}", json={"status": "completed"})
        assert response.status_code == 200, response.get_json()
        version = response.get_json()["state"]["version"]
        # Read from the replica at once: what was acknowledged is there, not on its way.
        assert f'"version":{version}}}'.encode() in replica.get("workflow:{public}:state:wf")
    assert client.delete(STATE).status_code == 200
    assert replica.get("workflow:{public}:state:wf") is None


def test_wait_rides_on_the_connection_that_ran_the_script(pair, make_app):
    client = client_of(make_app, pair.master_url, MIN_REPLICAS=1)
    assert client.post(STATE, json={"workflow_id": "wf", "steps": steps(2)}).status_code == 200
    lines: list[str] = []
    with pair.master.client(timeout=5).monitor() as monitor:
        assert client.patch(f"{STATE}/steps/0", json={"status": "completed"}).status_code == 200
        assert client.delete(STATE).status_code == 200
        for command in monitor.listen():
            lines.append(
                f"{command['client_address']}:{command['client_port']} {command['command']}"
            )
            if sum(" WAIT " in line for line in lines) == 2:
                break
    # The acquire, the commit and its WAIT; then the delete and its WAIT.
    sent = [line for line in lines if " EVALSHA " in line or " WAIT " in line]
    assert [line.split()[1] for line in sent] == ["EVALSHA", "EVALSHA", "WAIT", "EVALSHA", "WAIT"]
    for script, wait in ((sent[1], sent[2]), (sent[3], sent[4])):
        assert script.split()[0] == wait.split()[0], sent  # one connection
        assert wait.endswith("WAIT 1 200"), sent  # (I/O timeout 500 ms - 100 ms) / 2


@pytest.fixture
def lonely(own_redis: RedisServer) -> RedisServer:
    """A master no replica follows."""
    return own_redis


def test_a_write_no_replica_confirms_is_refused_and_says_it_may_not_be_durable(
    lonely, make_app, caplog
):
    caplog.set_level(logging.ERROR)
    client = client_of(make_app, lonely.url, MIN_REPLICAS=1, IO_TIMEOUT=0.25)
    versions = []
    for method, path, body in (
        ("POST", STATE, {"workflow_id": "wf", "steps": steps(2)}),
        ("PATCH", f"{STATE}/steps/0", {"status": "completed"}),
        ("PATCH", STATE, {"note": "x"}),
        ("DELETE", STATE, None),
    ):
        started = time.monotonic()
        response = client.open(path, method=method, json=body)
        elapsed = time.monotonic() - started
        assert response.status_code == 503, (method, path, response.get_json())
        message = response.get_json()["message"]
        assert response.get_json()["error"] == "backend_unavailable"
        assert "may not be durable" in message and "0 of the 1 replicas" in message, message
        assert response.headers["Retry-After"]
        versions.append(int(re.search(r"\(?version (\d+)", message).group(1)))
        # WAIT waited 75 ms ((250 - 100) / 2), or up to 100 ms more; never near the 2 s bound.
        assert 0.07 < elapsed < 1.0, elapsed
    # What "applied but may not be durable" means: each write ran on the master.
    assert lonely.client().get("workflow:{public}:state:wf") is None  # the DELETE ran too
    assert versions == list(range(versions[0], versions[0] + 4))  # one each, none redone
    assert int(lonely.client().get("workflow:{public}:seq")) == versions[-1]
    # Reads and refusals do not wait for replicas.
    assert client.get(STATE).status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.patch(f"{STATE}/steps/0", json={"status": "nope"}).status_code in (400, 404)


def test_without_min_replicas_the_same_writes_are_acknowledged_at_once(lonely, make_app):
    client = client_of(make_app, lonely.url, IO_TIMEOUT=0.25)
    started = time.monotonic()
    assert client.post(STATE, json={"workflow_id": "wf", "steps": steps(2)}).status_code == 200
    assert client.delete(STATE).status_code == 200
    assert time.monotonic() - started < 0.15


def test_the_acl_user_of_redis_md_may_wait_and_stamp_its_lock(pair, make_app):
    """deploy/redis.md's user can run MIN_REPLICAS and read the master's replication id."""
    line = next(
        line
        for line in (ROOT / "deploy" / "redis.md").read_text().splitlines()
        if line.startswith("ACL SETUSER")
    )
    pair.master.client().execute_command(
        *shlex.split(line.replace("CHANGE-ME-TO-A-LONG-RANDOM-PASSWORD", "pw"))
    )
    url = f"redis://workflow-state:pw@127.0.0.1:{pair.master.port}/0"
    client = client_of(make_app, url, MIN_REPLICAS=1)
    store = client.application.extensions["workflow_state"]
    locks = []
    original = store._locked_batch

    def look(writer, owner, batch, token, result, *rest):
        locks.append(result[8])  # the lock's value, as the acquire stored it
        return original(writer, owner, batch, token, result, *rest)

    store._locked_batch = look
    assert client.post(STATE, json={"workflow_id": "wf", "steps": steps(1)}).status_code == 200
    assert client.delete(STATE).status_code == 200
    replid = pair.master.client().info("replication")["master_replid"]
    assert locks and locks[0].endswith(f"@{replid}".encode())
