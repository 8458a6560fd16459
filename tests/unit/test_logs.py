"""Logs: JSON lines with a request id, the id in every response, and no secret in any line."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from service import create_app, logs
from tests.conftest import steps
from tests.support import Gunicorn, free_port, http, wait_until
from tests.support.routes import STATE

TOKEN = "tok-9f8e7d6c5b4a-secret"
SSH = "ssh -p 2222 root@10.1.2.3"
# Pieces of the SSH string that must not show either.
SSH_PARTS = (SSH, "root@10.1.2.3", "10.1.2.3")
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Where the app's log lines go (JSON) for the test; restored to stderr afterwards."""
    stream = io.StringIO()
    yield stream
    logs.configure("text")


def json_app(stream: io.StringIO, **config):
    """An app on a file backend whose JSON log lines go to `stream`."""
    app = create_app({"LOG_FORMAT": "json", **config})
    logs.configure("json", stream=stream)
    return app


def lines_of(stream: io.StringIO) -> list[dict]:
    """Every line written so far, each parsed as JSON (failing if one is not)."""
    return [json.loads(line) for line in stream.getvalue().splitlines() if line]


# --- the request id ------------------------------------------------------------------------


def test_a_valid_request_id_is_echoed_and_logged(tmp_path, captured):
    client = json_app(captured, STATE_URL=f"file://{tmp_path}/s.json").test_client()
    response = client.post(STATE, json={"steps": steps(1)}, headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    [line] = [entry for entry in lines_of(captured) if entry.get("route")]
    assert line["request_id"] == "abc-123"
    assert line["method"] == "POST"
    assert line["route"] == STATE
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float)
    assert line["level"] == "INFO"
    assert line["logger"] == "service.requests"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
    assert "POST /workflow/state 200" in line["message"]


@pytest.mark.parametrize(
    "given",
    ["", "x" * 129, "has space", "tab\there", "semi;colon", 'quote"', "ünïcode", "<script>"],
)
def test_an_unsafe_request_id_is_replaced_by_a_fresh_one(tmp_path, given, captured):
    client = json_app(captured, STATE_URL=f"file://{tmp_path}/s.json").test_client()
    headers = {"X-Request-ID": given.encode("utf-8").decode("latin-1")}
    response = client.post(STATE, json={"steps": []}, headers=headers)
    fresh = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", fresh)
    assert [e["request_id"] for e in lines_of(captured) if e.get("route")] == [fresh]


def test_every_response_carries_a_request_id_even_refusals(tmp_path):
    client = create_app(
        {"STATE_URL": f"file://{tmp_path}/s.json", "STATE_TOKEN": TOKEN}
    ).test_client()
    seen = set()
    for response in (
        client.get(STATE),  # 401 from auth, before any route work
        client.options(STATE),  # a CORS preflight
        client.get("/healthz"),
        client.get("/nowhere"),
        client.get(STATE, headers=AUTH),
    ):
        request_id = response.headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", request_id)
        seen.add(request_id)
    assert len(seen) == 5


def test_lines_logged_during_a_request_carry_its_id(captured):
    client = json_app(captured, STATE_URL=f"redis://127.0.0.1:{free_port()}/0").test_client()
    client.get(STATE, headers={"X-Request-ID": "during-1"})
    entries = lines_of(captured)
    assert {e["logger"] for e in entries} >= {"service.errors", "service.requests"}
    assert all(e["request_id"] == "during-1" for e in entries)
    [request_line] = [e for e in entries if e.get("route")]
    assert request_line["status"] == 503
    assert request_line["level"] == "WARNING"


def test_which_requests_are_logged(tmp_path, captured):
    client = json_app(captured, STATE_URL=f"file://{tmp_path}/s.json").test_client()
    client.post(STATE, json={"steps": steps(1)})  # a write: always
    client.get(STATE)  # a read without a caller's id: not at INFO (the hot path)
    client.get(STATE, headers={"X-Request-ID": "traced-read"})  # a read someone will look up
    client.get("/healthz", headers={"X-Request-ID": "probe"})  # probes only when they fail
    client.get("/metrics")
    client.patch(f"{STATE}/steps/7", json={"status": "completed"})  # an error: always
    logged = [(e["method"], e["route"], e["status"]) for e in lines_of(captured) if e.get("route")]
    assert logged == [
        ("POST", STATE, 200),
        ("GET", STATE, 200),
        ("PATCH", "/workflow/state/steps/<index>", 400),
    ]


def test_text_is_the_default_format(tmp_path):
    app = create_app({"STATE_URL": f"file://{tmp_path}/s.json"})
    stream = io.StringIO()
    logs.configure(app.config["LOG_FORMAT"], stream=stream)
    try:
        app.test_client().delete(STATE, headers={"X-Request-ID": "text-1"})
    finally:
        logs.configure("text")
    [line] = stream.getvalue().splitlines()
    assert "[text-1] DELETE /workflow/state 200" in line
    assert " INFO " in line


# --- redaction -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        (f"Authorization: Bearer {TOKEN}", TOKEN),
        ("auth header was bearer abc.def-ghi", "abc.def-ghi"),
        (f"connect with {SSH} now", "root@10.1.2.3"),
        ("ssh://admin@host.example:22", "admin@host.example"),
        ("ssh root@example.com -p 22", "root@example.com"),
        ("user deploy@192.168.1.20 refused", "deploy@192.168.1.20"),
        ('{"ssh_connection": "anything at all"}', "anything at all"),
        ("{'ssh_connection': 'mosh me@there'}", "mosh me@there"),
        ("ssh_connection=whatever", "whatever"),
        ("redis://user:hunter2@cache:6379/0", "hunter2"),
        ("token gAAAAABl" + "x" * 60 + "==", "gAAAAABl"),
    ],
)
def test_secret_shaped_text_is_scrubbed(text, gone):
    scrubbed = logs.Redactor().scrub(text)
    assert gone not in scrubbed
    assert logs.REDACTED in scrubbed


def test_configured_secrets_are_scrubbed_wherever_they_appear(tmp_path, captured):
    key = Fernet.generate_key().decode()
    app = json_app(
        captured,
        STATE_URL=f"file://{tmp_path}/s.json",
        STATE_TOKEN="plain-token-value",
        STATE_SECRET_KEYS=(key,),
    )
    log = logging.getLogger("service.test")
    # Whatever the app's code logs runs in its context (requests, and its stream hub's threads).
    with app.app_context():
        log.warning("token plain-token-value and key %s", key)
        try:
            raise ValueError(f"boom {key}")
        except ValueError:
            log.exception("failed with plain-token-value")
        log.info("extra fields too", extra={"detail": f"key={key}"})
    text = captured.getvalue()
    assert "plain-token-value" not in text and key not in text
    assert "boom" in text and "ValueError" in text  # the exception itself is still there


def test_ordinary_text_is_left_alone():
    for text in ("GET /workflow/state 200 0.40ms", "worker 12 booted", "ssh_connection field"):
        assert logs.Redactor().scrub(text) == text


# --- the real server -----------------------------------------------------------------------


def grep_for_secrets(output: str, *extra: str) -> None:
    """Fail if the token, the SSH string or any of `extra` appears anywhere in `output`."""
    for secret in (TOKEN, *SSH_PARTS, *extra):
        assert secret not in output, f"{secret!r} leaked into the logs"


@pytest.mark.slow
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain-at-rest", "encrypted-at-rest"])
def test_the_real_server_logs_json_lines_with_ids_and_no_secrets(tmp_path: Path, encrypted):
    key = Fernet.generate_key().decode()
    state_file = tmp_path / "state.json"
    env = {
        "WORKFLOW_STATE_URL": f"file://{state_file}",
        "WORKFLOW_STATE_LOG_FORMAT": "json",
        "WORKFLOW_STATE_TOKEN": TOKEN,
    }
    if encrypted:
        env["WORKFLOW_STATE_SECRET_KEY"] = key
    server = Gunicorn(env, workers=2).start()
    base = server.url
    try:
        body = {"workflow_id": "logged", "ssh_connection": SSH, "steps": steps(2)}
        headers = {**AUTH, "X-Request-ID": "trace-me-1"}
        status, response_headers, saved = http("POST", base + STATE, body, headers)
        assert status == 200 and saved["state"]["ssh_connection"] == SSH
        assert response_headers["X-Request-ID"] == "trace-me-1"
        assert http("GET", base + STATE, headers={**AUTH, "X-Request-ID": "trace-me-2"})[0] == 200
        # Secrets in every place a careless logger might look: refused bodies, query strings,
        # bad credentials, a guard that does not match, a stored value that is not a state.
        http("PATCH", base + STATE, {"ssh_connection": 42, "note": SSH}, AUTH)
        http("POST", f"{base}{STATE}?token={TOKEN}&ssh={SSH.replace(' ', '+')}", {}, AUTH)
        http("GET", base + STATE, headers={"Authorization": f"Bearer {TOKEN}x"})
        http("GET", base + STATE, headers={"Authorization": f"Basic {TOKEN}"})
        http("PATCH", f"{base}{STATE}/steps/0", {"status": "done", "workflow_id": SSH}, AUTH)
        http("PATCH", f"{base}{STATE}/steps/0", {"status": "completed", "data": {"cmd": SSH}}, AUTH)
        http("POST", base + STATE, f"{SSH} {TOKEN} not json".encode(), AUTH)
        http("GET", base + "/workflow/history", headers={**AUTH, "X-Request-ID": TOKEN})
        logged = tmp_path / "workflows" / "public" / "logged.json"  # the current workflow's file
        logged.write_text(f'{{"ssh_connection": "{SSH}", "token": "{TOKEN}"')  # corrupt
        assert http("GET", base + STATE, headers=AUTH)[2]["state"] is None
        wait_until(lambda: "trace-me-2" in server.output())
    finally:
        server.stop()
    output = server.output()
    grep_for_secrets(output, key, "gAAAAA")
    entries = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert {"gunicorn.error", "service.requests", "service.storage"} <= {
        e["logger"] for e in entries
    }
    [first] = [e for e in entries if e["request_id"] == "trace-me-1"]
    assert (first["method"], first["route"], first["status"]) == ("POST", STATE, 200)
    assert first["duration_ms"] >= 0
    assert any(e["request_id"] == "trace-me-2" for e in entries)
    assert any(e.get("status") == 401 for e in entries)


@pytest.mark.slow
def test_the_real_server_logs_text_with_the_request_id_by_default(tmp_path: Path):
    server = Gunicorn({"WORKFLOW_STATE_URL": f"file://{tmp_path}/s.json"}, workers=1).start()
    try:
        http("POST", server.url + STATE, {"steps": []}, {"X-Request-ID": "plain-7"})
        wait_until(lambda: "plain-7" in server.output())
    finally:
        server.stop()
    [line] = [line for line in server.output().splitlines() if "plain-7" in line]
    assert "POST /workflow/state 200" in line
    assert not line.startswith("{")
