"""What an operator with redis-cli sees, and the lock-and-fence guarantees of the Redis backend.

These run on the session's own redis-server (fakeredis's TCP server where no binary exists). A
seed client's workflow lives under owner `public`: `workflow:{public}:state:<id>` and the
owner's other keys (contract section 8).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import pytest

from service import create_app
from service.storage import CurrentWorkflow, RedisStore
from tests.conftest import steps
from tests.support import RedisServer, wait_until
from tests.support.routes import STATE

OWNER = "workflow:{public}"
SEQ = f"{OWNER}:seq"
EVENTS = f"{OWNER}:events"


def key(workflow_id: str = "wf") -> str:
    """Return the key of one of owner public's workflows."""
    return f"{OWNER}:state:{workflow_id}"


def lock(workflow_id: str = "wf") -> str:
    """Return the lock key of one of owner public's workflows."""
    return f"{OWNER}:lock:{workflow_id}"


@pytest.fixture
def redis(redis_server: RedisServer):
    redis_server.flush()
    return redis_server.client()


@pytest.fixture
def make_client(redis_server: RedisServer, redis):
    def make(**overrides: Any):
        return create_app({"STATE_URL": redis_server.url, **overrides}).test_client()

    return make


@pytest.fixture
def client(make_client):
    return make_client()


def test_the_key_holds_exactly_the_served_state(client, redis):
    client.post(STATE, json={"workflow_id": "wf", "steps": steps(2), "ssh_connection": "ssh h"})
    client.patch(f"{STATE}/steps/0", json={"status": "completed", "data": {"x": 1}})
    served = client.get(STATE).get_json()["state"]
    assert json.loads(redis.get(key())) == served
    assert redis.get(f"{OWNER}:current") == b"wf"


def test_operator_recipes(client, redis):
    client.post(STATE, json={"workflow_id": "wf", "status": "completed", "steps": steps(1)})
    assert 1 <= redis.ttl(key()) <= 30
    redis.delete(key())
    assert client.get(STATE).get_json()["state"] is None


def test_running_state_carries_the_stale_ttl_refreshed_by_each_write(make_client, redis):
    client = make_client(STATE_STALE_TTL=1000)
    client.post(STATE, json={"workflow_id": "wf", "steps": steps(2)})
    assert 990 <= redis.ttl(key()) <= 1000
    redis.pexpire(key(), 5000)
    client.patch(f"{STATE}/steps/0", json={"status": "completed"})
    assert redis.ttl(key()) > 990
    client.patch(STATE, json={"note": "x"})
    assert redis.ttl(key()) > 990


def test_finishing_sets_the_short_ttl_and_a_repeat_does_not_reset_it(client, redis):
    body = {"workflow_id": "wf", "status": "running", "steps": steps(1)}
    client.post(STATE, json=body)
    client.patch(STATE, json={"status": "completed"})
    first = redis.pttl(key())
    assert 0 < first <= 30_000
    repeat = client.get(STATE).get_json()["state"]
    assert client.post(STATE, json=repeat).status_code == 200
    assert 0 < redis.pttl(key()) <= first


def test_version_counter_never_expires_and_never_goes_back(make_client, redis):
    client = make_client(STATE_TTL=1)
    v1 = client.post(STATE, json={"workflow_id": "wf", "status": "completed"}).get_json()
    v1 = v1["state"]["version"]
    assert int(redis.get(SEQ)) == v1
    assert redis.ttl(SEQ) == -1
    wait_until(lambda: redis.exists(key()) == 0, timeout=5)
    client.delete(STATE)
    assert int(redis.get(SEQ)) == v1 + 1
    assert client.post(STATE, json={"steps": steps(1)}).get_json()["state"]["version"] == v1 + 2


def test_the_prefix_names_every_key(make_client, redis):
    client = make_client(STATE_PREFIX="app7")
    client.post(STATE, json={"workflow_id": "wf", "status": "completed"})
    assert redis.exists("app7:{public}:state:wf") and redis.exists("app7:{public}:seq")
    assert redis.exists("app7:{public}:history") and redis.exists("app7:{public}:index")
    assert not redis.keys("workflow:*")


def plant(client, redis, value: bytes) -> None:
    """Make `wf` owner public's current workflow, then put `value` where its state lives."""
    client.post(STATE, json={"workflow_id": "wf", "steps": steps(1)})
    redis.set(key(), value)


@pytest.mark.parametrize("garbage", [b"garbage", b'{"status": "running"}', b"[1]", b"\xff\xfe"])
def test_a_corrupt_value_is_renamed_aside_logged_and_never_served(client, redis, garbage, caplog):
    plant(client, redis, garbage)
    with caplog.at_level(logging.ERROR, logger="service.storage"):
        response = client.get(STATE)
    assert response.status_code == 200
    assert response.get_json()["state"] is None
    aside = redis.keys(f"{OWNER}:corrupt:wf:*")
    assert len(aside) == 1
    assert redis.get(aside[0]) == garbage
    assert 6 * 86400 < redis.ttl(aside[0]) <= 7 * 86400
    assert "not a valid state" in caplog.text
    assert client.post(STATE, json={"steps": steps(1)}).status_code == 200


def test_a_state_filed_under_another_id_is_renamed_aside(client, redis):
    other = client.post(STATE, json={"workflow_id": "other", "steps": steps(1)}).get_json()
    redis.set(key(), json.dumps(other["state"]))  # a copy of "other" where "wf" lives
    redis.set(f"{OWNER}:current", "wf")
    assert client.get(STATE).get_json()["state"] is None
    assert len(redis.keys(f"{OWNER}:corrupt:wf:*")) == 1


def test_a_value_of_the_wrong_type_is_renamed_aside(client, redis):
    client.post(STATE, json={"workflow_id": "wf", "steps": steps(1)})
    redis.delete(key())
    redis.rpush(key(), "x")
    assert client.get(STATE).get_json()["state"] is None
    assert client.patch(STATE, json={"status": "failed"}).status_code == 404
    assert client.post(STATE, json={"workflow_id": "wf", "steps": steps(1)}).status_code == 200
    assert len(redis.keys(f"{OWNER}:corrupt:wf:*")) == 1


def test_every_write_publishes_the_new_state_with_its_id(client, redis):
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(EVENTS)
    wait_until(lambda: redis.pubsub_numsub(EVENTS)[0][1] >= 1)
    saved = client.post(STATE, json={"workflow_id": "wf", "steps": steps(1)}).get_json()["state"]
    client.delete(STATE)
    messages = []

    def two_messages() -> bool:
        message = pubsub.get_message(timeout=0.1)
        if message:
            messages.append(message)
        return len(messages) == 2

    wait_until(two_messages)
    first, second = (json.loads(m["data"]) for m in messages)
    version = saved["version"]
    assert first == {"id": str(version), "workflow_id": "wf", "current": True, "state": saved}
    assert second == {"id": str(version + 1), "workflow_id": "wf", "current": True, "state": None}
    pubsub.close()


def test_the_lock_is_free_after_writes_and_after_refused_writes(client, redis):
    client.post(STATE, json={"workflow_id": "wf", "steps": steps(1)})
    client.patch(f"{STATE}/steps/5", json={"status": "completed"})
    client.patch(f"{STATE}/steps/0", json={"status": "nope"})
    assert not redis.keys(f"{OWNER}:lock:*")


def test_a_dead_lock_holder_delays_writers_only_until_the_lock_expires(make_client, redis):
    client = make_client(LOCK_WAIT=0.2)
    client.post(STATE, json={"workflow_id": "wf", "steps": steps(2)})
    redis.set(lock(), "crashed-writer", px=1500)
    started = time.monotonic()
    refused = client.patch(f"{STATE}/steps/0", json={"status": "completed"})
    assert time.monotonic() - started < 2
    assert refused.status_code == 503
    assert refused.get_json()["error"] == "backend_unavailable"
    assert "lock" in refused.get_json()["message"]
    assert refused.headers["Retry-After"]
    assert client.get(STATE).status_code == 200  # reads never wait for the lock
    wait_until(
        lambda: client.patch(f"{STATE}/steps/0", json={"status": "completed"}).status_code == 200,
        timeout=5,
    )


def test_a_writer_whose_lock_expired_is_fenced_and_loses_nothing(redis_server, redis):
    """Writer A stalls past its lock; B writes meanwhile; A's stale commit must not win."""
    options = {"lock_timeout": 0.2, "lock_wait": 2.0}
    a = RedisStore(redis_server.url, **options)
    b = CurrentWorkflow(RedisStore(redis_server.url, **options), "public")
    a.save("public", {"workflow_id": "wf", "steps": steps(2)})
    b_wrote = threading.Event()
    calls = []

    original = a._locked_batch

    def stalled(*args):
        calls.append(1)
        if len(calls) == 1:
            # A has read the state under its lock; now its lock expires and B writes.
            wait_until(lambda: not redis.exists(lock()), timeout=5)
            thread = threading.Thread(
                target=lambda: (b.update_step(1, {"status": "completed"}), b_wrote.set())
            )
            thread.start()
            assert b_wrote.wait(5)
        return original(*args)

    a._locked_batch = stalled
    a.update_step("public", None, 0, {"status": "completed"})
    final = b.get().state
    assert [step["status"] for step in final["steps"]] == ["completed", "completed"]
    assert len(calls) == 2  # the fence refused A's first commit and A redid its write
    assert final["version"] == int(redis.get(SEQ))


def test_client_is_created_per_process_with_bounded_timeouts(redis_server):
    store = RedisStore(redis_server.url, io_timeout=0.25)
    client = store.client()
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.25
    assert kwargs["socket_connect_timeout"] == 0.25
    assert 0 < kwargs["retry"].get_retries() <= 2
    assert store.client() is client
    store._pid = -1  # what a fork looks like to the store
    assert store.client() is not client
