"""Share storage round trips among the threads of one process, without weakening any promise.

`ReadCoalescer`: concurrent readers share one read, but only a read that *started after* they
arrived, so no reader is served a state older than a write acknowledged before it asked. A
failure seen while waiting is shared at once, so an outage costs each reader one timeout.

`WriteCombiner`: concurrent writers queue; one of them (the leader) takes everything queued and
hands it to the backend as one batch, which applies the writes in order under one hold of the
lock and commits them together. Each write still gets its own outcome. Leadership passes to the
first writer of the next batch, so nobody waits for more than the batch ahead of it.

`Keyed`: one coalescer or combiner per workflow, made when a caller comes and dropped when the
last one leaves, so a process that touched a million workflows holds entries only for those
in use right now.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


def _rethrow(error: BaseException) -> BaseException:
    """Return an exception to raise in this thread; shared instances get a fresh copy."""
    try:
        return type(error)(*error.args)
    except Exception:  # an exception type whose constructor wants other arguments
        return error


class ReadCoalescer(Generic[T]):
    """Run `fetch` for many concurrent callers, each served by a fetch that began after it came."""

    def __init__(self, fetch: Callable[[], T]) -> None:
        self._fetch = fetch
        self._cond = threading.Condition(threading.Lock())
        self._started = 0  # fetches begun
        self._running = False
        self._finished = 0  # the number of the newest finished fetch
        self._outcome: tuple[bool, Any] = (True, None)

    def read(self) -> T:
        """Return the result of a fetch that started after this call began."""
        cond = self._cond
        with cond:
            wanted = self._started + 1
            seen = self._finished
            while self._finished < wanted:
                if self._finished > seen and not self._outcome[0]:
                    # A fetch failed while this caller waited: storage is down now. Reporting
                    # that at once beats waiting out another round of timeouts.
                    break
                if self._running:
                    cond.wait()
                    continue
                self._running = True
                cond.release()
                # Callers that arrive while this one yields still come before the fetch is
                # sent, so they may share it: under gevent that gathers the reads whose requests
                # are already being handled (elsewhere it is a plain no-op yield).
                time.sleep(0)
                cond.acquire()
                self._started += 1  # the fetch starts now; later callers need the next one
                number = self._started
                cond.release()
                try:
                    outcome: tuple[bool, Any] = (True, self._fetch())
                except BaseException as error:
                    outcome = (False, error)
                finally:
                    cond.acquire()
                self._running = False
                self._finished, self._outcome = number, outcome
                cond.notify_all()
            ok, value = self._outcome
        if ok:
            return value
        raise _rethrow(value)


class PendingWrite:
    """One writer's request in a batch, and its outcome once the batch ran."""

    __slots__ = ("arrived", "change", "error", "lead", "ready", "result")

    def __init__(self, change: Any) -> None:
        self.change = change
        self.arrived = time.monotonic()
        self.ready = threading.Event()
        self.lead = False
        self.result: Any = None
        self.error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        """Record that this write failed with `error`."""
        self.error = error

    def succeed(self, result: Any) -> None:
        """Record this write's result."""
        self.result = result


class WriteCombiner:
    """Queue concurrent writes and run them in batches, one batch at a time."""

    def __init__(self, run_batch: Callable[[list[PendingWrite]], None]) -> None:
        self._run_batch = run_batch
        self._guard = threading.Lock()
        self._queue: list[PendingWrite] = []
        self._busy = False

    def submit(self, change: Any) -> Any:
        """Run `change` in the next batch; return its result or raise its error."""
        mine = PendingWrite(change)
        with self._guard:
            self._queue.append(mine)
            if not self._busy:
                self._busy = True
                mine.lead = True
        if not mine.lead:
            mine.ready.wait()  # woken with an outcome, or to lead the next batch
        if mine.lead:
            self._lead()
        if mine.error is not None:
            raise mine.error
        return mine.result

    def _lead(self) -> None:
        # Under gevent this lets writers whose requests are already being handled join the
        # batch before it is taken: fewer, larger batches (writes +25% in bench/). Elsewhere it
        # is a no-op yield.
        time.sleep(0)
        with self._guard:
            batch, self._queue = self._queue, []
        try:
            self._run_batch(batch)
        except BaseException as error:
            for write in batch:
                if write.error is None and write.result is None:
                    write.fail(error if len(batch) == 1 else _rethrow(error))
        finally:
            with self._guard:
                if self._queue:
                    successor = self._queue[0]
                    successor.lead = True
                    successor.ready.set()
                else:
                    self._busy = False
            for write in batch:
                write.lead = False
                write.ready.set()


class Keyed(Generic[K, T]):
    """One `T` per key for as long as someone uses it; idle keys hold no memory."""

    def __init__(self, make: Callable[[K], T]) -> None:
        self._make = make
        self._guard = threading.Lock()
        self._entries: dict[K, list[Any]] = {}  # key -> [value, users]

    @contextmanager
    def use(self, key: K) -> Iterator[T]:
        """Yield the key's value, made if nobody holds it; forget it when the last user leaves."""
        with self._guard:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = [self._make(key), 0]
            entry[1] += 1
        try:
            yield entry[0]
        finally:
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: K) -> T | None:
        """Return the key's value while someone uses it, else None (for tests and metrics)."""
        entry = self._entries.get(key)
        return None if entry is None else entry[0]
