"""The web page, its step list (GET /workflow/config) and the built-in step simulator."""

from __future__ import annotations

import json
import os
import re

from flask import Blueprint, Flask, Response, current_app, send_from_directory
from werkzeug.exceptions import HTTPException

from . import model
from .config import ConfigError
from .errors import error_response
from .runner.steps import simulate
from .storage import dumps

bp = Blueprint("pages", __name__)

STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static")

# The reference workflow: setting up a VastAI GPU instance.
DEFAULT_STEPS: tuple[dict[str, str], ...] = (
    {"action": "test_ssh", "label": "Test SSH"},
    {"action": "set_ui_home", "label": "Set UI Home"},
    {"action": "setup_civitdl", "label": "Set up CivitDL"},
    {"action": "sync_instance", "label": "Sync Instance"},
    {"action": "install_custom_nodes", "label": "Install Custom Nodes"},
    {"action": "verify_dependencies", "label": "Verify Dependencies"},
)
STEPS_KEY = "WORKFLOW_STEPS"
# The live-updates route (contract section 5). The page opens it only when the app serves it.
STREAM_PATH = "/workflow/state/stream"


def load_steps(path: str | None) -> list[dict[str, str]]:
    """Read and check the WORKFLOW_STEPS_FILE list, or return the built-in VastAI steps."""
    if not path:
        return [dict(step) for step in DEFAULT_STEPS]
    try:
        with open(path, encoding="utf-8") as handle:
            steps = json.load(handle)
    except (OSError, ValueError) as error:
        raise ConfigError(f"WORKFLOW_STEPS_FILE {path!r} cannot be read as JSON: {error}") from None
    if not isinstance(steps, list) or not steps:
        raise ConfigError(f"WORKFLOW_STEPS_FILE {path!r} must hold a non-empty JSON list")
    checked = []
    for position, step in enumerate(steps):
        where = f"WORKFLOW_STEPS_FILE {path!r}, step {position}"
        if not isinstance(step, dict):
            raise ConfigError(f"{where}: must be an object")
        action, label = step.get("action"), step.get("label", step.get("action"))
        if not isinstance(action, str) or not model.WORKFLOW_ID_RE.match(action):
            raise ConfigError(f"{where}: 'action' must be 1-128 characters of A-Z a-z 0-9 _ . : -")
        if not isinstance(label, str) or not label.strip():
            raise ConfigError(f"{where}: 'label' must be a non-empty string")
        entry = {"action": action, "label": label}
        endpoint = step.get("endpoint")
        if endpoint is not None:
            if not isinstance(endpoint, str) or not re.match(r"(/|https?://)\S*\Z", endpoint):
                raise ConfigError(f"{where}: 'endpoint' must be a path or an http(s) URL")
            entry["endpoint"] = endpoint
        checked.append(entry)
    return checked


@bp.get("/")
def index() -> Response:
    """Serve the page."""
    return send_from_directory(STATIC_DIR, "index.html", max_age=0)


def stream_url() -> str | None:
    """Return the live-updates path when a route serves it, else None.

    The page asks here instead of probing the stream, so a server without streams costs the
    browser no failed request (and no console error): the page polls instead.
    """
    try:
        current_app.url_map.bind("localhost").match(STREAM_PATH, method="GET")
    except HTTPException:
        return None
    return STREAM_PATH


@bp.get("/workflow/config")
def workflow_config() -> Response:
    """Answer the steps the page shows, the pause it makes between them, and its live feed."""
    body = {
        "success": True,
        "steps": current_app.config[STEPS_KEY],
        "step_delay_ms": current_app.config["STEP_DELAY_MS"],
        "stream_url": stream_url(),
    }
    return Response(dumps(body), mimetype="application/json")


@bp.post("/workflow/actions/<action>")
def run_action(action: str) -> Response:
    """Simulate a step: take WORKFLOW_DEMO_STEP_SECONDS, fail the WORKFLOW_DEMO_FAIL action."""
    known = {step["action"] for step in current_app.config[STEPS_KEY]}
    if action not in known:
        return error_response(404, "unknown_action", f"There is no step action {action[:128]!r}")
    body = simulate(
        action,
        seconds=current_app.config["DEMO_STEP_SECONDS"],
        fail_action=current_app.config["DEMO_FAIL"],
    )
    return Response(dumps(body), mimetype="application/json")


def init_app(app: Flask) -> None:
    """Load the step list once and register the page routes."""
    app.config[STEPS_KEY] = load_steps(app.config.get("STEPS_FILE"))
    app.register_blueprint(bp)
