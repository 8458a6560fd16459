"""The write lock after a failover: a lock taken on a master that is gone is not waited out.

The lock's value is the holder's token stamped with the master's replication id. A promoted
replica has a new id, so a lock replicated to it from the dead master is recognised as a
leftover of a hold that ended with that master, and taken over at once; the version fence
still refuses a late commit of its old holder.
"""

from __future__ import annotations

import time

import pytest

from service.storage import LockTimeout, RedisStore
from tests.conftest import steps
from tests.support import REDIS_SERVER, RedisServer, layout

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="needs a real redis-server")

# Owner public's workflow "wf" (every client without identity writes there).
LOCK = "workflow:{public}:lock:wf"
ANOTHER_MASTER = "0123456789abcdef0123456789abcdef01234567"


def replication_id(server: RedisServer) -> str:
    return server.client().info("replication")["master_replid"]


def test_a_held_lock_carries_the_masters_replication_id(own_redis):
    store = layout.current(RedisStore(own_redis.url))
    store.save({"workflow_id": "wf", "steps": steps(1)})
    seen = []
    original = store.store._locked_batch

    def look(*args):
        seen.append(own_redis.client().get(LOCK))
        return original(*args)

    store.store._locked_batch = look
    store.update_step(0, {"status": "completed"})
    (value,) = seen
    assert value.endswith(b"@" + replication_id(own_redis).encode())
    assert not own_redis.client().exists(LOCK)  # released by the commit, value and all
    store.close()


def test_a_lock_taken_on_another_master_is_taken_over_at_once(own_redis):
    store = layout.current(RedisStore(own_redis.url, lock_wait=1.0))
    store.save({"workflow_id": "wf", "steps": steps(1)})
    # What a promoted replica holds when its master died mid-write.
    own_redis.client().set(LOCK, f"dead-host:1:ab:7@{ANOTHER_MASTER}", px=5000)
    started = time.monotonic()
    assert store.update_step(0, {"status": "completed"}).state["steps"][0]["status"] == "completed"
    assert time.monotonic() - started < 0.2
    assert not own_redis.client().exists(LOCK)
    store.close()


@pytest.mark.parametrize("value", ["other-host:1:ab:7@{master}", "crashed-writer"])
def test_a_lock_held_on_this_master_or_without_a_stamp_is_still_waited_for(own_redis, value):
    store = layout.current(RedisStore(own_redis.url, lock_wait=0.2))
    store.save({"workflow_id": "wf", "steps": steps(1)})
    own_redis.client().set(LOCK, value.format(master=replication_id(own_redis)), px=5000)
    with pytest.raises(LockTimeout):
        store.update_step(0, {"status": "completed"})
    store.close()
