"""Runs inside this process: the file backend's runner, so `make run` alone runs workflows.

Each web process (a gunicorn worker, `flask run`, the pytest plugin's server) keeps a bounded
pool of run threads (greenlets under gunicorn's gevent workers) and a lease monitor, started
in the process itself (gunicorn forks its workers before the app is built). The rules are the
ones RQ workers follow: a run is claimed, its lease renewed, every write fenced on its
incarnation and attempt.
A run this process queued waits in its pool with its claim deadline pushed every lease/3; if
the process dies, the deadline lapses and another process's monitor takes the run (a queued
one) or takes it over (a running one, as the next attempt), and runs it there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from .. import runs
from ..storage import StateStore, StorageUnavailable
from .engine import RunObserver, RunSettings, run_workflow
from .monitor import LeaseMonitor
from .turns import TurnTable

log = logging.getLogger("service.runner")

# How long an idle run thread waits for work before it looks at the stop flag again.
IDLE_SECONDS = 0.5
# With turns between owners, how often a thread with runs waiting here looks whether their
# owner's turn came (another process's run may have ended).
TURN_POLL_SECONDS = 0.2

Key = tuple[str, str]


class LocalRunners:
    """A pool of run threads in this process, with its lease monitor."""

    adopts_orphans = True

    def __init__(
        self,
        store: StateStore,
        settings: RunSettings,
        size: int,
        observer: RunObserver,
        turns: TurnTable | None = None,
    ) -> None:
        self.store = store
        # WORKFLOW_RUNS_PER_OWNER > 0: the host's table of turns; None runs each run in turn.
        self.turns = turns
        # A run handed back by a stopping process is free for another at once.
        self.settings = replace(settings, release_lease=0.0)
        self.size = size
        self.observer = observer
        self.stop = threading.Event()
        self._guard = threading.Lock()
        self._pid: int | None = None
        self._inbox: queue.Queue[tuple[str, str, runs.Fence]] = queue.Queue()
        # Runs queued here and not yet started: (fence, when its claim deadline was last
        # pushed); those deadlines are ours to push.
        self._pending: dict[Key, tuple[runs.Fence, float]] = {}
        self._threads: list[threading.Thread] = []

    # --- the dispatcher side ---------------------------------------------------------------

    def _waiting_fence(self, key: Key) -> runs.Fence | None:
        """Return the fence of the run waiting here for `key` (call with `_guard` held)."""
        pending = self._pending.get(key)
        return None if pending is None else pending[0]

    def dispatch(self, owner: str, workflow_id: str, fence: runs.Fence) -> None:
        """Run this attempt in one of this process's run threads."""
        self.ensure_running()
        with self._guard:
            waiting = self._waiting_fence((owner, workflow_id))
            if waiting is not None and waiting >= fence:
                return
            # Whoever queued it has just set its claim deadline.
            self._pending[(owner, workflow_id)] = (fence, time.monotonic())
            count = len(self._pending)
        self.observer.waiting(count)
        if self.turns is not None:
            self._in_line(owner, workflow_id, fence)
        self._inbox.put((owner, workflow_id, fence))

    def _in_line(self, owner: str, workflow_id: str, fence: runs.Fence) -> None:
        """Put the run in the host's line of turns; a table that cannot be written is logged
        (the run's claim deadline lapses and a monitor hands it on)."""
        assert self.turns is not None
        try:
            self.turns.wait(owner, workflow_id, fence)
        except OSError as error:
            log.warning("could not queue %s/%s for a turn: %s", owner, workflow_id, error)

    def waiting(self, owner: str, workflow_id: str, fence: runs.Fence) -> bool:
        """Tell whether this attempt waits for one of this process's threads."""
        with self._guard:
            return self._waiting_fence((owner, workflow_id)) == fence

    def pending(self) -> int:
        """Return how many runs wait here for a thread."""
        with self._guard:
            return len(self._pending)

    # --- threads ---------------------------------------------------------------------------

    def ensure_running(self) -> None:
        """Start the run threads and the monitor in this process (once per process)."""
        pid = os.getpid()
        if self._pid == pid:
            return
        with self._guard:
            if self._pid == pid:
                return
            # After a fork the parent's threads and queue are not ours: start afresh.
            self.stop = threading.Event()
            self._inbox = queue.Queue()
            self._pending = {}
            monitor = LeaseMonitor(self.store, self.settings, self, self.observer)
            work = self._work if self.turns is None else self._work_in_turn
            self._threads = [
                *(_RunThread(self, work, f"run-{n}") for n in range(self.size)),
                _RunThread(self, lambda: self._watch(monitor), "lease-monitor"),
            ]
            for thread in self._threads:
                thread.start()
            self._pid = pid

    def _watch(self, monitor: LeaseMonitor) -> None:
        """Run the monitor; each tick also pushes the claim deadlines of the runs waiting here."""
        while not self.stop.wait(_tick(self.settings.lease)):
            try:
                self._keep_pending()
                monitor.tick()
            except Exception:  # a bug must not end resumption for the process's lifetime
                log.exception("lease monitor: unexpected error")

    def _keep_pending(self) -> None:
        """Push the claim deadline of each run waiting here, every lease/3."""
        due = time.monotonic() - runs.renew_interval(self.settings.lease)
        with self._guard:
            waiting = [(key, fence) for key, (fence, at) in self._pending.items() if at <= due]
        for (owner, workflow_id), fence in waiting:
            try:
                snapshot = self.store.renew_lease(
                    owner, workflow_id, fence, lease=self.settings.lease
                )
            except runs.RunSuperseded:
                continue  # claimed by another, cancelled, gone: the thread will find out
            except StorageUnavailable:
                return
            with self._guard:
                if self._waiting_fence((owner, workflow_id)) == fence:
                    self._pending[(owner, workflow_id)] = (fence, time.monotonic())
            deadline = runs.lease_deadline(snapshot.state)
            if deadline is not None:
                self.observer.leased(owner, workflow_id, deadline)

    def _work(self) -> None:
        while not self.stop.is_set():
            try:
                owner, workflow_id, fence = self._inbox.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                continue
            self._take(owner, workflow_id, fence)
            self._run(owner, workflow_id, fence)

    def _take(self, owner: str, workflow_id: str, fence: runs.Fence) -> bool:
        """Take the run out of those waiting here; False when it was not (superseded)."""
        with self._guard:
            ours = self._waiting_fence((owner, workflow_id)) == fence
            if ours:
                del self._pending[(owner, workflow_id)]
            count = len(self._pending)
        self.observer.waiting(count)
        return ours

    def _run(self, owner: str, workflow_id: str, fence: runs.Fence) -> None:
        """Run one attempt (never raises: a thread of the pool is never lost to a bug)."""
        try:
            run_workflow(
                self.store,
                owner,
                workflow_id,
                fence,
                self.settings,
                observer=self.observer,
                stop=self.stop,
            )
        except Exception:
            log.exception("run of workflow %s/%s: unexpected error", owner, workflow_id)

    def _work_in_turn(self) -> None:
        """Run the runs waiting here as their owners' turns come (WORKFLOW_RUNS_PER_OWNER)."""
        assert self.turns is not None
        while not self.stop.is_set():
            with contextlib.suppress(queue.Empty):
                self._inbox.get(timeout=TURN_POLL_SECONDS if self.pending() else IDLE_SECONDS)
            while not self.stop.is_set():
                try:
                    turn = self.turns.take()
                except OSError as error:
                    log.warning("could not read the table of turns: %s", error)
                    break
                if turn is None:
                    break
                self._run_turn(*turn)

    def _run_turn(self, owner: str, workflow_id: str, fence: runs.Fence) -> None:
        """Run one attempt that got its owner's turn, then hand the turn on."""
        assert self.turns is not None
        try:
            if self._take(owner, workflow_id, fence):  # else superseded, or handed elsewhere
                self._run(owner, workflow_id, fence)
        finally:
            with contextlib.suppress(OSError):  # else freed when this process ends
                self.turns.give_back(owner, workflow_id, fence)
            self._inbox.put((owner, workflow_id, fence))  # another thread may go on now

    def close(self) -> None:
        """Stop: hand running runs back, free the waiting ones for other processes, end threads."""
        if self._pid != os.getpid():
            return
        self.stop.set()
        with self._guard:
            waiting = list(self._pending.items())
            self._pending = {}
        for (owner, workflow_id), (fence, _) in waiting:
            with contextlib.suppress(runs.RunSuperseded, StorageUnavailable):
                self.store.renew_lease(owner, workflow_id, fence, lease=0.0)
        for thread in self._threads:
            thread.join(timeout=2)
        if self.turns is not None:
            with contextlib.suppress(OSError):
                self.turns.leave()
        self._pid = None


def _tick(lease: float) -> float:
    """Return how often the monitor ticks: every second, or faster with a short lease."""
    return min(1.0, runs.renew_interval(lease))


class _RunThread(threading.Thread):
    """One of a pool's threads; it names its pool, so a stopping worker finds every pool."""

    def __init__(self, pool: LocalRunners, target: Callable[[], None], name: str) -> None:
        super().__init__(target=target, name=name, daemon=True)
        self.pool = pool


def close_all_local_runners() -> None:
    """Close every run pool of this process: what a gunicorn worker does when told to stop.

    Its running runs are handed back at once (their steps interrupted), so another process
    takes them within a second rather than after their lease.
    """
    pools = {id(t.pool): t.pool for t in threading.enumerate() if isinstance(t, _RunThread)}
    for pool in pools.values():
        pool.close()
