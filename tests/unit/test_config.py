"""Configuration: defaults, environment, test override, and refusing to start when wrong."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from service import create_app
from service.config import SETTINGS, from_env
from service.store import check_environment
from tests.support import ROOT, VENV_BIN

README = (ROOT / "README.md").read_text()


def test_defaults_match_the_contract(tmp_path):
    config = from_env({}, cwd=str(tmp_path))
    assert config["STATE_URL"] == f"file://{tmp_path}/var/workflow_state.json"
    assert config["STATE_KEY"] == "workflow:state"
    assert config["STATE_TTL"] == 30
    assert config["STATE_STALE_TTL"] == 86400
    assert config["CORS_ORIGINS"] == ("*",)
    assert config["MAX_CONTENT_LENGTH"] == 262144
    assert config["STATE_TOKEN"] is None
    assert config["STATE_SECRET_KEYS"] == ()
    assert config["LOG_FORMAT"] == "text"
    assert config["STEPS_FILE"] is None
    assert config["DEMO_STEP_SECONDS"] == 2
    assert config["DEMO_FAIL"] is None


def test_redis_url_is_the_fallback_and_workflow_state_url_wins():
    assert from_env({"REDIS_URL": "redis://r:6379/1"})["STATE_URL"] == "redis://r:6379/1"
    assert (
        from_env({"REDIS_URL": "redis://r", "WORKFLOW_STATE_URL": "file:///x/s.json"})["STATE_URL"]
        == "file:///x/s.json"
    )


def test_environment_then_test_override(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKFLOW_STATE_URL", f"file://{tmp_path}/a.json")
    monkeypatch.setenv("WORKFLOW_STATE_TTL", "7")
    monkeypatch.setenv("WORKFLOW_STATE_CORS_ORIGINS", "https://a.example, https://b.example")
    app = create_app({"STATE_TTL": 3})
    assert app.config["STATE_URL"] == f"file://{tmp_path}/a.json"
    assert app.config["STATE_TTL"] == 3
    assert app.config["CORS_ORIGINS"] == ("https://a.example", "https://b.example")


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"WORKFLOW_STATE_URL": "ftp://host/x"}, "WORKFLOW_STATE_URL"),
        ({"WORKFLOW_STATE_URL": "file://relative.json"}, "WORKFLOW_STATE_URL"),
        ({"WORKFLOW_STATE_TTL": "soon"}, "WORKFLOW_STATE_TTL"),
        ({"WORKFLOW_STATE_MAX_BODY": "0"}, "WORKFLOW_STATE_MAX_BODY"),
        ({"WORKFLOW_STATE_LOG_FORMAT": "xml"}, "WORKFLOW_STATE_LOG_FORMAT"),
        ({"WORKFLOW_STATE_SECRET_KEY": "not-a-key"}, "WORKFLOW_STATE_SECRET_KEY"),
        ({"WORKFLOW_STEPS_FILE": "/nonexistent/steps.json"}, "WORKFLOW_STEPS_FILE"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable(env, words):
    problem = check_environment(env)
    assert problem is not None and words in problem and "\n" not in problem


def test_gunicorn_refuses_to_start_on_an_unknown_scheme(tmp_path):
    result = subprocess.run(
        [str(VENV_BIN / "gunicorn"), "-c", "deploy/gunicorn.conf.py", "service.wsgi:app"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "WORKFLOW_STATE_URL": "memcached://x", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "WORKFLOW_STATE_URL" in line]
    assert len(lines) == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == lines  # that line, and nothing else


def test_readme_config_table_lists_every_variable():
    for setting in SETTINGS:
        assert re.search(rf"\|\s*`{setting.env}`\s*\|", README), setting.env
    assert "`REDIS_URL`" in README and "`WEB_CONCURRENCY`" in README and "`PORT`" in README


def test_env_example_lists_every_variable():
    example = (ROOT / "deploy" / "env.example").read_text()
    for setting in SETTINGS:
        assert re.search(rf"^#?\s*{setting.env}=", example, re.M), setting.env


def test_steps_file_is_served_by_config(tmp_path: Path):
    steps_file = tmp_path / "steps.json"
    steps_file.write_text(
        '[{"action": "build", "label": "Build"}, {"action": "ship", "endpoint": "/api/ship"}]'
    )
    app = create_app({"STATE_URL": f"file://{tmp_path}/s.json", "STEPS_FILE": str(steps_file)})
    body = app.test_client().get("/workflow/config").get_json()
    assert body["success"] is True
    assert body["steps"] == [
        {"action": "build", "label": "Build"},
        {"action": "ship", "label": "ship", "endpoint": "/api/ship"},
    ]
    assert isinstance(body["step_delay_ms"], int)
