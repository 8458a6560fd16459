"""Two apps in one process, with different settings, share nothing: not their log format or
secrets, not their metrics, not their summary cache, not their stream hubs."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from flask import Flask

from service import create_app, logs, model
from service.metrics import metrics_of
from service.stream import hub_of
from tests.conftest import steps
from tests.support import STATE

TOKEN_A = "token-of-app-a-1234"
TOKEN_B = "token-of-app-b-5678"


@pytest.fixture
def apps(tmp_path) -> Iterator[tuple[Flask, Flask]]:
    """App A (JSON logs, token A) and app B (text logs, token B), each on storage of its own."""
    a = create_app(
        {"STATE_URL": f"file://{tmp_path}/a/s.json", "LOG_FORMAT": "json", "STATE_TOKEN": TOKEN_A}
    )
    b = create_app({"STATE_URL": "fakeredis://", "LOG_FORMAT": "text", "STATE_TOKEN": TOKEN_B})
    yield a, b
    for app in (a, b):
        hub_of(app).close()
        app.extensions["workflow_state"].close()


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """The process's log handler, writing to a buffer (set up after both apps)."""
    buffer = io.StringIO()
    logs.configure("text", stream=buffer)
    yield buffer
    logs.configure("text")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_each_app_logs_in_its_own_format_and_scrubs_its_own_secrets(apps, stream):
    a, b = apps
    log = logging.getLogger("service.test")
    with a.app_context():
        log.warning("a saw %s", TOKEN_A)
    with b.app_context():
        log.warning("b saw %s", TOKEN_B)
    first, second = stream.getvalue().splitlines()
    entry = json.loads(first)  # A's format, though the process handler is text
    assert entry["message"] == f"a saw {logs.REDACTED}"
    assert not second.startswith("{") and second.endswith(f"b saw {logs.REDACTED}")
    # Neither app's redactor holds the other's secret: building B added nothing to A.
    assert logs.secrets_of(a.config) == [TOKEN_A]
    with a.app_context():
        assert logs.app_logs().redactor.scrub(TOKEN_B) == TOKEN_B
    with b.app_context():
        assert logs.app_logs().redactor.scrub(TOKEN_A) == TOKEN_A


def test_each_app_counts_its_own_requests(apps):
    a, b = apps
    for _ in range(3):
        assert a.test_client().get(STATE, headers=auth(TOKEN_A)).status_code == 200
    assert b.test_client().get(STATE, headers=auth(TOKEN_B)).status_code == 200

    def count(app: Flask) -> float:
        labels = {"route": STATE, "method": "GET", "status": "200"}
        registry = metrics_of(app).registry
        return registry.get_sample_value("workflow_state_requests_total", labels) or 0.0

    assert (count(a), count(b)) == (3, 1)
    page = b.test_client().get("/metrics").get_data(as_text=True)
    assert f'workflow_state_requests_total{{method="GET",route="{STATE}",status="200"}} 1.0' in page


def test_each_app_serves_its_own_summary_from_its_own_cache(apps, monkeypatch):
    a, b = apps
    client_a, client_b = a.test_client(), b.test_client()
    client_a.post(STATE, json={"workflow_id": "wf-a", "steps": steps(4)}, headers=auth(TOKEN_A))
    client_b.post(STATE, json={"workflow_id": "wf-b", "steps": steps(2)}, headers=auth(TOKEN_B))
    derived = []
    summarize = model.summarize
    monkeypatch.setattr(model, "summarize", lambda state: derived.append(1) or summarize(state))
    # Alternate: with one cache for both, every request would evict the other app's summary.
    for _ in range(3):
        summary_a = client_a.get(f"{STATE}/summary", headers=auth(TOKEN_A)).get_json()["summary"]
        summary_b = client_b.get(f"{STATE}/summary", headers=auth(TOKEN_B)).get_json()["summary"]
        assert (summary_a["workflow_id"], summary_a["total_steps"]) == ("wf-a", 4)
        assert (summary_b["workflow_id"], summary_b["total_steps"]) == ("wf-b", 2)
    assert len(derived) == 2  # once per app


def test_each_app_has_its_own_hub_and_token(apps):
    a, b = apps
    assert hub_of(a) is not hub_of(b) and hub_of(a).store is not hub_of(b).store
    assert a.test_client().get(STATE, headers=auth(TOKEN_B)).status_code == 401
    assert b.test_client().get(STATE, headers=auth(TOKEN_A)).status_code == 401
