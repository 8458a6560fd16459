"""RQ's side of runs: the job function and the worker that runs it (`python -m service worker`).

A job is `run(owner, workflow_id, incarnation, attempt)`: one attempt of one workflow's run.
`RunWorker` is RQ's SimpleWorker (the job runs in the worker process itself: killing the worker
kills its runner, and no forked horse outlives it) with, per process, the store, the run
settings, a lease monitor thread, and signal handling of its own: SIGTERM or SIGINT interrupts
the running step, hands its run back to the queue as the next attempt, and stops the worker,
within a second. A second signal stops it at once (RQ's cold shutdown).

`WORKFLOW_RUN_WORKERS` > 1 runs RQ's WorkerPool of that many RunWorker processes; each has its
own monitor (the pool's own process only forks and reaps them).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Mapping
from contextvars import ContextVar
from types import FrameType
from typing import Any

from rq import SimpleWorker
from rq.job import Job
from rq.queue import Queue

from ..config import from_env
from ..runs import Fence
from ..storage import StorageUnavailable
from ..store import build_store
from .control import QUEUE, RunControl
from .engine import run_workflow
from .monitor import LeaseMonitor

log = logging.getLogger("service.runner")

# The worker whose job is running in this thread (RQ resolves jobs by function name only).
_WORKER: ContextVar[RunContext] = ContextVar("workflow_run_context")


class RunContext:
    """What a worker process runs with: the store, the run control, and its stop flag."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.store = build_store(config)
        self.control = RunControl(self.store, config)
        if self.control.mode != QUEUE:
            self.store.close()
            raise ValueError(
                f"WORKFLOW_STATE_URL {self.store.describe()} is not Redis: runs execute in the "
                "web processes, and a worker has no queue to work"
            )
        # Set on SIGTERM/SIGINT: interrupts the running step and ends the monitor.
        self.stop = threading.Event()
        self._monitor: threading.Thread | None = None

    def run(self, owner: str, workflow_id: str, fence: Fence) -> str:
        """Run one attempt; requeue the run at once when this worker is stopping.

        However the attempt ends, its owner's turn is handed on (a run handed back keeps it).
        """
        result = run_workflow(
            self.store,
            owner,
            workflow_id,
            fence,
            self.control.settings,
            observer=self.control.observer,
            stop=self.stop,
        )
        if result.next_fence is not None:
            self.control.dispatch(owner, workflow_id, result.next_fence)
        else:
            self._hand_on(owner, workflow_id, fence)
        return result.outcome

    def _hand_on(self, owner: str, workflow_id: str, fence: Fence) -> None:
        """End the attempt's turn and start the owner's next; a failure leaves it to a monitor."""
        try:
            self.control.queue.release(owner, workflow_id, fence)
        except StorageUnavailable as error:
            log.warning(
                "could not hand on the turn of %s/%s attempt %s (a lease monitor will): %s",
                owner,
                workflow_id,
                fence.attempt,
                error.message,
            )

    def start_monitor(self) -> None:
        """Start this process's lease monitor."""
        queue = self.control.queue
        monitor = LeaseMonitor(
            self.store, self.control.settings, queue, self.control.observer, index=queue
        )
        self._monitor = monitor.start(self.stop)

    def close(self) -> None:
        """Stop the monitor and close connections."""
        self.stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=5)
        self.control.close()
        self.store.close()


def run(owner: str, workflow_id: str, incarnation: int, attempt: int | None = None) -> str:
    """RQ job: run attempt `attempt` of the workflow incarnation's run; return how it ended.

    A job queued by an earlier version has no incarnation (three arguments): it runs a workflow
    stored before incarnations were kept, whose incarnation is 0.
    """
    if attempt is None:
        incarnation, attempt = 0, incarnation
    fence = Fence(incarnation, attempt)
    context = _WORKER.get(None)
    if context is not None:
        return context.run(owner, workflow_id, fence)
    # A worker that is not ours (a bare `rq worker`): settings from the environment, no monitor.
    context = RunContext(from_env())
    try:
        return context.run(owner, workflow_id, fence)
    finally:
        context.close()


class RunWorker(SimpleWorker):
    """RQ's SimpleWorker, with a lease monitor and a clean stop (see the module doc)."""

    # The settings it runs with; None: the environment's (see `with_settings`).
    settings: Mapping[str, Any] | None = None

    @classmethod
    def with_settings(cls, settings: Mapping[str, Any]) -> type[RunWorker]:
        """Return a RunWorker class bound to `settings` (RQ's WorkerPool builds workers from
        a class, in each process it forks)."""
        return type(cls.__name__, (cls,), {"settings": dict(settings)})

    def work(self, *args: Any, **kwargs: Any) -> bool:
        """Work the queue until stopped, with this process's run context and monitor."""
        self.context = RunContext(self.settings if self.settings is not None else from_env())
        self.context.start_monitor()
        # RQ's scheduler (a forked process) is for scheduled jobs, which runs never are.
        kwargs["with_scheduler"] = False
        # RQ leaves its handlers in place; a worker working inside another program (a test's
        # burst) gives that program its own back.
        handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            return super().work(*args, **kwargs)
        finally:
            self.context.close()
            if threading.current_thread() is threading.main_thread():
                for signum, handler in handlers.items():
                    signal.signal(signum, handler)

    def perform_job(self, job: Job, queue: Queue) -> bool:
        """Perform a job with this worker's run context at hand."""
        token = _WORKER.set(self.context)
        try:
            return super().perform_job(job, queue)
        finally:
            _WORKER.reset(token)

    def _install_signal_handlers(self) -> None:
        """Stop cleanly on SIGTERM and SIGINT (installed explicitly: a shell that starts a
        job in the background starts it with SIGINT ignored)."""
        signal.signal(signal.SIGINT, self._stop_cleanly)
        signal.signal(signal.SIGTERM, self._stop_cleanly)

    def _stop_cleanly(self, signum: int, frame: FrameType | None) -> None:
        # First the run (its step is interrupted and the run handed back within a second),
        # then RQ's warm stop: it ends the loop once the job returns, or at once when idle.
        self.context.stop.set()
        self.request_stop(signum, frame)
