"""The routes of server runs (contract section 9): start and cancel. Thin: the work is in
service/runner/control.py, which the routes of `/workflows` (POST with `"run": true`) use too.

    POST /workflows/<id>/run      202 {"success": true, "message": "Workflow run started", "state"}
    POST /workflows/<id>/cancel   200 {"success": true, "message": "Workflow cancelled", "state"}
    POST /workflow/state/cancel   the same, for the owner's current workflow
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app

from .errors import json_response
from .identity import current_identity
from .metrics import metrics_of
from .runner.control import QUEUE, RunControl
from .runner.metrics import PrometheusRunObserver
from .runner.queue import QueueStatsCollector
from .storage import Snapshot
from .store import store_of

bp = Blueprint("runs", __name__)
EXTENSION = "workflow_runs"

STARTED = "Workflow run started"
CANCELLED = "Workflow cancelled"


def runs_of(app: Flask) -> RunControl:
    """Return `app`'s run control."""
    return app.extensions[EXTENSION]


def started(snapshot: Snapshot) -> Response:
    """Answer 202 with the state whose run was queued."""
    return json_response(
        f'{{"success":true,"message":"{STARTED}","state":{snapshot.json}}}',
        202,
        headers={"Cache-Control": "no-store"},
    )


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


def init_app(app: Flask) -> None:
    """Give the app its run control and routes, and its run metrics.

    On the file backend this process runs workflows itself: its run threads and lease monitor
    start now, in the process that serves (gunicorn builds the app in each worker after the
    fork), except for a test app, which starts them with its first run.
    """
    control = RunControl(store_of(app), app.config)
    app.extensions[EXTENSION] = control
    metrics = metrics_of(app)
    if control.mode == QUEUE:
        # Workers count on the queue's Redis; a scrape reads the totals there.
        metrics.add_collector(QueueStatsCollector(lambda: control.queue))
    else:
        control.observer = PrometheusRunObserver(metrics.registry)
        if not app.config.get("TESTING"):
            control.ensure_running()
    app.register_blueprint(bp)
