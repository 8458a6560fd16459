"""The routes of many workflows (contract section 8), as a client sees them, on every backend
(fakeredis, a real redis-server, the file): create, list with filter and cursors, read, patch,
step, delete, summary, both streams, the limit, versions, and the legacy routes acting on the
owner's current workflow."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import steps
from tests.support import STATE, wait_until
from tests.support.inprocess import opened_streams
from tests.support.routes import WORKFLOWS


def create(client: FlaskClient, workflow_id: str | None = None, **fields: Any) -> dict[str, Any]:
    body = {"steps": steps(3), **fields}
    if workflow_id is not None:
        body["workflow_id"] = workflow_id
    response = client.post(WORKFLOWS, json=body)
    assert response.status_code == 201, response.get_json()
    return response.get_json()["state"]


def ids(client: FlaskClient, query: str = "") -> list[str]:
    body = client.get(f"{WORKFLOWS}{query}").get_json()
    return [entry["workflow_id"] for entry in body["workflows"]]


# --- create ------------------------------------------------------------------------------


def test_create_answers_201_with_location_and_becomes_current(client):
    response = client.post(WORKFLOWS, json={"workflow_id": "wf-1", "steps": steps(2)})
    assert response.status_code == 201
    assert response.headers["Location"] == "/workflows/wf-1"
    body = response.get_json()
    assert body["success"] is True and body["message"] == "Workflow state saved"
    assert body["state"]["workflow_id"] == "wf-1" and body["state"]["status"] == "running"
    assert response.headers["ETag"] == f'"{body["state"]["version"]}"'
    assert client.get(STATE).get_json()["state"]["workflow_id"] == "wf-1"


def test_create_generates_an_id_when_absent(client):
    state = create(client)
    assert state["workflow_id"].startswith("workflow_")
    assert client.get(f"{WORKFLOWS}/{state['workflow_id']}").status_code == 200


def test_an_existing_id_is_refused_and_a_finished_one_says_so(client):
    create(client, "a")
    again = client.post(WORKFLOWS, json={"workflow_id": "a", "steps": steps(1)})
    assert (again.status_code, again.get_json()["error"]) == (409, "workflow_exists")
    client.patch(f"{WORKFLOWS}/a", json={"status": "completed"})
    finished = client.post(WORKFLOWS, json={"workflow_id": "a", "steps": steps(1)})
    assert (finished.status_code, finished.get_json()["error"]) == (409, "workflow_finished")


def test_a_deleted_id_may_be_created_again_with_a_higher_version(client):
    first = create(client, "a")
    assert client.delete(f"{WORKFLOWS}/a").status_code == 200
    second = create(client, "a")
    assert second["version"] > first["version"]


def test_creating_keeps_the_previous_workflow(client):
    create(client, "a")
    create(client, "b")
    assert client.get(f"{WORKFLOWS}/a").status_code == 200
    assert client.get(STATE).get_json()["state"]["workflow_id"] == "b"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "state_required"),
        (b"[1]", "state_required"),
        (b'{"workflow_id": "bad id"}', "invalid_state"),
        (b'{"steps": [{"status": "pending"}]}', "invalid_state"),
        (b'{"run": "yes"}', "invalid_state"),
        (b'{"workflow_id": {}}', "invalid_state"),
        (b'{"workflow_id": [1], "run": true}', "invalid_state"),
        (b'{"steps": [], "current_step": 123456789012345678901234567890}', "invalid_state"),
    ],
)
def test_bad_create_bodies_are_400_and_change_nothing(client, body, code):
    response = client.post(WORKFLOWS, data=body)
    assert (response.status_code, response.get_json()["error"]) == (400, code)
    assert ids(client) == []


def test_more_than_the_limit_is_429(make_app):
    client = make_app(MAX_WORKFLOWS=3).test_client()
    for name in "abc":
        create(client, name)
    refused = client.post(WORKFLOWS, json={"workflow_id": "d"})
    assert (refused.status_code, refused.get_json()["error"]) == (429, "too_many_workflows")
    assert sorted(ids(client)) == ["a", "b", "c"]
    client.delete(f"{WORKFLOWS}/a")
    create(client, "d")


# --- list --------------------------------------------------------------------------------


def test_list_is_newest_change_first_with_summary_and_version(client):
    for name in ("a", "b", "c"):
        create(client, name)
    client.patch(f"{WORKFLOWS}/a/steps/1", json={"status": "in_progress"})
    body = client.get(WORKFLOWS).get_json()
    assert body["success"] is True and body["next_cursor"] is None
    assert [e["workflow_id"] for e in body["workflows"]] == ["a", "c", "b"]
    first = body["workflows"][0]
    stored = client.get(f"{WORKFLOWS}/a").get_json()["state"]
    assert first == {
        "active": True,
        "workflow_id": "a",
        "status": "running",
        "current_step": 1,
        "total_steps": 3,
        "progress_percent": 66.67,
        "completed_percent": stored["completed_percent"],
        "start_time": stored["start_time"],
        "last_update": stored["last_update"],
        "version": stored["version"],
    }


def test_list_filters_by_status(client):
    create(client, "run1")
    create(client, "done1")
    client.patch(f"{WORKFLOWS}/done1", json={"status": "failed"})
    assert ids(client, "?status=running") == ["run1"]
    assert ids(client, "?status=finished") == ["done1"]
    assert sorted(ids(client, "?status=all")) == ["done1", "run1"]
    bad = client.get(f"{WORKFLOWS}?status=paused")
    assert (bad.status_code, bad.get_json()["error"]) == (400, "invalid_state")


def test_cursors_page_through_every_workflow_once_in_order(client):
    for i in range(7):
        create(client, f"w{i}")
    seen: list[str] = []
    cursor = None
    while True:
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        body = client.get(f"{WORKFLOWS}{query}").get_json()
        assert len(body["workflows"]) <= 3
        seen += [entry["workflow_id"] for entry in body["workflows"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"w{i}" for i in reversed(range(7))]


@pytest.mark.parametrize("cursor", ["abc", "x" * 600, "eyJhIjoxfQ", "WzEsICJhIiwgIngiXQ"])
def test_a_cursor_not_issued_is_400(client, cursor):
    response = client.get(f"{WORKFLOWS}?cursor={cursor}")
    assert (response.status_code, response.get_json()["error"]) == (400, "invalid_cursor")


def test_a_cursor_of_another_filter_is_400(client):
    for i in range(3):
        create(client, f"w{i}")
    cursor = client.get(f"{WORKFLOWS}?limit=1").get_json()["next_cursor"]
    response = client.get(f"{WORKFLOWS}?status=running&cursor={cursor}")
    assert (response.status_code, response.get_json()["error"]) == (400, "invalid_cursor")


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "1.5", "٣"])
def test_a_limit_out_of_range_is_400(client, limit):
    response = client.get(f"{WORKFLOWS}?limit={limit}")
    assert (response.status_code, response.get_json()["error"]) == (400, "invalid_state")


def test_expired_workflows_are_never_listed(make_app):
    client = make_app(STATE_TTL=1).test_client()
    create(client, "short")
    create(client, "long")
    client.patch(f"{WORKFLOWS}/short", json={"status": "completed"})
    wait_until(lambda: ids(client) == ["long"], timeout=5)
    assert client.get(f"{WORKFLOWS}/short").status_code == 404


# --- one workflow ------------------------------------------------------------------------


def test_get_answers_the_state_with_etag_and_304(client):
    state = create(client, "a")
    response = client.get(f"{WORKFLOWS}/a")
    assert response.status_code == 200
    body = response.get_json()
    assert body["active"] is True and body["state"] == state
    assert response.headers["ETag"] == f'"{state["version"]}"'
    assert response.headers["Cache-Control"] == "no-store"
    cached = client.get(f"{WORKFLOWS}/a", headers={"If-None-Match": response.headers["ETag"]})
    assert cached.status_code == 304


@pytest.mark.parametrize("path", ["", "/summary", "/stream"])
def test_an_unknown_workflow_is_404(client, path):
    response = client.get(f"{WORKFLOWS}/nope{path}")
    assert (response.status_code, response.get_json()["error"]) == (404, "no_workflow")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("patch", "", {"status": "cancelled"}),
        ("patch", "/steps/0", {"status": "completed"}),
        ("delete", "", None),
    ],
)
def test_writes_to_an_unknown_workflow_are_404(client, method, path, body):
    response = getattr(client, method)(f"{WORKFLOWS}/nope{path}", json=body)
    assert (response.status_code, response.get_json()["error"]) == (404, "no_workflow")


@pytest.mark.parametrize("bad", ["a b", "x" * 129, "é"])
def test_a_bad_workflow_id_is_400(client, bad):
    response = client.get(f"{WORKFLOWS}/{bad}")
    assert response.status_code == 400
    assert response.get_json()["success"] is False


def test_patch_and_step_act_on_that_workflow_only(client):
    create(client, "a")
    b = create(client, "b")
    stepped = client.patch(f"{WORKFLOWS}/a/steps/2", json={"status": "failed", "data": {"x": 1}})
    assert stepped.status_code == 200
    state = stepped.get_json()["state"]
    assert state["steps"][2] == {**steps(3)[2], "status": "failed", "data": {"x": 1}}
    assert state["current_step"] == 2
    merged = client.patch(f"{WORKFLOWS}/a", json={"status": "failed"}).get_json()["state"]
    assert merged["status"] == "failed" and merged["version"] > state["version"]
    assert client.get(f"{WORKFLOWS}/b").get_json()["state"] == b


def test_writes_keep_the_rules_of_section_2(client):
    state = create(client, "a")
    stale = client.patch(f"{WORKFLOWS}/a", json={"x": 1}, headers={"If-Match": '"1"'})
    assert stale.status_code == 412
    fresh = client.patch(
        f"{WORKFLOWS}/a", json={"x": 1}, headers={"If-Match": f'"{state["version"]}"'}
    )
    assert fresh.status_code == 200
    guard = client.patch(f"{WORKFLOWS}/a/steps/0", json={"status": "completed", "workflow_id": "b"})
    assert (guard.status_code, guard.get_json()["error"]) == (409, "workflow_mismatch")
    assert client.patch(f"{WORKFLOWS}/a/steps/3", json={"status": "completed"}).status_code == 400
    client.patch(f"{WORKFLOWS}/a", json={"status": "completed"})
    final = client.patch(f"{WORKFLOWS}/a/steps/0", json={"status": "completed"})
    assert (final.status_code, final.get_json()["error"]) == (409, "workflow_finished")


def test_summary_of_one_workflow(client):
    create(client, "a")
    client.patch(f"{WORKFLOWS}/a/steps/1", json={"status": "completed"})
    summary = client.get(f"{WORKFLOWS}/a/summary").get_json()["summary"]
    assert summary["workflow_id"] == "a" and summary["progress_percent"] == 66.67
    assert summary["current_step"] == 1 and summary["total_steps"] == 3


def test_delete_removes_it_from_reads_and_the_list(client):
    create(client, "a")
    create(client, "b")
    response = client.delete(f"{WORKFLOWS}/a")
    assert response.get_json() == {"success": True, "message": "Workflow state cleared"}
    assert client.get(f"{WORKFLOWS}/a").status_code == 404
    assert ids(client) == ["b"]
    assert client.delete(f"{WORKFLOWS}/a").status_code == 404


def test_versions_increase_across_the_owners_workflows_and_deletes(client):
    seen = [create(client, "a")["version"], create(client, "b")["version"]]
    seen.append(client.patch(f"{WORKFLOWS}/a/steps/0", json={"status": "completed"}).get_json())
    seen[-1] = seen[-1]["state"]["version"]
    client.delete(f"{WORKFLOWS}/b")
    seen.append(create(client, "b")["version"])
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


# --- the legacy routes act on the current workflow --------------------------------------


def test_legacy_routes_act_on_the_current_workflow(client):
    create(client, "a")
    create(client, "b")
    client.patch(f"{STATE}/steps/0", json={"status": "completed"})
    assert client.get(f"{WORKFLOWS}/b").get_json()["state"]["steps"][0]["status"] == "completed"
    assert client.get(f"{WORKFLOWS}/a").get_json()["state"]["steps"][0]["status"] == "pending"
    assert client.get(f"{STATE}/summary").get_json()["summary"]["workflow_id"] == "b"
    # POST /workflow/state with a new id creates it and makes it current, keeping the others.
    client.post(STATE, json={"workflow_id": "c", "steps": steps(1)})
    assert sorted(ids(client)) == ["a", "b", "c"]
    client.delete(STATE)
    assert sorted(ids(client)) == ["a", "b"]
    assert client.get(STATE).get_json()["state"] is None


# --- streams -----------------------------------------------------------------------------


@pytest.fixture
def events() -> Iterator[Any]:
    with opened_streams() as open_stream:
        yield open_stream


def test_a_workflow_stream_follows_that_workflow_only(app, events):
    client = app.test_client()
    a = create(client, "a")
    stream = events(app, f"{WORKFLOWS}/a/stream")
    assert stream.next() == (str(a["version"]), "state", client.get(f"{WORKFLOWS}/a").get_json())
    create(client, "b")  # another workflow: not in this stream
    changed = client.patch(f"{WORKFLOWS}/a/steps/0", json={"status": "completed"}).get_json()
    event_id, name, body = stream.next()
    assert (event_id, name, body["state"]) == (
        str(changed["state"]["version"]),
        "state",
        changed["state"],
    )
    client.delete(f"{WORKFLOWS}/a")
    _, _, gone = stream.next()
    assert gone["state"] is None and gone["active"] is False


def test_a_workflow_and_the_current_stream_follow_one_workflow_together(make_app, events):
    app = make_app(STATE_TTL=1)
    client = app.test_client()
    create(client, "w1")
    own = events(app, f"{WORKFLOWS}/w1/stream")
    current = events(app, f"{STATE}/stream")  # the same workflow, tracked under a second topic
    assert own.next()[2] == current.next()[2]
    done = client.patch(f"{WORKFLOWS}/w1", json={"status": "completed"}).get_json()["state"]
    assert own.next()[2]["state"] == current.next()[2]["state"] == done
    # Both expire at the same moment: each stream says so.
    assert own.next(timeout=5)[0] == current.next(timeout=5)[0] == f"{done['version']}:expired"


def test_the_list_stream_sends_entries_and_goodbyes(make_app, events):
    app = make_app(STATE_TTL=1)
    client = app.test_client()
    stream = events(app, f"{WORKFLOWS}/stream")
    wait_until(lambda: app.extensions["workflow_stream_hub"].open_streams == 1, timeout=5)
    a = create(client, "a")
    assert stream.next() == (str(a["version"]), "workflow", ids_entry(client, "a"))
    b = create(client, "b")
    assert stream.next()[2]["workflow_id"] == "b" and b["version"] > a["version"]
    done = client.patch(f"{WORKFLOWS}/a", json={"status": "completed"}).get_json()["state"]
    event_id, _, entry = stream.next()
    assert (event_id, entry["status"], entry["version"]) == (
        str(done["version"]),
        "completed",
        done["version"],
    )
    client.delete(f"{WORKFLOWS}/b")
    assert stream.next()[1:] == ("workflow", {"workflow_id": "b", "state": None})
    # "a" finished with a 1 s TTL: its expiry is announced too.
    event_id, _, expired = stream.next(timeout=5)
    assert expired == {"workflow_id": "a", "state": None}
    assert event_id == f"{done['version']}:expired"


def test_the_list_stream_announces_expiry_of_workflows_finished_before_it_opened(make_app, events):
    app = make_app(STATE_TTL=2)
    client = app.test_client()
    create(client, "old")
    client.patch(f"{WORKFLOWS}/old", json={"status": "completed"})
    started = time.monotonic()
    stream = events(app, f"{WORKFLOWS}/stream")
    assert stream.next(timeout=6)[2] == {"workflow_id": "old", "state": None}
    assert time.monotonic() - started < 4


def ids_entry(client: FlaskClient, workflow_id: str) -> dict[str, Any]:
    entries = client.get(WORKFLOWS).get_json()["workflows"]
    return next(entry for entry in entries if entry["workflow_id"] == workflow_id)
