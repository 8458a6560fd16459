"""Runs through the app, in this process, on every backend: the routes of contract section 9,
the queue (RQ's SimpleWorker in burst mode works it: the path for CI without a Redis binary),
the lease monitor's decisions, the file backend's run threads, and the run metrics."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from service import create_app, model, runs
from service.run_api import runs_of
from service.runner.control import LOCAL, QUEUE, RunControl
from service.runner.jobs import RunWorker
from service.runner.monitor import LeaseMonitor
from service.runner.queue import job_id
from service.store import store_of
from tests.conftest import backend_config, steps
from tests.support import wait_until
from tests.support.routes import STATE
from tests.support.runs import OWNER, calling, fence, finished, later, plan, wait_for_state


@pytest.fixture
def runs_app(make_app: Callable[..., Flask]) -> Iterator[Flask]:
    app = make_app(DEMO_STEP_SECONDS=0, RUN_LEASE=2.0)
    yield app
    runs_of(app).close()


def work_the_queue(app: Flask) -> None:
    """Run every queued job in this process, as `python -m service worker --burst` would."""
    control = runs_of(app)
    worker_class = RunWorker.with_settings(app.config)
    worker_class([control.queue.queue.name], connection=control.queue.connection).work(burst=True)


def metric(app: Flask, name: str) -> float | None:
    """Return one sample's value from the app's /metrics, or None when absent."""
    text = app.test_client().get("/metrics").get_data(as_text=True)
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else None


def test_a_run_is_started_once_and_answered_202(runs_app: Flask):
    client = runs_app.test_client()
    client.post(STATE, json={"workflow_id": "wf", "steps": steps(3)})
    response = client.post("/workflows/wf/run")
    assert response.status_code == 202
    body = response.get_json()
    assert (body["success"], body["message"]) == (True, "Workflow run started")
    assert body["state"]["run"]["attempt"] == 1
    assert body["state"]["run"]["status"] in ("queued", "running", "done")
    assert response.headers["Cache-Control"] == "no-store"
    again = client.post("/workflows/wf/run")
    if again.status_code != 409 or again.get_json()["error"] != "run_active":
        # Only the file backend runs it here and now: by then it may have finished.
        assert again.get_json()["error"] == "workflow_finished"
    assert client.post("/workflows/nope/run").get_json()["error"] == "no_workflow"
    assert client.post("/workflows/bad%20id/run").get_json()["error"] == "invalid_workflow_id"


def test_the_cancel_routes_cancel_a_workflow_and_the_current_one(runs_app: Flask):
    client = runs_app.test_client()
    client.post(STATE, json={"workflow_id": "a", "steps": steps(2)})
    client.post(STATE, json={"workflow_id": "b", "steps": steps(2)})
    response = client.post("/workflows/a/cancel")
    assert response.status_code == 200
    assert response.get_json()["message"] == "Workflow cancelled"
    assert response.get_json()["state"]["status"] == "cancelled"
    current = client.post(f"{STATE}/cancel").get_json()["state"]
    assert (current["workflow_id"], current["status"]) == ("b", "cancelled")
    client.delete(STATE)
    assert client.post(f"{STATE}/cancel").status_code == 404


def test_a_client_cannot_forge_a_run(runs_app: Flask):
    client = runs_app.test_client()
    forged = {"attempt": 9, "runner": "x:1", "status": "running"}
    body = {"workflow_id": "wf", "steps": steps(1), "run": forged}
    assert "run" not in client.post(STATE, json=body).get_json()["state"]
    client.post("/workflows/wf/run")
    run = store_of(runs_app).get(OWNER, "wf").state["run"]
    assert run["attempt"] == 1
    patched = client.patch(STATE, json={"run": forged}).get_json()
    assert patched.get("state", {}).get("run", run)["attempt"] == 1


def test_create_and_run_in_one_call(runs_app: Flask):
    control = runs_of(runs_app)
    state = control.create(OWNER, {"steps": plan(None), "run": True}).state
    assert state["workflow_id"].startswith("workflow_")
    assert state["run"]["attempt"] == 1
    assert "run" not in control.create(OWNER, {"steps": plan(None), "run": False}).state
    with pytest.raises(model.InvalidState, match="'run'"):
        control.create(OWNER, {"steps": plan(None), "run": "yes"})


# --- the queue (Redis state) -------------------------------------------------------------------


def app_on(kind: str, request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Flask]:
    """An app with short runs on backend `kind`, closed after the test."""
    app = create_app(
        {"TESTING": True, **backend_config(kind, request, tmp_path)},
        environ={"WORKFLOW_DEMO_STEP_SECONDS": "0", "WORKFLOW_RUN_LEASE": "2"},
    )
    yield app
    runs_of(app).close()
    store_of(app).close()


@pytest.fixture(params=["fakeredis", "redis"])
def queue_app(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Flask]:
    """An app whose runs go to the queue (Redis state)."""
    yield from app_on(request.param, request, tmp_path)


def test_a_burst_worker_runs_the_queued_runs_and_metrics_show_them(queue_app: Flask):
    assert runs_of(queue_app).mode == QUEUE
    client = queue_app.test_client()
    for name in ("one", "two"):
        client.post(STATE, json={"workflow_id": name, "steps": steps(3)})
        client.post(f"/workflows/{name}/run")
    assert metric(queue_app, "workflow_runs_queued") == 2
    work_the_queue(queue_app)
    store = store_of(queue_app)
    for name in ("one", "two"):
        state = store.get(OWNER, name).state
        assert state["status"] == "completed" and state["run"]["status"] == "done"
    assert metric(queue_app, 'workflow_runs_total{outcome="completed"}') == 2
    assert metric(queue_app, "workflow_step_seconds_count") == 6
    assert metric(queue_app, "workflow_runs_queued") == 0
    assert metric(queue_app, "workflow_run_resumes_total") == 0
    # Finished runs leave the lease index.
    assert runs_of(queue_app).queue.due(later(3600), 10) == []


def monitor_of(app: Flask) -> LeaseMonitor:
    control = runs_of(app)
    queue = control.queue
    return LeaseMonitor(control.store, control.settings, queue, control.observer, index=queue)


def jobs(control: RunControl) -> list[str]:
    return control.queue.queue.get_job_ids()


def test_the_monitor_takes_over_a_run_whose_lease_lapsed(queue_app: Flask):
    control = runs_of(queue_app)
    store = control.store
    store.create(OWNER, {"workflow_id": "wf", "steps": plan(None, None)})
    control.start(OWNER, "wf")
    control.queue.queue.empty()  # a worker took the job...
    claimed = store.claim_run(OWNER, "wf", fence(store, 1), "dead:1", lease=0.05).state
    control.observer.leased(OWNER, "wf", runs.lease_deadline(claimed))  # as its claim does
    store.runner_step(OWNER, "wf", fence(store, 1), 0, "in_progress")
    time.sleep(0.06)  # ...and died
    assert monitor_of(queue_app).tick() == 1
    run = store.get(OWNER, "wf").state["run"]
    assert (run["attempt"], run["status"]) == (2, "queued")
    assert jobs(control) == [job_id(OWNER, "wf", fence(store, 2))]
    assert monitor_of(queue_app).tick() == 0  # nothing more to do
    assert metric(queue_app, "workflow_run_resumes_total") == 1
    work_the_queue(queue_app)
    state = store.get(OWNER, "wf").state
    assert state["status"] == "completed"
    assert [s["attempts"] for s in state["steps"]] == [2, 1]


def test_the_monitor_leaves_a_waiting_job_alone_and_pushes_its_claim_deadline(queue_app: Flask):
    control = runs_of(queue_app)
    store = control.store
    store.create(OWNER, {"workflow_id": "wf", "steps": plan(None)})
    store.request_run(OWNER, "wf", lease=0.01)  # queued, claim deadline about to lapse
    control.queue.enqueue(OWNER, "wf", fence(store, 1))
    control.queue.note(OWNER, "wf", later(0))
    time.sleep(0.02)
    assert monitor_of(queue_app).tick() == 0
    run = store.get(OWNER, "wf").state["run"]
    assert (run["attempt"], run["status"]) == (1, "queued")
    assert model.parse_time(run["lease_expires"]) > later(1)
    assert jobs(control) == [job_id(OWNER, "wf", fence(store, 1))]


def test_the_monitor_requeues_a_run_whose_job_a_killed_worker_took_but_never_started(
    queue_app: Flask,
):
    control = runs_of(queue_app)
    store = control.store
    store.create(OWNER, {"workflow_id": "wf", "steps": plan(None)})
    store.request_run(OWNER, "wf", lease=0.01)  # queued, claim deadline about to lapse
    control.queue.enqueue(OWNER, "wf", fence(store, 1))
    control.queue.note(OWNER, "wf", later(0))
    # A worker took the job (RQ moves it to the queue's intermediate list first) and was killed
    # before it started it: RQ still calls the job `queued`, but no worker will ever take it.
    rq = control.queue.queue
    assert rq.connection.lmove(rq.key, rq.intermediate_queue_key) is not None
    assert control.queue.queue.count == 0
    time.sleep(0.02)
    monitor = monitor_of(queue_app)
    assert monitor.tick() == 0  # missing once: a worker may be about to claim it
    assert monitor.tick() == 1
    run = store.get(OWNER, "wf").state["run"]
    assert (run["attempt"], run["status"]) == (2, "queued")
    assert jobs(control) == [job_id(OWNER, "wf", fence(store, 2))]
    work_the_queue(queue_app)
    assert store.get(OWNER, "wf").state["status"] == "completed"


def test_the_monitor_requeues_a_run_whose_job_was_lost(queue_app: Flask):
    control = runs_of(queue_app)
    store = control.store
    store.create(OWNER, {"workflow_id": "wf", "steps": plan(None)})
    store.request_run(OWNER, "wf", lease=0.01)  # queued, and its job never made it
    time.sleep(0.02)
    # The index lacks it too (the sweep rebuilds it), and holds a run that is over.
    store.create(OWNER, {"workflow_id": "over", "status": "completed"})
    control.queue.note(OWNER, "over", later(0))
    monitor = monitor_of(queue_app)
    assert monitor.tick() == 0  # missing once: a worker may be about to claim it
    assert monitor.tick() == 1
    run = store.get(OWNER, "wf").state["run"]
    assert (run["attempt"], run["status"]) == (2, "queued")
    assert jobs(control) == [job_id(OWNER, "wf", fence(store, 2))]
    assert [pair for pair in control.queue.due(later(3600), 10)] == [(OWNER, "wf")]


def test_the_monitor_rebuilds_the_index_at_once_when_the_queue_redis_lost_its_data(
    queue_app: Flask,
):
    control = runs_of(queue_app)
    store = control.store
    monitor = monitor_of(queue_app)
    assert monitor.tick() == 0  # swept: the next sweep is due in SWEEP_SECONDS
    store.create(OWNER, {"workflow_id": "wf", "steps": plan(None)})
    store.request_run(OWNER, "wf", lease=0.01)  # queued, claim deadline about to lapse
    control.queue.enqueue(OWNER, "wf", fence(store, 1))
    control.queue.note(OWNER, "wf", later(0))
    # The queue's Redis loses its data: the job, the lease index, everything of RQ's.
    connection = control.queue.connection
    connection.delete(*connection.keys("rq:*"), *connection.keys("workflow:runs*"))
    time.sleep(0.02)
    assert monitor.tick() == 0  # it noticed and put the run back in the index...
    assert monitor.tick() == 1  # ...and, its job still missing, took it over
    run = store.get(OWNER, "wf").state["run"]
    assert (run["attempt"], run["status"]) == (2, "queued")
    assert jobs(control) == [job_id(OWNER, "wf", fence(store, 2))]


# --- the file backend: runs in the web processes --------------------------------------------


@pytest.fixture
def local_app(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Flask]:
    """An app that runs workflows itself (the file backend)."""
    yield from app_on("file", request, tmp_path)


def test_the_web_process_runs_the_workflow_and_counts_it(local_app: Flask):
    assert runs_of(local_app).mode == LOCAL
    client = local_app.test_client()
    client.post(STATE, json={"workflow_id": "wf", "steps": steps(4)})
    client.post("/workflows/wf/run")
    state = wait_for_state(store_of(local_app), "wf", finished)
    assert state["status"] == "completed"
    assert [s["status"] for s in state["steps"]] == ["completed"] * 4
    # Counted by the run thread just after its last write.
    wait_until(lambda: metric(local_app, 'workflow_runs_total{outcome="completed"}') == 1)
    assert metric(local_app, "workflow_step_seconds_count") == 4


def test_a_run_queued_elsewhere_is_taken_by_a_web_process(local_app: Flask):
    control = runs_of(local_app)
    store = control.store
    store.create(OWNER, {"workflow_id": "wf", "steps": plan(None, None)})
    # As `python -m service run wf` queues it: nobody holds it, its claim deadline has passed.
    RunControl(store, local_app.config).start(OWNER, "wf", runs_here=False)
    control.ensure_running()
    state = wait_for_state(store, "wf", finished, timeout=10)
    assert state["status"] == "completed" and state["run"]["attempt"] == 1


def test_fakeredis_url_runs_in_this_process(tmp_path: Any):
    app = create_app(
        {"TESTING": True, "STATE_URL": "fakeredis://"}, environ={"WORKFLOW_DEMO_STEP_SECONDS": "0"}
    )
    try:
        assert runs_of(app).mode == LOCAL  # one process holds the state: nobody else could run it
        client = app.test_client()
        client.post(STATE, json={"workflow_id": "wf", "steps": steps(2)})
        assert client.post("/workflows/wf/run").status_code == 202
        assert wait_for_state(store_of(app), "wf", finished)["status"] == "completed"
    finally:
        runs_of(app).close()
        store_of(app).close()


def test_retried_steps_and_blocked_workflows_are_counted(queue_app: Flask):
    queue_app.config["DEMO_FAIL"] = "flaky"
    control = runs_of(queue_app)
    store = control.store
    retry = {"max_attempts": 2, "backoff_seconds": 0, "max_backoff_seconds": 0}
    flaky = [{"action": "flaky", "status": "pending", "retry": retry}]
    store.create(OWNER, {"workflow_id": "wf", "steps": flaky})
    control.start(OWNER, "wf")
    work_the_queue(queue_app)
    run = store.get(OWNER, "wf").state["run"]
    # Due at once: the burst worker's own lease monitor may have woken it already.
    assert run["failures"] == 1 and run["status"] in ("waiting", "queued")
    assert metric(queue_app, "workflow_step_retries_total") == 1
    monitor_of(queue_app).tick()
    work_the_queue(queue_app)
    state = store.get(OWNER, "wf").state
    assert state["status"] == "failed" and state["steps"][0]["attempts"] == 2
    assert metric(queue_app, "workflow_step_retries_total") == 1  # the last call is no retry
    assert metric(queue_app, "workflow_blocked") == 0
    asked, _ = calling(store, "ask", steps=1)
    store.block_step(OWNER, "ask", asked, 0, {"message": "Go on?", "input": []})
    # A scrape counts anew at most once a second.
    wait_until(lambda: metric(queue_app, "workflow_blocked") == 1, timeout=5)
