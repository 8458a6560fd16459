"""The pytest plugin (service.testing) as a host application's CI uses it, run by pytester."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

# The plugin, and none of this suite's own (pytest-playwright cannot nest in one process).
PLUGIN_ONLY = ("-p", "service.testing", "-p", "no:cacheprovider", "-p", "no:playwright")

# A host application's tests: plain HTTP against the live instance, a stream included.
HOST_TESTS = """
import http.client
import json
import urllib.error
import urllib.request
from urllib.parse import urlsplit

STATE = "/workflow/state"


def call(server, method, path, body=None, headers=None):
    request = urllib.request.Request(
        server.url + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers=headers or {},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_saves_and_reads_back(workflow_state_server):
    status, saved = call(workflow_state_server, "POST", STATE, {"workflow_id": "ci-1", "steps": []})
    assert status == 200 and saved["state"]["workflow_id"] == "ci-1"
    version = saved["state"]["version"]
    assert call(workflow_state_server, "GET", STATE)[1]["state"]["version"] == version
    assert workflow_state_server.store.get("public").state["workflow_id"] == "ci-1"


def test_each_test_starts_empty(workflow_state_server):
    status, body = call(workflow_state_server, "GET", STATE)
    assert (status, body["success"], body["state"]) == (200, True, None)


def test_streams_changes(workflow_state_server):
    where = urlsplit(workflow_state_server.url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
    connection.request("GET", STATE + "/stream")
    stream = connection.getresponse()
    assert stream.status == 200
    assert stream.readline() == b"retry: 2000\\n"
    call(workflow_state_server, "POST", STATE, {"workflow_id": "live", "steps": []})
    lines = [stream.readline() for _ in range(8)]
    assert any(b'"workflow_id":"live"' in line for line in lines), lines
    connection.close()
"""


def test_the_fixture_serves_a_live_instance_on_a_file(pytester: pytest.Pytester):
    pytester.makepyfile(test_host=HOST_TESTS)
    result = pytester.runpytest(*PLUGIN_ONLY)
    result.assert_outcomes(passed=3)


def test_its_settings_come_from_the_config_fixture(pytester: pytest.Pytester):
    pytester.makeconftest(
        """
import pytest

@pytest.fixture
def workflow_state_config():
    return {"STATE_URL": "fakeredis://", "STATE_TOKEN": "ci-token-123"}
"""
    )
    pytester.makepyfile(
        test_settings=HOST_TESTS
        + """

def test_on_fakeredis_with_a_token(workflow_state_server):
    assert workflow_state_server.store.describe().startswith("fakeredis://")
    assert call(workflow_state_server, "GET", STATE)[0] == 401
    token = {"Authorization": "Bearer ci-token-123"}
    assert call(workflow_state_server, "GET", STATE, headers=token)[0] == 200
"""
    )
    result = pytester.runpytest(*PLUGIN_ONLY, "-k", "token")
    result.assert_outcomes(passed=1)


def test_it_ignores_the_host_environment(pytester: pytest.Pytester, monkeypatch, tmp_path):
    # A CI runner's own settings (a production URL, a token) never reach the test instance.
    monkeypatch.setenv("WORKFLOW_STATE_URL", "ftp://production.example/state")
    monkeypatch.setenv("WORKFLOW_STATE_TOKEN", "production-token")
    pytester.makepyfile(test_host=HOST_TESTS)
    result = pytester.runpytest(*PLUGIN_ONLY)
    result.assert_outcomes(passed=3)
