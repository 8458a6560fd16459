"""The HTTP contract (contract.md section 2), run against every backend.

Each test runs three times: on fakeredis, on a real redis-server the session owns, and on
the JSON file. A client's view only: requests in, status, headers and JSON out.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import steps
from tests.support import wait_until
from tests.support.routes import STATE

ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z\Z")


def post(client: FlaskClient, body: Any, **kw: Any):
    return client.post(STATE, json=body, **kw)


def stored(client: FlaskClient) -> dict[str, Any] | None:
    response = client.get(STATE)
    assert response.status_code == 200
    return response.get_json()["state"]


def assert_error(response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"success", "message", "error"}
    assert body["success"] is False
    assert isinstance(body["message"], str) and body["message"]
    assert re.fullmatch(r"[a-z]+(_[a-z]+)*", body["error"])
    assert "Traceback" not in body["message"]
    if code is not None:
        assert body["error"] == code
    return body


# --- GET -----------------------------------------------------------------------------------


def test_get_with_no_state_answers_null(client):
    response = client.get(STATE)
    assert response.status_code == 200
    assert response.get_json() == {
        "success": True,
        "active": False,
        "progress_percent": 0,
        "state": None,
    }
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["ETag"] == '"0"'
    assert client.get(STATE, headers={"If-None-Match": '"0"'}).status_code == 304


def test_an_expired_state_does_not_answer_304_to_its_own_etag(make_app):
    client = make_app(STATE_TTL=1).test_client()
    etag = client.post(STATE, json={"status": "completed"}).headers["ETag"]
    wait_until(lambda: client.get(STATE).get_json()["state"] is None, timeout=5)
    gone = client.get(STATE, headers={"If-None-Match": etag})
    assert gone.status_code == 200
    assert gone.get_json()["state"] is None


def test_get_returns_what_post_stored_with_version_etag(client):
    saved = post(client, {"steps": steps(3)}).get_json()["state"]
    response = client.get(STATE)
    body = response.get_json()
    assert body == {"success": True, "active": True, "progress_percent": 33.33, "state": saved}
    assert response.headers["ETag"] == f'"{saved["version"]}"'
    assert response.headers["Cache-Control"] == "no-store"


def test_if_none_match_with_current_etag_answers_304(client):
    post(client, {"steps": steps(2)})
    etag = client.get(STATE).headers["ETag"]
    assert client.get(STATE, headers={"If-None-Match": etag}).status_code == 304
    client.patch(f"{STATE}/steps/1", json={"status": "in_progress"})
    fresh = client.get(STATE, headers={"If-None-Match": etag})
    assert fresh.status_code == 200
    assert fresh.headers["ETag"] != etag


# --- POST ----------------------------------------------------------------------------------


def test_post_fills_defaults_and_server_fields(client):
    response = post(client, {"steps": steps(2)})
    assert response.status_code == 200
    body = response.get_json()
    assert body["success"] is True
    assert body["message"] == "Workflow state saved"
    state = body["state"]
    assert re.fullmatch(r"workflow_\d+_[A-Za-z0-9]+", state["workflow_id"])
    assert state["status"] == "running"
    assert state["current_step"] == 0
    assert ISO_Z.match(state["start_time"])
    assert ISO_Z.match(state["last_update"])
    assert isinstance(state["version"], int) and state["version"] >= 1


def test_post_keeps_every_field_as_sent(client):
    body = {
        "workflow_id": "vast-setup:42",
        "status": "running",
        "current_step": 1,
        "steps": [
            {"action": "test_ssh", "status": "completed", "index": 0, "data": {"ok": True}},
            {"action": "sync", "status": "in_progress", "label": "Sync", "extra": [1, 2]},
        ],
        "start_time": "2026-01-02T03:04:05.678Z",
        "ssh_connection": "ssh -p 2222 root@10.0.0.1",
        "instance": {"id": 7, "gpu": "RTX 4090"},
    }
    state = post(client, body).get_json()["state"]
    for key, value in body.items():
        assert state[key] == value
    assert stored(client) == state


def test_server_owns_version_and_last_update(client):
    state = post(
        client, {"steps": steps(1), "version": 999999, "last_update": "1999-01-01T00:00:00Z"}
    ).get_json()["state"]
    assert state["version"] != 999999
    assert state["last_update"] != "1999-01-01T00:00:00Z"


@pytest.mark.parametrize(
    "data",
    [b"", b"   ", b"not json", b"[1, 2]", b'"text"', b"42", b"null", b"{}", b"{'a': 1}"],
    ids=["empty", "blank", "not-json", "array", "string", "number", "null", "empty-object", "py"],
)
def test_post_without_state_is_400_required(client, data):
    post(client, {"steps": steps(1), "workflow_id": "keep"})
    response = client.post(STATE, data=data, content_type="text/plain")
    body = assert_error(response, 400)
    assert "required" in body["message"]
    assert stored(client)["workflow_id"] == "keep"


def test_post_accepts_json_without_json_content_type(client):
    response = client.post(STATE, data=json.dumps({"steps": steps(1)}), content_type="text/plain")
    assert response.status_code == 200


INVALID_FIELDS = [
    ("workflow_id", ""),
    ("workflow_id", "has space"),
    ("workflow_id", "x" * 129),
    ("workflow_id", 12),
    ("workflow_id", None),
    ("status", "paused"),
    ("status", None),
    ("current_step", -1),
    ("current_step", "1"),
    ("current_step", 1.5),
    ("current_step", True),
    ("current_step", 3),
    ("steps", "abc"),
    ("steps", {"action": "a"}),
    ("steps", [1]),
    ("steps", [{"status": "pending"}]),
    ("steps", [{"action": "", "status": "pending"}]),
    ("steps", [{"action": "a", "status": "done"}]),
    ("steps", [{"action": "a"}]),
    ("start_time", "yesterday"),
    ("start_time", 12),
    ("ssh_connection", 12),
    ("ssh_connection", ["ssh"]),
]


@pytest.mark.parametrize(("field", "value"), INVALID_FIELDS)
def test_field_breaking_its_rule_is_400_naming_it(client, field, value):
    post(client, {"steps": steps(1), "workflow_id": "keep"})
    body = {"steps": steps(3), field: value}
    response = post(client, body)
    error = assert_error(response, 400, "invalid_state")
    assert field in error["message"]
    assert stored(client)["workflow_id"] == "keep"


@pytest.mark.parametrize("current_step", [5, 10**29])
def test_current_step_is_0_with_no_steps(client, current_step):
    post(client, {"steps": steps(1), "workflow_id": "keep"})
    for body in ({"current_step": current_step}, {"current_step": current_step, "steps": []}):
        error = assert_error(post(client, body), 400, "invalid_state")
        assert "'current_step'" in error["message"]
    assert stored(client)["workflow_id"] == "keep"
    assert post(client, {"current_step": 0, "steps": []}).status_code == 200


def test_a_whole_number_written_with_a_fraction_is_that_integer(client):
    # JSON has one kind of number: 1.0 is 1, as every JSON reader sees it.
    body = {"steps": steps(2), "current_step": 1.0, "ratio": 2.5, "count": 3.0}
    state = post(client, body).get_json()["state"]
    assert (state["current_step"], state["ratio"], state["count"]) == (1, 2.5, 3)
    assert '"current_step":1,' in client.get(STATE).get_data(as_text=True)


def test_workflow_id_accepts_its_whole_alphabet(client):
    workflow_id = "Az09_.:-" + "x" * 120
    assert post(client, {"workflow_id": workflow_id}).get_json()["state"]["workflow_id"] == (
        workflow_id
    )


def test_versions_take_the_next_number_and_survive_delete(client):
    first = post(client, {"steps": steps(2)}).get_json()["state"]["version"]
    second = client.patch(f"{STATE}/steps/0", json={"status": "completed"}).get_json()["state"]
    assert second["version"] == first + 1
    client.delete(STATE)  # takes first + 2
    third = post(client, {"steps": steps(2)}).get_json()["state"]["version"]
    assert third == first + 3


def test_body_over_the_limit_is_413(make_app):
    client = make_app(MAX_CONTENT_LENGTH=1024).test_client()
    post(client, {"workflow_id": "keep"})
    big = {"steps": steps(1), "padding": "x" * 2000}
    assert_error(post(client, big), 413, "payload_too_large")
    assert stored(client)["workflow_id"] == "keep"


# --- finished is final -------------------------------------------------------------------


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_finished_workflow_is_final(client, status):
    body = {"workflow_id": "wf-1", "status": status, "current_step": 1, "steps": steps(2)}
    first = post(client, body).get_json()["state"]
    changed = {**body, "status": "running"}
    assert_error(post(client, changed), 409, "workflow_finished")
    repeat = post(client, body)
    assert repeat.status_code == 200
    assert repeat.get_json()["state"] == first
    assert stored(client) == first


def test_new_workflow_id_replaces_a_finished_one(client):
    post(client, {"workflow_id": "old", "status": "completed", "steps": steps(1)})
    fresh = post(client, {"workflow_id": "new", "steps": steps(1)})
    assert fresh.status_code == 200
    assert stored(client)["workflow_id"] == "new"


def test_patches_to_a_finished_workflow_are_409(client):
    post(client, {"workflow_id": "wf", "status": "failed", "steps": steps(2)})
    assert_error(
        client.patch(f"{STATE}/steps/1", json={"status": "completed"}), 409, "workflow_finished"
    )
    assert_error(client.patch(STATE, json={"status": "running"}), 409, "workflow_finished")
    assert stored(client)["status"] == "failed"


# --- If-Match ------------------------------------------------------------------------------


def test_if_match_guards_every_write(client):
    version = post(client, {"steps": steps(2)}).get_json()["state"]["version"]
    stale = {"If-Match": f'"{version - 1}"'}
    assert_error(post(client, {"steps": steps(1)}, headers=stale), 412)
    assert_error(client.patch(STATE, json={"status": "failed"}, headers=stale), 412)
    assert_error(client.patch(f"{STATE}/steps/0", json={"status": "failed"}, headers=stale), 412)
    assert stored(client)["version"] == version
    ok = client.patch(
        f"{STATE}/steps/0", json={"status": "completed"}, headers={"If-Match": f'"{version}"'}
    )
    assert ok.status_code == 200
    assert ok.get_json()["state"]["version"] == version + 1


def test_if_match_without_a_stored_state_is_412(client):
    assert_error(post(client, {"steps": steps(1)}, headers={"If-Match": '"1"'}), 412)
    assert stored(client) is None


def test_if_match_star_matches_any_stored_state(client):
    post(client, {"steps": steps(1)})
    assert post(client, {"steps": steps(2)}, headers={"If-Match": "*"}).status_code == 200


# --- PATCH /workflow/state/steps/<index> ----------------------------------------------------


def test_step_patch_sets_status_data_and_current_step(client):
    before = post(client, {"steps": steps(4)}).get_json()["state"]
    response = client.patch(
        f"{STATE}/steps/2", json={"status": "in_progress", "data": {"note": "syncing"}}
    )
    assert response.status_code == 200
    body = response.get_json()
    assert body["success"] is True
    state = body["state"]
    assert state["steps"][2] == {
        **before["steps"][2],
        "status": "in_progress",
        "data": {"note": "syncing"},
    }
    assert state["steps"][:2] == before["steps"][:2]
    assert state["steps"][3] == before["steps"][3]
    assert state["current_step"] == 2
    assert state["version"] == before["version"] + 1
    assert state["last_update"] >= before["last_update"]
    assert stored(client) == state


def test_step_patch_without_state_is_404(client):
    assert_error(client.patch(f"{STATE}/steps/0", json={"status": "completed"}), 404, "no_workflow")


@pytest.mark.parametrize("index", ["abc", "-1", "1.5", "3", "99999999999", "%20"])
def test_step_patch_bad_index_is_400(client, index):
    post(client, {"steps": steps(3)})
    assert_error(client.patch(f"{STATE}/steps/{index}", json={"status": "completed"}), 400)


@pytest.mark.parametrize(
    "body",
    [{"status": "done"}, {}, {"data": {}}, {"status": "completed", "data": 5}, [1]],
    ids=["bad-status", "empty", "no-status", "data-not-object", "array"],
)
def test_step_patch_bad_body_is_400_and_changes_nothing(client, body):
    before = post(client, {"steps": steps(2)}).get_json()["state"]
    assert_error(client.patch(f"{STATE}/steps/0", json=body), 400)
    assert stored(client) == before


def test_step_patch_guard_must_match_workflow(client):
    post(client, {"workflow_id": "mine", "steps": steps(2)})
    assert_error(
        client.patch(f"{STATE}/steps/0", json={"status": "completed", "workflow_id": "other"}),
        409,
        "workflow_mismatch",
    )
    ok = client.patch(f"{STATE}/steps/0", json={"status": "completed", "workflow_id": "mine"})
    assert ok.status_code == 200


# --- PATCH /workflow/state ------------------------------------------------------------------


def test_merge_patch_replaces_top_level_fields(client):
    before = post(client, {"steps": steps(2), "note": "a"}).get_json()["state"]
    response = client.patch(STATE, json={"status": "cancelled", "note": "b", "more": 1})
    assert response.status_code == 200
    state = response.get_json()["state"]
    assert state["status"] == "cancelled"
    assert state["note"] == "b" and state["more"] == 1
    assert state["steps"] == before["steps"]
    assert state["version"] == before["version"] + 1
    assert client.get(STATE).get_json()["active"] is False


def test_merge_patch_result_must_satisfy_post_rules(client):
    before = post(client, {"steps": steps(2)}).get_json()["state"]
    assert (
        "current_step"
        in assert_error(client.patch(STATE, json={"current_step": 5}), 400, "invalid_state")[
            "message"
        ]
    )
    assert_error(client.patch(STATE, json={"status": "paused"}), 400, "invalid_state")
    assert stored(client) == before


def test_merge_patch_errors(client):
    assert_error(client.patch(STATE, json={"status": "failed"}), 404, "no_workflow")
    post(client, {"workflow_id": "mine", "steps": steps(1)})
    assert "required" in assert_error(client.patch(STATE, json={}), 400)["message"]
    assert_error(
        client.patch(STATE, json={"workflow_id": "other", "status": "failed"}),
        409,
        "workflow_mismatch",
    )


# --- DELETE, summary -------------------------------------------------------------------------


def test_delete_clears_and_is_idempotent(client):
    post(client, {"steps": steps(1)})
    for _ in range(2):
        response = client.delete(STATE)
        assert response.status_code == 200
        assert response.get_json() == {"success": True, "message": "Workflow state cleared"}
    assert stored(client) is None


@pytest.mark.parametrize(
    ("current", "total", "percent"), [(2, 5, 60.0), (2, 4, 75.0), (0, 3, 33.33), (0, 0, 0)]
)
def test_summary_progress(client, current, total, percent):
    state = post(
        client, {"workflow_id": "wf", "current_step": current, "steps": steps(total)}
    ).get_json()["state"]
    body = client.get(f"{STATE}/summary").get_json()
    assert body["success"] is True
    assert body["summary"] == {
        "active": True,
        "workflow_id": "wf",
        "status": "running",
        "current_step": current,
        "total_steps": total,
        "progress_percent": percent,
        "completed_percent": 0,  # nothing is done: every step is pending
        "start_time": state["start_time"],
        "last_update": state["last_update"],
    }


def test_summary_without_state(client):
    assert client.get(f"{STATE}/summary").get_json() == {
        "success": True,
        "summary": {"active": False, "workflow_id": None, "status": None},
    }


# --- TTL and expiry --------------------------------------------------------------------------


def test_finished_state_is_readable_until_its_ttl_then_null(make_app):
    client = make_app(STATE_TTL=1).test_client()
    post(client, {"status": "completed", "steps": steps(2), "current_step": 1})
    body = client.get(STATE).get_json()
    assert body["active"] is False and body["state"]["status"] == "completed"
    wait_until(lambda: client.get(STATE).get_json()["state"] is None, timeout=5)
    assert client.get(f"{STATE}/summary").get_json()["summary"]["status"] is None


def test_running_state_expires_after_the_stale_ttl(make_app):
    client = make_app(STATE_STALE_TTL=1).test_client()
    version = post(client, {"steps": steps(2)}).get_json()["state"]["version"]
    wait_until(lambda: client.get(STATE).get_json()["state"] is None, timeout=5)
    # The counter outlives expiry: the next write takes a higher number.
    assert post(client, {"steps": steps(1)}).get_json()["state"]["version"] > version


def test_finishing_a_workflow_starts_the_short_ttl(make_app):
    client = make_app(STATE_TTL=1, STATE_STALE_TTL=3600).test_client()
    post(client, {"steps": steps(2)})
    client.patch(STATE, json={"status": "completed"})
    wait_until(lambda: client.get(STATE).get_json()["state"] is None, timeout=5)


# --- OPTIONS, CORS, unknown routes ------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [STATE, f"{STATE}/steps/0", f"{STATE}/summary", "/workflow/history", "/healthz", "/readyz"],
)
def test_options_answers_204_with_cors(client, path):
    response = client.options(path, headers={"Origin": "http://ui.example"})
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    methods = {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert {"GET", "POST", "PATCH", "DELETE", "OPTIONS"} <= methods
    allowed = {
        h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")
    }
    assert {
        "content-type",
        "authorization",
        "if-match",
        "if-none-match",
        "last-event-id",
    } <= allowed


def test_cors_origins_list_echoes_only_allowed_origins(make_app):
    client = make_app(CORS_ORIGINS=("https://a.example", "https://b.example")).test_client()
    allowed = client.get(STATE, headers={"Origin": "https://b.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://b.example"
    other = client.get(STATE, headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_unknown_route_and_method_answer_json_errors(client):
    assert_error(client.get("/workflow/nope"), 404, "not_found")
    response = client.put(STATE, json={})
    assert_error(response, 405, "method_not_allowed")
    assert "PATCH" in response.headers["Allow"]


def test_healthz_and_readyz(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
