"""Storage down: every state route answers 503 quickly, and recovers without a restart."""

from __future__ import annotations

import time

import pytest

from service import create_app
from tests.conftest import steps
from tests.support import RedisServer, wait_until
from tests.support.routes import OWNER_ROUTES, STATE, STORAGE_ROUTES


def call(client, method, path, body):
    started = time.monotonic()
    response = client.open(path, method=method, json=body)
    return response, time.monotonic() - started


def assert_unavailable(response, elapsed):
    assert response.status_code == 503, response.get_data(as_text=True)
    body = response.get_json()
    assert body["success"] is False
    assert body["error"] == "backend_unavailable"
    assert "Redis" in body["message"]
    assert int(response.headers["Retry-After"]) >= 1
    assert elapsed < 2.0


@pytest.fixture
def client(own_redis: RedisServer):
    app = create_app({"STATE_URL": own_redis.url})
    client = app.test_client()
    client.post(STATE, json={"workflow_id": "wf", "steps": steps(2)})
    return client


def test_redis_killed_then_restarted(client, own_redis):
    own_redis.stop()
    for method, path, body in STORAGE_ROUTES + OWNER_ROUTES:
        assert_unavailable(*call(client, method, path, body))
    assert client.get("/healthz").status_code == 200  # liveness never touches storage
    own_redis.start()
    back = time.monotonic()
    wait_until(lambda: client.get(STATE).status_code == 200, timeout=5)
    assert time.monotonic() - back < 1.0
    for method, path, body in STORAGE_ROUTES + OWNER_ROUTES:
        response, _ = call(client, method, path, body)
        assert response.status_code < 500, (method, path, response.status_code)


@pytest.mark.skipif(RedisServer().real is False, reason="CLIENT PAUSE needs a real redis-server")
def test_redis_paused_answers_503_within_the_bound(client, own_redis):
    own_redis.pause(8)
    for method, path, body in STORAGE_ROUTES[:4]:
        assert_unavailable(*call(client, method, path, body))
    wait_until(lambda: client.get(STATE).status_code == 200, timeout=12)
