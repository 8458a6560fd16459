"""The storage contract (contract section 8): what every backend's StateStore does, through its
public interface (service/storage/base.py) alone: no app, no HTTP.

A backend is checked by one subclass of `StoreContract` (as simplekv's `BasicStore` or
cachelib's `CommonTests`) that supplies five fixtures; every test here then runs on it:

- `make_store`: `make_store(**options) -> StateStore`, a store on this test's place of the
  backend (fresh and empty when the test starts; every call in one test shares it, as the
  processes of one deployment do); options are StateStore's (ttl, max_workflows, ...);
- `plant`: `plant(store, owner, workflow_id, raw, score=None)` writes bytes where `store`
  keeps that workflow, as an operator or a broken writer would (and, given a score, files the
  workflow in the owner's list under that last_update in ms);
- `drop_counter`: `drop_counter(store, owner)` loses the owner's version counter, as a Redis
  restarted without persistence does;
- `hold_lock`: `with hold_lock(store, owner, workflow_id):` holds the lock a write to that
  workflow takes, as a writer in another process would;
- `quarantined`: `quarantined(store, owner) -> list[bytes]` returns the corrupt values the
  store moved aside for that owner.

`RedisBacked` supplies the last four for any backend on the Redis protocol, from a `raw`
client fixture; tests/contract/test_owner_store_*.py and tests/integration/test_cluster.py
are the subclasses. What is particular to one backend (keys, files, migration) stays in its
own module; that every registered backend class implements the private methods and overrides no
public one is checked without a store, in tests/unit/test_storage_interface.py.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

import pytest

from service import model, runs
from service.storage import (
    RESYNC,
    Event,
    LockTimeout,
    OwnerQuotaExceeded,
    StateStore,
    StateTooLarge,
)
from tests.conftest import steps
from tests.support import wait_until

ALICE, BOB = "alice", "bob@example.org"


class Feed:
    """A store's `events()`, read one event at a time with a timeout."""

    def __init__(self, store: StateStore) -> None:
        self.stop = threading.Event()
        self.events = store.events(self.stop)
        self.reader = ThreadPoolExecutor(max_workers=1)

    def next(self, timeout: float = 5.0) -> Event:
        """Return the next event; fail if none comes within `timeout` seconds."""
        return self.reader.submit(next, self.events).result(timeout)

    def close(self) -> None:
        """Stop the feed."""
        self.stop.set()
        self.reader.shutdown(wait=True)
        with contextlib.suppress(ValueError):
            self.events.close()


def tick() -> None:
    """Wait until the millisecond clock moves on, so the next write sorts after the last one."""
    start = time.time_ns() // 1_000_000
    wait_until(lambda: time.time_ns() // 1_000_000 > start + 1, interval=0.001)


def ids(page: Any) -> list[str]:
    """Return the workflow ids of a page of a list, in order."""
    return [entry["workflow_id"] for entry in page.entries]


def walk(store: StateStore, owner: str, status: str = "all", limit: int = 2) -> list[str]:
    """Return the ids of a whole list, page by page."""
    seen: list[str] = []
    cursor = None
    while True:
        page = store.list(owner, status=status, limit=limit, cursor=cursor)
        seen += ids(page)
        assert len(page.entries) <= limit
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor


class StoreContract:
    """What every backend does with many workflows and many owners."""

    @pytest.fixture
    def store(self, make_store: Callable[..., StateStore]) -> StateStore:
        """A store with the default options on this test's place of the backend."""
        return make_store()

    @pytest.fixture
    def follow(self) -> Iterator[Callable[[StateStore], Feed]]:
        """Open feeds on stores; they are closed at the end of the test."""
        feeds: list[Feed] = []

        def open_feed(store: StateStore) -> Feed:
            feeds.append(Feed(store))
            return feeds[-1]

        yield open_feed
        for feed in feeds:
            feed.close()

    # --- owners never see each other ---------------------------------------------------------

    def test_owners_are_isolated(self, store):
        mine = store.create(ALICE, {"workflow_id": "wf", "steps": steps(2)}).state
        assert store.get(BOB, "wf").state is None
        assert store.get(BOB).state is None
        assert store.list(BOB).entries == []
        with pytest.raises(model.NoWorkflow):
            store.update_step(BOB, "wf", 0, {"status": "completed"})
        with pytest.raises(model.NoWorkflow):
            store.delete(BOB, "wf")
        # The same id is another workflow for another owner.
        theirs = store.create(BOB, {"workflow_id": "wf", "steps": steps(1), "who": "bob"}).state
        assert store.get(ALICE, "wf").state == mine
        assert store.get(BOB, "wf").state == theirs
        store.delete(BOB, None)
        assert store.get(ALICE).state == mine
        assert store.history(BOB) == []
        assert set(store.owners()) >= {ALICE, BOB}

    @pytest.mark.parametrize("owner", ["", ".", "..", "a/b", "x{y}", "a" * 65, None, 7])
    def test_a_bad_owner_is_refused_before_any_storage_work(self, store, owner):
        with pytest.raises(model.InvalidState, match="owner"):
            store.get(owner)
        with pytest.raises(model.InvalidState, match="owner"):
            store.save(owner, {"steps": steps(1)})

    @pytest.mark.parametrize("workflow_id", ["", "has space", "a/b", "x" * 129, "é"])
    def test_a_bad_workflow_id_is_refused(self, store, workflow_id):
        with pytest.raises(model.InvalidWorkflowId):
            store.get(ALICE, workflow_id)
        with pytest.raises(model.InvalidWorkflowId):
            store.delete(ALICE, workflow_id)
        with pytest.raises(model.InvalidWorkflowId):
            store.merge(ALICE, workflow_id, {"note": 1})

    # --- create, get by id ---------------------------------------------------------------------

    def test_create_stores_a_workflow_and_makes_it_current(self, store):
        first = store.create(ALICE, {"workflow_id": "one", "steps": steps(2)})
        second = store.create(ALICE, {"steps": steps(1)})
        assert second.state["workflow_id"].startswith("workflow_")
        assert store.get(ALICE, "one").state == first.state
        assert store.get(ALICE, second.state["workflow_id"]).state == second.state
        assert store.get(ALICE).state == second.state
        assert store.get(ALICE, "missing").state is None

    def test_create_refuses_an_id_that_exists(self, store):
        store.create(ALICE, {"workflow_id": "run", "steps": steps(1)})
        with pytest.raises(model.WorkflowExists):
            store.create(ALICE, {"workflow_id": "run", "steps": steps(2)})
        store.create(ALICE, {"workflow_id": "done", "status": "completed"})
        with pytest.raises(model.WorkflowFinished):
            store.create(ALICE, {"workflow_id": "done", "status": "completed"})
        store.delete(ALICE, "run")
        again = store.create(ALICE, {"workflow_id": "run", "steps": steps(3)}).state
        assert len(again["steps"]) == 3

    # --- reads and writes ----------------------------------------------------------------------

    def test_an_empty_store_holds_nothing(self, store):
        assert store.get(ALICE).state is None
        assert (store.get(ALICE, "wf").state, store.get(ALICE, "wf").json) == (None, "null")
        assert store.list(ALICE).entries == []
        assert store.history(ALICE) == []
        assert ALICE not in store.owners()
        with pytest.raises(model.NoWorkflow):
            store.delete(ALICE, "wf")
        store.ping()

    def test_every_write_answers_what_a_read_then_sees(self, store):
        created = store.create(ALICE, {"workflow_id": "wf", "steps": steps(3), "note": "a"})
        stepped = store.update_step(ALICE, "wf", 1, {"status": "in_progress"})
        assert [step["status"] for step in stepped.state["steps"]] == [
            "pending",
            "in_progress",
            "pending",
        ]
        merged = store.merge(ALICE, "wf", {"note": "b"})
        assert (merged.state["note"], merged.state["steps"]) == ("b", stepped.state["steps"])
        saved = store.save(ALICE, {"workflow_id": "wf", "steps": steps(1)})
        for snapshot in (created, stepped, merged, saved):
            assert json.loads(snapshot.json) == snapshot.state
            assert snapshot.event_id == str(snapshot.version)
        assert store.get(ALICE, "wf") == saved
        with pytest.raises(model.InvalidIndex):
            store.update_step(ALICE, "wf", 1, {"status": "completed"})
        assert store.get(ALICE, "wf") == saved  # a refused write stores nothing

    def test_a_finished_workflow_is_final(self, store):
        done = store.create(ALICE, {"workflow_id": "wf", "status": "completed", "steps": steps(1)})
        with pytest.raises(model.WorkflowFinished):
            store.update_step(ALICE, "wf", 0, {"status": "failed"})
        with pytest.raises(model.WorkflowFinished):
            store.merge(ALICE, "wf", {"status": "failed"})
        with pytest.raises(model.WorkflowFinished):
            store.save(ALICE, {"workflow_id": "wf", "status": "failed"})
        # An exact repeat of the finishing write is no new write, nor a second history entry.
        assert store.merge(ALICE, "wf", {"status": "completed"}) == done
        assert store.get(ALICE, "wf") == done
        assert store.history(ALICE) == [done.state]

    # --- the current workflow ------------------------------------------------------------------

    def test_save_of_a_new_id_creates_it_and_keeps_the_previous_one(self, store):
        a = store.save(ALICE, {"workflow_id": "a", "steps": steps(2)}).state
        b = store.save(ALICE, {"workflow_id": "b", "steps": steps(1)}).state
        assert store.get(ALICE).state == b
        assert store.get(ALICE, "a").state == a
        # Saving an existing id replaces it and makes it current again.
        a2 = store.save(ALICE, {"workflow_id": "a", "steps": steps(3)}).state
        assert store.get(ALICE).state == a2
        assert store.get(ALICE, "b").state == b
        assert a2["version"] > b["version"] > a["version"]

    def test_legacy_writes_act_on_the_current_workflow(self, store):
        store.create(ALICE, {"workflow_id": "old", "steps": steps(2)})
        store.create(ALICE, {"workflow_id": "new", "steps": steps(2)})
        stepped = store.update_step(ALICE, None, 1, {"status": "completed"}).state
        assert stepped["workflow_id"] == "new"
        merged = store.merge(ALICE, None, {"note": "x"}).state
        assert (merged["workflow_id"], merged["note"]) == ("new", "x")
        assert store.get(ALICE, "old").state["steps"][1]["status"] == "pending"
        # A write by id leaves the current workflow where it is.
        store.update_step(ALICE, "old", 0, {"status": "failed"})
        assert store.get(ALICE).state["workflow_id"] == "new"

    def test_deleting_the_current_workflow_leaves_no_current_one(self, store):
        store.create(ALICE, {"workflow_id": "a", "steps": steps(1)})
        b = store.create(ALICE, {"workflow_id": "b", "steps": steps(1)}).version
        deleted = store.delete(ALICE, "b")
        assert deleted == b + 1
        assert store.get(ALICE).state is None
        assert store.get_for_stream(ALICE).event_id == str(deleted)
        assert store.get(ALICE, "a").state is not None
        with pytest.raises(model.NoWorkflow):
            store.merge(ALICE, None, {"note": 1})
        with pytest.raises(model.NoWorkflow):
            store.delete(ALICE, "b")
        # The legacy delete always succeeds and always takes a number.
        assert store.delete(ALICE, None) == deleted + 1
        assert store.get(ALICE, "a").state is not None

    def test_deleting_another_workflow_keeps_the_current_one(self, store):
        store.create(ALICE, {"workflow_id": "a", "steps": steps(1)})
        b = store.create(ALICE, {"workflow_id": "b", "steps": steps(1)}).state
        store.delete(ALICE, "a")
        assert store.get(ALICE).state == b
        assert ids(store.list(ALICE)) == ["b"]

    def test_if_match_of_a_save_is_checked_against_the_current_workflow(self, store):
        a = store.save(ALICE, {"workflow_id": "a", "steps": steps(1)}).version
        with pytest.raises(model.PreconditionFailed):
            store.save(ALICE, {"workflow_id": "b"}, if_match=frozenset({str(a - 1)}))
        assert store.get(ALICE, "b").state is None
        b = store.save(ALICE, {"workflow_id": "b"}, if_match=frozenset({str(a)})).version
        assert store.get(ALICE).version == b
        with pytest.raises(model.PreconditionFailed):
            store.save(ALICE, {"workflow_id": "a"}, if_match=frozenset({str(a)}))

    # --- versions ------------------------------------------------------------------------------

    def test_versions_strictly_increase_across_an_owners_workflows(self, store):
        seen = [
            store.create(ALICE, {"workflow_id": "a", "steps": steps(2)}).version,
            store.create(ALICE, {"workflow_id": "b", "steps": steps(2)}).version,
            store.update_step(ALICE, "a", 0, {"status": "completed"}).version,
            store.delete(ALICE, "b"),
            store.merge(ALICE, "a", {"note": 1}).version,
            store.save(ALICE, {"workflow_id": "c"}).version,
            store.delete(ALICE, None),
        ]
        assert seen == list(range(seen[0], seen[0] + len(seen)))
        # Another owner's writes take numbers of their own counter.
        store.create(BOB, {"workflow_id": "a"})
        assert store.create(ALICE, {"workflow_id": "d"}).version == seen[-1] + 1

    def test_versions_never_go_back_when_the_counter_is_lost(self, store, drop_counter):
        store.create(ALICE, {"workflow_id": "a", "status": "completed"})
        last = store.create(ALICE, {"workflow_id": "b", "steps": steps(1)}).version
        drop_counter(store, ALICE)
        after = store.update_step(ALICE, "b", 0, {"status": "completed"}).version
        assert after > last
        drop_counter(store, ALICE)
        store.delete(ALICE, "b")
        drop_counter(store, ALICE)
        fresh = store.create(ALICE, {"workflow_id": "c"}).version
        assert fresh > after
        assert store.create(ALICE, {"workflow_id": "d"}).version == fresh + 1

    # --- every owner's workflows (an admin's owner=*) ----------------------------------------

    def test_every_owners_list_is_in_order_and_pages(self, store):
        for owner, name in [(ALICE, "a1"), (BOB, "b1"), (ALICE, "a2"), ("carol", "c1")]:
            store.create(owner, {"workflow_id": name, "steps": steps(1)})
            tick()
        store.update_step(BOB, "b1", 0, {"status": "completed"})  # b1 is now the newest
        seen, cursor = [], None
        while True:
            page = store.list_every_owner(limit=2, cursor=cursor)
            assert len(page.entries) <= 2
            seen += [(entry["owner"], entry["workflow_id"]) for entry in page.entries]
            if (cursor := page.next_cursor) is None:
                break
        assert seen == [(BOB, "b1"), ("carol", "c1"), (ALICE, "a2"), (ALICE, "a1")]

    def test_a_page_of_every_owner_reads_only_the_owners_it_can_list(self, store, monkeypatch):
        store.owner_bound_slack_ms = 10  # how far a bound may run ahead of the last write
        for number in range(30):
            store.create(f"user{number}", {"workflow_id": "wf", "steps": steps(1)})
        time.sleep(0.05)  # the bounds of those owners are now older than any new write
        store.create(ALICE, {"workflow_id": "new", "steps": steps(1)})
        tick()
        store.create(BOB, {"workflow_id": "newer", "steps": steps(1)})
        read: list[str] = []
        listing = store._list

        def counted(owner: str, *args: Any) -> Any:
            read.append(owner)
            return listing(owner, *args)

        monkeypatch.setattr(store, "_list", counted)
        page = store.list_every_owner(limit=1)
        assert [(e["owner"], e["workflow_id"]) for e in page.entries] == [(BOB, "newer")]
        assert read == [BOB, ALICE]  # the page's owner and the one that decides what comes next
        page = store.list_every_owner(limit=1, cursor=page.next_cursor)
        assert [(e["owner"], e["workflow_id"]) for e in page.entries] == [(ALICE, "new")]

    # --- listing -------------------------------------------------------------------------------

    def test_a_list_is_newest_first_and_pages_with_cursors(self, store):
        for name in ("a", "b", "c", "d", "e"):
            store.create(ALICE, {"workflow_id": name, "steps": steps(2)})
            tick()
        store.update_step(ALICE, "b", 0, {"status": "completed"})  # b is now the most recent
        page = store.list(ALICE, limit=2)
        assert ids(page) == ["b", "e"]
        entry = page.entries[0]
        state = store.get(ALICE, "b").state
        assert entry == {**model.summarize(state), "version": state["version"]}
        assert walk(store, ALICE, limit=2) == ["b", "e", "d", "c", "a"]
        assert walk(store, ALICE, limit=100) == ["b", "e", "d", "c", "a"]
        assert store.list(ALICE, limit=5).next_cursor is None

    def test_ties_are_ordered_by_id_descending(self, store, plant):
        stamp = "2030-01-01T00:00:00.000Z"
        for name in ("m", "z", "a", "k"):
            store.create(ALICE, {"workflow_id": name, "steps": steps(1)})
        for name in ("m", "z", "a", "k"):
            state = dict(store.get(ALICE, name).state, last_update=stamp)
            plant(store, ALICE, name, json.dumps(state).encode(), score=1893456000000)
        assert walk(store, ALICE, limit=1) == ["z", "m", "k", "a"]
        assert walk(store, ALICE, limit=3) == ["z", "m", "k", "a"]

    def test_a_list_filters_by_status(self, store):
        for body in (
            {"workflow_id": "r1", "steps": steps(1)},
            {"workflow_id": "f1", "status": "failed"},
            {"workflow_id": "r2", "steps": steps(1)},
            {"workflow_id": "f2", "status": "completed"},
        ):
            store.create(ALICE, body)
            tick()
        store.merge(ALICE, "r1", {"status": "cancelled"})
        assert walk(store, ALICE, "running", limit=1) == ["r2"]
        assert walk(store, ALICE, "finished", limit=1) == ["r1", "f2", "f1"]
        assert walk(store, ALICE, "all", limit=3) == ["r1", "f2", "r2", "f1"]

    @pytest.mark.parametrize(
        ("options", "field"),
        [
            ({"status": "done"}, "status"),
            ({"status": None}, "status"),
            ({"limit": 0}, "limit"),
            ({"limit": 101}, "limit"),
            ({"limit": True}, "limit"),
            ({"limit": "5"}, "limit"),
        ],
    )
    def test_bad_list_options_are_refused(self, store, options, field):
        with pytest.raises(model.InvalidState, match=field):
            store.list(ALICE, **options)

    def test_a_cursor_that_was_not_issued_for_the_list_is_refused(self, store):
        for name in ("a", "b", "c"):
            store.create(ALICE, {"workflow_id": name, "status": "completed"})
            store.create(BOB, {"workflow_id": name, "status": "completed"})
            tick()
        cursor = store.list(ALICE, limit=1).next_cursor
        assert cursor
        tampered = cursor[:-2] + ("A" if cursor[-2] != "A" else "B") + cursor[-1]
        for bad in ("", "x", "not a cursor!", tampered, cursor + "==", "e30", "W10", "a" * 600):
            with pytest.raises(model.InvalidCursor):
                store.list(ALICE, limit=1, cursor=bad)
        with pytest.raises(model.InvalidCursor):
            store.list(BOB, limit=1, cursor=cursor)  # another owner's
        with pytest.raises(model.InvalidCursor):
            store.list(ALICE, status="finished", limit=1, cursor=cursor)  # another filter's
        assert ids(store.list(ALICE, limit=1, cursor=cursor)) == ["b"]

    # --- limits and expiry ---------------------------------------------------------------------

    def test_at_most_max_workflows_per_owner(self, make_store):
        store = make_store(max_workflows=3)
        for name in ("a", "b", "c"):
            store.create(ALICE, {"workflow_id": name, "steps": steps(1)})
        with pytest.raises(model.TooManyWorkflows):
            store.create(ALICE, {"workflow_id": "d"})
        with pytest.raises(model.TooManyWorkflows):
            store.save(ALICE, {"workflow_id": "d"})
        assert store.get(ALICE, "d").state is None
        assert store.get(ALICE).state["workflow_id"] == "c"
        # Writes to workflows that exist go on; another owner has a limit of its own.
        store.save(ALICE, {"workflow_id": "a", "steps": steps(2)})
        store.update_step(ALICE, "b", 0, {"status": "completed"})
        store.create(BOB, {"workflow_id": "d"})
        store.delete(ALICE, "c")
        store.create(ALICE, {"workflow_id": "d"})

    def test_expired_workflows_leave_the_list_and_free_their_place(self, make_store):
        store = make_store(max_workflows=2, ttl=1)
        store.create(ALICE, {"workflow_id": "done", "status": "completed"})
        running = store.create(ALICE, {"workflow_id": "run", "steps": steps(1)}).state
        tick()
        with pytest.raises(model.TooManyWorkflows):
            store.create(ALICE, {"workflow_id": "next"})
        wait_until(lambda: store.get(ALICE, "done").state is None, timeout=5)
        assert ids(store.list(ALICE)) == ["run"]
        assert store.list(ALICE, status="finished").entries == []
        assert store.get(ALICE, "run").state == running  # each workflow keeps its own TTL
        store.create(ALICE, {"workflow_id": "next"})
        assert ids(store.list(ALICE)) == ["next", "run"]
        with pytest.raises(model.NoWorkflow):
            store.delete(ALICE, "done")
        store.delete(ALICE, "next")
        again = store.create(ALICE, {"workflow_id": "done", "status": "failed"}).state
        assert again["status"] == "failed"  # an expired id may be created again

    def test_an_expired_current_workflow_is_no_current_workflow(self, make_store):
        store = make_store(ttl=1, stale_ttl=1)
        version = store.save(ALICE, {"workflow_id": "x", "status": "completed"}).version
        store.save(BOB, {"workflow_id": "y", "steps": steps(1)})  # running: the stale TTL
        wait_until(lambda: store.get(ALICE).state is None, timeout=5)
        wait_until(lambda: store.get(BOB).state is None, timeout=5)
        assert store.list(BOB).entries == []
        assert int(store.get_for_stream(ALICE).event_id) >= version
        with pytest.raises(model.NoWorkflow):
            store.update_step(ALICE, None, 0, {"status": "completed"})

    # --- history -------------------------------------------------------------------------------

    def test_history_is_per_owner(self, store):
        a = store.create(ALICE, {"workflow_id": "a", "status": "completed"}).state
        store.create(ALICE, {"workflow_id": "b", "steps": steps(1)})
        b = store.merge(ALICE, "b", {"status": "failed"}).state
        c = store.create(BOB, {"workflow_id": "c", "status": "cancelled"}).state
        assert store.history(ALICE) == [b, a]
        assert store.history(BOB) == [c]

    # --- corrupt values --------------------------------------------------------------------------

    def test_a_corrupt_workflow_is_no_workflow_and_others_are_untouched(
        self, store, plant, quarantined
    ):
        store.create(ALICE, {"workflow_id": "good", "steps": steps(1)})
        store.create(ALICE, {"workflow_id": "bad", "steps": steps(1)})
        # Twice within a second: each corrupt value is kept aside, for an operator to look at.
        for garbage in (b"{not json", b'{"status": "running"}'):
            plant(store, ALICE, "bad", garbage)
            assert store.get(ALICE, "bad").state is None
        assert sorted(quarantined(store, ALICE)) == sorted([b"{not json", b'{"status": "running"}'])
        assert quarantined(store, BOB) == []
        assert ids(store.list(ALICE)) == ["good"]
        assert store.get(ALICE, "good").state is not None
        store.create(ALICE, {"workflow_id": "bad", "steps": steps(2)})

    # --- events --------------------------------------------------------------------------------

    def test_events_name_the_owner_the_workflow_and_whether_it_is_current(self, store, follow):
        feed = follow(store)
        assert feed.next() is RESYNC
        a = store.create(ALICE, {"workflow_id": "a", "steps": steps(1)})
        b = store.create(ALICE, {"workflow_id": "b", "steps": steps(1)})
        stepped = store.update_step(ALICE, "a", 0, {"status": "completed"})
        theirs = store.create(BOB, {"workflow_id": "a"})
        gone = store.delete(ALICE, "b")
        legacy = store.delete(ALICE, None)
        events = [feed.next() for _ in range(6)]
        # In order per owner (each owner's streams); owners on other Cluster nodes interleave.
        seen = [e for e in events if e.owner == ALICE] + [e for e in events if e.owner == BOB]
        assert [(e.owner, e.workflow_id, e.current, e.id) for e in seen] == [
            (ALICE, "a", True, a.event_id),
            (ALICE, "b", True, b.event_id),
            (ALICE, "a", False, stepped.event_id),
            (ALICE, "b", True, str(gone)),
            (ALICE, "", True, str(legacy)),
            (BOB, "a", True, theirs.event_id),
        ]
        assert json.loads(seen[2].json) == stepped.state
        assert [seen[3].json, seen[4].json] == ["null", "null"]

    # --- concurrency ---------------------------------------------------------------------------

    def test_a_held_lock_holds_writes_for_the_lock_wait_then_refuses_them(
        self, make_store, hold_lock
    ):
        store = make_store(lock_wait=0.1)
        before = store.create(ALICE, {"workflow_id": "wf", "steps": steps(1)})
        with hold_lock(store, ALICE, "wf"):
            began = time.monotonic()
            with pytest.raises(LockTimeout):
                store.update_step(ALICE, "wf", 0, {"status": "completed"})
            assert 0.1 <= time.monotonic() - began < 3
            assert store.get(ALICE, "wf") == before  # reads never wait for a lock
        assert store.update_step(ALICE, "wf", 0, {"status": "completed"}).version > before.version

    def test_concurrent_writes_to_many_workflows_all_land(self, make_store):
        # Two processes' worth, with a lock wait no loaded test machine runs out of.
        stores = [make_store(lock_wait=10), make_store(lock_wait=10)]
        names = [f"wf{n}" for n in range(6)]
        for name in names:
            stores[0].create(ALICE, {"workflow_id": name, "steps": steps(4)})
        gate = threading.Barrier(12)
        versions: list[int] = []
        errors: list[Exception] = []

        def write(n: int) -> None:
            gate.wait()
            store, name = stores[n % 2], names[n % 6]
            for index in (n // 6) * 2, (n // 6) * 2 + 1:
                try:
                    snapshot = store.update_step(ALICE, name, index, {"status": "completed"})
                except Exception as error:
                    errors.append(error)
                else:
                    versions.append(snapshot.version)

        threads = [threading.Thread(target=write, args=(n,)) for n in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors
        assert len(versions) == 24 and len(set(versions)) == 24
        for name in names:
            state = stores[1].get(ALICE, name).state
            assert [step["status"] for step in state["steps"]] == ["completed"] * 4

    # --- size limits (every write; a DELETE always works) ------------------------------------

    def test_a_write_that_would_make_a_workflow_too_large_is_refused_and_stores_nothing(
        self, make_store
    ):
        store = make_store(max_workflow_bytes=2000)
        big = "x" * 2000
        with pytest.raises(StateTooLarge, match="more than the 2000 allowed"):
            store.create(ALICE, {"workflow_id": "wf", "steps": steps(2), "note": big})
        with pytest.raises(StateTooLarge):
            store.save(ALICE, {"workflow_id": "wf", "steps": steps(2), "note": big})
        assert store.get(ALICE, "wf").state is None and store.owner_bytes(ALICE) == 0
        kept = store.create(ALICE, {"workflow_id": "wf", "steps": steps(2)})
        refusals = [
            lambda: store.merge(ALICE, "wf", {"note": big}),
            lambda: store.update_step(ALICE, "wf", 1, {"status": "completed", "data": {"b": big}}),
            lambda: store.save(ALICE, {"workflow_id": "wf", "steps": steps(2), "note": big}),
        ]
        for refused in refusals:
            with pytest.raises(StateTooLarge) as caught:
                refused()
            assert caught.value.code == "state_too_large"
            assert store.get(ALICE, "wf") == kept
        # Up to the limit is fine: the limit is the stored document's length.
        room = 2000 - len(kept.json) - len(',"note":""')
        fits = store.merge(ALICE, "wf", {"note": "y" * room})
        assert len(store.get(ALICE, "wf").json) <= 2000 and fits.state["note"] == "y" * room

    def test_a_workflow_over_a_lowered_limit_may_still_shrink_and_finish(self, make_store):
        make_store().create(ALICE, {"workflow_id": "wf", "steps": steps(1), "note": "x" * 3000})
        store = make_store(max_workflow_bytes=1000, max_owner_bytes=1000)
        with pytest.raises(StateTooLarge):
            store.merge(ALICE, "wf", {"more": 1})
        shrunk = store.merge(ALICE, "wf", {"note": "x" * 2000}).state
        assert len(shrunk["note"]) == 2000
        # A run's bookkeeping is never refused, so it can still end.
        assert store.cancel(ALICE, "wf").state["status"] == "cancelled"

    def test_a_write_past_the_owners_quota_is_refused_until_a_delete_frees_room(self, make_store):
        store = make_store(max_owner_bytes=6000)
        sizes = []
        for n in range(4):
            body = {"workflow_id": f"w{n}", "steps": steps(1), "note": "x" * 1000}
            made = store.create(ALICE, body)
            sizes.append(len(made.json))
        assert store.owner_bytes(ALICE) == sum(sizes)
        with pytest.raises(OwnerQuotaExceeded, match="more than the 6000 allowed") as caught:
            store.create(ALICE, {"workflow_id": "w4", "steps": steps(1), "note": "x" * 1000})
        assert caught.value.code == "owner_quota_exceeded"
        with pytest.raises(OwnerQuotaExceeded):
            store.merge(ALICE, "w0", {"note": "x" * 2000})
        with pytest.raises(OwnerQuotaExceeded):
            store.save(ALICE, {"workflow_id": "w0", "note": "x" * 2000})
        with pytest.raises(OwnerQuotaExceeded):
            store.update_step(ALICE, "w1", 0, {"status": "completed", "data": {"b": "x" * 2000}})
        assert store.get(ALICE, "w4").state is None
        assert store.owner_bytes(ALICE) == sum(sizes)
        # Another owner has a quota of its own.
        store.create(BOB, {"workflow_id": "w4", "steps": steps(1), "note": "x" * 1000})
        # A DELETE always works, even at the quota, and frees its bytes.
        store.delete(ALICE, "w3")
        assert store.owner_bytes(ALICE) == sum(sizes[:3])
        store.create(ALICE, {"workflow_id": "w4", "steps": steps(1), "note": "x" * 1000})
        # A write that does not grow its workflow is never refused.
        store.merge(ALICE, "w0", {"note": "y" * 1000})

    def test_workflows_that_expired_stop_counting_against_the_quota(self, make_store):
        store = make_store(ttl=1, max_owner_bytes=3000)
        for n in range(2):
            store.create(ALICE, {"workflow_id": f"done{n}", "status": "completed", "x": "x" * 1000})
        keep = store.create(ALICE, {"workflow_id": "keep", "steps": steps(1)})
        with pytest.raises(OwnerQuotaExceeded):
            store.create(ALICE, {"workflow_id": "new", "x": "x" * 1000})
        wait_until(lambda: store.get(ALICE, "done0").state is None, timeout=10)
        wait_until(lambda: store.get(ALICE, "done1").state is None, timeout=10)
        # Nothing read the count since they expired: the write itself corrects it.
        made = store.create(ALICE, {"workflow_id": "new", "x": "x" * 1000})
        assert store.owner_bytes(ALICE) == len(keep.json) + len(made.json)

    def test_a_runner_answer_past_a_limit_is_refused_and_its_step_can_fail_instead(
        self, make_store
    ):
        store = make_store(max_workflow_bytes=3000)
        store.create(ALICE, {"workflow_id": "wf", "steps": steps(2)})
        fence = runs.fence_of(store.request_run(ALICE, "wf", lease=30).state)
        store.claim_run(ALICE, "wf", fence, "host:1", lease=30)
        store.runner_step(ALICE, "wf", fence, 0, "in_progress")
        before = store.get(ALICE, "wf")
        with pytest.raises(StateTooLarge):
            store.advance_run(ALICE, "wf", fence, 0, "completed", {"blob": "x" * 3000})
        with pytest.raises(StateTooLarge):
            store.runner_step(ALICE, "wf", fence, 0, "completed", {"blob": "x" * 3000})
        assert store.get(ALICE, "wf") == before
        failed = store.advance_run(
            ALICE, "wf", fence, 0, "failed", {"message": "too large"}, limited=False
        ).state
        assert failed["status"] == "failed"

    def test_a_batch_of_concurrent_writes_refuses_only_those_that_do_not_fit(self, make_store):
        store = make_store(max_owner_bytes=4000)
        made = store.create(ALICE, {"workflow_id": "wf", "steps": steps(8)})
        room = 4000 - len(made.json)
        chunk = room // 3  # two chunks fit, the third does not

        def write(index: int) -> str:
            data = {"b": "x" * chunk}
            try:
                store.update_step(ALICE, "wf", index, {"status": "completed", "data": data})
            except OwnerQuotaExceeded:
                return "refused"
            return "stored"

        with ThreadPoolExecutor(max_workers=4) as pool:
            outcomes = list(pool.map(write, range(4)))
        assert sorted(outcomes) == ["refused", "refused", "stored", "stored"]
        assert store.owner_bytes(ALICE) == len(store.get(ALICE, "wf").json) <= 4000


class RedisBacked(StoreContract):
    """The backend fixtures of any store on the Redis protocol; a subclass supplies `make_store`
    and `raw`, a client of the same server (or Cluster) that reads and writes behind the store."""

    @pytest.fixture
    def plant(self, raw: Any) -> Callable[..., None]:
        def plant(store: Any, owner: str, workflow_id: str, data: bytes, score=None) -> None:
            raw.set(store.keys.state(owner, workflow_id), data, px=60_000)
            if score is not None:
                raw.zadd(store.keys.index(owner), {workflow_id: score})

        return plant

    @pytest.fixture
    def drop_counter(self, raw: Any) -> Callable[[Any, str], None]:
        return lambda store, owner: raw.delete(store.keys.seq(owner))

    @pytest.fixture
    def hold_lock(self, raw: Any) -> Callable[..., AbstractContextManager[None]]:
        @contextlib.contextmanager
        def hold(store: Any, owner: str, workflow_id: str) -> Iterator[None]:
            raw.set(store.keys.lock(owner, workflow_id), "another-writer", px=30_000)
            yield
            raw.delete(store.keys.lock(owner, workflow_id))

        return hold

    @pytest.fixture
    def quarantined(self, raw: Any) -> Callable[[Any, str], list[bytes]]:
        def aside(store: Any, owner: str) -> list[bytes]:
            return [raw.get(key) for key in raw.keys(store.keys.corrupt(owner, "*") + "*")]

        return aside
