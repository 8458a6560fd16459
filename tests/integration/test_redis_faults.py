"""Redis faults on real processes: a paused Redis, answers lost on the way back, a lock with no
expiry, a restart that loses the data.

Each test runs a redis-server of its own (or the session's), the store or the production server
(gunicorn, two workers) in front of it, and short lock timeouts so that a lock left behind
shows as a slow recovery rather than a slow test.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from service import create_app
from service.storage import RedisStore, StorageUnavailable
from tests.conftest import steps
from tests.support import REDIS_SERVER, STATE, Gunicorn, RedisServer, http, layout, wait_until
from tests.support.proxy import StallingProxy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(REDIS_SERVER is None, reason="needs a real redis-server"),
]

# Owner public's keys (every client without identity), for the workflow "wf" the tests write.
LOCK = "workflow:{public}:lock:wf"
SEQ = "workflow:{public}:seq"
# The budget: writes serve again within this long of Redis answering again.
RECOVERY_BUDGET = 1.0
# Longer than the 2 s fault, so that a lock left behind would show in the recovery time.
LOCK_TIMEOUT = 3


@pytest.fixture
def redis(redis_server: RedisServer):
    redis_server.flush()
    return redis_server.client()


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[StallingProxy]:
    """A proxy in front of the session's redis-server that can hold back its answers."""
    proxy = StallingProxy(redis_server.port)
    yield proxy
    proxy.close()


# --- writes serve again within a second of Redis answering again (issue 12, item 1) ----------


class Writers:
    """Threads that PATCH as fast as they are answered, each recording when it succeeded."""

    def __init__(self, url: str, count: int) -> None:
        self.url = url
        self.successes: list[list[float]] = [[] for _ in range(count)]
        self.errors: list[tuple[int, Any]] = []
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._write, args=(n,), daemon=True) for n in range(count)
        ]

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=15)

    def _write(self, n: int) -> None:
        count = 0
        while not self.stop.is_set():
            count += 1
            status, _, body = http("PATCH", self.url + STATE, {f"writer{n}": count}, timeout=10)
            if status == 200:
                self.successes[n].append(time.monotonic())
            elif status == 503:
                self.stop.wait(0.02)
            else:
                self.errors.append((status, body))

    def first_success_after(self, moment: float) -> list[float | None]:
        """Return, per writer, how long after `moment` it first succeeded (None: not yet)."""
        return [next((t - moment for t in times if t > moment), None) for times in self.successes]


@pytest.mark.parametrize("seconds", [0.7, 2.0, 5.0])
@pytest.mark.parametrize("fault", ["pause", "stall"])
def test_writes_serve_within_a_second_of_redis_answering_again(
    own_redis: RedisServer, fault: str, seconds: float
):
    """Writers on two workers; Redis stops answering for a while, then answers again.

    pause: CLIENT PAUSE ALL (commands wait in Redis). stall: Redis runs every command at once but
    its answers are held back (a lost or late answer), so an acquire or commit the client gave
    up on has run. Either way every writer is served again within a second.
    """
    proxy = StallingProxy(own_redis.port)
    url = proxy.url if fault == "stall" else own_redis.url
    env = {"WORKFLOW_STATE_URL": url, "WORKFLOW_STATE_LOCK_TIMEOUT": str(LOCK_TIMEOUT)}
    server = Gunicorn(env, workers=2).start()
    try:
        wait_until(lambda: len(server.worker_pids()) == 2)
        assert http("POST", server.url + STATE, {"workflow_id": "wf", "steps": steps(2)})[0] == 200
        with Writers(server.url, count=6) as writers:
            wait_until(lambda: all(writers.successes), timeout=10)
            if fault == "pause":
                own_redis.pause(seconds)
                back = time.monotonic() + seconds
            else:
                back = proxy.stall(seconds)
            wait_until(lambda: None not in writers.first_success_after(back), timeout=20)
        recovery = sorted(round(after, 3) for after in writers.first_success_after(back))
        print(f"\n{fault} {seconds}s: writers served again after {recovery}")
        assert not writers.errors, writers.errors[:3]
        assert max(recovery) < RECOVERY_BUDGET, f"served again only {max(recovery):.2f}s after"
    finally:
        server.stop()
        proxy.close()


# --- a call that ran but whose answer was lost (item 1) ---------------------------------------


def test_an_acquire_sent_again_after_its_answer_was_lost_finds_its_own_lock(redis, proxy):
    """redis-py's retry sends the same token again; the lock it holds is its own."""
    store = layout.current(RedisStore(proxy.url, lock_timeout=3))
    try:
        saved = store.save({"workflow_id": "wf", "steps": steps(2)})
        back = proxy.stall(0.7)  # the acquire runs at once; its answer comes after the timeout
        state = store.update_step(0, {"status": "completed"}).state
        assert time.monotonic() - back < 0.5
        assert state["version"] == saved.version + 1
        assert not redis.exists(LOCK)
    finally:
        store.close()


def test_a_lock_left_by_an_acquire_given_up_on_is_released_once_redis_answers(
    redis, proxy, redis_server
):
    """An acquire whose answers never came back (503) took the lock: it must not block others.

    Another process writes as soon as Redis answers again, long before the lock's own timeout.
    """
    lost = layout.current(RedisStore(proxy.url, lock_timeout=5))
    other = layout.current(RedisStore(redis_server.url, lock_timeout=5, lock_wait=0.2))
    try:
        lost.save({"workflow_id": "wf", "steps": steps(2)})
        back = proxy.stall(2.0)
        with pytest.raises(StorageUnavailable):
            lost.update_step(0, {"status": "completed"})
        assert redis.exists(LOCK), "the acquire ran in Redis"
        wait_until(lambda: time.monotonic() > back, timeout=5)

        def other_writes() -> bool:
            try:
                other.update_step(1, {"status": "completed"})
            except StorageUnavailable:
                return False
            return True

        wait_until(other_writes, timeout=10, interval=0.01)
        assert time.monotonic() - back < RECOVERY_BUDGET
    finally:
        lost.close()
        other.close()


def test_a_commit_whose_answer_was_lost_is_never_redone(redis, proxy, redis_server):
    """A's commit runs but its answer is lost; B writes; A must not apply its write again.

    Sent again, A's commit would meet the fence moved by itself, and A would redo its whole
    POST on top of B's write: B's update lost. A answers 503 instead (its write is in).
    """
    a = layout.current(RedisStore(proxy.url, lock_timeout=3))
    b = layout.current(RedisStore(redis_server.url, lock_timeout=3))
    try:
        a.save({"workflow_id": "wf", "steps": steps(2)})
        before = int(redis.get(SEQ))
        commit = a.store._locked_batch

        def commit_with_its_answer_held(*args):
            proxy.stall(0.8)  # the lock and the state are read; the commit's answer is held
            return commit(*args)

        a.store._locked_batch = commit_with_its_answer_held

        def b_writes_after_a_committed() -> None:
            wait_until(lambda: int(redis.get(SEQ)) == before + 1, timeout=5)
            b.merge({"b": "kept"})

        thread = threading.Thread(target=b_writes_after_a_committed)
        thread.start()
        with pytest.raises(StorageUnavailable):
            a.save({"workflow_id": "wf", "steps": steps(2), "a": "written"})
        thread.join(timeout=10)
        state = b.get().state
        assert (state["a"], state["b"]) == ("written", "kept")
        assert state["version"] == before + 2 == int(redis.get(SEQ))
        wait_until(lambda: not redis.exists(LOCK), timeout=3)
    finally:
        a.close()
        b.close()


def test_a_delete_whose_answer_was_lost_is_never_redone(redis, proxy, redis_server):
    """A's DELETE runs but its answer is lost; B saves a new state; it must survive."""
    a = layout.current(RedisStore(proxy.url))
    b = layout.current(RedisStore(redis_server.url))
    try:
        # Open the writer's own connection, then the pool's (which a delete uses), and load
        # the scripts, before the answers stop.
        a.save({"workflow_id": "old", "steps": steps(1)})
        a.clear()
        a.save({"workflow_id": "old", "steps": steps(1)})
        proxy.stall(0.8)

        def b_saves_after_the_delete() -> None:
            wait_until(lambda: not redis.exists("workflow:{public}:state:old"), timeout=5)
            b.save({"workflow_id": "new", "steps": steps(1)})

        thread = threading.Thread(target=b_saves_after_the_delete)
        thread.start()
        with pytest.raises(StorageUnavailable):
            a.clear()
        thread.join(timeout=10)
        # Sent again (once the answers flow), the delete would have removed B's state before
        # clear() returned.
        assert b.get().state["workflow_id"] == "new"
    finally:
        a.close()
        b.close()


# --- a lock with no expiry (item 2) -------------------------------------------------------------


def _stuck_plain(redis) -> None:
    redis.set(LOCK, "junk")


def _stuck_for_an_hour(redis) -> None:
    redis.set(LOCK, "junk", ex=3600)


def _stuck_wrong_type(redis) -> None:
    redis.hset(LOCK, "a", "b")


STUCK_LOCKS = {"no-expiry": _stuck_plain, "hour": _stuck_for_an_hour, "hash": _stuck_wrong_type}


@pytest.fixture
def stuck_app(redis_server: RedisServer, redis):
    app = create_app({"STATE_URL": redis_server.url, "LOCK_TIMEOUT": 1.0, "LOCK_WAIT": 0.2})
    yield app
    app.extensions["workflow_stream_hub"].close()
    app.extensions["workflow_state"].close()


@pytest.mark.parametrize("plant", STUCK_LOCKS.values(), ids=STUCK_LOCKS.keys())
def test_a_stuck_lock_blocks_writers_for_at_most_the_lock_timeout(stuck_app, redis, plant):
    client = stuck_app.test_client()
    assert client.post(STATE, json={"workflow_id": "wf", "steps": steps(2)}).status_code == 200
    plant(redis)
    refused = client.patch(STATE, json={"note": 1})
    assert refused.status_code == 503
    assert refused.get_json()["error"] == "backend_unavailable"
    assert 0 < redis.pttl(LOCK) <= 1000, "the first writer to find it gave it the lock timeout"
    found = time.monotonic()
    wait_until(lambda: client.patch(STATE, json={"note": 2}).status_code == 200, timeout=5)
    assert time.monotonic() - found < 1.5
    assert client.get(STATE).get_json()["state"]["note"] == 2


@pytest.mark.parametrize("plant", STUCK_LOCKS.values(), ids=STUCK_LOCKS.keys())
def test_readyz_reports_a_stuck_lock_until_it_is_gone(stuck_app, redis, plant):
    """/readyz names the lock of owner public's current workflow (every seed client's); an
    instance out of rotation still sees it gone in LOCK_TIMEOUT."""
    client = stuck_app.test_client()
    assert client.post(STATE, json={"workflow_id": "wf", "steps": steps(2)}).status_code == 200
    assert client.get("/readyz").status_code == 200
    plant(redis)
    found = time.monotonic()
    answers = []

    def ready() -> bool:
        response = client.get("/readyz")
        answers.append((time.monotonic() - found, response.status_code, response.get_json()))
        return response.status_code == 200

    wait_until(ready, timeout=5, interval=0.1)
    not_ready = [answer for answer in answers if answer[1] != 200]
    assert not_ready, "readyz said ready with a stuck lock"
    for _, status, body in not_ready:
        assert status == 503
        assert body["error"] == "backend_unavailable"
        assert LOCK in body["message"]
    # Reported until it was gone, which is within the lock timeout (no writer came).
    assert not_ready[-1][0] > 0.7
    assert answers[-1][0] < 1.5
    assert not redis.exists(LOCK)
    assert client.patch(STATE, json={"note": 1}).status_code == 200  # writes work


def test_readyz_is_ready_while_a_writer_holds_the_lock(stuck_app, redis):
    client = stuck_app.test_client()
    assert client.post(STATE, json={"workflow_id": "wf", "steps": steps(2)}).status_code == 200
    redis.set(LOCK, "a-live-writer", px=800)
    assert stuck_app.test_client().get("/readyz").status_code == 200
    assert redis.get(LOCK) == b"a-live-writer"


# --- versions never go back (item 5) -------------------------------------------------------------


def test_versions_go_on_rising_after_redis_restarts_without_its_data(own_redis: RedisServer):
    store = layout.current(RedisStore(own_redis.url))
    try:
        before = store.save({"workflow_id": "wf", "steps": steps(1)}).version
        own_redis.stop()
        own_redis.start()  # no persistence: state and counter are gone
        wait_until(lambda: store.get().state is None)
        after = store.save({"workflow_id": "wf", "steps": steps(1)}).version
        assert after > before
        own_redis.stop()
        own_redis.start()
        assert store.clear() > after  # a DELETE takes a number too
    finally:
        store.close()


def test_the_stored_document_carries_a_large_version_exactly(redis, redis_server):
    """Lua 5.1 writes a number above 1e14 as 1.7e+15 unless told otherwise."""
    store = layout.current(RedisStore(redis_server.url))
    try:
        redis.set(SEQ, 10**15 + 7)
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe("workflow:{public}:events")
        wait_until(lambda: pubsub.get_message(timeout=0.1) is None)
        saved = store.save({"workflow_id": "wf", "steps": steps(1)})
        assert saved.version == 10**15 + 8
        assert json.loads(redis.get("workflow:{public}:state:wf"))["version"] == 10**15 + 8
        event = wait_until(lambda: pubsub.get_message(timeout=0.5))
        assert json.loads(event["data"])["id"] == str(10**15 + 8)
        assert store.clear() == 10**15 + 9
        pubsub.close()
    finally:
        store.close()
