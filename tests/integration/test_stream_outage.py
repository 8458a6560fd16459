"""A worker's first stream during an outage answers 503 within the 2 s bound, like every route."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.support import STREAM, RedisServer


@pytest.fixture
def backend(own_redis: RedisServer) -> dict[str, Any]:
    """Put conftest's `make_app` apps on this test's own Redis."""
    return {"STATE_URL": own_redis.url}


def test_a_first_stream_while_redis_is_down_answers_503_at_once(own_redis, make_app):
    client = make_app().test_client()
    own_redis.stop()  # before this app's hub ever subscribed
    started = time.monotonic()
    response = client.get(STREAM)
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.get_json()["error"] == "backend_unavailable"
    assert elapsed < 1.0, elapsed  # not the hub's 2 s wait plus the snapshot's timeouts

    own_redis.start()
    response = client.get(STREAM, buffered=False)
    assert response.status_code == 200
    response.close()
