"""Live updates (contract section 5): every change reaches every stream, in order, exactly once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service import create_app
from tests.conftest import steps
from tests.support import Gunicorn, RedisServer, SSEClient, http, wait_until
from tests.support.routes import STREAM

pytestmark = pytest.mark.slow


def write_many(base_urls: list[str], count: int, clients: int = 4) -> None:
    """Make `count` accepted writes spread over `clients` threads and `base_urls`."""
    status, _, _ = http("POST", base_urls[0] + "/workflow/state", {"steps": steps(clients)})
    assert status == 200
    per_client = (count - 1) // clients

    def client(index: int) -> None:
        for n in range(per_client):
            url = base_urls[(index + n) % len(base_urls)]
            status, _, body = http(
                "PATCH",
                f"{url}/workflow/state/steps/{index}",
                {"status": "in_progress", "data": {"n": n}},
            )
            assert status == 200, body

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def collect(stream: SSEClient, last_version: int, timeout: float = 10) -> list[dict]:
    """Read events until one with `last_version` arrives."""
    events = []
    while True:
        event = stream.next(timeout)
        events.append(event)
        if event["id"] == str(last_version):
            return events


@pytest.fixture
def redis_pair(redis_server: RedisServer) -> Iterator[list[Gunicorn]]:
    redis_server.flush()
    env = {"WORKFLOW_STATE_URL": redis_server.url, "WORKFLOW_STATE_TTL": "1"}
    servers = [Gunicorn(env, workers=2).start(), Gunicorn(env, workers=2).start()]
    yield servers
    for server in servers:
        server.stop()


def test_stream_headers_retry_and_snapshot(redis_pair):
    a, _ = redis_pair
    saved = http("POST", a.url + "/workflow/state", {"steps": steps(2)})[2]["state"]
    stream = SSEClient(a.url + STREAM)
    try:
        assert stream.status == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert stream.headers["Cache-Control"] == "no-cache"
        assert stream.headers["X-Accel-Buffering"] == "no"
        first = stream.next()
        assert stream.lines[0] == "retry: 2000"
        assert first["event"] == "state"
        assert first["id"] == str(saved["version"])
        assert first["json"] == http("GET", a.url + "/workflow/state")[2]
    finally:
        stream.close()


def test_writes_on_one_instance_reach_streams_on_both_in_order_exactly_once(redis_pair):
    a, b = redis_pair
    # A fresh counter starts from the clock: the snapshot then names a version, not 0.
    http("POST", a.url + "/workflow/state", {"steps": steps(1)})
    streams = [SSEClient(b.url + STREAM), SSEClient(a.url + STREAM)]
    try:
        baselines = [int(stream.next()["id"]) for stream in streams]
        write_many([a.url, b.url], count=41)
        final = http("GET", a.url + "/workflow/state")[2]
        last = final["state"]["version"]
        for stream, baseline in zip(streams, baselines, strict=True):
            events = collect(stream, last)
            ids = [int(event["id"]) for event in events]
            assert ids == list(range(baseline + 1, last + 1)), "a version was skipped or repeated"
            assert events[-1]["json"] == final
            stream.assert_quiet(0.3)
    finally:
        for stream in streams:
            stream.close()


def test_delete_event_carries_the_counter_value_it_took(redis_pair):
    a, b = redis_pair
    version = http("POST", a.url + "/workflow/state", {"steps": steps(1)})[2]["state"]["version"]
    stream = SSEClient(b.url + STREAM)
    try:
        assert stream.next()["id"] == str(version)
        http("DELETE", a.url + "/workflow/state")
        deleted = stream.next()
        assert deleted["id"] == str(version + 1)
        assert deleted["json"] == {
            "success": True,
            "active": False,
            "progress_percent": 0,
            "state": None,
        }
    finally:
        stream.close()


def test_expiry_sends_null_within_two_seconds(redis_pair):
    a, b = redis_pair
    stream = SSEClient(b.url + STREAM)
    try:
        stream.next()
        done = http("POST", a.url + "/workflow/state", {"status": "completed"})[2]["state"]
        assert stream.next()["id"] == str(done["version"])
        expired = stream.next(timeout=1 + 2.5)  # TTL 1 s, then within 2 s
        assert expired["id"] == f"{done['version']}:expired"
        assert expired["json"] == {
            "success": True,
            "active": False,
            "progress_percent": 0,
            "state": None,
        }
        stream.assert_quiet(0.5)
    finally:
        stream.close()


def test_last_event_id_skips_a_snapshot_the_client_already_has(redis_pair):
    a, _ = redis_pair
    version = http("POST", a.url + "/workflow/state", {"steps": steps(2)})[2]["state"]["version"]
    current = SSEClient(a.url + STREAM, headers={"Last-Event-ID": str(version)})
    stale = SSEClient(a.url + STREAM, headers={"Last-Event-ID": str(version - 1)})
    try:
        assert stale.next()["id"] == str(version)
        current.assert_quiet(0.3)
        http("PATCH", a.url + "/workflow/state/steps/1", {"status": "completed"})
        assert current.next()["id"] == str(version + 1)
        assert stale.next()["id"] == str(version + 1)
    finally:
        current.close()
        stale.close()


def test_a_redis_restart_resumes_the_stream_with_a_snapshot(own_redis: RedisServer):
    server = Gunicorn({"WORKFLOW_STATE_URL": own_redis.url}, workers=1).start()
    stream = SSEClient(server.url + STREAM)
    try:
        stream.next()
        http("POST", server.url + "/workflow/state", {"workflow_id": "before", "steps": steps(1)})
        before = stream.next()
        assert before["json"]["state"]["workflow_id"] == "before"
        own_redis.stop()
        own_redis.start()  # no persistence: the state is gone
        snapshot = stream.next(timeout=10)
        assert snapshot["json"]["state"] is None
        wait_until(
            lambda: http("POST", server.url + "/workflow/state", {"workflow_id": "after"})[0] == 200
        )
        after = stream.next(timeout=10)
        assert after["json"]["state"]["workflow_id"] == "after"
        # Versions never go back (the page shows only a higher one), and each comes once.
        assert int(after["id"]) > int(before["id"])
        stream.assert_quiet(0.5)
    finally:
        stream.close()
        server.stop()


def test_file_mode_streams_follow_every_worker(tmp_path: Path):
    server = Gunicorn({"WORKFLOW_STATE_URL": f"file://{tmp_path}/state.json"}, workers=3).start()
    # A fresh counter starts from the clock: the snapshot then names a version, not 0.
    http("POST", server.url + "/workflow/state", {"steps": steps(1)})
    streams = [SSEClient(server.url + STREAM) for _ in range(3)]
    try:
        baselines = [int(stream.next()["id"]) for stream in streams]
        write_many([server.url], count=21)
        last = http("GET", server.url + "/workflow/state")[2]["state"]["version"]
        for stream, baseline in zip(streams, baselines, strict=True):
            ids = [int(event["id"]) for event in collect(stream, last)]
            assert ids == list(range(baseline + 1, last + 1))
    finally:
        for stream in streams:
            stream.close()
        server.stop()


def test_keepalive_comments_flow_when_nothing_changes(tmp_path: Path):
    server = Gunicorn(
        {"WORKFLOW_STATE_URL": f"file://{tmp_path}/s.json", "WORKFLOW_STREAM_KEEPALIVE": "0.2"},
        workers=1,
    ).start()
    stream = SSEClient(server.url + STREAM)
    try:
        stream.next()
        wait_until(lambda: stream.lines.count(": keepalive") >= 2, timeout=5)
    finally:
        stream.close()
        server.stop()


def test_stream_answers_503_when_storage_is_down(own_redis: RedisServer):
    app = create_app({"STATE_URL": own_redis.url})
    own_redis.stop()
    try:
        response = app.test_client().get(STREAM)
        assert response.status_code == 503
        assert response.get_json()["error"] == "backend_unavailable"
    finally:
        app.extensions["workflow_stream_hub"].close()


def test_closing_a_stream_frees_its_subscription(tmp_path: Path):
    app = create_app({"STATE_URL": f"file://{tmp_path}/s.json"})
    hub = app.extensions["workflow_stream_hub"]
    client = app.test_client()
    responses = [client.get(STREAM, buffered=False) for _ in range(3)]
    for response in responses:
        assert next(iter(response.response)).startswith(b"retry:")
    assert hub.open_streams == 3
    for response in responses:
        response.close()
    assert hub.open_streams == 0
    hub.close()


def test_a_worker_keeps_capacity_for_ordinary_requests(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WORKFLOW_WORKER_CAPACITY", "34")  # RESERVED_CAPACITY + 2 streams
    app = create_app({"STATE_URL": f"file://{tmp_path}/s.json"})
    client = app.test_client()
    open_streams = [client.get(STREAM, buffered=False) for _ in range(2)]
    refused = client.get(STREAM)
    assert refused.status_code == 503
    assert refused.get_json()["error"] == "too_many_streams"
    assert refused.headers["Retry-After"]
    for response in open_streams:
        response.close()
    assert client.get(STREAM, buffered=False).status_code == 200
    app.extensions["workflow_stream_hub"].close()


def open_streams_metric(base_url: str) -> float:
    """Read workflow_state_open_streams from /metrics."""
    status, _, text = http("GET", base_url + "/metrics")
    assert status == 200
    line = next(
        line for line in text.splitlines() if line.startswith("workflow_state_open_streams")
    )
    return float(line.split()[-1])


def test_clients_that_go_away_free_their_streams_on_the_real_server(tmp_path: Path):
    server = Gunicorn(
        {"WORKFLOW_STATE_URL": f"file://{tmp_path}/s.json", "WORKFLOW_STREAM_KEEPALIVE": "0.2"},
        workers=2,
    ).start()
    try:
        streams = [SSEClient(server.url + STREAM) for _ in range(5)]
        for stream in streams:
            stream.next()
        wait_until(lambda: open_streams_metric(server.url) == 5)
        for stream in streams[:3]:
            stream.close()
        # The server notices at its next keepalive write and lets the stream go.
        wait_until(lambda: open_streams_metric(server.url) == 2, timeout=10)
        for stream in streams[3:]:
            stream.close()
        wait_until(lambda: open_streams_metric(server.url) == 0, timeout=10)
    finally:
        server.stop()
