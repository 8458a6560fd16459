"""The routes of many workflows: parse the request, call the store, answer.

    POST   /workflows                      create (with "run": true, also start it)   201
    GET    /workflows?status=&limit=&cursor=   the owner's workflows, newest change first
    GET    /workflows/stream               the owner's list, live (SSE `event: workflow`)
    GET    /workflows/<id>                 one workflow, ETag / If-None-Match as GET state
    PATCH  /workflows/<id>                 merge top-level fields
    PATCH  /workflows/<id>/steps/<i>       update one step
    DELETE /workflows/<id>                 delete (unknown → 404)
    GET    /workflows/<id>/summary         its summary
    GET    /workflows/<id>/stream          it, live (SSE `event: state`)

Another owner's workflow is answered as one that does not exist. The run routes of section 9
(`/workflows/<id>/run`, `/cancel`) are in run_api.py.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app, request

from . import model
from .api import CLEARED, NO_STORE, SAVED, if_match, query_number, read_json, saved, state_answer
from .errors import json_response
from .identity import current_identity
from .run_api import runs_of
from .storage import Snapshot, dumps
from .storage.listing import LIMIT_DEFAULT, LIMIT_MAX, page_json
from .store import get_store
from .stream import list_stream_response, stream_response

bp = Blueprint("workflows", __name__, url_prefix="/workflows")

STARTED = "Workflow run started"


def _found(snapshot: Snapshot, workflow_id: str) -> Snapshot:
    """Return the snapshot, or raise NoWorkflow when the workflow is absent or expired."""
    if snapshot.state is None:
        raise model.NoWorkflow.named(workflow_id)
    return snapshot


@bp.post("")
def create() -> Response:
    """Create a workflow and make it the owner's current one; `"run": true` also starts it."""
    body = read_json()
    owner = current_identity().owner
    snapshot = runs_of(current_app).create(owner, body)
    started = model.require_object(body).get("run") is True
    location = {"Location": f"/workflows/{snapshot.state['workflow_id']}"}  # type: ignore[index]
    return saved(snapshot, 201, STARTED if started else SAVED, location)


@bp.get("")
def list_workflows() -> Response:
    """Answer a page of the owner's workflows (an admin's `?owner=*`: every owner's)."""
    identity = current_identity(allow_all_owners=True)
    status = request.args.get("status", "all")
    limit = query_number("limit", LIMIT_DEFAULT, LIMIT_MAX)
    cursor = request.args.get("cursor") or None  # empty, as a form sends it: the first page
    store = get_store()
    if identity.all_owners:
        page = store.list_every_owner(status=status, limit=limit, cursor=cursor)
    else:
        page = store.list(identity.owner, status=status, limit=limit, cursor=cursor)
    # The entries as they were serialised when made: a page re-encodes none of them.
    body = (
        f'{{"success":true,"workflows":{page_json(page.entries)},'
        f'"next_cursor":{dumps(page.next_cursor)}}}'
    )
    return json_response(body, headers={"Cache-Control": NO_STORE})


@bp.get("/stream")
def list_stream() -> Response:
    """Stream every change of the owner's workflows as list entries (SSE)."""
    return list_stream_response(current_identity().owner)


@bp.get("/<workflow_id>")
def get_workflow(workflow_id: str) -> Response:
    """Answer one workflow, with its version as ETag."""
    snapshot = _found(get_store().get(current_identity().owner, workflow_id), workflow_id)
    return state_answer(snapshot, str(snapshot.version))


@bp.patch("/<workflow_id>")
def merge_workflow(workflow_id: str) -> Response:
    """Replace top-level fields of one workflow."""
    owner = current_identity().owner
    return saved(get_store().merge(owner, workflow_id, read_json(), if_match=if_match()))


@bp.patch("/<workflow_id>/steps/<index>")
def update_step(workflow_id: str, index: str) -> Response:
    """Update one step of one workflow atomically."""
    position = model.parse_step_index(index)
    owner = current_identity().owner
    store = get_store()
    return saved(store.update_step(owner, workflow_id, position, read_json(), if_match=if_match()))


@bp.delete("/<workflow_id>")
def delete_workflow(workflow_id: str) -> Response:
    """Delete one workflow; an unknown one is 404."""
    get_store().delete(current_identity().owner, workflow_id)
    return json_response(f'{{"success":true,"message":"{CLEARED}"}}')


@bp.get("/<workflow_id>/summary")
def summary(workflow_id: str) -> Response:
    """Answer one workflow's progress summary."""
    snapshot = _found(get_store().get(current_identity().owner, workflow_id), workflow_id)
    body = dumps({"success": True, "summary": model.summarize(snapshot.state)})
    return json_response(body, headers={"Cache-Control": NO_STORE})


@bp.get("/<workflow_id>/stream")
def stream(workflow_id: str) -> Response:
    """Stream one workflow: a snapshot, then every change, as SSE."""
    return stream_response((current_identity().owner, workflow_id), must_exist=True)


def init_app(app: Flask) -> None:
    """Register the routes of /workflows."""
    app.register_blueprint(bp)
