"""Read coalescing and group commit: shared round trips that keep every promise of the API."""

from __future__ import annotations

import json
import threading
import time

import pytest

from service import model
from service.storage import RESYNC, CurrentWorkflow, FileStore, RedisStore, StorageUnavailable
from service.storage.batching import ReadCoalescer, WriteCombiner
from tests.conftest import steps
from tests.support import RedisServer, wait_until


def run_together(count: int, target) -> list:
    """Start `count` threads on `target(index)` at once; return their results (or errors)."""
    results: list = [None] * count
    gate = threading.Barrier(count)

    def run(index: int) -> None:
        gate.wait()
        try:
            results[index] = target(index)
        except Exception as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    return results


# --- ReadCoalescer ---------------------------------------------------------------------------


def test_a_reader_is_never_served_a_fetch_that_began_before_it_arrived():
    clock = iter(range(1, 10_000))
    starts: list[int] = []
    release = threading.Event()

    def fetch() -> int:
        started = next(clock)
        starts.append(started)
        if len(starts) == 1:
            release.wait(5)  # keep the first fetch in flight while others arrive
        return started

    reads = ReadCoalescer(fetch)
    first = threading.Thread(target=reads.read)
    first.start()
    wait_until(lambda: starts)
    arrival = next(clock)
    late: list[int] = []
    threads = [threading.Thread(target=lambda: late.append(reads.read())) for _ in range(8)]
    for thread in threads:
        thread.start()
    release.set()
    for thread in [first, *threads]:
        thread.join(timeout=5)
    assert len(late) == 8
    assert all(result > arrival for result in late), (late, arrival)
    assert len(starts) == 2  # the eight late readers shared one fetch


def test_a_failure_seen_while_waiting_is_shared_at_once():
    calls = []
    release = threading.Event()

    def fetch():
        calls.append(1)
        release.wait(5)
        raise StorageUnavailable("Redis at redis://x is unavailable")

    reads = ReadCoalescer(fetch)
    results = []

    def read():
        try:
            reads.read()
        except StorageUnavailable as error:
            results.append(error)

    threads = [threading.Thread(target=read) for _ in range(5)]
    threads[0].start()
    wait_until(lambda: calls)
    for thread in threads[1:]:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(timeout=5)
    assert len(results) == 5
    assert len(calls) == 1
    assert len({id(error) for error in results}) == 5  # each thread raises its own copy


# --- WriteCombiner -----------------------------------------------------------------------------


def test_writes_queued_behind_a_batch_run_together_in_order_with_their_own_outcomes():
    batches: list[list[int]] = []
    first_running = threading.Event()
    release = threading.Event()

    def run_batch(batch):
        batches.append([write.change for write in batch])
        if len(batches) == 1:
            first_running.set()
            release.wait(5)
        for write in batch:
            if write.change < 0:
                write.fail(ValueError(f"bad {write.change}"))
            else:
                write.succeed(write.change * 10)

    combiner = WriteCombiner(run_batch)
    results: dict[int, object] = {}

    def submit(value: int) -> None:
        try:
            results[value] = combiner.submit(value)
        except ValueError as error:
            results[value] = str(error)

    leader = threading.Thread(target=submit, args=(0,))
    leader.start()
    assert first_running.wait(5)
    followers = [threading.Thread(target=submit, args=(v,)) for v in (1, 2, -3, 4)]
    for thread in followers:
        thread.start()
    wait_until(lambda: len(combiner._queue) == 4)
    release.set()
    for thread in [leader, *followers]:
        thread.join(timeout=5)
    assert batches[0] == [0]
    assert sorted(batches[1]) == [-3, 1, 2, 4] and len(batches) == 2
    assert results == {0: 0, 1: 10, 2: 20, -3: "bad -3", 4: 40}


def test_a_crashing_batch_fails_its_writes_and_the_next_batch_still_runs():
    calls = []

    def run_batch(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("backend bug")
        for write in batch:
            write.succeed("ok")

    combiner = WriteCombiner(run_batch)
    with pytest.raises(RuntimeError):
        combiner.submit(1)
    assert combiner.submit(2) == "ok"


# --- group commit, on both backends ------------------------------------------------------------


@pytest.fixture(params=["redis", "file"])
def store(request, tmp_path):
    if request.param == "redis":
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        redis_server.flush()
        backend = RedisStore(redis_server.url)
    else:
        backend = FileStore(f"file://{tmp_path}/state.json")
    store = CurrentWorkflow(backend, "public")
    store.save({"workflow_id": "wf", "steps": steps(16)})
    yield store
    store.close()


def hold_batches(store: CurrentWorkflow):
    """Make the store's first batch wait until released, so later writes pile up behind it."""
    backend = store.store
    original = backend._run_batch
    gate = threading.Event()
    entered = threading.Event()

    def held(owner, workflow_id, batch):
        if not entered.is_set():
            entered.set()
            gate.wait(5)
        return original(owner, workflow_id, batch)

    backend._run_batch = held
    return gate, entered


def queued(store: CurrentWorkflow) -> int:
    """Return how many writes to the current workflow wait behind the batch being committed."""
    combiner = store.store._writes.peek((store.owner, None))
    return 0 if combiner is None else len(combiner._queue)


def test_concurrent_writes_take_consecutive_versions_each_published(store):
    stop = threading.Event()
    feed = store.events(stop)
    assert next(feed) is RESYNC
    events: list = []
    follower = threading.Thread(target=lambda: events.extend(e for e in feed if e is not RESYNC))
    follower.start()
    before = store.get().version
    gate, entered = hold_batches(store)
    results: list = []
    leader = threading.Thread(
        target=lambda: results.append(store.update_step(15, {"status": "completed"}))
    )
    leader.start()
    assert entered.wait(5)
    followers = [
        threading.Thread(
            target=lambda i=i: results.append(
                store.update_step(i, {"status": "in_progress", "data": {"n": i}})
            )
        )
        for i in range(8)
    ]
    for thread in followers:
        thread.start()
    wait_until(lambda: queued(store) == 8)
    gate.set()
    for thread in [leader, *followers]:
        thread.join(timeout=10)
    versions = sorted(snapshot.version for snapshot in results)
    assert versions == list(range(before + 1, before + 10))
    final = store.get().state
    assert final["version"] == before + 9
    assert [final["steps"][i]["data"] for i in range(8)] == [{"n": i} for i in range(8)]
    wait_until(lambda: len(events) == 9)
    stop.set()
    follower.join(timeout=5)
    assert [int(event.id) for event in events] == list(range(before + 1, before + 10))
    for snapshot in results:
        # Each write's answer is the state as committed with its own version, and so is its
        # event: none skipped, none merged.
        event = next(e for e in events if int(e.id) == snapshot.version)
        assert json.loads(event.json) == snapshot.state


def test_if_match_in_a_batch_sees_the_writes_queued_ahead_of_it(store):
    version = store.get().version
    gate, entered = hold_batches(store)
    outcomes: dict[str, object] = {}

    def write(name, index, if_match):
        try:
            outcomes[name] = store.update_step(index, {"status": "completed"}, if_match=if_match)
        except model.StateError as error:
            outcomes[name] = error

    leader = threading.Thread(target=write, args=("leader", 0, None))
    leader.start()
    assert entered.wait(5)
    # Both were based on `version`; the first to be applied wins, the second must get 412.
    first = threading.Thread(target=write, args=("first", 1, frozenset({str(version + 1)})))
    first.start()
    wait_until(lambda: queued(store) == 1)
    second = threading.Thread(target=write, args=("second", 2, frozenset({str(version + 1)})))
    second.start()
    wait_until(lambda: queued(store) == 2)
    gate.set()
    for thread in (leader, first, second):
        thread.join(timeout=10)
    assert outcomes["first"].version == version + 2
    assert isinstance(outcomes["second"], model.PreconditionFailed)
    final = store.get().state
    assert [s["status"] for s in final["steps"][:3]] == ["completed", "completed", "pending"]
    assert final["version"] == version + 2


def test_a_refused_write_in_a_batch_leaves_the_others_alone(store):
    version = store.get().version
    gate, entered = hold_batches(store)
    outcomes: dict[str, object] = {}

    def write(name, call):
        try:
            outcomes[name] = call()
        except model.StateError as error:
            outcomes[name] = error

    leader = threading.Thread(target=write, args=("leader", lambda: store.merge({"note": "x"})))
    leader.start()
    assert entered.wait(5)
    calls = {
        "ok": lambda: store.update_step(3, {"status": "failed"}),
        "bad-index": lambda: store.update_step(99, {"status": "failed"}),
        "mismatch": lambda: store.update_step(4, {"status": "failed", "workflow_id": "other"}),
        "finish": lambda: store.merge({"status": "completed"}),
        "after-finish": lambda: store.update_step(5, {"status": "failed"}),
    }
    threads = []
    for name, call in calls.items():
        threads.append(threading.Thread(target=write, args=(name, call)))
        threads[-1].start()
        count = len(threads)
        wait_until(lambda count=count: queued(store) == count)
    gate.set()
    for thread in [leader, *threads]:
        thread.join(timeout=10)
    assert outcomes["ok"].version == version + 2
    assert isinstance(outcomes["bad-index"], model.InvalidIndex)
    assert isinstance(outcomes["mismatch"], model.WorkflowMismatch)
    assert outcomes["finish"].version == version + 3
    assert isinstance(outcomes["after-finish"], model.WorkflowFinished)
    final = store.get().state
    assert final["status"] == "completed" and final["version"] == version + 3
    assert final["steps"][3]["status"] == "failed" and final["steps"][5]["status"] == "pending"
    assert [h["status"] for h in store.history()] == ["completed"]


def test_many_threads_writing_at_once_lose_nothing(store):
    before = store.get().version

    def write(index: int):
        last = None
        for n in range(20):
            last = store.update_step(index, {"status": "in_progress", "data": {"n": n}})
        return last

    results = run_together(16, write)
    assert not [r for r in results if isinstance(r, Exception)], results
    final = store.get().state
    assert final["version"] == before + 16 * 20
    assert all(final["steps"][i]["data"] == {"n": 19} for i in range(16))


def test_reads_after_an_acknowledged_write_see_it(store):
    stop = time.monotonic() + 1.0
    problems = []

    def writer(_):
        n = 0
        while time.monotonic() < stop:
            n += 1
            acked = store.update_step(0, {"status": "in_progress", "data": {"n": n}}).version
            seen = store.get().version
            if seen < acked:
                problems.append((acked, seen))

    def reader(_):
        while time.monotonic() < stop:
            store.get()

    run_together(8, lambda i: writer(i) if i < 2 else reader(i))
    assert not problems
