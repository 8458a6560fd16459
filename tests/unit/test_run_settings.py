"""The settings of server runs: step timeout, lease, and where a runner reaches this service."""

from __future__ import annotations

import pytest

from service.config import ConfigError, from_env


def test_defaults():
    config = from_env({}, cwd="/srv")
    assert config["STEP_TIMEOUT"] == 600
    assert config["RUN_LEASE"] == 15
    assert config["SELF_URL"] == "http://127.0.0.1:8000"


def test_self_url_follows_port_unless_set():
    assert from_env({"PORT": "5000"}, cwd="/srv")["SELF_URL"] == "http://127.0.0.1:5000"
    given = {"PORT": "5000", "WORKFLOW_SELF_URL": "https://app.example.com/tools/"}
    assert from_env(given, cwd="/srv")["SELF_URL"] == "https://app.example.com/tools"


@pytest.mark.parametrize(
    "raw", ["ftp://host", "127.0.0.1:8000", "http://", "http://h/?q=1", "http://h:port", "/x"]
)
def test_self_url_must_be_an_http_url(raw: str):
    with pytest.raises(ConfigError, match="WORKFLOW_SELF_URL"):
        from_env({"WORKFLOW_SELF_URL": raw}, cwd="/srv")


@pytest.mark.parametrize("name", ["WORKFLOW_STEP_TIMEOUT", "WORKFLOW_RUN_LEASE"])
@pytest.mark.parametrize("raw", ["0", "-1", "soon", "nan"])
def test_step_timeout_and_lease_must_be_positive(name: str, raw: str):
    with pytest.raises(ConfigError, match=name):
        from_env({name: raw}, cwd="/srv")
