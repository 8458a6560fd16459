"""GET /metrics (contract section 7): in one process, and summed right across gunicorn workers."""

from __future__ import annotations

import fcntl
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from service import create_app
from service.metrics import metrics_of
from service.storage import FileStore, RedisStore
from tests.conftest import steps
from tests.support import Gunicorn, RedisServer, SSEClient, free_port, http, layout, wait_until
from tests.support.routes import STATE

NAMES = (
    "workflow_state_requests_total",
    "workflow_state_request_seconds",
    "workflow_state_writes_total",
    "workflow_state_lock_wait_seconds",
    "workflow_state_lock_timeouts_total",
    "workflow_state_open_streams",
    "workflow_state_backend_errors_total",
)


def value(app: Flask, name: str, **labels: str) -> float:
    """Return a sample of the app's registry (0 when it does not exist yet)."""
    return metrics_of(app).registry.get_sample_value(name, labels) or 0.0


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """GET /metrics from a server; return {(sample name, labels): value}."""
    status, headers, text = http("GET", url + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def requests_counted(samples: dict, route: str, method: str = "GET", status: str = "200") -> float:
    """Return workflow_state_requests_total for one label set from a scrape."""
    labels = frozenset({"route": route, "method": method, "status": status}.items())
    return samples.get(("workflow_state_requests_total", labels), 0.0)


# --- one process ---------------------------------------------------------------------------


def test_metrics_page_has_every_contract_metric(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f.type for f in text_string_to_metric_families(response.get_data(True))}
    assert families["workflow_state_requests"] == "counter"
    assert families["workflow_state_request_seconds"] == "histogram"
    assert families["workflow_state_writes"] == "counter"
    assert families["workflow_state_lock_wait_seconds"] == "histogram"
    assert families["workflow_state_lock_timeouts"] == "counter"
    assert families["workflow_state_open_streams"] == "gauge"
    assert families["workflow_state_backend_errors"] == "counter"


def test_requests_are_counted_by_url_rule_method_and_status(client):
    app = client.application
    route = "/workflow/state/steps/<index>"
    before = {
        key: value(app, "workflow_state_requests_total", route=r, method=m, status=s)
        for key, (r, m, s) in {
            "patched": (route, "PATCH", "200"),
            "bad": (route, "PATCH", "400"),
            "missing": ("unmatched", "GET", "404"),
            "odd": ("unmatched", "other", "404"),
        }.items()
    }
    seconds = value(app, "workflow_state_request_seconds_count", route=route, method="PATCH")
    client.post(STATE, json={"steps": steps(3)})
    for index in (0, 1, 2):
        assert (
            client.patch(f"{STATE}/steps/{index}", json={"status": "completed"}).status_code == 200
        )
    assert client.patch(f"{STATE}/steps/9", json={"status": "completed"}).status_code == 400
    assert client.get("/no/such/page/12345").status_code == 404
    assert client.open("/no/such/page", method="BREW").status_code == 404
    assert value(
        app, "workflow_state_requests_total", route=route, method="PATCH", status="200"
    ) == (before["patched"] + 3)
    assert value(
        app, "workflow_state_requests_total", route=route, method="PATCH", status="400"
    ) == (before["bad"] + 1)
    # Raw paths and unknown methods never become label values: their number is unbounded.
    assert value(
        app, "workflow_state_requests_total", route="unmatched", method="GET", status="404"
    ) == (before["missing"] + 1)
    assert value(
        app, "workflow_state_requests_total", route="unmatched", method="other", status="404"
    ) == (before["odd"] + 1)
    assert value(app, "workflow_state_request_seconds_count", route=route, method="PATCH") == (
        seconds + 4
    )
    text = client.get("/metrics").get_data(as_text=True)
    assert "/workflow/state/steps/9" not in text and "/no/such" not in text and "BREW" not in text


def test_accepted_writes_are_counted_and_exact_repeats_are_not(client):
    app = client.application
    before = value(app, "workflow_state_writes_total")
    waits = value(app, "workflow_state_lock_wait_seconds_count")
    body = {"workflow_id": "w", "status": "completed", "steps": steps(1, "completed")}
    client.post(STATE, json={"workflow_id": "w", "steps": steps(1)})
    client.post(STATE, json=body)
    client.post(STATE, json=body)  # an exact repeat of a finished state: no write
    client.patch(STATE, json={"status": "completed"})  # no write either
    client.delete(STATE)
    assert value(app, "workflow_state_writes_total") == before + 3
    assert value(app, "workflow_state_lock_wait_seconds_count") >= waits + 3


@contextmanager
def hold_the_lock(store) -> Iterator[None]:
    """Hold the current workflow's write lock the way another process would."""
    where = layout.lock_location(store)
    if isinstance(store, RedisStore):
        store.client().set(where, "someone-else", px=10_000)
        yield
        store.client().delete(where)
    else:
        assert isinstance(store, FileStore)
        fd = os.open(where, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # a second open file: conflicts even in this process
        yield
        os.close(fd)


def test_a_lock_timeout_is_counted_as_such_not_as_a_backend_error(make_app):
    app = make_app(LOCK_WAIT=0.05)
    client = app.test_client()
    client.post(STATE, json={"workflow_id": "wf", "steps": steps(1)})
    timeouts = value(app, "workflow_state_lock_timeouts_total")
    errors = value(app, "workflow_state_backend_errors_total")
    with hold_the_lock(client.application.extensions["workflow_state"]):
        assert client.patch(f"{STATE}/steps/0", json={"status": "completed"}).status_code == 503
        body = {"workflow_id": "wf", "steps": steps(2)}
        assert client.post(STATE, json=body).status_code == 503
    assert value(app, "workflow_state_lock_timeouts_total") == timeouts + 2
    assert value(app, "workflow_state_backend_errors_total") == errors
    assert client.patch(f"{STATE}/steps/0", json={"status": "completed"}).status_code == 200


def test_each_request_that_storage_failed_is_one_backend_error():
    app = create_app({"STATE_URL": f"redis://127.0.0.1:{free_port()}/0", "IO_TIMEOUT": 0.2})
    client = app.test_client()
    before = value(app, "workflow_state_backend_errors_total")
    calls = [
        ("GET", STATE, None),
        ("POST", STATE, {"steps": steps(1)}),
        ("PATCH", STATE, {"status": "cancelled"}),
        ("DELETE", STATE, None),
        ("GET", "/workflow/history", None),
        ("GET", "/readyz", None),
    ]
    for method, path, body in calls:
        assert client.open(path, method=method, json=body).status_code == 503, (method, path)
    assert value(app, "workflow_state_backend_errors_total") == before + len(calls)
    assert client.get("/healthz").status_code == 200
    assert value(app, "workflow_state_backend_errors_total") == before + len(calls)


def test_the_stream_hub_moves_the_open_streams_gauge(make_app):
    app = make_app()
    hub = app.extensions["workflow_stream_hub"]
    before = value(app, "workflow_state_open_streams")
    first, second = hub.subscribe(("public", None)), hub.subscribe(("public", "wf"))
    assert value(app, "workflow_state_open_streams") == before + 2
    hub.unsubscribe(first)
    hub.unsubscribe(second)
    assert value(app, "workflow_state_open_streams") == before


# --- the real server, several workers ------------------------------------------------------


@pytest.fixture
def server(redis_server: RedisServer, tmp_path: Path) -> Iterator[Gunicorn]:
    redis_server.flush()
    env = {"WORKFLOW_STATE_URL": redis_server.url, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m")}
    started = Gunicorn(env, workers=3).start()
    wait_until(lambda: len(started.worker_pids()) == 3)
    yield started
    started.stop()


def get_many(url: str, count: int) -> None:
    """Make `count` GET /workflow/state requests, each on a new connection (any worker)."""
    for _ in range(count):
        assert http("GET", url + STATE)[0] == 200


def respawned(server: Gunicorn, dead: set[int]) -> bool:
    """Tell whether gunicorn replaced every dead worker and answers again."""
    pids = set(server.worker_pids())
    return len(pids) == 3 and not pids & dead and http("GET", server.url + "/healthz")[0] == 200


@pytest.mark.slow
def test_counts_are_summed_over_workers_and_survive_killed_workers(server):
    samples = scrape(server.url)
    for name in NAMES:
        assert any(key[0].startswith(name) for key in samples), name
    assert requests_counted(samples, STATE) == 0

    get_many(server.url, 60)
    assert requests_counted(scrape(server.url), STATE) == 60

    # Every worker that answered dies without a chance to clean up; its counts must stay,
    # and its replacement must not count them a second time.
    dead = set(server.worker_pids())
    for pid in dead:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: respawned(server, dead), timeout=20)
    assert requests_counted(scrape(server.url), STATE) == 60

    get_many(server.url, 15)
    samples = scrape(server.url)
    assert requests_counted(samples, STATE) == 75
    seconds = frozenset({"route": STATE, "method": "GET"}.items())
    assert samples[("workflow_state_request_seconds_count", seconds)] == 75
    assert requests_counted(samples, "/metrics") == 3  # the scrapes before this one


@pytest.mark.slow
def test_writes_are_summed_over_workers(server):
    before = scrape(server.url)[("workflow_state_writes_total", frozenset())]
    http("POST", server.url + STATE, {"steps": steps(4)})
    for index in range(4):
        http("PATCH", f"{server.url}{STATE}/steps/{index}", {"status": "completed"})
    http("DELETE", server.url + STATE)
    samples = scrape(server.url)
    assert samples[("workflow_state_writes_total", frozenset())] == before + 6
    assert samples[("workflow_state_lock_wait_seconds_count", frozenset())] >= 5


@pytest.mark.slow
def test_open_streams_gauge_is_the_sum_over_live_workers(server):
    def open_streams() -> float:
        return scrape(server.url)[("workflow_state_open_streams", frozenset())]

    assert open_streams() == 0
    streams = [SSEClient(server.url + STATE + "/stream") for _ in range(4)]
    try:
        assert all(stream.status == 200 for stream in streams)
        wait_until(lambda: open_streams() == 4)
        # A worker killed with streams open takes them with it: its share of the gauge goes.
        dead = set(server.worker_pids())
        for pid in dead:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: respawned(server, dead), timeout=20)
        assert open_streams() == 0
    finally:
        for stream in streams:
            stream.close()


@pytest.mark.slow
def test_the_metrics_directory_is_cleaned_at_start(tmp_path):
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_99999.db").write_bytes(b"stale from a previous run")
    env = {
        "WORKFLOW_STATE_URL": f"file://{tmp_path}/s.json",
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
    }
    server = Gunicorn(env, workers=2).start()
    try:
        assert not (directory / "counter_99999.db").exists()
        get_many(server.url, 3)
        assert requests_counted(scrape(server.url), STATE) == 3
        assert any(directory.glob("counter_*.db"))
    finally:
        server.stop()
    assert directory.is_dir()  # a directory it was given is kept


@pytest.mark.slow
def test_without_a_directory_each_server_start_gets_a_fresh_one(tmp_path):
    env = {"WORKFLOW_STATE_URL": f"file://{tmp_path}/s.json"}
    server = Gunicorn(env, workers=2).start()
    try:
        get_many(server.url, 2)
        assert requests_counted(scrape(server.url), STATE) == 2
    finally:
        server.stop()
    again = Gunicorn(env, workers=2).start()
    try:
        assert requests_counted(scrape(again.url), STATE) == 0
    finally:
        again.stop()
