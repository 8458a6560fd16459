"""Performing one step, without a network: answers to outcomes, endpoints, the simulator."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from service import create_app, schema
from service.config import from_env
from service.runner import steps
from service.runner.steps import (
    NOT_JSON,
    StepCall,
    StepResult,
    StepSettings,
    check_origin,
    interpret,
    perform_step,
    resolve_endpoint,
    simulate,
)

WHERE = "Step endpoint http://h/x"
SECRET = "ssh -p 2222 root@203.0.113.9"


def settings(**overrides: Any) -> StepSettings:
    values = {"self_url": "http://127.0.0.1:1", "timeout": 5.0, "demo_seconds": 0.0}
    return StepSettings(**{**values, **overrides})


def call(endpoint: str | None = None, action: str = "test_ssh") -> StepCall:
    return StepCall("wf-1", action, 2, 1, SECRET, endpoint)


# --- answers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "answer", "outcome", "data"),
    [
        (200, {"success": True}, "completed", None),
        (200, None, "completed", None),  # 204, or an empty 200
        (201, {"data": {"n": 1}}, "completed", {"n": 1}),  # success absent: not false
        (
            200,
            {"success": True, "message": "ok", "data": {"n": 1}},
            "completed",
            {"n": 1, "message": "ok"},
        ),
        (
            200,
            {"success": True, "data": {"message": "mine"}, "message": "x"},
            "completed",
            {"message": "mine"},
        ),
        (200, {"success": True, "data": [1, 2]}, "completed", None),  # data that is not an object
        (200, {"success": False, "message": "disk full"}, "failed", {"message": "disk full"}),
        (200, {"success": False, "error": "no_disk"}, "failed", {"message": "no_disk"}),
        (200, {"success": False}, "failed", {"message": f"{WHERE} answered success: false"}),
        (
            200,
            {"success": False, "data": {"free": 0}, "message": "m"},
            "failed",
            {"free": 0, "message": "m"},
        ),
        (
            500,
            {"success": False, "message": "boom"},
            "failed",
            {"http_status": 500, "message": "boom"},
        ),
        (503, {"success": True, "message": "?"}, "failed", {"http_status": 503, "message": "?"}),
        (
            500,
            {"detail": 1},
            "failed",
            {"http_status": 500, "message": f"{WHERE} answered 500 without a message"},
        ),
        (
            404,
            None,
            "failed",
            {"http_status": 404, "message": f"{WHERE} answered 404 with no body"},
        ),
        (
            502,
            NOT_JSON,
            "failed",
            {"message": f"{WHERE} answered 502 with a body that is not JSON"},
        ),
        (
            200,
            NOT_JSON,
            "failed",
            {"message": f"{WHERE} answered 200 with a body that is not JSON"},
        ),
        (
            200,
            [1, 2],
            "failed",
            {"message": f"{WHERE} answered 200 with JSON that is not an object"},
        ),
    ],
)
def test_answers_map_to_outcomes(status: int, answer: Any, outcome: str, data: Any):
    result = interpret(status, answer, WHERE)
    assert (result.status, result.data) == (outcome, data)


def test_long_messages_are_cut():
    result = interpret(500, {"message": "m" * 5000}, WHERE)
    assert len(result.message) == steps.MAX_MESSAGE_CHARS and result.message.endswith("…")


BLOB = '{"blob": ""}'  # the JSON around the blob's characters


def nested(levels: int) -> dict[str, Any]:
    """Data that is `levels` objects deep."""
    data: dict[str, Any] = {}
    for _ in range(levels - 1):
        data = {"d": data}
    return data


@pytest.mark.parametrize("status", [200, 500])
@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            nested(200),
            f"{WHERE} answered {{status}} with data that cannot be kept: it must not nest deeper "
            f"than {schema.MAX_DATA_DEPTH} levels",
        ),
        (
            {"blob": "y" * steps.MAX_DATA_BYTES},
            f"{WHERE} answered {{status}} with data too large to keep "
            f"({steps.MAX_DATA_BYTES + len(BLOB)} bytes, the most is {steps.MAX_DATA_BYTES})",
        ),
        ({"x": float("nan")}, f"{WHERE} answered {{status}} with data that is not JSON"),
    ],
)
def test_data_no_client_could_store_fails_the_step_and_is_not_kept(status, data, message):
    result = interpret(status, {"success": True, "message": "done", "data": data}, WHERE)
    assert (result.status, result.data) == ("failed", {"message": message.format(status=status)})


def test_data_as_deep_as_a_client_may_send_is_kept():
    data = nested(schema.MAX_DATA_DEPTH)
    assert interpret(200, {"data": data}, WHERE).data == data


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"data": {"x": NaN}}', "NaN is not a JSON number"),
        (b'{"data": {"x": 1, "y": 1e999}}', "1e999 is out of range for a JSON number"),
        (b'{"success": true, "data": {"y": -Infinity}}', "-Infinity is not a JSON number"),
    ],
)
def test_an_answer_is_parsed_as_strictly_as_a_clients_body(body, why):
    result = interpret(200, steps._parse(body), WHERE)
    assert (result.status, result.data) == (
        "failed",
        {"message": f"{WHERE} answered 200 with a body that is not JSON: {why}"},
    )


# --- endpoints ----------------------------------------------------------------------------------


def test_paths_resolve_under_the_self_url_and_urls_stay_as_they_are():
    assert (
        resolve_endpoint("/api/ship", "http://127.0.0.1:8000") == "http://127.0.0.1:8000/api/ship"
    )
    assert resolve_endpoint("/api/ship?x=1", "https://h.example/tools/") == (
        "https://h.example/tools/api/ship?x=1"
    )
    assert resolve_endpoint("https://other.example:8443/a", "http://self") == (
        "https://other.example:8443/a"
    )


@pytest.mark.parametrize(
    "endpoint", ["", "ftp://h/x", "http://", "api/ship", "http://h/a b", "http://h:port/", "file:///etc/passwd"]
)  # fmt: skip
def test_other_endpoints_are_refused(endpoint: str):
    with pytest.raises(ValueError):
        resolve_endpoint(endpoint, "http://127.0.0.1:8000")
    result = perform_step(call(endpoint), settings())
    assert result.status == "failed"
    assert "is not an http(s) URL or a path on this service" in result.message


def test_endpoints_are_named_without_credentials_or_query():
    assert steps.describe_url("https://user:pw@h.example:8443/a/b?token=t#f") == (
        "Step endpoint https://h.example:8443/a/b"
    )
    assert steps.describe_url("http://[::1]/") == "Step endpoint http://[::1]/"


def test_the_body_carries_the_contract_fields_and_repr_hides_the_secret():
    assert json.loads(call("/x").body()) == {
        "workflow_id": "wf-1",
        "action": "test_ssh",
        "index": 2,
        "attempt": 1,
        "step_attempt": 1,
        "ssh_connection": SECRET,
    }
    assert "203.0.113.9" not in repr(call("/x")) and "[REDACTED]" in repr(call("/x"))


def test_settings_come_from_the_config():
    config = from_env({"WORKFLOW_STEP_TIMEOUT": "30", "WORKFLOW_DEMO_FAIL": "x", "PORT": "9"})
    made = StepSettings.from_config(config, {"Authorization": "Bearer t"})
    assert made == StepSettings("http://127.0.0.1:9", 30.0, 2.0, "x", {"Authorization": "Bearer t"})


# --- the simulator ------------------------------------------------------------------------------


def test_the_simulator_passes_and_fails_the_demo_action():
    done = perform_step(call(action="test_ssh"), settings(demo_fail="sync_instance"))
    assert (done.status, done.data) == ("completed", {"message": "test_ssh done"})
    failed = perform_step(call(action="sync_instance"), settings(demo_fail="sync_instance"))
    assert failed.status == "failed"
    assert failed.data == {"message": "Simulated failure of sync_instance (WORKFLOW_DEMO_FAIL)"}


def test_the_simulator_takes_its_time():
    result = perform_step(call(), settings(demo_seconds=0.3))
    assert result.status == "completed" and 0.3 <= result.seconds < 1.5


def test_a_cancel_stops_the_simulator_within_a_second():
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    started = time.monotonic()
    result = perform_step(call(), settings(demo_seconds=30), cancel)
    assert result == StepResult("cancelled", None, "cancelled", result.seconds)
    assert time.monotonic() - started < 1.2  # 0.2 s before the cancel, then well within 1 s


def test_a_step_cancelled_before_it_starts_does_nothing(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(steps, "simulate", lambda *a, **k: pytest.fail("the step ran"))
    cancel = threading.Event()
    cancel.set()
    assert perform_step(call(), settings(demo_seconds=30), cancel).status == "cancelled"


def test_the_route_serves_the_same_simulator(tmp_path: Path):
    app = create_app(
        {
            "STATE_URL": f"file://{tmp_path}/s.json",
            "DEMO_STEP_SECONDS": 0,
            "DEMO_FAIL": "set_ui_home",
        }
    )
    client = app.test_client()
    for action in ("test_ssh", "set_ui_home"):
        answer = client.post(f"/workflow/actions/{action}")
        assert answer.get_json() == simulate(action, seconds=0, fail_action="set_ui_home")


# --- never raises, never logs the secret --------------------------------------------------------


def test_a_bug_fails_the_step_instead_of_escaping(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"bug while holding {SECRET}")

    monkeypatch.setattr(steps, "simulate", broken)
    result = perform_step(call(), settings())
    assert result.status == "failed"
    assert result.message == "The step could not be performed (RuntimeError)"
    logged = "\n".join(caplog.text.splitlines())
    assert "step 3 of workflow wf-1: unexpected RuntimeError at" in logged
    assert "203.0.113.9" not in logged


def test_log_lines_name_the_step_and_never_the_secret(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    perform_step(call(), settings())
    perform_step(call(action="x"), settings(demo_fail="x"))
    perform_step(call("ftp://nowhere"), settings())
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 3
    # Step index 2 is the third step: logs count from 1, as the CLI and the page do.
    assert "step 3 (test_ssh) of workflow wf-1, attempt 1: completed" in lines[0]
    assert all("203.0.113.9" not in line and "root@" not in line for line in lines)


@pytest.mark.parametrize(
    "endpoint",
    [
        "/workflows/theirs/cancel",
        "/workflow/state",
        "/workflow%73/x/run",
        "//workflows/x",
        "/api/../workflows/x/cancel",
        "/./workflow/state/cancel",
        "/workflow/actions/../state",
        # The router does not resolve dot segments: this runs the workflow "..".
        "/workflows/../run",
        "/workflows/%2e%2e/run",
        "/workflows/%2E/cancel",
        "/workflows/%252e%252e/run",
        "/workflow/actions/..%2fstate",
        "/workflows/x%2Frun",
        "/api/..",
        "/api/./ship",
    ],
)
def test_a_path_into_the_state_api_is_refused(endpoint):
    refused = check_origin(endpoint, frozenset())
    assert refused is not None and refused.status == "failed"
    assert "state API" in refused.data["message"]


@pytest.mark.parametrize(
    "endpoint", ["/workflow/actions/test_ssh", "/api/sync", "/workflowish", "/api/v1.2/..x?a=.."]
)
def test_the_simulator_and_host_paths_may_be_called(endpoint):
    assert check_origin(endpoint, frozenset()) is None
