"""Run one attempt of a workflow's server run: claim, heartbeat, each remaining step, finish.

`run_workflow(store, owner, id, fence, settings)` is what an RQ job (service/runner/jobs.py)
and a web process's run thread (service/runner/local.py) call. It knows nothing of Flask, RQ
or the page: storage applies the rules of service/runs.py, service/runner/steps.py performs
each step, and an observer hears what happened (the lease index, the metrics).

While the steps run, a watch thread renews the lease every lease/3 (fenced, as every write) and
reads the state every WATCH_SECONDS between renewals, so a cancel written by any process, or a
takeover, interrupts the running step's call within a second. Every write names the run's fence
(the workflow's incarnation and the attempt); a refused one (`RunSuperseded`) stops the run at
once, writing nothing more. docs/runs.md tells
the story.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from .. import runs
from ..config import load_steps, origin
from ..model import InvalidIndex, StateError
from ..storage import LimitExceeded, Snapshot, StateStore, StorageUnavailable
from .steps import (
    BLOCKED,
    CANCELLED,
    FAILED,
    StepCall,
    StepResult,
    StepSettings,
    check_origin,
    perform_step,
)

log = logging.getLogger("service.runner")

# How often a runner reads its workflow between lease renewals, to notice a cancel or a
# takeover: with the step call's own 0.05 s poll, a cancel stops a step well within 1 s.
WATCH_SECONDS = 0.25
# How long a runner waits before it tries a write again while storage is unavailable.
RETRY_SECONDS = 0.5
# A step started this many times (each interrupted by the death of its runner) is failed
# rather than run again (runs.take_over).
MAX_STEP_ATTEMPTS = 3

# How an attempt ended (the `outcome` label of workflow_runs_total).
COMPLETED = "completed"
FAILED_OUTCOME = "failed"
CANCELLED_OUTCOME = "cancelled"
SUPERSEDED = "superseded"
RELEASED = "released"
LOST = "lost"
# The step asked the person; the step will be called again after a wait (the run waits).
BLOCKED_OUTCOME = "blocked"
WAITING_OUTCOME = "waiting"
OUTCOMES = (
    COMPLETED,
    FAILED_OUTCOME,
    CANCELLED_OUTCOME,
    SUPERSEDED,
    RELEASED,
    LOST,
    BLOCKED_OUTCOME,
    WAITING_OUTCOME,
)


def runner_name() -> str:
    """Return this process's runner name, `host:pid` (the state's `run.runner`)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def progress_url(self_url: str, workflow_id: str, index: int) -> str:
    """Return where step `index` of a workflow reports its progress."""
    return f"{self_url.rstrip('/')}/workflows/{quote(workflow_id, safe='')}/steps/{index}/progress"


def allowed_origins(config: Mapping[str, Any]) -> frozenset[str]:
    """Return the origins an absolute step endpoint may name: the steps file's, the setting's."""
    found = set(config["STEP_ORIGINS"])
    for step in load_steps(config["STEPS_FILE"]):
        endpoint = step.get("endpoint")
        if endpoint and not endpoint.startswith("/"):
            found.add(origin(endpoint))
    return frozenset(found)


@dataclass(frozen=True)
class RunSettings:
    """What running a workflow needs from the configuration."""

    lease: float
    step: StepSettings
    origins: frozenset[str] = frozenset()
    max_step_attempts: int = MAX_STEP_ATTEMPTS
    watch_seconds: float = WATCH_SECONDS
    # The claim deadline of a run a stopping runner hands back (None: a lease). RQ workers
    # enqueue it at once; a web process hands it to the other processes, so 0.
    release_lease: float | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RunSettings:
        """Take the run settings from an app config (or `config.from_env()`)."""
        # A path on this service is behind the same bearer token as every /workflow route.
        token = config.get("STATE_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return cls(
            lease=config["RUN_LEASE"],
            step=StepSettings.from_config(config, headers),
            origins=allowed_origins(config),
        )


class RunObserver:
    """Hears what runs do; the lease index and the metrics supply real ones."""

    def leased(self, owner: str, workflow_id: str, deadline: datetime) -> None:
        """Note a run's new lease deadline (queued, claimed or renewed)."""

    def ended(self, owner: str, workflow_id: str, outcome: str) -> None:
        """Note that a run attempt ended, and how (one of OUTCOMES)."""

    def step_done(self, seconds: float) -> None:
        """Note how long a step took."""

    def resumed(self, owner: str, workflow_id: str) -> None:
        """Note a takeover: a run whose lease lapsed was queued again."""

    def retried(self) -> None:
        """Note a failed step call that will be made again after a wait."""

    def waiting(self, count: int) -> None:
        """Note how many runs wait for a run thread in this process (the file backend)."""


@dataclass(frozen=True)
class RunResult:
    """How an attempt ended, and the state it left (None when nothing was read)."""

    outcome: str
    state: dict[str, Any] | None = None

    @property
    def next_fence(self) -> runs.Fence | None:
        """Return the fence a released run was queued under, else None."""
        run = runs.active_run(self.state)
        if self.outcome != RELEASED or run is None or run["status"] != runs.QUEUED:
            return None
        return runs.fence_of(self.state)


class _Lost(Exception):
    """Storage stayed unavailable for a whole lease: the run is someone else's by now."""


def _ours(state: Mapping[str, Any] | None, fence: runs.Fence) -> bool:
    run = runs.active_run(state)
    return run is not None and runs.fence_of(state) == fence and run["status"] == runs.RUN_RUNNING


def _why_not_ours(state: Mapping[str, Any] | None) -> str:
    return CANCELLED_OUTCOME if state is not None and state["status"] == "cancelled" else SUPERSEDED


class _Watch(threading.Thread):
    """Renew the lease every lease/3 and read the state in between; interrupt the step when
    the run is no longer ours (cancelled, taken over) or the process is stopping."""

    def __init__(self, attempt: _Attempt, stop: threading.Event | None) -> None:
        super().__init__(name=f"run-watch-{attempt.workflow_id}", daemon=True)
        self.attempt = attempt
        self.stop = stop
        self.cancel = threading.Event()  # the running step's cancel: set to interrupt it
        self.reason: str | None = None
        self.done = threading.Event()

    def end(self, reason: str) -> None:
        """Interrupt the step (once), saying why."""
        if self.reason is None:
            self.reason = reason
        self.cancel.set()

    def run(self) -> None:
        attempt = self.attempt
        settings = attempt.settings
        interval = runs.renew_interval(settings.lease)
        renew_at = time.monotonic() + interval
        while not self.done.wait(settings.watch_seconds):
            if self.stop is not None and self.stop.is_set():
                self.end(RELEASED)
                return
            try:
                if time.monotonic() >= renew_at:
                    attempt.renew()
                    renew_at = time.monotonic() + interval
                else:
                    state = attempt.read()
                    if not _ours(state, attempt.fence):
                        self.end(_why_not_ours(state))
                        return
            except runs.RunSuperseded:
                self.end(_why_not_ours(attempt.read_quietly()))
                return
            except StorageUnavailable as error:
                # Tried again at the next tick; the lease outlasts two failed renewals.
                log.warning(
                    "run of workflow %s, attempt %s: cannot reach storage: %s",
                    attempt.workflow_id,
                    attempt.attempt,
                    error.message,
                )
            except Exception:
                # A bug must not silently end the renewals: then the lease would lapse and two
                # runners would call the same endpoint. Stop this attempt instead.
                log.exception("run of workflow %s: the watch failed", attempt.workflow_id)
                self.end(SUPERSEDED)
                return


class _Attempt:
    """One attempt of one workflow's run, and the writes it makes."""

    def __init__(
        self,
        store: StateStore,
        owner: str,
        workflow_id: str,
        fence: runs.Fence,
        settings: RunSettings,
        observer: RunObserver,
    ) -> None:
        self.store = store
        self.owner = owner
        self.workflow_id = workflow_id
        self.fence = fence
        self.attempt = fence.attempt
        self.settings = settings
        self.observer = observer
        # When (monotonic) the lease last reached storage: a runner that cannot write for a
        # whole lease has lost the run to a takeover, whatever it does next.
        self.leased_at = time.monotonic()
        # The progress token of the step call this attempt makes (its hash is in the state).
        self.token: str | None = None
        # The person's answer to the step this run resumes (a blocked one), and that step.
        self.input: dict[str, Any] | None = None
        self.input_step: int | None = None

    def write(self, make: Callable[[], Snapshot]) -> Snapshot:
        """Make a write, trying again while storage is unavailable, for at most a lease."""
        while True:
            try:
                return make()
            except StorageUnavailable as error:
                if time.monotonic() - self.leased_at > self.settings.lease:
                    raise _Lost(error.message) from None
                time.sleep(RETRY_SECONDS)

    def _noted(self, snapshot: Snapshot) -> Snapshot:
        """Tell the observer the lease the snapshot carries."""
        self.leased_at = time.monotonic()
        deadline = runs.lease_deadline(snapshot.state)
        if deadline is not None:
            self.observer.leased(self.owner, self.workflow_id, deadline)
        return snapshot

    def claim(self) -> Snapshot:
        """Claim the queued attempt."""
        return self._noted(
            self.write(
                lambda: self.store.claim_run(
                    self.owner,
                    self.workflow_id,
                    self.fence,
                    runner_name(),
                    lease=self.settings.lease,
                )
            )
        )

    def renew(self) -> None:
        """Renew the lease once (no retry: the watch tries again at its next tick)."""
        self._noted(
            self.store.renew_lease(
                self.owner, self.workflow_id, self.fence, lease=self.settings.lease
            )
        )

    def read(self) -> dict[str, Any] | None:
        """Read the workflow."""
        return self.store.get(self.owner, self.workflow_id).state

    def read_quietly(self) -> dict[str, Any] | None:
        """Read the workflow; None when storage is unavailable."""
        try:
            return self.read()
        except StorageUnavailable:
            return None

    def start_step(self, index: int) -> Snapshot:
        """Start a call of step `index`, with a new progress token."""
        hashed = self.new_token()
        return self.write(
            lambda: self.store.runner_step(
                self.owner, self.workflow_id, self.fence, index, "in_progress", token_hash=hashed
            )
        )

    def advance(self, index: int, status: str, data: dict[str, Any] | None) -> Snapshot:
        """Write step `index`'s outcome and start the next step (or finish) in the same write.

        An answer too large for the size limits fails the step with the reason instead.
        """
        hashed = self.new_token()
        try:
            return self.write(
                lambda: self.store.advance_run(
                    self.owner, self.workflow_id, self.fence, index, status, data, token_hash=hashed
                )
            )
        except LimitExceeded as error:
            failed = {"message": error.message}
            return self.write(
                lambda: self.store.advance_run(
                    self.owner, self.workflow_id, self.fence, index, FAILED, failed, limited=False
                )
            )

    def new_token(self) -> str:
        """Make the progress token of the next step call this attempt starts."""
        self.token = runs.make_progress_token(self.owner, self.fence, secrets.token_urlsafe(24))
        return runs.token_hash(self.token)

    def load_input(self, state: Mapping[str, Any]) -> None:
        """Read the person's answer to a blocked step this run resumes, if it has one."""
        record = self.write(lambda: self.store.get_input(self.owner, self.workflow_id))
        if (
            record is not None
            and record.get("incarnation") == self.fence.incarnation
            and isinstance(record.get("step"), int)
            and isinstance(record.get("input"), dict)
        ):
            self.input_step = record["step"]
            self.input = record["input"]

    def input_for(self, index: int) -> dict[str, Any] | None:
        """Return the answer step `index` gets, or None."""
        return self.input if index == self.input_step else None

    def forget_input(self, index: int) -> None:
        """Delete the answer of step `index` once that step settled (best effort)."""
        if index != self.input_step:
            return
        self.input_step, self.input = None, None
        try:
            self.store.delete_input(self.owner, self.workflow_id)
        except StorageUnavailable as error:
            log.warning(
                "run of workflow %s: cannot delete a step's input yet (%s); it expires",
                self.workflow_id,
                error.message,
            )

    def reporter(self, index: int) -> Callable[[dict[str, Any]], None]:
        """Return what the simulator calls with its progress reports for step `index`."""
        token = self.token

        def report(progress: dict[str, Any]) -> None:
            # A report is worth no retry: the step's answer follows.
            with contextlib.suppress(StateError, StorageUnavailable):
                self.store.report_progress(self.owner, self.workflow_id, token, index, progress)

        return report

    def block(self, index: int, question: dict[str, Any]) -> Snapshot:
        """Write that step `index` asks the person; the run ends."""
        return self.write(
            lambda: self.store.block_step(self.owner, self.workflow_id, self.fence, index, question)
        )

    def wait_to_retry(self, index: int, message: str, wait: float) -> Snapshot:
        """Write a failed call of step `index` that is made again in `wait` seconds."""
        return self._noted(
            self.write(
                lambda: self.store.schedule_retry(
                    self.owner, self.workflow_id, self.fence, index, message, wait=wait
                )
            )
        )

    def fail(self, index: int, data: dict[str, Any] | None) -> Snapshot:
        """Write the last failed call of step `index`: it and the workflow fail."""
        return self.write(
            lambda: self.store.fail_step(self.owner, self.workflow_id, self.fence, index, data)
        )

    def finish(self) -> Snapshot:
        """End the run with every step settled."""
        return self.write(
            lambda: self.store.finish_run(self.owner, self.workflow_id, self.fence, COMPLETED)
        )

    def release(self) -> Snapshot:
        """Hand the run back to the queue as the next attempt."""
        snapshot = self.write(
            lambda: self.store.release_run(
                self.owner,
                self.workflow_id,
                self.fence,
                lease=self.settings.lease
                if self.settings.release_lease is None
                else self.settings.release_lease,
            )
        )
        return self._noted(snapshot)


def run_workflow(
    store: StateStore,
    owner: str,
    workflow_id: str,
    fence: runs.Fence,
    settings: RunSettings,
    *,
    observer: RunObserver | None = None,
    stop: threading.Event | None = None,
) -> RunResult:
    """Run the workflow's queued run that `fence` names to its end; return how it ended.

    `stop` set (the process is shutting down) interrupts the step and hands the run back to
    the queue as the next attempt (RELEASED; `RunResult.next_fence` says which). Never
    raises for anything a run meets: a refused write, a cancel, storage down.
    """
    observer = observer or RunObserver()
    run = _Attempt(store, owner, workflow_id, fence, settings, observer)
    attempt = fence.attempt
    try:
        result = _run(run, stop)
    except runs.RunSuperseded:
        state = run.read_quietly()
        result = RunResult(_why_not_ours(state), state)
    except _Lost as error:
        log.error(
            "run of workflow %s, attempt %s: storage unavailable for a whole lease (%s); "
            "leaving the run to a takeover",
            workflow_id,
            attempt,
            error,
        )
        result = RunResult(LOST)
    log.info("run of workflow %s, attempt %s: %s", workflow_id, attempt, result.outcome)
    observer.ended(owner, workflow_id, result.outcome)
    return result


def _run(run: _Attempt, stop: threading.Event | None) -> RunResult:
    state = run.claim().state
    assert state is not None
    run.load_input(state)
    watch = _Watch(run, stop)
    watch.start()
    try:
        return _steps(run, state, watch)
    finally:
        watch.done.set()
        watch.join()


def _steps(run: _Attempt, state: dict[str, Any], watch: _Watch) -> RunResult:
    """Perform the steps: each write records one step and starts the next (runs.advance)."""
    settings = run.settings
    state = _start(run, state)
    while True:
        if state["status"] != "running":
            outcome = COMPLETED if state["status"] == "completed" else FAILED_OUTCOME
            return RunResult(outcome, state)
        if watch.cancel.is_set():
            return _interrupted(run, watch)
        index = state["current_step"]  # the step our last write started
        step = state["steps"][index]
        timeout = step.get("timeout_seconds")
        call = StepCall(
            run.workflow_id,
            step["action"],
            index,
            run.attempt,
            state.get("ssh_connection"),
            step.get("endpoint"),
            step_attempt=step.get("attempts") or 1,
            input=run.input_for(index),
            progress_url=progress_url(settings.step.self_url, run.workflow_id, index),
            progress_token=run.token,
            idempotency_key=runs.idempotency_key(
                run.owner, run.workflow_id, run.fence.incarnation, index
            ),
            timeout=timeout if isinstance(timeout, (int, float)) else None,
        )
        result: StepResult = check_origin(call.endpoint, settings.origins) or perform_step(
            call, settings.step, watch.cancel, run.reporter(index)
        )
        run.observer.step_done(result.seconds)
        if result.status == CANCELLED:
            return _interrupted(run, watch)
        if result.status == BLOCKED:
            assert result.blocked is not None
            blocked = run.block(index, result.blocked).state
            run.forget_input(index)
            return RunResult(BLOCKED_OUTCOME, blocked)
        if result.status == FAILED:
            failures = (state["run"].get("failures") or 0) + 1
            wait = runs.retry_delay(step.get("retry"), failures, random.uniform(-1, 1))
            if wait is not None:
                waiting = run.wait_to_retry(index, result.message or "The step failed", wait)
                run.observer.retried()
                return RunResult(WAITING_OUTCOME, waiting.state)
            failed = run.fail(index, result.data).state
            run.forget_input(index)
            assert failed is not None
            state = failed
            continue
        state = run.advance(index, result.status, result.data).state
        run.forget_input(index)
        assert state is not None


def _start(run: _Attempt, state: dict[str, Any]) -> dict[str, Any]:
    """Start the first step not completed or skipped (again, after an interruption), or
    finish the run when there is none."""
    while True:
        remaining = runs.remaining_steps(state)
        if not remaining:
            finished = run.finish().state
            assert finished is not None
            return finished
        try:
            started = run.start_step(remaining[0]).state
        except InvalidIndex:
            # A client settled or removed the step since our read: read again and go on.
            fresh = run.read()
            if fresh is None or not _ours(fresh, run.fence):
                raise runs.RunSuperseded("the run moved on") from None
            state = fresh
            continue
        assert started is not None
        return started


def _interrupted(run: _Attempt, watch: _Watch) -> RunResult:
    """End an attempt whose step was interrupted: hand it back, or leave it as it is."""
    if watch.reason == RELEASED:
        return RunResult(RELEASED, run.release().state)
    return RunResult(watch.reason or SUPERSEDED, run.read_quietly())
