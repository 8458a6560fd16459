"""The lease monitor: find runs whose lease lapsed and queue them again, every second.

Every worker process runs one (and, on the file backend, every web process). Each tick it looks
at the runs that may be due: on Redis the members of the lease index (`P:runs`) whose deadline
passed, on the file backend a scan of the owners' running workflows. For each it reads the
state, which is the truth, and:

- no active run any more (finished, cancelled, deleted) → drop it from the index;
- a live lease (the index was behind) → fix the index;
- a queued run whose job still waits for a worker → push its claim deadline (many workflows,
  few workers: a job may wait in the queue longer than a lease);
- a queued run whose job is lost → on the file backend, take it (the claim decides who runs
  it); on Redis, take it over as the next attempt and enqueue that;
- a running run whose lease lapsed (its runner died or was paused) → take it over under the
  workflow's lock (attempt + 1, queued) and dispatch the new attempt;
- a waiting run (a failed step to be called again) whose time came → queue it as the next
  attempt and dispatch that.

Monitors of many processes may look at the same run at once: the takeover is one locked write
that only one of them makes (the others get None), and a job per attempt is enqueued once.
On Redis a sweep every SWEEP_SECONDS puts back into the index any active run it lacks (a
process died between its write and its index update), and at once when the queue's Redis lost
its data (its marker key is gone): the runs whose jobs were lost are then found as their claim
deadlines lapse, within a lease.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import Protocol

from .. import runs
from ..storage import StateStore, StorageUnavailable
from ..storage.base import utc_now
from .engine import FAILED_OUTCOME, RunObserver, RunSettings
from .queue import RunQueue

log = logging.getLogger("service.runner")

MONITOR_SECONDS = 1.0
SWEEP_SECONDS = 30.0
# How often one monitor (of all processes) checks the turns held (WORKFLOW_RUNS_PER_OWNER)
# against the states, and the runs waiting for a turn (there may be many: less often).
TURNS_SECONDS = 2.0
PENDING_TURNS_SECONDS = 10.0
# Due runs looked at per tick: more wait for the next tick.
DUE_PER_TICK = 200


class Dispatcher(Protocol):
    """Where a monitor sends the runs it queues: RQ, or this process's run threads."""

    # True: a queued run whose job was lost is taken by dispatching the same attempt (this
    # process's threads); False: it is taken over as the next attempt (RQ job ids are per
    # attempt, and the lost job's record may still be there).
    adopts_orphans: bool

    def dispatch(self, owner: str, workflow_id: str, fence: runs.Fence) -> None:
        """Have a runner run this attempt."""

    def waiting(self, owner: str, workflow_id: str, fence: runs.Fence) -> bool:
        """Tell whether this attempt waits for a runner here."""


class LeaseMonitor:
    """Queue again the runs whose lease lapsed; see the module's docstring."""

    def __init__(
        self,
        store: StateStore,
        settings: RunSettings,
        dispatcher: Dispatcher,
        observer: RunObserver,
        index: RunQueue | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.dispatcher = dispatcher
        self.observer = observer
        self.index = index
        self._swept_at: float | None = None
        self._complained = False
        # Queued runs whose job was not found at the last tick, and this tick's (see `_lost`).
        self._seen_lost: dict[tuple[str, str], runs.Fence] = {}
        self._lost_now: dict[tuple[str, str], runs.Fence] = {}

    def candidates(self, now: datetime) -> list[tuple[str, str]]:
        """Return the runs that may be due at `now`: (owner, workflow id)."""
        if self.index is not None:
            return self.index.due(now, DUE_PER_TICK)
        return [(due.owner, due.workflow_id) for due in self.store.runs_due(now)]

    def tick(self) -> int:
        """Look at every run that may be due; return how many were queued again or taken."""
        acted = 0
        self._seen_lost, self._lost_now = self._lost_now, {}
        try:
            self._sweep()
            self.check_turns()
            now = utc_now()
            for owner, workflow_id in self.candidates(now):
                acted += self.check(owner, workflow_id, now)
        except StorageUnavailable as error:
            if not self._complained:
                log.warning("lease monitor: storage unavailable: %s", error.message)
                self._complained = True
            return acted
        if self._complained:
            log.warning("lease monitor: storage is back")
            self._complained = False
        return acted

    def _sweep(self) -> None:
        """Index every active run the index lacks (Redis), every SWEEP_SECONDS, and at once
        when the queue's Redis lost its data."""
        if self.index is None:
            return
        lost = self.index.lost_data()
        recent = self._swept_at is not None and time.monotonic() - self._swept_at < SWEEP_SECONDS
        if recent and not lost:
            return
        for due in self.store.active_runs():
            self.index.note(due.owner, due.workflow_id, due.deadline, only_new=True)
        self._swept_at = time.monotonic()

    def check_turns(self) -> None:
        """Hand on the turns of runs that ended without handing theirs on (their worker was
        killed) and drop the waiting entries of runs that ended before their turn (Redis).

        The state is the truth: an entry whose run is no longer active under the entry's fence
        goes. A run taken over keeps its turn: the takeover's dispatch moves it to the new
        fence.
        """
        queue = self.index
        if queue is None:
            return
        if not queue.per_owner:
            # Turns left from when a limit was set: their runs go to the queue now.
            if queue.take_check("pending", PENDING_TURNS_SECONDS):
                queue.end_turns()
            return
        held = queue.take_check("admitted", TURNS_SECONDS)
        waiting = queue.take_check("pending", PENDING_TURNS_SECONDS)
        if not (held or waiting):
            return
        for owner, workflow_id, fence, pending in queue.turns():
            due = waiting if pending else held
            if due and self._fence(owner, workflow_id) != fence:
                queue.release(owner, workflow_id, fence, pending=pending)

    def _fence(self, owner: str, workflow_id: str) -> runs.Fence | None:
        """Return the fence of the workflow's active run as stored, or None."""
        return runs.fence_of(self.store.get(owner, workflow_id).state)

    def check(self, owner: str, workflow_id: str, now: datetime) -> int:
        """Act on one run that may be due; return 1 when it was queued again or taken."""
        state = self.store.get(owner, workflow_id).state
        run = runs.active_run(state)
        fence = runs.fence_of(state)
        if run is None or fence is None:
            if self.index is not None:
                self.index.drop(owner, workflow_id)
            return 0
        deadline = runs.lease_deadline(state)
        assert deadline is not None
        if deadline > now:
            self.observer.leased(owner, workflow_id, deadline)
            return 0
        if run["status"] == runs.WAITING:
            return self._wake(owner, workflow_id, fence)
        queued = run["status"] == runs.QUEUED
        if queued and self.dispatcher.waiting(owner, workflow_id, fence):
            self._renew(owner, workflow_id, fence)
            return 0
        if queued and self.dispatcher.adopts_orphans:
            if self._renew(owner, workflow_id, fence):
                self.dispatcher.dispatch(owner, workflow_id, fence)
                return 1
            return 0
        if queued and not self._lost(owner, workflow_id, fence):
            return 0
        snapshot = self.store.take_over(
            owner,
            workflow_id,
            fence,
            lease=self.settings.lease,
            max_step_attempts=self.settings.max_step_attempts,
        )
        if snapshot is None:
            return 0  # another monitor was first, or the run moved on
        if not queued:
            self.observer.resumed(owner, workflow_id)
        taken = runs.fence_of(snapshot.state)
        if taken is None:
            log.warning(
                "workflow %s/%s failed: a step was interrupted %s times",
                owner,
                workflow_id,
                self.settings.max_step_attempts,
            )
            self.observer.ended(owner, workflow_id, FAILED_OUTCOME)
            return 1
        log.warning(
            "workflow %s/%s: the lease of %s attempt %s lapsed; queued attempt %s",
            owner,
            workflow_id,
            "queued" if queued else "running",
            fence.attempt,
            taken.attempt,
        )
        self.observer.leased(owner, workflow_id, runs.lease_deadline(snapshot.state))
        self.dispatcher.dispatch(owner, workflow_id, taken)
        return 1

    def _lost(self, owner: str, workflow_id: str, fence: runs.Fence) -> bool:
        """Tell whether a queued run's job was missing at the last tick too: then it is lost.

        A job is missing for a moment when all is well: a worker has taken it and not yet
        claimed the run, or its owner's turn has just begun and it is about to be enqueued.
        Taking such a run over would run it twice; a job missing a tick later is lost.
        """
        key = (owner, workflow_id)
        if self._seen_lost.get(key) == fence:
            return True
        self._lost_now[key] = fence
        return False

    def _wake(self, owner: str, workflow_id: str, fence: runs.Fence) -> int:
        """Queue a run whose failed step is due to be called again; 1 when this monitor did."""
        snapshot = self.store.wake_run(owner, workflow_id, fence, lease=self.settings.lease)
        woken = runs.fence_of(snapshot.state) if snapshot is not None else None
        if snapshot is None or woken is None:
            return 0  # another monitor was first, or the run moved on
        log.info("workflow %s/%s: calling a failed step again", owner, workflow_id)
        self.observer.leased(owner, workflow_id, runs.lease_deadline(snapshot.state))
        self.dispatcher.dispatch(owner, workflow_id, woken)
        return 1

    def _renew(self, owner: str, workflow_id: str, fence: runs.Fence) -> bool:
        """Push a queued run's claim deadline; False when the run moved on meanwhile."""
        try:
            snapshot = self.store.renew_lease(owner, workflow_id, fence, lease=self.settings.lease)
        except runs.RunSuperseded:
            return False
        deadline = runs.lease_deadline(snapshot.state)
        if deadline is not None:
            self.observer.leased(owner, workflow_id, deadline)
        return True

    def run(self, stop: threading.Event) -> None:
        """Tick every MONITOR_SECONDS until `stop` is set; never dies of an error."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception:  # a bug must not end resumption for the process's lifetime
                log.exception("lease monitor: unexpected error")
            stop.wait(max(0.0, MONITOR_SECONDS - (time.monotonic() - started)))

    def start(self, stop: threading.Event) -> threading.Thread:
        """Run the monitor in a daemon thread until `stop` is set."""
        thread = threading.Thread(target=self.run, args=(stop,), name="lease-monitor", daemon=True)
        thread.start()
        return thread
