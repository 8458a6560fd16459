"""Runs that ask, report and recover, as a user runs them: the real server (gunicorn) on the file
backend, and on a real redis-server with real `python -m service worker` processes, against a
step endpoint of this test's own that counts its calls and records what it received.

A step failing twice then passing is retried after waits a killed worker does not disturb; a
step that asks for a text, a secret and a choice refuses bad answers, gets the good one, and
its secret shows up in no answer, stream, log or metric; a blocked workflow holds no runner; a
failed workflow outlives WORKFLOW_STATE_TTL and is retried from its failed step; progress
reports reach the stream in order and a token that is not the running call's is refused; the
Idempotency-Key holds across retries, a takeover and a resume, and not across a new
incarnation; a seed client's GET-then-POST changes no server-owned field."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.contract import test_runs_recover as recover
from tests.support import Gunicorn, RedisServer, SSEClient, http, wait_until
from tests.support.endpoints import StepEndpoints
from tests.support.workers import Workers

LEASE = 2.0
SECRET = "Sw0rdfish-e2e20-do-not-leak"
QUESTION = {
    "message": "Log in to the instance",
    "input": [
        {"name": "host_label", "label": "Label", "type": "text"},
        {"name": "password", "label": "Password", "type": "secret"},
        {"name": "region", "label": "Region", "type": "choice", "choices": ["eu", "us"]},
    ],
}
ANSWER = {"host_label": "gpu box", "password": SECRET, "region": "eu"}
# Five reports, paced slower than the ten a second a service may coalesce.
REPORTS = (10, 20, 30, 40, 50)
REPORT_PACE = 0.15
HELD_PERCENT = 60
TASKS = [{"name": "copy", "status": "in_progress", "note": "half"}]


# --- the step endpoint ---------------------------------------------------------------------------


class _Handler(recover._Handler):
    """`/plan?do=a,b,c`: the n-th call of a step (its `step_attempt`) does the n-th action (the
    last one again past the end). Actions:

        ok           200 success
        fail         200 {"success": false, "message": "failure <n>"}
        ask          blocked with QUESTION, unless the call carries `input`: then success
        hold         answers nothing until the caller hangs up (a killed runner)
        report       reports REPORTS to progress_url, then holds
        report-wait  reports HELD_PERCENT with TASKS, waits for `go`, then success
    """

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.loads(raw or b"{}")
        with self.server.lock:
            self.server.calls.append(
                {"path": parts.path, "headers": dict(self.headers), "body": body, "at": time.time()}
            )
        actions = parse_qs(parts.query)["do"][0].split(",")
        action = actions[min(body["step_attempt"], len(actions)) - 1]
        call = body["step_attempt"]
        if action == "ok":
            self._json({"success": True, "data": {"call": call}})
        elif action == "fail":
            self._json({"success": False, "message": f"failure {call}"})
        elif action == "ask":
            if "input" in body:
                self._json({"success": True, "data": {"answered": sorted(body["input"])}})
            else:
                self._json({"success": False, "blocked": QUESTION})
        elif action == "hold":
            self._hold()
        elif action == "report":
            for percent in REPORTS:
                self._report(body, {"percent": percent, "message": f"at {percent}"})
                time.sleep(REPORT_PACE)
            self._hold()
        elif action == "report-wait":
            self._report(body, {"percent": HELD_PERCENT, "message": "copying", "tasks": TASKS})
            self.server.go.wait(30)
            self._json({"success": True, "data": {"call": call}})

    def _report(self, body: dict[str, Any], report: dict[str, Any]) -> None:
        token = {"Authorization": f"Bearer {body['progress_token']}"}
        status = http("POST", body["progress_url"], report, headers=token)[0]
        with self.server.lock:
            self.server.reports.append((body["step_attempt"], report["percent"], status))

    def _hold(self) -> None:
        """Answer nothing until the caller closes its end (or the server closes)."""
        self.connection.settimeout(0.2)
        while not self.server.release.is_set():
            try:
                if self.connection.recv(1) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        self.close_connection = True


class Endpoint(StepEndpoints):
    """This test's step endpoint: every call with when it came, and the progress it reported."""

    def __init__(self) -> None:
        super().__init__()
        self.server.RequestHandlerClass = _Handler
        self.server.go = threading.Event()
        self.server.reports = []

    def plan(self, *actions: str) -> str:
        """Return the endpoint URL of a step doing `actions` on its successive calls."""
        return f"{self.url}/plan?do={','.join(actions)}"

    def of(self, workflow_id: str, index: int) -> list[dict[str, Any]]:
        """Return the calls of one step of one workflow, in order."""
        return [
            call
            for call in self.calls()
            if call["body"]["workflow_id"] == workflow_id and call["body"]["index"] == index
        ]

    def reports(self) -> list[tuple[int, int, int]]:
        """Return (step_attempt, percent, answer status) of every report sent."""
        with self.server.lock:
            return list(self.server.reports)

    def close(self) -> None:
        self.server.go.set()
        super().close()


# --- the service: gunicorn, plus worker processes on Redis ---------------------------------------


class Service:
    """The real server on one backend; on Redis, with `python -m service worker` processes.

    `runners`: on the file backend, the web processes (each runs one workflow at a time); on
    Redis, how many worker processes `start_runners` starts.
    """

    def __init__(
        self, kind: str, state_url: str, endpoint: Endpoint, runners: int, env: dict[str, str]
    ) -> None:
        self.kind = kind
        self.runners = runners
        common = {
            "WORKFLOW_STATE_URL": state_url,
            "WORKFLOW_RUN_LEASE": str(LEASE),
            "WORKFLOW_STEP_ORIGINS": endpoint.url,
            **env,
        }
        web_env = {**common, "WORKFLOW_RUN_WORKERS": "1"}
        self.web = Gunicorn(web_env, workers=runners if kind == "file" else 1)
        self.url = self.web.url
        self.web.env["WORKFLOW_SELF_URL"] = self.url  # where progress reports go
        self.workers = Workers({**common, "WORKFLOW_SELF_URL": self.url})

    def start(self) -> Service:
        """Start the web server (and the workers on Redis)."""
        self.web.start()
        if self.kind == "file":
            wait_until(lambda: len(self.web.worker_pids()) == self.runners)
        for _ in range(self.runners if self.kind == "redis" else 0):
            self.workers.start()
        return self

    def kill_runner(self, state: dict[str, Any]) -> int:
        """SIGKILL the process running this workflow's run; return its pid."""
        pid = int(state["run"]["runner"].rsplit(":", 1)[1])
        if self.kind == "redis":
            self.workers.by_pid(pid).kill()
        else:
            assert pid in self.web.worker_pids()
            os.kill(pid, signal.SIGKILL)
        return pid

    def kill_every_runner(self) -> None:
        """SIGKILL every process that runs workflows; on Redis, start a fresh worker."""
        if self.kind == "redis":
            for worker in self.workers.started:
                if worker.alive():
                    worker.kill()
            self.workers.start()
        else:
            for pid in self.web.worker_pids():
                os.kill(pid, signal.SIGKILL)  # gunicorn's master starts new ones

    def logs(self) -> str:
        """Return every process's log so far."""
        return self.web.output() + "\n" + self.workers.output()

    def close(self) -> None:
        self.workers.close()
        self.web.stop()


@pytest.fixture(params=["file", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint().start()
    yield server
    server.close()


@pytest.fixture
def launch(
    kind: str, tmp_path: Path, endpoint: Endpoint, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Service]]:
    """Start the service on this test's backend: launch(runners=2, **env)."""
    if kind == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        redis.flush()
        state_url = redis.url
    else:
        state_url = f"file://{tmp_path}/state/workflow_state.json"
    started: list[Service] = []

    def make(runners: int = 2, **env: str) -> Service:
        service = Service(kind, state_url, endpoint, runners, env)
        started.append(service)
        return service.start()

    yield make
    for service in started:
        service.close()


# --- what a user does ----------------------------------------------------------------------------


def create(
    service: Service, workflow_id: str, *endpoints: str, run: bool = True, **step: Any
) -> dict[str, Any]:
    """Create a workflow with one step per endpoint (`step` options on each), maybe run it."""
    steps = [
        {"action": f"s{i}", "label": f"S{i}", "status": "pending", "endpoint": url, **step}
        for i, url in enumerate(endpoints)
    ]
    body = {"workflow_id": workflow_id, "steps": steps, "run": run}
    status, _, answer = http("POST", f"{service.url}/workflows", body)
    assert status == 201, answer
    return answer["state"]


def read(service: Service, workflow_id: str) -> dict[str, Any] | None:
    """Return the workflow as GET shows it, or None when there is none."""
    status, _, answer = http("GET", f"{service.url}/workflows/{workflow_id}")
    assert status in (200, 404), answer
    return answer["state"] if status == 200 else None


def wait_for(
    service: Service,
    workflow_id: str,
    condition: Callable[[dict[str, Any]], Any],
    timeout: float = 20,
) -> dict[str, Any]:
    """Poll GET until `condition(state)` holds; return that state."""

    def check() -> dict[str, Any] | None:
        state = read(service, workflow_id)
        return state if state is not None and condition(state) else None

    return wait_until(check, timeout=timeout, interval=0.05)


def post(service: Service, path: str, body: Any = None, **headers: str) -> tuple[int, Any]:
    status, _, answer = http("POST", f"{service.url}{path}", body, headers=headers)
    return status, answer


def status_is(*statuses: str) -> Callable[[dict[str, Any]], bool]:
    return lambda state: state["status"] in statuses


def waiting(calls: int) -> Callable[[dict[str, Any]], bool]:
    """A condition: step 0 waits to be called again after its `calls`-th failed call."""

    def condition(state: dict[str, Any]) -> bool:
        step = state["steps"][0]
        return (
            state["run"]["status"] == "waiting"
            and step.get("attempts") == calls
            and "retry_at" in step
        )

    return condition


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def stream_states(client: SSEClient, until: Callable[[dict[str, Any]], bool]) -> list[dict]:
    """Read the stream's states until one meets `until`; return them all."""
    seen: list[dict[str, Any]] = []
    while True:
        event = client.next(timeout=20)
        state = event["json"].get("state")
        if state:
            seen.append(state)
            if until(state):
                return seen


# --- retries -------------------------------------------------------------------------------------


def test_a_step_failing_twice_is_retried_after_waits_a_killed_runner_does_not_disturb(
    launch: Callable[..., Service], endpoint: Endpoint
):
    service = launch(runners=1)
    retry = {"max_attempts": 3, "backoff_seconds": 1}
    create(service, "flaky", endpoint.plan("fail", "fail", "ok"), retry=retry)
    first = wait_for(service, "flaky", waiting(1))
    assert first["status"] == "running" and first["run"]["runner"] is None
    assert first["steps"][0]["status"] == "in_progress"
    assert first["steps"][0]["data"]["message"] == "failure 1"
    # A crash while the run waits: every process that could run it dies.
    service.kill_every_runner()
    second = wait_for(service, "flaky", waiting(2), timeout=15)
    assert second["steps"][0]["data"]["message"] == "failure 2"
    done = wait_for(service, "flaky", status_is("completed", "failed"), timeout=20)
    assert done["status"] == "completed", done
    assert done["steps"][0]["attempts"] == 3 and "retry_at" not in done["steps"][0]
    calls = endpoint.of("flaky", 0)
    assert [call["body"]["step_attempt"] for call in calls] == [1, 2, 3]
    # Each call came when its wait said, not before: 1 s, then 2 s (±10 %).
    for call, wait in zip(calls[1:], (first, second), strict=True):
        assert call["at"] >= stamp(wait["steps"][0]["retry_at"]) - 0.05
    assert calls[1]["at"] - calls[0]["at"] >= 0.9
    assert calls[2]["at"] - calls[1]["at"] >= 1.8


# --- a step that asks the person -----------------------------------------------------------------


def test_a_blocked_step_takes_a_good_answer_only_and_its_secret_goes_nowhere_else(
    launch: Callable[..., Service], endpoint: Endpoint
):
    service = launch()
    create(service, "ask", endpoint.plan("ask"), f"{endpoint.url}/plan?do=ok", run=False)
    stream = SSEClient(f"{service.url}/workflows/ask/stream")
    try:
        assert stream.status == 200
        assert post(service, "/workflows/ask/run")[0] == 202
        blocked = wait_for(service, "ask", status_is("blocked", "failed", "completed"))
        assert blocked["status"] == "blocked", blocked
        assert blocked["run"]["status"] == "done" and blocked["run"]["runner"] is None
        assert blocked["steps"][0]["blocked"]["input"] == QUESTION["input"]
        running = http("GET", f"{service.url}/workflows?status=running")[2]
        assert [entry["workflow_id"] for entry in running["workflows"]] == ["ask"]
        bad_answers = [
            {},
            {"input": "yes"},
            {"input": {"password": SECRET, "region": "eu"}},  # a required one missing
            {"input": {**ANSWER, "region": "mars"}},  # a choice not listed
            {"input": {**ANSWER, "host_label": 5}},  # a wrong type
            {"input": {**ANSWER, "extra": "x"}},  # an unknown name
        ]
        for bad in bad_answers:
            status, answer = post(service, "/workflows/ask/resume", bad)
            assert (status, answer["error"]) == (400, "invalid_input"), (bad, answer)
            assert SECRET not in json.dumps(answer)
        assert read(service, "ask") == blocked  # nothing changed
        assert len(endpoint.of("ask", 0)) == 1
        status, answer = post(service, "/workflows/ask/resume", {"input": ANSWER})
        assert status == 202, answer
        assert SECRET not in json.dumps(answer)
        done = wait_for(service, "ask", status_is("completed", "failed"))
        assert done["status"] == "completed", done
        states = stream_states(stream, status_is("completed"))
    finally:
        stream.close()
    asked, answered = endpoint.of("ask", 0)
    assert "input" not in asked["body"] and answered["body"]["input"] == ANSWER
    assert "input" not in endpoint.of("ask", 1)[0]["body"]
    assert done["steps"][0]["data"] == {"answered": sorted(ANSWER)}
    assert any(state["status"] == "blocked" for state in states)
    # The secret reached the step endpoint, and nothing else.
    seen = {
        "stream": "\n".join(stream.lines),
        "logs": service.logs(),
        "metrics": http("GET", f"{service.url}/metrics")[2],
    }
    for path in (
        "/workflows/ask",
        "/workflows",
        "/workflows?status=all",
        "/workflow/state",
        "/workflow/state/summary",
        "/workflow/history",
    ):
        status, _, answer = http("GET", f"{service.url}{path}")
        assert status == 200, (path, answer)
        seen[path] = json.dumps(answer)
    assert "ask" in seen["/workflow/history"] and "workflow_blocked" in seen["metrics"]
    assert "of workflow ask" in seen["logs"]  # the runner's own lines are in what is read
    assert [name for name, text in seen.items() if SECRET in text] == []


def test_a_blocked_workflow_holds_no_runner(launch: Callable[..., Service], endpoint: Endpoint):
    service = launch(runners=1)
    create(service, "asks", endpoint.plan("ask"))
    assert wait_for(service, "asks", status_is("blocked", "failed"))["status"] == "blocked"
    create(service, "next", endpoint.plan("ok"), endpoint.plan("ok"))
    done = wait_for(service, "next", status_is("completed", "failed"))
    assert done["status"] == "completed"
    assert read(service, "asks")["status"] == "blocked"


# --- retry after a failure -----------------------------------------------------------------------


def test_a_failed_workflow_outlives_the_ttl_and_a_retry_runs_it_from_its_failed_step(
    launch: Callable[..., Service], endpoint: Endpoint
):
    service = launch(WORKFLOW_STATE_TTL="1", WORKFLOW_STATE_FAILED_TTL="3600")
    ok = endpoint.plan("ok")
    create(service, "bad", ok, endpoint.plan("fail", "ok"), ok)
    failed = wait_for(service, "bad", status_is("failed", "completed"))
    assert failed["status"] == "failed", failed
    assert [step["status"] for step in failed["steps"]] == ["completed", "failed", "pending"]
    # A workflow that completed after it is gone once WORKFLOW_STATE_TTL has passed.
    create(service, "good", ok)
    assert wait_for(service, "good", status_is("completed", "failed"))["status"] == "completed"
    wait_until(lambda: read(service, "good") is None, timeout=10, interval=0.1)
    assert read(service, "bad") == failed
    listed = http("GET", f"{service.url}/workflows")[2]["workflows"]
    assert [entry["workflow_id"] for entry in listed] == ["bad"]
    status, answer = post(service, "/workflows/bad/retry")
    assert status == 202, answer
    done = wait_for(service, "bad", status_is("completed", "failed"))
    assert done["status"] == "completed", done
    assert [len(endpoint.of("bad", index)) for index in range(3)] == [1, 2, 1]


# --- progress inside a step ----------------------------------------------------------------------


def test_progress_reaches_the_stream_in_order_and_only_the_running_call_may_report(
    launch: Callable[..., Service], endpoint: Endpoint
):
    service = launch()
    create(service, "prog", endpoint.plan("report", "report-wait"), endpoint.plan("ok"), run=False)
    stream = SSEClient(f"{service.url}/workflows/prog/stream")
    try:
        assert post(service, "/workflows/prog/run")[0] == 202

        def reported(state: dict[str, Any]) -> bool:
            return (state["steps"][0].get("progress") or {}).get("percent") == REPORTS[-1]

        states = stream_states(stream, reported)
        # The stream may show the last report before its sender has read the answer.
        wait_until(lambda: len(endpoint.reports()) == len(REPORTS))
        assert [answer for _, _, answer in endpoint.reports()] == [200] * len(REPORTS)
        percents = [(s["steps"][0].get("progress") or {}).get("percent") for s in states]
        shown = [p for i, p in enumerate(percents) if p is not None and p not in percents[:i]]
        assert shown == list(REPORTS)
        assert states[-1]["steps"][0]["progress"]["message"] == f"at {REPORTS[-1]}"
        first = endpoint.of("prog", 0)[0]["body"]
        token = {"Authorization": f"Bearer {first['progress_token']}"}
        report = {"percent": 70}
        # Another step's report route, or no token of this call: refused.
        status, answer = post(service, "/workflows/prog/steps/1/progress", report, **token)
        assert (status, answer["error"]) == (403, "forbidden")
        forged = {"Authorization": f"Bearer {first['progress_token'][:-4]}AAAA"}
        status, answer = post(service, "/workflows/prog/steps/0/progress", report, **forged)
        assert (status, answer["error"]) == (403, "forbidden")
        # The runner dies mid-call; after the takeover, the old run's token is superseded.
        service.kill_runner(read(service, "prog"))
        wait_until(lambda: len(endpoint.of("prog", 0)) == 2, timeout=LEASE + 10)
        wait_until(lambda: len(endpoint.reports()) == len(REPORTS) + 1)
        assert endpoint.reports()[-1] == (2, HELD_PERCENT, 200)
        status, answer = post(service, "/workflows/prog/steps/0/progress", report, **token)
        assert (status, answer["error"]) == (409, "run_superseded")
        # The killed process may have served that stream (file backend): a page opens another.
        stream.close()
        stream = SSEClient(f"{service.url}/workflows/prog/stream")
        held = stream_states(
            stream, lambda s: (s["steps"][0].get("progress") or {}).get("percent") == HELD_PERCENT
        )
        assert held[-1]["steps"][0]["tasks"] == TASKS
        assert held[-1]["run"]["takeovers"] == 1
        endpoint.server.go.set()
        done = wait_for(service, "prog", status_is("completed", "failed"))
    finally:
        stream.close()
    assert done["status"] == "completed", done
    # The second call has ended: its token is refused too.
    second = endpoint.of("prog", 0)[1]["body"]
    ended = {"Authorization": f"Bearer {second['progress_token']}"}
    status, answer = post(service, "/workflows/prog/steps/0/progress", report, **ended)
    assert (status, answer["error"]) == (403, "forbidden")


# --- effects that happen once --------------------------------------------------------------------


def test_the_idempotency_key_holds_across_retries_a_takeover_and_a_resume_not_a_new_incarnation(
    launch: Callable[..., Service], endpoint: Endpoint
):
    service = launch()
    retry = {"max_attempts": 3, "backoff_seconds": 1}
    create(service, "once", endpoint.plan("fail", "hold", "ask"), retry=retry)
    # Call 1 fails; call 2, after the wait, is under way when its runner is killed.
    wait_until(lambda: len(endpoint.of("once", 0)) == 2, timeout=15)
    running = wait_for(service, "once", lambda s: s["run"]["status"] == "running")
    service.kill_runner(running)
    # Another runner takes over after the lease; call 3 asks the person.
    blocked = wait_for(service, "once", status_is("blocked", "failed"), timeout=LEASE + 15)
    assert blocked["status"] == "blocked", blocked
    assert blocked["run"]["takeovers"] == 1
    status, answer = post(service, "/workflows/once/resume", {"input": ANSWER})
    assert status == 202, answer
    done = wait_for(service, "once", status_is("completed", "failed"))
    assert done["status"] == "completed", done
    calls = endpoint.of("once", 0)
    assert [call["body"]["step_attempt"] for call in calls] == [1, 2, 3, 4]
    keys = {call["headers"]["Idempotency-Key"] for call in calls}
    assert len(keys) == 1 and all(keys)
    assert [call["body"]["idempotency_key"] for call in calls] == [*keys] * 4
    # Deleted and created again under its id: another workflow, another key.
    assert http("DELETE", f"{service.url}/workflows/once")[0] == 200
    create(service, "once", endpoint.plan("ok"))
    assert wait_for(service, "once", status_is("completed", "failed"))["status"] == "completed"
    again = endpoint.of("once", 0)[4:]
    assert len(again) == 1 and again[0]["body"]["step_attempt"] == 1
    assert again[0]["headers"]["Idempotency-Key"] not in keys


# --- a seed client -------------------------------------------------------------------------------


def test_a_seed_clients_get_then_post_changes_no_server_owned_field(
    launch: Callable[..., Service], endpoint: Endpoint
):
    service = launch()
    create(service, "seed", endpoint.plan("report-wait"), endpoint.plan("ok"))
    wait_until(lambda: endpoint.reports() == [(1, HELD_PERCENT, 200)], timeout=15)
    before = wait_for(service, "seed", lambda s: s["steps"][0].get("progress"))
    # What a seed client does: GET the current state, POST it back.
    got = http("GET", f"{service.url}/workflow/state")[2]["state"]
    assert got["workflow_id"] == "seed"
    status, answer = post(service, "/workflow/state", got)
    assert status in (200, 201), answer
    # And one that sends its own values for them: the stored ones stay.
    forged = json.loads(json.dumps(got))
    forged["run"] = {"attempt": 99, "status": "done", "runner": "me"}
    forged["steps"][0].update(
        progress={"percent": 1}, tasks=[], attempts=9, blocked={"message": "?", "input": []}
    )
    status, answer = post(service, "/workflow/state", forged)
    assert status in (200, 201), answer
    after = read(service, "seed")

    def server_owned(state: dict[str, Any]) -> dict[str, Any]:
        run = {k: v for k, v in state["run"].items() if k not in ("heartbeat", "lease_expires")}
        step = state["steps"][0]
        return {
            "run": run,
            "status": state["status"],
            "step": {k: step.get(k) for k in ("status", "progress", "tasks", "attempts")},
            "blocked": step.get("blocked"),
        }

    assert server_owned(after) == server_owned(before)
    assert after["steps"][0]["tasks"] == TASKS and "blocked" not in after["steps"][0]
    # A client cannot make a workflow blocked: that is the server's to say.
    refused = {**got, "status": "blocked"}
    assert post(service, "/workflow/state", refused)[0] == 400
    endpoint.server.go.set()
    done = wait_for(service, "seed", status_is("completed", "failed"))
    assert done["status"] == "completed", done
    assert done["run"]["attempt"] == before["run"]["attempt"]
    assert [len(endpoint.of("seed", index)) for index in range(2)] == [1, 1]
