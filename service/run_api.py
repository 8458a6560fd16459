"""The routes of server runs: start and cancel. Thin: the work is in
service/runner/control.py, which the routes of `/workflows` (POST with `"run": true`) use too.

    POST /workflows/<id>/run      202 {"success": true, "message": "Workflow run started", "state"}
    POST /workflows/<id>/cancel   200 {"success": true, "message": "Workflow cancelled", "state"}
    POST /workflows/<id>/resume   202 {"success": true, "message": "Workflow resumed", "state"}
    POST /workflows/<id>/retry    202 {"success": true, "message": "Workflow retried", "state"}
    POST /workflows/<id>/steps/<i>/progress   200 {"success": true, "message": "Progress saved"}
    POST /workflow/state/cancel|resume|retry   the same, for the owner's current workflow

The progress route takes no identity but the step call's progress token (Authorization:
Bearer <token>, an X-Progress-Token header, or `progress_token` in the body): identity.py lets
it through, and the token names the owner.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, current_app, request

from . import model, runs, schema
from .api import read_json
from .errors import json_response
from .identity import current_identity
from .metrics import metrics_of
from .runner.control import QUEUE, RunControl
from .runner.metrics import BlockedCollector, PrometheusRunObserver
from .runner.queue import QueueStatsCollector
from .storage import Snapshot
from .store import store_of

bp = Blueprint("runs", __name__)
EXTENSION = "workflow_runs"

STARTED = "Workflow run started"
CANCELLED = "Workflow cancelled"
RESUMED = "Workflow resumed"
RETRIED = "Workflow retried"
PROGRESS_SAVED = "Progress saved"
# Where a step call's progress token may come (identity.py lets the route through on its own).
PROGRESS_TOKEN_HEADER = "X-Progress-Token"


def runs_of(app: Flask) -> RunControl:
    """Return `app`'s run control."""
    return app.extensions[EXTENSION]


def started(snapshot: Snapshot, message: str = STARTED) -> Response:
    """Answer 202 with the state whose run was queued."""
    return json_response(
        f'{{"success":true,"message":"{message}","state":{snapshot.json}}}',
        202,
        headers={"Cache-Control": "no-store"},
    )


def _optional_json() -> Any:
    """Return the body parsed as JSON, or None when there is none."""
    if not request.get_data(cache=True).strip():
        return None
    return read_json()


def _cancelled(snapshot: Snapshot) -> Response:
    return json_response(
        f'{{"success":true,"message":"{CANCELLED}","state":{snapshot.json}}}',
        headers={"Cache-Control": "no-store"},
    )


@bp.post("/workflows/<workflow_id>/run")
def start_run(workflow_id: str) -> Response:
    """Queue a server run of the workflow's remaining steps."""
    owner = current_identity().owner
    return started(runs_of(current_app).start(owner, workflow_id))


@bp.post("/workflows/<workflow_id>/cancel")
def cancel_workflow(workflow_id: str) -> Response:
    """Cancel the workflow: its running step, itself, and its run."""
    owner = current_identity().owner
    return _cancelled(runs_of(current_app).cancel(owner, workflow_id))


@bp.post("/workflow/state/cancel")
def cancel_current() -> Response:
    """Cancel the owner's current workflow."""
    owner = current_identity().owner
    return _cancelled(runs_of(current_app).cancel(owner, None))


@bp.post("/workflows/<workflow_id>/resume")
def resume_workflow(workflow_id: str) -> Response:
    """Answer a blocked workflow's question; a new run starts at the blocked step."""
    owner = current_identity().owner
    body = _optional_json()
    return started(runs_of(current_app).resume(owner, workflow_id, body), RESUMED)


@bp.post("/workflow/state/resume")
def resume_current() -> Response:
    """Answer the owner's current workflow's question."""
    owner = current_identity().owner
    body = _optional_json()
    return started(runs_of(current_app).resume(owner, None, body), RESUMED)


@bp.post("/workflows/<workflow_id>/retry")
def retry_workflow(workflow_id: str) -> Response:
    """Run a failed workflow again from its failed step."""
    owner = current_identity().owner
    return started(runs_of(current_app).retry(owner, workflow_id), RETRIED)


@bp.post("/workflow/state/retry")
def retry_current() -> Response:
    """Run the owner's current workflow again from its failed step."""
    owner = current_identity().owner
    return started(runs_of(current_app).retry(owner, None), RETRIED)


def _progress_token(body: Any) -> str:
    """Return the progress token the request carries, or raise ProgressRefused."""
    authorization = request.headers.get("Authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip().startswith(runs.PROGRESS_TOKEN_PREFIX):
        return value.strip()
    header = request.headers.get(PROGRESS_TOKEN_HEADER)
    if header:
        return header.strip()
    if isinstance(body, dict) and isinstance(body.get("progress_token"), str):
        return body["progress_token"]
    raise runs.ProgressRefused(
        "A progress report needs its step call's progress_token (Authorization: Bearer "
        f"<token>, {PROGRESS_TOKEN_HEADER}, or progress_token in the body)"
    )


@bp.post("/workflows/<workflow_id>/steps/<index>/progress")
def report_progress(workflow_id: str, index: str) -> Response:
    """Store a running step's report on itself; its progress token is the only identity."""
    body = _optional_json()
    token = _progress_token(body)
    named = runs.read_progress_token(token)
    step = model.parse_step_index(index)
    report = model.require_object(body)
    try:
        schema.check_progress(report)
    except schema.FieldError as error:
        raise model.InvalidState(error.field, error.rule) from None
    report = {key: value for key, value in report.items() if key != "progress_token"}
    snapshot = store_of(current_app).report_progress(named.owner, workflow_id, token, step, report)
    return json_response(
        f'{{"success":true,"message":"{PROGRESS_SAVED}","version":{snapshot.version}}}',
        headers={"Cache-Control": "no-store"},
    )


def init_app(app: Flask) -> None:
    """Give the app its run control and routes, and its run metrics.

    On the file backend this process runs workflows itself: its run threads and lease monitor
    start now, in the process that serves (gunicorn builds the app in each worker after the
    fork), except for a test app, which starts them with its first run.
    """
    control = RunControl(store_of(app), app.config)
    app.extensions[EXTENSION] = control
    metrics = metrics_of(app)
    metrics.add_collector(BlockedCollector(store_of(app)))
    if control.mode == QUEUE:
        # Workers count on the queue's Redis; a scrape reads the totals there.
        metrics.add_collector(QueueStatsCollector(lambda: control.queue))
    else:
        control.observer = PrometheusRunObserver(metrics.registry)
        if not app.config.get("TESTING"):
            control.ensure_running()
    app.register_blueprint(bp)
