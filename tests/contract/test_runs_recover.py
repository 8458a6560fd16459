"""Runs that ask, report and recover, on every backend, in this process: the engine
(`run_workflow`) against step endpoints this test owns, and the lease monitor (`tick`) waking a
run whose failed step is due again. A step that asks the person, a step retried after a wait, a
step timed out, what every step request carries, a person's answer reaching only its step,
progress reports, and how long a failed workflow is kept."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.fernet import Fernet

from service import model, runs
from service.runner.engine import (
    BLOCKED_OUTCOME,
    COMPLETED,
    FAILED_OUTCOME,
    WAITING_OUTCOME,
    RunObserver,
    RunResult,
    RunSettings,
    run_workflow,
)
from service.runner.monitor import LeaseMonitor
from service.runs import Fence, ProgressRefused
from service.storage import RedisStore, StateStore
from service.storage.base import utc_now
from tests.contract import test_run_engine as engine
from tests.support import wait_until
from tests.support.endpoints import StepEndpoints
from tests.support.layout import file_of
from tests.support.runs import OWNER, open_test_store, plan, wait_for_state

LEASE = 3.0
SELF_URL = "http://wss.test:8000"
SECRET = "hunter2-SECRET"
QUESTION = {
    "message": "Trust host key?",
    "input": [{"name": "trust", "type": "boolean"}, {"name": "password", "type": "secret"}],
}
ANSWER = {"trust": True, "password": SECRET}


# --- step endpoints ------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """The paths of this file's steps; the calls are kept as StepEndpoints keeps them."""

    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, value: Any) -> None:
        raw = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        path = parts.path
        self.server.record(path, dict(self.headers), body)
        with self.server.lock:
            count = sum(call["path"] == path for call in self.server.calls)
        if path == "/ok":
            self._json({"success": True, "message": "done"})
        elif path == "/blocked":
            self._json({"success": False, "blocked": QUESTION})
        elif path == "/bad-blocked":
            question = {"message": "Which?", "input": [{"name": "Not A Name", "type": "text"}]}
            self._json({"success": False, "blocked": question})
        elif path == "/flaky":
            # Fails its first `fails` calls, then succeeds.
            if count <= int(query.get("fails", 0)):
                self._json({"success": False, "message": f"failure {count}"})
            else:
                self._json({"success": True, "message": f"passed on call {count}"})
        elif path == "/ask":
            # Asks until it gets an answer; with one, fails its first `fails` answered calls.
            if "input" not in body:
                self._json({"success": False, "blocked": QUESTION})
            elif self.answered() <= int(query.get("fails", 0)):
                self._json({"success": False, "message": "not yet"})
            else:
                self._json({"success": True, "data": {"answered": sorted(body["input"])}})
        elif path == "/slow":
            self.server.release.wait(float(query.get("seconds", 30)))
            self._json({"success": True})
        else:
            self._json({"success": False, "message": f"no test endpoint {path}"})

    def answered(self) -> int:
        """Return how many calls of /ask carried a person's answer, this one included."""
        with self.server.lock:
            return sum(c["path"] == "/ask" and "input" in c["body"] for c in self.server.calls)


class Endpoints(StepEndpoints):
    """This test's own step endpoints (paths of _Handler), recording every call."""

    def __init__(self) -> None:
        super().__init__()
        self.server.RequestHandlerClass = _Handler


# The engine tests' fixture: a store on the test's backend.
store = engine.store
in_background = engine.in_background


@pytest.fixture
def endpoints() -> Iterator[Endpoints]:
    server = Endpoints()
    server.start()
    yield server
    server.close()


# --- running -------------------------------------------------------------------------------------


class Dispatched:
    """A monitor's dispatcher that only notes what it was given: the test runs it."""

    adopts_orphans = False

    def __init__(self) -> None:
        self.fences: list[Fence] = []

    def dispatch(self, owner: str, workflow_id: str, fence: Fence) -> None:
        self.fences.append(fence)

    def waiting(self, owner: str, workflow_id: str, fence: Fence) -> bool:
        return False


def settings(endpoints: Endpoints | None = None, demo_seconds: float = 0.0) -> RunSettings:
    origins = (endpoints.url,) if endpoints else ()
    return engine.settings(*origins, self_url=SELF_URL, demo_seconds=demo_seconds)


def start(store: StateStore, steps: list[dict[str, Any]], workflow_id: str = "wf") -> Fence:
    """Create a workflow with these steps and queue its run; return the run's fence."""
    store.create(OWNER, {"workflow_id": workflow_id, "steps": steps})
    return runs.fence_of(store.request_run(OWNER, workflow_id, lease=LEASE).state)


def step(endpoint: str | None, index: int = 0, **options: Any) -> dict[str, Any]:
    made = plan(endpoint)[0]
    made.update(action=f"s{index}", label=f"S{index}", **options)
    return made


class Runner:
    """Runs a workflow's attempts to the end, waking its waiting retries with a lease monitor."""

    def __init__(self, store: StateStore, run_settings: RunSettings) -> None:
        self.store = store
        self.settings = run_settings
        self.dispatched = Dispatched()
        self.monitor = LeaseMonitor(store, run_settings, self.dispatched, RunObserver())
        self.waits: list[dict[str, Any]] = []  # the stored state while each retry waited

    def run(self, fence: Fence, workflow_id: str = "wf") -> RunResult:
        """Run `fence` and every attempt the monitor wakes after it; return the last result."""
        while True:
            result = run_workflow(self.store, OWNER, workflow_id, fence, self.settings)
            if result.outcome != WAITING_OUTCOME:
                return result
            waiting = self.store.get(OWNER, workflow_id).state
            self.waits.append(waiting)
            fence = self.wake(waiting, workflow_id)

    def wake(self, waiting: dict[str, Any], workflow_id: str) -> Fence:
        """Tick the monitor until it wakes the waiting run; check it did not before retry_at."""
        retry_at = model.parse_time(waiting["run"]["lease_expires"])
        seen = len(self.dispatched.fences)

        def woken() -> Fence | None:
            ticked = self.monitor.tick()
            if len(self.dispatched.fences) > seen:
                assert ticked == 1
                assert utc_now() >= retry_at
                return self.dispatched.fences[-1]
            assert ticked == 0
            return None

        fence = wait_until(woken, timeout=10, interval=0.02)
        state = self.store.get(OWNER, workflow_id).state
        assert runs.fence_of(state) == fence and state["run"]["status"] == "queued"
        assert self.monitor.tick() == 0  # woken once
        return fence


def bodies(endpoints: Endpoints, path: str) -> list[dict[str, Any]]:
    return [call["body"] for call in endpoints.calls(path)]


# --- a step that asks the person -----------------------------------------------------------------


def test_a_blocked_answer_blocks_the_workflow_and_ends_the_run(
    store: StateStore, endpoints: Endpoints
):
    fence = start(store, [step(f"{endpoints.url}/blocked"), step(f"{endpoints.url}/ok", 1)])
    result = Runner(store, settings(endpoints)).run(fence)
    assert result.outcome == BLOCKED_OUTCOME
    state = store.get(OWNER, "wf").state
    assert state["status"] == "blocked"
    assert (state["run"]["status"], state["run"]["runner"]) == ("done", None)
    first = state["steps"][0]
    assert first["status"] == "blocked" and first["attempts"] == 1
    assert {key: first["blocked"][key] for key in ("message", "input")} == QUESTION
    assert model.parse_time(first["blocked"]["since"])
    assert state["steps"][1]["status"] == "pending"
    assert endpoints.calls("/ok") == []
    # No lease, no runner: nothing for a monitor to do; still listed as running.
    assert LeaseMonitor(store, settings(), Dispatched(), RunObserver()).tick() == 0
    assert store.runs_due(utc_now()) == []
    listed = store.list(OWNER, status="running").entries
    assert [entry["workflow_id"] for entry in listed] == ["wf"]


def test_a_blocked_question_that_cannot_be_asked_fails_the_step(
    store: StateStore, endpoints: Endpoints
):
    fence = start(store, [step(f"{endpoints.url}/bad-blocked")])
    assert Runner(store, settings(endpoints)).run(fence).outcome == FAILED_OUTCOME
    state = store.get(OWNER, "wf").state
    assert state["status"] == "failed" and state["run"]["status"] == "done"
    failed = state["steps"][0]
    assert failed["status"] == "failed" and "blocked" not in failed
    assert "blocked question that cannot be asked" in failed["data"]["message"]


def test_a_resumed_step_gets_the_answer_on_every_call_and_the_answer_goes_once_it_completes(
    store: StateStore, endpoints: Endpoints
):
    asking = f"{endpoints.url}/ask?fails=1"
    retry = {"max_attempts": 2, "backoff_seconds": 0.2}
    fence = start(store, [step(asking, retry=retry), step(f"{endpoints.url}/ok", 1)])
    runner = Runner(store, settings(endpoints))
    assert runner.run(fence).outcome == BLOCKED_OUTCOME
    blocked = store.get(OWNER, "wf").state
    record = {"incarnation": runs.incarnation_of(blocked), "step": 0, "input": ANSWER}
    store.put_input(OWNER, "wf", record)
    resumed = store.resume(OWNER, "wf", ANSWER, lease=LEASE)
    assert SECRET not in resumed.json
    assert resumed.state["steps"][0]["status"] == "pending"
    assert not runs.run_resumed(resumed.state)
    # The answered call fails once: the retry after the wait carries the answer too.
    assert runner.run(runs.fence_of(resumed.state)).outcome == COMPLETED
    assert len(runner.waits) == 1
    calls = bodies(endpoints, "/ask")
    assert ["input" in body for body in calls] == [False, True, True]
    assert [body.get("input") for body in calls[1:]] == [ANSWER, ANSWER]
    assert [body["step_attempt"] for body in calls] == [1, 2, 3]
    assert "input" not in bodies(endpoints, "/ok")[0]
    state = store.get(OWNER, "wf").state
    assert state["status"] == "completed"
    assert state["steps"][0]["data"] == {"answered": ["password", "trust"]}
    assert store.get_input(OWNER, "wf") is None
    assert SECRET not in store.get(OWNER, "wf").json


def raw_input(store: StateStore, workflow_id: str = "wf") -> bytes | None:
    """Return a workflow's kept answer exactly as stored (Redis key or file), or None."""
    if isinstance(store, RedisStore):
        return store.client().get(store.keys.input(OWNER, workflow_id))
    try:
        with open(file_of(store, OWNER, f"{workflow_id}.input"), "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def test_a_kept_answer_is_sealed_at_rest_and_goes_with_its_workflow(backend: dict[str, Any]):
    sealed = open_test_store(backend, STATE_SECRET_KEYS=(Fernet.generate_key().decode(),))
    try:
        start(sealed, [step(None)])
        record = {"incarnation": 1, "step": 0, "input": ANSWER}
        sealed.put_input(OWNER, "wf", record)
        raw = raw_input(sealed)
        assert raw is not None and SECRET.encode() not in raw
        assert sealed.get_input(OWNER, "wf") == record
        sealed.delete(OWNER, "wf")
        assert sealed.get_input(OWNER, "wf") is None and raw_input(sealed) is None
    finally:
        sealed.close()


def test_a_cancelled_resumed_step_forgets_its_answer(store: StateStore, endpoints: Endpoints):
    fence = start(store, [step(f"{endpoints.url}/blocked")])
    assert Runner(store, settings(endpoints)).run(fence).outcome == BLOCKED_OUTCOME
    incarnation = runs.incarnation_of(store.get(OWNER, "wf").state)
    store.put_input(OWNER, "wf", {"incarnation": incarnation, "step": 0, "input": ANSWER})
    assert store.get_input(OWNER, "wf") is not None  # kept, as long as the step waits
    store.cancel(OWNER, "wf")
    state = store.get(OWNER, "wf").state
    assert state["status"] == "cancelled" and state["steps"][0]["status"] == "cancelled"
    assert store.get_input(OWNER, "wf") is None
    assert raw_input(store) is None


# --- a step retried after a wait -----------------------------------------------------------------


def test_a_step_that_fails_twice_is_called_again_after_waits_and_completes(
    store: StateStore, endpoints: Endpoints
):
    retry = {"max_attempts": 3, "backoff_seconds": 0.2}
    fence = start(store, [step(f"{endpoints.url}/flaky?fails=2", retry=retry)])
    runner = Runner(store, settings(endpoints))
    started = time.monotonic()
    assert runner.run(fence).outcome == COMPLETED
    # Two waits of 0.2 and 0.4 s (±10 %) passed between the calls.
    assert time.monotonic() - started >= 0.18 + 0.36
    assert len(runner.waits) == 2
    for number, waiting in enumerate(runner.waits, start=1):
        run, waited = waiting["run"], waiting["steps"][0]
        assert waiting["status"] == "running"
        assert (run["status"], run["runner"], run["failures"]) == ("waiting", None, number)
        assert waited["status"] == "in_progress" and waited["attempts"] == number
        assert waited["data"] == {"message": f"failure {number}"}
        assert waited["retry_at"] == run["lease_expires"]
    first = model.parse_time(runner.waits[0]["steps"][0]["retry_at"])
    last = model.parse_time(runner.waits[0]["last_update"])
    assert 0.17 <= (first - last).total_seconds() <= 0.23
    state = store.get(OWNER, "wf").state
    assert state["status"] == "completed" and state["run"]["status"] == "done"
    done = state["steps"][0]
    assert (done["status"], done["attempts"]) == ("completed", 3)
    assert "retry_at" not in done
    calls = endpoints.calls("/flaky")
    assert [call["body"]["step_attempt"] for call in calls] == [1, 2, 3]
    assert [call["body"]["attempt"] for call in calls] == [1, 2, 3]
    keys = {call["body"]["idempotency_key"] for call in calls}
    assert len(keys) == 1 and all(keys)
    assert [call["headers"]["Idempotency-Key"] for call in calls] == [keys.pop()] * 3
    assert not runs.run_resumed(state)  # waking a retry is no interruption


def test_a_cancel_during_the_wait_ends_the_run_and_nothing_wakes_it(
    store: StateStore, endpoints: Endpoints
):
    retry = {"max_attempts": 3, "backoff_seconds": 0.2}
    fence = start(store, [step(f"{endpoints.url}/flaky?fails=2", retry=retry)])
    runner = Runner(store, settings(endpoints))
    assert run_workflow(store, OWNER, "wf", fence, runner.settings).outcome == WAITING_OUTCOME
    retry_at = model.parse_time(store.get(OWNER, "wf").state["steps"][0]["retry_at"])
    cancelled = store.cancel(OWNER, "wf").state
    assert cancelled["status"] == "cancelled" and cancelled["run"]["status"] == "done"
    assert cancelled["steps"][0]["status"] == "cancelled"
    assert "retry_at" not in cancelled["steps"][0]
    # Past the retry time a wake would be due, were the run not over.
    wait_until(lambda: utc_now() > retry_at, timeout=5)
    assert runner.monitor.tick() == 0 and runner.dispatched.fences == []
    assert store.get(OWNER, "wf").state == cancelled
    assert len(endpoints.calls("/flaky")) == 1


def test_a_step_failing_max_attempts_times_fails_the_workflow_with_the_last_message(
    store: StateStore, endpoints: Endpoints
):
    retry = {"max_attempts": 3, "backoff_seconds": 0.1}
    steps = [step(f"{endpoints.url}/flaky?fails=99", retry=retry), step(f"{endpoints.url}/ok", 1)]
    runner = Runner(store, settings(endpoints))
    assert runner.run(start(store, steps)).outcome == FAILED_OUTCOME
    assert len(runner.waits) == 2
    state = store.get(OWNER, "wf").state
    assert state["status"] == "failed" and state["run"]["status"] == "done"
    failed = state["steps"][0]
    assert (failed["status"], failed["attempts"]) == ("failed", 3)
    assert failed["data"]["message"] == "failure 3"
    assert "retry_at" not in failed
    assert len(endpoints.calls("/flaky")) == 3 and endpoints.calls("/ok") == []
    assert store.runs_due(utc_now()) == []


def test_a_retried_workflow_runs_from_its_failed_step_with_a_fresh_budget(
    store: StateStore, endpoints: Endpoints
):
    retry = {"max_attempts": 2, "backoff_seconds": 0.1}
    steps = [step(f"{endpoints.url}/ok"), step(f"{endpoints.url}/flaky?fails=2", 1, retry=retry)]
    runner = Runner(store, settings(endpoints))
    assert runner.run(start(store, steps)).outcome == FAILED_OUTCOME
    retried = store.retry(OWNER, "wf", lease=LEASE).state
    assert retried["status"] == "running"
    assert [s["status"] for s in retried["steps"]] == ["completed", "pending"]
    assert runner.run(runs.fence_of(retried)).outcome == COMPLETED
    state = store.get(OWNER, "wf").state
    assert state["status"] == "completed"
    assert [s["attempts"] for s in state["steps"]] == [1, 3]
    assert len(endpoints.calls("/ok")) == 1  # a completed step never runs again
    keys = {call["body"]["idempotency_key"] for call in endpoints.calls("/flaky")}
    assert len(keys) == 1


def test_a_step_timeout_fails_that_call_with_a_timeout_message(
    store: StateStore, endpoints: Endpoints
):
    fence = start(store, [step(f"{endpoints.url}/slow?seconds=8", timeout_seconds=1)])
    started = time.monotonic()
    assert Runner(store, settings(endpoints)).run(fence).outcome == FAILED_OUTCOME
    assert 0.9 <= time.monotonic() - started < 4
    failed = store.get(OWNER, "wf").state["steps"][0]
    assert failed["status"] == "failed"
    assert "timed out after 1 s" in failed["data"]["message"]


# --- what every step request carries -------------------------------------------------------------


def test_every_step_request_carries_its_attempt_progress_url_token_and_idempotency_key(
    store: StateStore, endpoints: Endpoints
):
    steps = [step(f"{endpoints.url}/ok"), step(f"{endpoints.url}/ok", 1)]
    assert Runner(store, settings(endpoints)).run(start(store, steps)).outcome == COMPLETED
    calls = endpoints.calls("/ok")
    assert [call["body"]["index"] for call in calls] == [0, 1]
    for index, call in enumerate(calls):
        body = call["body"]
        assert body["step_attempt"] == 1 and body["attempt"] == 1
        assert body["progress_url"] == f"{SELF_URL}/workflows/wf/steps/{index}/progress"
        assert isinstance(body["progress_token"], str) and len(body["progress_token"]) >= 20
        assert isinstance(body["idempotency_key"], str) and body["idempotency_key"]
        assert call["headers"]["Idempotency-Key"] == body["idempotency_key"]
    first, second = (call["body"] for call in calls)
    assert first["idempotency_key"] != second["idempotency_key"]
    assert first["progress_token"] != second["progress_token"]
    # The same id deleted and created again is another workflow: other keys.
    store.delete(OWNER, "wf")
    assert Runner(store, settings(endpoints)).run(start(store, steps)).outcome == COMPLETED
    again = [call["body"]["idempotency_key"] for call in endpoints.calls("/ok")[2:]]
    assert len(again) == 2
    assert not set(again) & {first["idempotency_key"], second["idempotency_key"]}
    assert again[0] != again[1]


def test_a_step_calls_progress_token_is_taken_while_the_call_runs_and_refused_after(
    store: StateStore, endpoints: Endpoints
):
    fence = start(store, [step(f"{endpoints.url}/slow?seconds=8")])
    future = in_background(store, fence, settings(endpoints))
    call = wait_until(lambda: endpoints.calls("/slow"), timeout=10)[0]
    token = call["body"]["progress_token"]
    report = {
        "percent": 40,
        "message": "copying",
        "tasks": [{"name": "copy", "status": "in_progress"}],
    }
    reported = store.report_progress(OWNER, "wf", token, 0, report).state
    progress = reported["steps"][0]["progress"]
    assert {key: progress[key] for key in ("percent", "message")} == {
        "percent": 40,
        "message": "copying",
    }
    assert reported["steps"][0]["tasks"] == report["tasks"]
    assert reported["completed_percent"] == 40
    with pytest.raises(ProgressRefused):
        store.report_progress(OWNER, "wf", token + "x", 0, report)
    endpoints.server.release.set()
    assert future.result(timeout=10).outcome == COMPLETED
    with pytest.raises(ProgressRefused) as refused:
        store.report_progress(OWNER, "wf", token, 0, report)
    assert refused.value.code == "forbidden"


def test_the_simulator_reports_its_progress_while_it_runs(store: StateStore):
    fence = start(store, [step(None), step(None, 1)])
    future = in_background(store, fence, settings(demo_seconds=1.0))

    def reporting(state: dict[str, Any]) -> bool:
        first = state["steps"][0]
        percent = (first.get("progress") or {}).get("percent")
        return first["status"] == "in_progress" and isinstance(percent, (int, float))

    seen = wait_for_state(store, "wf", reporting, timeout=10)
    first = seen["steps"][0]
    assert 0 < first["progress"]["percent"] < 100
    assert first["progress"]["message"] and first.get("tasks")
    assert 0 < seen["completed_percent"] < 50
    assert future.result(timeout=15).outcome == COMPLETED
    assert store.get(OWNER, "wf").state["completed_percent"] == 100


# --- how long a finished workflow is kept --------------------------------------------------------


@pytest.mark.parametrize(("ttl", "failed_ttl", "goes"), [(1, 3600, "done"), (3600, 1, "bad")])
def test_a_failed_workflow_keeps_the_failed_ttl_and_a_completed_one_the_ttl(
    backend: dict[str, Any], endpoints: Endpoints, ttl: int, failed_ttl: int, goes: str
):
    opened = open_test_store(backend, STATE_TTL=ttl, STATE_FAILED_TTL=failed_ttl)
    try:
        runner = Runner(opened, settings(endpoints))
        done = start(opened, [step(f"{endpoints.url}/ok")], "done")
        assert runner.run(done, "done").outcome == COMPLETED
        bad = start(opened, [step(f"{endpoints.url}/flaky?fails=9")], "bad")
        assert runner.run(bad, "bad").outcome == FAILED_OUTCOME
        wait_until(lambda: opened.get(OWNER, goes).state is None, timeout=10, interval=0.1)
        stays = "bad" if goes == "done" else "done"
        assert opened.get(OWNER, stays).state["status"] in ("completed", "failed")
        listed = [entry["workflow_id"] for entry in opened.list(OWNER).entries]
        assert listed == [stays]
    finally:
        opened.close()
