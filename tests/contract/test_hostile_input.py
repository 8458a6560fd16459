"""Hostile bodies get a 4xx JSON answer (never a 500) and store nothing, on every backend."""

from __future__ import annotations

import json

import pytest

from tests.conftest import steps
from tests.support.routes import STATE

HOSTILE_BODIES = {
    "nesting-100k-deep-list": b"[" * 100_000 + b"]" * 100_000,
    "nesting-100k-deep-object": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "nested-field-200-deep": json.dumps(
        {"steps": steps(1), "extra": json.loads("[" * 200 + "]" * 200)}
    ).encode(),
    "invalid-utf8": b'{"workflow_id": "\xff\xfe", "steps": []}',
    "5k-steps": json.dumps({"steps": steps(5000)}).encode(),
    "nan": b'{"workflow_id": "a", "progress": NaN}',
    "infinity": b'{"workflow_id": "a", "progress": 1e999}',
    "huge-integer": b'{"workflow_id": "a", "current_step": ' + b"9" * 5000 + b"}",
    "null-bytes": b"\x00\x00\x00",
    "truncated": b'{"steps": [',
    "duplicate-keys-bad-last": b'{"status": "running", "status": "exploded"}',
}


@pytest.fixture
def guarded(client):
    """Store a known state; the test checks it is untouched afterwards."""
    before = client.post(STATE, json={"workflow_id": "keep", "steps": steps(3)}).get_json()
    return before["state"]


def assert_untouched(client, before):
    assert client.get(STATE).get_json()["state"] == before


@pytest.mark.parametrize("name", sorted(HOSTILE_BODIES))
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", STATE), ("PATCH", STATE), ("PATCH", f"{STATE}/steps/1")],
)
def test_hostile_body_is_a_4xx_and_stores_nothing(client, guarded, name, method, path):
    response = client.open(path, method=method, data=HOSTILE_BODIES[name])
    assert 400 <= response.status_code < 500, (name, response.status_code)
    body = response.get_json()
    assert body["success"] is False and body["error"] and body["message"]
    assert_untouched(client, guarded)


def test_a_lone_surrogate_escape_is_valid_json_and_round_trips(client):
    # Not UTF-8 encodable: storing it must keep the escape, not crash the encoder.
    response = client.post(STATE, data=b'{"workflow_id": "a", "note": "\\ud800"}')
    assert response.status_code == 200
    assert client.get(STATE).get_json()["state"]["note"] == "\ud800"


def test_body_over_the_size_limit_is_413(make_app):
    client = make_app(MAX_CONTENT_LENGTH=4096).test_client()
    before = client.post(STATE, json={"steps": steps(1)}).get_json()["state"]
    for method, path in [("POST", STATE), ("PATCH", STATE), ("PATCH", f"{STATE}/steps/0")]:
        response = client.open(path, method=method, data=b"{" + b" " * 5000 + b"}")
        assert response.status_code == 413
        assert response.get_json()["error"] == "payload_too_large"
    assert_untouched(client, before)


@pytest.mark.parametrize(
    "header",
    [
        {"If-Match": "garbage"},
        {"If-Match": '"' + "9" * 500 + '"'},
        {"If-None-Match": "\x00"},
        {"Content-Type": "application/json; charset=klingon"},
        {"Authorization": "Bearer \u00e9"},
        {"Content-Length": "-5"},
    ],
)
def test_odd_headers_never_500(client, guarded, header):
    for method in ("GET", "POST", "PATCH"):
        response = client.open(
            STATE, method=method, data=b'{"status": "cancelled"}', headers=header
        )
        assert response.status_code < 500, (method, header, response.status_code)


@pytest.mark.parametrize(
    "path",
    [
        "/workflow/state/steps/" + "9" * 400,
        "/workflow/state/steps/%ff",
        "/workflow/history?limit=0",
        "/workflow/history?limit=101",
        "/workflow/history?limit=abc",
        "/workflow/history?limit=-1",
        # Routed as sent: no redirect (with an HTML body) to the path without the empty segment.
        "/workflows//a1",
        "/workflows//a1/summary",
        "/workflow//state",
    ],
)
def test_odd_urls_are_4xx_json(client, path):
    response = client.open(
        path, method="PATCH" if "steps" in path else "GET", json={"status": "failed"}
    )
    assert 400 <= response.status_code < 500
    assert response.get_json()["success"] is False
