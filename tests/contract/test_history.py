"""History of finished workflows (contract section 7), on every backend."""

from __future__ import annotations

import json
import os
import stat
from datetime import timedelta
from typing import Any

import pytest
from cryptography.fernet import Fernet
from flask.testing import FlaskClient

from service.storage import FileStore, RedisStore, StateStore
from service.storage import base as storage_base
from tests.conftest import steps
from tests.support import layout
from tests.support.routes import HISTORY, STATE

SSH = "ssh -p 2222 root@10.1.2.3"


def store_of(client: FlaskClient) -> StateStore:
    """Return the store behind a test client's app."""
    return client.application.extensions["workflow_state"]


def raw_history(store: StateStore) -> list[str]:
    """Return the history exactly as the backend keeps it, newest first."""
    if isinstance(store, RedisStore):
        return [
            raw.decode() for raw in store.client().lrange(layout.history_location(store), 0, -1)
        ]
    assert isinstance(store, FileStore)
    raw = layout.raw_history(store)
    return [json.dumps(entry) for entry in json.loads(raw)] if raw else []


def history(client: FlaskClient, query: str = "") -> list[dict[str, Any]]:
    """GET /workflow/history and return its workflows."""
    response = client.get(HISTORY + query)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["success"] is True
    return body["workflows"]


def finish(client: FlaskClient, workflow_id: str, status: str = "completed") -> dict[str, Any]:
    """Save a running workflow, then finish it with a merge; return the finished state."""
    saved = client.post(STATE, json={"workflow_id": workflow_id, "steps": steps(2)})
    assert saved.status_code == 200, saved.get_json()
    finished = client.patch(STATE, json={"status": status})
    assert finished.status_code == 200, finished.get_json()
    return finished.get_json()["state"]


def test_no_history_is_an_empty_list(client):
    assert history(client) == []


def test_finished_workflows_newest_first_running_ones_absent(client):
    first = finish(client, "first", "completed")
    second = finish(client, "second", "failed")
    third = finish(client, "third", "cancelled")
    client.post(STATE, json={"workflow_id": "fourth", "steps": steps(1)})  # still running
    assert history(client) == [third, second, first]


def test_a_workflow_finished_by_a_step_patch_or_a_post_is_recorded(client):
    client.post(STATE, json={"workflow_id": "by-post", "status": "failed", "steps": steps(1)})
    assert [w["workflow_id"] for w in history(client)] == ["by-post"]
    client.post(STATE, json={"workflow_id": "by-merge", "steps": steps(1)})
    client.patch(f"{STATE}/steps/0", json={"status": "completed"})  # a step alone finishes nothing
    assert len(history(client)) == 1
    client.patch(STATE, json={"status": "completed"})
    assert [w["workflow_id"] for w in history(client)] == ["by-merge", "by-post"]


def test_history_keeps_the_last_100(client):
    for n in range(105):
        body = {"workflow_id": f"wf-{n:03d}", "status": "completed", "steps": []}
        assert client.post(STATE, json=body).status_code == 200
    workflows = history(client)
    assert [w["workflow_id"] for w in workflows] == [f"wf-{n:03d}" for n in range(104, 4, -1)]
    assert len(raw_history(store_of(client))) == 100
    assert history(client, "?limit=100") == workflows


@pytest.mark.parametrize("limit", [1, 2, 3, 100])
def test_limit_returns_that_many_newest(client, limit):
    for n in range(3):
        client.post(STATE, json={"workflow_id": f"wf-{n}", "status": "completed", "steps": []})
    ids = [w["workflow_id"] for w in history(client, f"?limit={limit}")]
    assert ids == ["wf-2", "wf-1", "wf-0"][:limit]


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "1.5", "", "1e2", "٣", "0100", "99999"])
def test_limit_outside_1_to_100_is_400(client, limit):
    response = client.get(f"{HISTORY}?limit={limit}")
    assert response.status_code == 400, (limit, response.get_json())
    body = response.get_json()
    assert body["success"] is False
    assert body["error"] == "invalid_state"
    assert "limit" in body["message"]


def test_a_repeated_finishing_write_is_recorded_once(client):
    body = {"workflow_id": "once", "status": "completed", "steps": steps(2, "completed")}
    stored = client.post(STATE, json=body).get_json()["state"]
    # Exact repeats of the finished state through every write route change nothing.
    body_with_time = {**body, "start_time": stored["start_time"]}
    for method, path, repeat in [
        ("POST", STATE, body),
        ("POST", STATE, body_with_time),
        ("PATCH", STATE, {"status": "completed"}),
        ("PATCH", f"{STATE}/steps/0", {"status": "completed"}),
    ]:
        response = client.open(path, method=method, json=repeat)
        assert response.status_code == 200, (method, path, response.get_json())
        assert response.get_json()["state"] == stored
    assert history(client) == [stored]
    assert len(raw_history(store_of(client))) == 1


def test_entries_older_than_7_days_are_not_served(client, monkeypatch):
    finished = finish(client, "old")
    now = storage_base.utc_now()
    monkeypatch.setattr(storage_base, "utc_now", lambda: now + timedelta(days=6, hours=23))
    assert history(client) == [finished]
    monkeypatch.setattr(storage_base, "utc_now", lambda: now + timedelta(days=7, minutes=1))
    assert history(client) == []


def test_secret_fields_are_sealed_in_history_and_opened_for_the_api(make_app):
    client = make_app(STATE_SECRET_KEYS=(Fernet.generate_key().decode(),)).test_client()
    client.post(STATE, json={"workflow_id": "ssh", "ssh_connection": SSH, "steps": steps(1)})
    client.patch(STATE, json={"status": "completed"})
    [raw] = raw_history(store_of(client))
    assert SSH not in raw
    assert json.loads(raw)["ssh_connection"]["$encrypted"]
    assert history(client)[0]["ssh_connection"] == SSH


def test_where_history_lives(client, backend):
    finished = finish(client, "where")
    store = store_of(client)
    where = layout.history_location(store)
    if isinstance(store, RedisStore):
        redis = store.client()
        assert where == "workflow:{public}:history"
        assert redis.type(where) == b"list"
        assert json.loads(redis.lindex(where, 0)) == finished
        ttl = redis.pttl(where)
        assert 6 * 86400 * 1000 < ttl <= 7 * 86400 * 1000
    else:
        assert where == os.path.join(os.path.dirname(store.path), "workflows", "public", ".history")
        with open(where) as handle:
            assert json.load(handle) == [finished]
        assert stat.S_IMODE(os.stat(where).st_mode) == 0o600
