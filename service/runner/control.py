"""Start and cancel server runs: the one place routes and the CLI call (no Flask here).

`RunControl(store, config)` picks where runs execute from the storage backend:

- Redis state (`queue`): an RQ job per attempt on the queue's Redis, worked by
  `python -m service worker`; the lease index and the counters live there too.
- the file backend, or `fakeredis://` (`local`): this process's run threads
  (service/runner/local.py), under the same lease rules.

A start writes the queued run (the state is the truth) and then dispatches it; a dispatch that
is lost (the process dies between the two) is found by a lease monitor when the run's claim
deadline lapses. On Redis the run is put in the lease index *before* the write, so no run is
ever queued without the index knowing of it.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from .. import model, runs
from ..config import ConfigError
from ..storage import RedisStore, Snapshot, StateStore, StorageUnavailable
from ..storage.base import utc_now
from ..storage.keys import Keys
from .engine import RunObserver, RunSettings
from .local import LocalRunners
from .queue import QueueObserver, RunQueue, queue_connection
from .turns import TurnTable

log = logging.getLogger("service.runner")

QUEUE = "queue"
LOCAL = "local"
# The file backend's table of turns between owners: next to the state file.
TURNS_SUFFIX = ".turns"


def runs_mode(store: StateStore) -> str:
    """Return where this store's runs execute: QUEUE (Redis, RQ workers) or LOCAL."""
    return QUEUE if isinstance(store, RedisStore) and not store.single_process else LOCAL


def wants_run(body: Any) -> bool:
    """Tell whether a POST /workflows body asks to start a run (`"run": true`)."""
    if not isinstance(body, dict) or "run" not in body:
        return False
    if not isinstance(body["run"], bool):
        raise model.InvalidState("run", "must be true or false")
    return body["run"]


class RunControl:
    """Start, cancel and dispatch the runs of one store, for one app or process."""

    def __init__(
        self,
        store: StateStore,
        config: Mapping[str, Any],
        *,
        settings: RunSettings | None = None,
        observer: RunObserver | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.settings = settings or RunSettings.from_config(config)
        self.mode = runs_mode(store)
        self._observer = observer
        self._guard = threading.Lock()
        self._queue: RunQueue | None = None
        self._local: LocalRunners | None = None

    # --- where runs go ---------------------------------------------------------------------

    @property
    def queue(self) -> RunQueue:
        """Return the queue (Redis state only); its connection is made on first use."""
        if self._queue is None:
            with self._guard:
                if self._queue is None:
                    try:
                        connection = queue_connection(self.config, self.store)
                    except ConfigError as error:
                        # A route answers 503 naming the problem rather than 500.
                        raise StorageUnavailable(str(error)) from None
                    self._queue = RunQueue(
                        connection,
                        Keys(self.config["STATE_PREFIX"]),
                        per_owner=self.config.get("RUNS_PER_OWNER", 0),
                    )
        return self._queue

    @property
    def observer(self) -> RunObserver:
        """Return who hears about runs: the queue's index and counters, or the metrics."""
        if self._observer is None:
            self._observer = QueueObserver(self.queue) if self.mode == QUEUE else RunObserver()
        return self._observer

    @observer.setter
    def observer(self, observer: RunObserver) -> None:
        self._observer = observer

    @property
    def local(self) -> LocalRunners:
        """Return this process's run threads (LOCAL mode)."""
        if self._local is None:
            with self._guard:
                if self._local is None:
                    self._local = LocalRunners(
                        self.store,
                        self.settings,
                        self.config["RUN_WORKERS"],
                        self.observer,
                        self._turn_table(),
                    )
        return self._local

    def _turn_table(self) -> TurnTable | None:
        """Return the host's table of turns (a file next to the state file; memory for a store
        of one process), or None without WORKFLOW_RUNS_PER_OWNER."""
        limit = self.config.get("RUNS_PER_OWNER", 0)
        if not limit:
            return None
        path = getattr(self.store, "path", None)
        return TurnTable(f"{path}{TURNS_SUFFIX}" if isinstance(path, str) else None, limit)

    def dispatch(self, owner: str, workflow_id: str, fence: runs.Fence) -> None:
        """Have a runner run this attempt; a lost dispatch is found by a lease monitor."""
        if self.mode == LOCAL:
            self.local.dispatch(owner, workflow_id, fence)
            return
        try:
            self.queue.dispatch(owner, workflow_id, fence)
        except StorageUnavailable as error:
            log.warning(
                "could not enqueue run %s/%s attempt %s (a lease monitor will): %s",
                owner,
                workflow_id,
                fence.attempt,
                error.message,
            )

    def ensure_running(self) -> None:
        """Start this process's run threads and lease monitor (LOCAL mode; else nothing)."""
        if self.mode == LOCAL:
            self.local.ensure_running()

    # --- what routes and the CLI do --------------------------------------------------------

    def _indexed_write(
        self, owner: str, workflow_id: str, write: Callable[[], Snapshot]
    ) -> Snapshot:
        """Index a run about to be queued, then `write` it (Redis; see the module doc).

        A run indexed already keeps its deadline (a refused request must not postpone a live
        run's takeover), and one indexed here is taken out again when the write is refused.
        """
        if self.mode != QUEUE:
            return write()
        deadline = utc_now() + timedelta(seconds=self.settings.lease)
        added = self.queue.note(owner, workflow_id, deadline, only_new=True)
        try:
            return write()
        except BaseException:
            if added:
                with contextlib.suppress(StorageUnavailable):  # a lease monitor drops it then
                    self.queue.drop(owner, workflow_id)
            raise

    def _started(self, owner: str, snapshot: Snapshot) -> Snapshot:
        state = snapshot.state
        fence = runs.fence_of(state)
        assert state is not None and fence is not None
        self.observer.leased(owner, state["workflow_id"], runs.lease_deadline(state))
        self.dispatch(owner, state["workflow_id"], fence)
        return snapshot

    def start(self, owner: str, workflow_id: str, *, runs_here: bool = True) -> Snapshot:
        """Queue a run of the workflow and dispatch it (POST /workflows/<id>/run).

        RunActive when a run is live; WorkflowFinished, NoWorkflow as the rules say. A process
        that runs nothing itself on the file backend (the CLI) passes `runs_here=False`: the
        run is queued with a claim deadline that has already passed, so a web process's lease
        monitor takes it within a second.
        """
        if self.mode == LOCAL and not runs_here:
            return self.store.request_run(owner, workflow_id, lease=0.0)
        lease = self.settings.lease
        snapshot = self._indexed_write(
            owner, workflow_id, lambda: self.store.request_run(owner, workflow_id, lease=lease)
        )
        return self._started(owner, snapshot)

    def create(self, owner: str, body: Any) -> Snapshot:
        """Create a workflow (POST /workflows); `"run": true` also starts its run, in one write."""
        if not wants_run(body):
            return self.store.create(owner, body)
        if "workflow_id" not in body:
            # Named here rather than by storage, so the lease index can hear of it first.
            body = {**body, "workflow_id": model.new_workflow_id(utc_now(), secrets.token_hex(4))}
        workflow_id = body["workflow_id"]
        lease = self.settings.lease

        def create() -> Snapshot:
            return self.store.create(owner, body, run_lease=lease)

        if not isinstance(workflow_id, str) or not model.WORKFLOW_ID_RE.match(workflow_id):
            return self._started(owner, create())  # refused: nothing to index
        return self._started(owner, self._indexed_write(owner, workflow_id, create))

    def queued_by_owner(self) -> dict[str, int]:
        """Return, per owner with any, the runs queued: waiting for a runner or for a turn."""
        if self.mode == QUEUE:
            return self.queue.queued_by_owner()
        found: dict[str, int] = {}
        for due in self.store.active_runs():
            if due.status == runs.QUEUED:
                found[due.owner] = found.get(due.owner, 0) + 1
        return found

    def cancel(self, owner: str, workflow_id: str | None) -> Snapshot:
        """Cancel a workflow (None: the owner's current one); its runner stops within a second."""
        return self.store.cancel(owner, workflow_id)

    def _queue_new_run(
        self, owner: str, workflow_id: str, write: Callable[[float], Snapshot], runs_here: bool
    ) -> Snapshot:
        """Write a new queued run (`write(lease)`) and dispatch it, as `start` does."""
        if self.mode == LOCAL and not runs_here:
            return write(0.0)  # a web process's lease monitor takes it within a second
        lease = self.settings.lease
        return self._started(owner, self._indexed_write(owner, workflow_id, lambda: write(lease)))

    def resume(
        self, owner: str, workflow_id: str | None, body: Any, *, runs_here: bool = True
    ) -> Snapshot:
        """Answer a blocked workflow's question and start a new run at the blocked step.

        The input is checked against the step's fields (InvalidInput, nothing changed), kept
        apart from the state for the step's endpoint, then the run is queued and dispatched.
        """
        if body is None:
            body = {}
        if not isinstance(body, dict) or set(body) - {"input"}:
            raise model.InvalidInput(
                'Invalid input: send {"input": {<field name>: <value>, ...}} (or no body)'
            )
        given = body.get("input", {})
        state = self.store.get(owner, workflow_id).state
        checked = runs.check_input(state, given)
        assert state is not None
        workflow_id = state["workflow_id"]
        record = {
            "incarnation": runs.incarnation_of(state),
            "step": runs.blocked_step(state),
            "input": checked,
        }
        self.store.put_input(owner, workflow_id, record)
        name = workflow_id
        try:
            return self._queue_new_run(
                owner,
                name,
                lambda lease: self.store.resume(owner, name, given, lease=lease),
                runs_here,
            )
        except BaseException:
            with contextlib.suppress(StorageUnavailable):
                self.store.delete_input(owner, workflow_id)
            raise

    def retry(self, owner: str, workflow_id: str | None, *, runs_here: bool = True) -> Snapshot:
        """Start a new run of a failed workflow at its failed step (NotFailed otherwise)."""
        if workflow_id is None:
            state = self.store.get(owner, None).state
            if state is None:
                raise model.NoWorkflow("There is no workflow to retry")
            workflow_id = state["workflow_id"]
        name = workflow_id
        return self._queue_new_run(
            owner, name, lambda lease: self.store.retry(owner, name, lease=lease), runs_here
        )

    def close(self) -> None:
        """Stop this process's run threads, and drop the queue's connection."""
        if self._local is not None:
            self._local.close()
        if self._queue is not None:
            self._queue.close()
