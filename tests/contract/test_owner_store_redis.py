"""The storage contract on Redis (fakeredis and a real redis-server), the key layout an operator
sees with redis-cli, and the migration of the single-workflow layout."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest

from service.storage import OwnerQuotaExceeded, RedisStore, StateStore
from service.storage.listing import score
from tests.conftest import steps
from tests.contract.store_contract import ALICE, BOB, RedisBacked
from tests.support import RedisServer, layout

OLD_KEY = "workflow:state"


class RedisPlace:
    """Where a test's Redis stores live, and a raw client to look at it."""

    def __init__(self, url: str, factory: Callable[[], Any] | None, raw: Any) -> None:
        self.url = url
        self.factory = factory
        self.raw = raw
        self.stores: list[RedisStore] = []

    def store(self, **options: Any) -> RedisStore:
        """Open a store on this place."""
        extra = {"client_factory": self.factory} if self.factory else {}
        store = RedisStore(self.url, **extra, **options)
        self.stores.append(store)
        return store

    def close(self) -> None:
        """Close every store opened here."""
        for store in self.stores:
            store.close()


def on_fakeredis() -> RedisPlace:
    """A place on a fakeredis server of its own, in this process."""
    server = fakeredis.FakeServer()
    return RedisPlace(
        "redis://fakeredis/0",
        lambda: fakeredis.FakeRedis(server=server),
        fakeredis.FakeRedis(server=server),
    )


def on_redis_server(real: RedisServer) -> RedisPlace:
    """A place on the session's redis-server, emptied."""
    real.flush()
    return RedisPlace(real.url, None, real.client())


@pytest.fixture(params=["fakeredis", "redis"])
def place(request: pytest.FixtureRequest) -> Iterator[RedisPlace]:
    if request.param == "fakeredis":
        place = on_fakeredis()
    else:
        place = on_redis_server(request.getfixturevalue("redis_server"))
    yield place
    place.close()


class OnOnePlace(RedisBacked):
    """The storage contract on the `place` a subclass opens."""

    @pytest.fixture
    def make_store(self, place: RedisPlace) -> Callable[..., StateStore]:
        return place.store

    @pytest.fixture
    def raw(self, place: RedisPlace) -> Any:
        return place.raw


class TestFakeRedisStore(OnOnePlace):
    @pytest.fixture
    def place(self) -> Iterator[RedisPlace]:
        with contextlib.closing(on_fakeredis()) as place:
            yield place


class TestRedisServerStore(OnOnePlace):
    @pytest.fixture
    def place(self, redis_server: RedisServer) -> Iterator[RedisPlace]:
        with contextlib.closing(on_redis_server(redis_server)) as place:
            yield place


# --- what redis-cli shows ----------------------------------------------------------------------


def test_every_key_of_an_owner_carries_its_hash_tag(place):
    store = place.store(ttl=30)
    store.create(ALICE, {"workflow_id": "a:1", "status": "completed", "steps": steps(1)})
    store.create(ALICE, {"workflow_id": "b", "steps": steps(1)})
    store.delete(ALICE, "b")
    keys = sorted(key.decode() for key in place.raw.keys("*"))
    assert keys == [
        "workflow:owners",
        "workflow:{alice}:bytes",
        "workflow:{alice}:history",
        "workflow:{alice}:index",
        "workflow:{alice}:seq",
        "workflow:{alice}:state:a:1",
    ]
    assert place.raw.get("workflow:{alice}:current") is None  # b was current, and is deleted
    # The owner's bytes: each workflow's stored document, and their total; b's went with it.
    size = str(place.raw.strlen("workflow:{alice}:state:a:1")).encode()
    assert place.raw.hgetall("workflow:{alice}:bytes") == {b"a:1": size, b"*": size}
    assert json.loads(place.raw.get("workflow:{alice}:state:a:1")) == store.get(ALICE, "a:1").state
    assert 1 <= place.raw.ttl("workflow:{alice}:state:a:1") <= 30
    assert place.raw.ttl("workflow:{alice}:seq") == -1
    assert place.raw.zrange("workflow:{alice}:index", 0, -1) == [b"a:1"]
    # The owners index: every owner, scored at or above its workflows' last update (ms).
    [(owner, bound)] = place.raw.zrange("workflow:owners", 0, -1, withscores=True)
    assert owner == b"alice" and bound >= score(store.get(ALICE, "a:1").state)


def test_workflows_stored_before_the_byte_count_was_kept_count_against_the_quota(place):
    store = place.store(max_owner_bytes=3000)
    for name in ("a", "b"):
        store.create(ALICE, {"workflow_id": name, "steps": steps(1), "pad": "p" * 1000})
    place.raw.delete(store.keys.bytes_of(ALICE))  # as an earlier version left them
    with pytest.raises(OwnerQuotaExceeded):
        store.create(ALICE, {"workflow_id": "c", "steps": steps(1), "pad": "p" * 1000})
    stored = sum(place.raw.strlen(store.keys.state(ALICE, name)) for name in ("a", "b"))
    assert int(place.raw.hget(store.keys.bytes_of(ALICE), "*")) == stored
    assert store.owner_bytes(ALICE) == stored


def test_owners_are_known_again_after_redis_loses_its_data(place):
    store = place.store()
    store.create(ALICE, {"workflow_id": "a", "steps": steps(1)})
    store.create(BOB, {"workflow_id": "b", "steps": steps(1)})
    place.raw.flushall()  # what a restart without persistence leaves
    assert store.owners() == []
    store.create(ALICE, {"workflow_id": "a2", "steps": steps(1)})  # the same process writes again
    assert store.owners() == [ALICE]
    assert [e["workflow_id"] for e in store.list_every_owner().entries] == ["a2"]


def test_the_owners_set_of_an_earlier_version_becomes_the_owners_index(place):
    place.raw.sadd("workflow:owners", ALICE, BOB)
    store = place.store()
    assert store.owners() == sorted([ALICE, BOB])
    assert place.raw.type("workflow:owners") == b"zset"
    store.create(ALICE, {"workflow_id": "a", "steps": steps(1)})
    assert [e["owner"] for e in store.list_every_owner().entries] == [ALICE]


def test_a_running_workflow_carries_the_stale_ttl_refreshed_by_each_write(place):
    store = place.store(stale_ttl=1000)
    store.create(ALICE, {"workflow_id": "wf", "steps": steps(2)})
    key = store.keys.state(ALICE, "wf")
    assert 990 <= place.raw.ttl(key) <= 1000
    place.raw.pexpire(key, 5000)
    store.update_step(ALICE, "wf", 0, {"status": "completed"})
    assert place.raw.ttl(key) > 990


def test_the_prefix_names_every_key(place):
    store = place.store(prefix="app7")
    store.create(ALICE, {"workflow_id": "wf"})
    assert sorted(k.decode() for k in place.raw.keys("*")) == [
        "app7:owners",
        "app7:{alice}:bytes",
        "app7:{alice}:current",
        "app7:{alice}:index",
        "app7:{alice}:seq",
        "app7:{alice}:state:wf",
    ]


def test_a_missing_counter_is_seeded_from_the_clock(place):
    store = place.store()
    version = store.create(ALICE, {"workflow_id": "wf"}).version
    assert version > 1_700_000_000_000_000  # microseconds since 1970: never below a version seen
    assert int(place.raw.get(store.keys.seq(ALICE))) == version


def test_a_corrupt_value_is_moved_aside_under_the_owner(place):
    store = place.store()
    store.create(ALICE, {"workflow_id": "wf"})
    for garbage in (b"first", b"second"):
        place.raw.set(store.keys.state(ALICE, "wf"), garbage)
        assert store.get(ALICE, "wf").state is None
    aside = sorted(key.decode() for key in place.raw.keys("workflow:{alice}:corrupt:*"))
    assert len(aside) == 2
    assert all(re.fullmatch(r"workflow:\{alice\}:corrupt:wf:\d+(-\d+)?", key) for key in aside)
    assert 6 * 86400 < place.raw.ttl(aside[0]) <= 7 * 86400


def test_a_lock_without_an_expiry_gets_one(place):
    store = place.store(lock_timeout=0.5, lock_wait=0.2)
    store.create(ALICE, {"workflow_id": "wf", "steps": steps(1)})
    place.raw.set(store.keys.lock(ALICE, "wf"), "junk")
    with pytest.raises(Exception, match="lock"):
        store.update_step(ALICE, "wf", 0, {"status": "completed"})
    assert 0 < place.raw.pttl(store.keys.lock(ALICE, "wf")) <= 500


# --- migration of the single-workflow layout ----------------------------------------------------


def old_layout(raw: Any, version: int = 42) -> dict[str, Any]:
    """Write the keys an earlier version left: the state, its counter and a history."""
    state, old_done = layout.single_workflow_state(version)
    raw.set(OLD_KEY, json.dumps(state), px=3_600_000)
    raw.set(f"{OLD_KEY}:seq", version)
    raw.rpush(f"{OLD_KEY}:history", json.dumps(old_done))
    return state


def test_the_single_workflow_layout_moves_into_public_keeping_its_version(place):
    state = old_layout(place.raw)
    store = place.store()
    current = store.get("public")
    assert current.state == state
    assert current.event_id == "42"
    assert store.list("public").entries[0]["version"] == 42
    assert [h["workflow_id"] for h in store.history("public")] == ["older"]
    assert not place.raw.exists(OLD_KEY, f"{OLD_KEY}:seq", f"{OLD_KEY}:history")
    assert 3_500_000 < place.raw.pttl(store.keys.state("public", "seed-wf")) <= 3_600_000
    assert store.update_step("public", None, 0, {"status": "completed"}).version == 43
    assert "public" in store.owners()
    # A second process starting later finds nothing left to move.
    assert place.store().get("public").version == 43


def test_migration_keeps_the_counter_of_a_deleted_state(place):
    place.raw.set(f"{OLD_KEY}:seq", 77)
    store = place.store()
    assert store.get("public").state is None
    assert store.save("public", {"workflow_id": "next"}).version == 78


def test_a_corrupt_old_state_is_moved_aside_and_its_counter_kept(place):
    place.raw.set(OLD_KEY, "garbage")
    place.raw.set(f"{OLD_KEY}:seq", 9)
    store = place.store()
    assert store.save("public", {"workflow_id": "next"}).version == 10
    assert place.raw.keys(f"{OLD_KEY}:corrupt:*")


def test_a_migration_that_found_redis_down_is_tried_again(own_redis: RedisServer):
    store = RedisStore(own_redis.url)
    own_redis.stop()
    with pytest.raises(Exception, match="unavailable"):
        store.get("public")
    own_redis.start()
    state = old_layout(own_redis.client())
    assert store.get("public").state == state
    store.close()


# --- round trips (issue 13's budgets rest on them) -----------------------------------------------


class RoundTrips:
    """Count the commands (or pipelines) a store sends to Redis: each is one round trip."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import redis.connection

        self.count = 0
        original = redis.connection.AbstractConnection.send_packed_command

        def counted(connection: Any, command: Any, check_health: bool = True) -> None:
            self.count += 1
            return original(connection, command, check_health)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)

    def of(self, call: Callable[[], Any]) -> int:
        """Return how many round trips `call` took."""
        before = self.count
        call()
        return self.count - before


def test_reads_take_one_round_trip_writes_two_and_a_page_of_a_thousand_one(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
):
    redis_server.flush()
    store = RedisStore(redis_server.url, max_workflows=2000)
    try:
        for n in range(1000):
            store.save(ALICE, {"workflow_id": f"wf{n:04d}", "steps": steps(3)})
        trips = RoundTrips(monkeypatch)
        # Warm: scripts loaded, connections open (what a server has after its first requests).
        store.get(ALICE), store.merge(ALICE, None, {"n": 0}), store.list(ALICE, limit=50)
        store.delete(ALICE, "wf0998")
        assert trips.of(lambda: store.get(ALICE)) == 1
        assert trips.of(lambda: store.get(ALICE, "wf0500")) == 1
        assert trips.of(lambda: store.get_for_stream(ALICE)) == 1
        assert trips.of(lambda: store.merge(ALICE, None, {"n": 1})) == 2
        assert trips.of(lambda: store.update_step(ALICE, "wf0007", 1, {"status": "failed"})) == 2
        assert trips.of(lambda: store.save(ALICE, {"workflow_id": "wf0001", "steps": []})) == 2
        assert trips.of(lambda: store.create(ALICE, {"workflow_id": "new"})) == 2
        assert trips.of(lambda: store.delete(ALICE, "new")) == 1
        page = store.list(ALICE, limit=50)
        assert len(page.entries) == 50 and page.next_cursor
        assert trips.of(lambda: store.list(ALICE, limit=50, cursor=page.next_cursor)) == 1
        assert trips.of(lambda: store.list(ALICE, status="finished", limit=50)) == 1
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["index", "history"])
def test_a_key_of_another_type_is_moved_aside_before_any_write(place, caplog, kind):
    store = place.store()
    store.create(ALICE, {"workflow_id": "a", "steps": steps(1)})
    key = f"workflow:{{alice}}:{kind}"
    place.raw.delete(key)
    place.raw.hset(key, "left", "by an operator")  # a hash where the service keeps another type
    # Each write lands once, whole: the key is moved aside first, never a write cut halfway.
    done = store.merge(ALICE, "a", {"status": "completed"}).state
    assert store.get(ALICE, "a").state == done
    assert [e["workflow_id"] for e in store.list(ALICE).entries] == ["a"]
    assert [h["workflow_id"] for h in store.history(ALICE)] == ["a"]
    store.create(ALICE, {"workflow_id": "b", "steps": steps(1)})
    store.delete(ALICE, "b")
    [aside] = place.raw.keys(f"workflow:{{alice}}:corrupt:#{kind}:*")
    assert place.raw.hgetall(aside) == {b"left": b"by an operator"}
    assert 0 < place.raw.ttl(aside) <= 7 * 86400
    assert f"moved it to {aside.decode()}" in caplog.text


def test_a_list_moves_aside_an_index_of_another_type(place):
    store = place.store()
    store.create(ALICE, {"workflow_id": "a", "steps": steps(1)})
    place.raw.delete("workflow:{alice}:index")
    place.raw.set("workflow:{alice}:index", "garbage")
    assert store.list(ALICE).entries == []  # the index is gone; the next write files "a" again
    assert place.raw.keys("workflow:{alice}:corrupt:#index:*") != []
    store.update_step(ALICE, "a", 0, {"status": "completed"})
    assert [e["workflow_id"] for e in store.list(ALICE).entries] == ["a"]
