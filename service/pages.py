"""The web page, its step list (GET /workflow/config) and the built-in step simulator."""

from __future__ import annotations

import os

from flask import Blueprint, Flask, Response, current_app, send_from_directory
from werkzeug.exceptions import HTTPException

from .config import load_steps
from .errors import error_response
from .runner.steps import simulate
from .storage import dumps

bp = Blueprint("pages", __name__)

# Inside the package, so an installed (not only an editable) service serves the page too.
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

STEPS_KEY = "WORKFLOW_STEPS"
# The live-updates route. The page opens it only when the app serves it.
STREAM_PATH = "/workflow/state/stream"


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
