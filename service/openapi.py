"""GET /openapi.json: the HTTP contract as an OpenAPI 3.1 document.

Every body schema comes from `schema` (the same types that validate requests), so the document,
the validation and docs/api.md cannot disagree. This module only says which route answers
what: the table of operations below, with the repeated parts (error answers, the bearer token,
CORS preflights) generated. The tests validate the service's real responses against the
document and fuzz the API from it.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from flask import Blueprint, Flask, Response

from . import schema
from .schema import HISTORY_MAX, JSON, Schema
from .storage import dumps

bp = Blueprint("openapi", __name__)

OPENAPI_PATH = "/openapi.json"
VERSION = "1.0.0"


def ref(kind: str, name: str) -> Schema:
    """Return a $ref to a component, e.g. ref("responses", "NotFound")."""
    return {"$ref": f"#/components/{kind}/{name}"}


def answer(
    body: str | None, description: str, headers: dict[str, Any] | None = None, media: str = JSON
) -> Schema:
    """Return a Response Object whose body is the component schema `body` (None: no body)."""
    response: Schema = {"description": description}
    if headers:
        response["headers"] = headers
    if body is not None:
        response["content"] = {media: {"schema": schema.ref(body)}}
    return response


def text(media: str, description: str, headers: dict[str, Any] | None = None) -> Schema:
    """Return a Response Object with a body that is not JSON."""
    response = answer(None, description, headers)
    response["content"] = {media: {"schema": {"type": "string"}}}
    return response


# --- headers, parameters, shared responses ---------------------------------------------------

HEADERS: dict[str, Schema] = {
    "ETag": {
        "description": 'The stored version, quoted: "<version>" ("0" when there is no state)',
        "required": True,
        "schema": {"type": "string", "pattern": '^"[0-9]+"$'},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    },
    "CacheControlNoStore": {"schema": {"const": "no-store"}},
    "Location": {
        "description": "The new workflow: /workflows/<id>",
        "required": True,
        "schema": {"type": "string", "pattern": "^/workflows/"},
    },
    "WWW-Authenticate": {"required": True, "schema": {"type": "string", "pattern": "^Bearer"}},
    "Allow": {"description": "the methods the path serves", "schema": {"type": "string"}},
    "Access-Control-Allow-Origin": {"schema": {"type": "string"}},
    "Access-Control-Allow-Methods": {"required": True, "schema": {"type": "string"}},
    "Access-Control-Allow-Headers": {"required": True, "schema": {"type": "string"}},
}
NO_STORE = {"Cache-Control": ref("headers", "CacheControlNoStore")}
VERSIONED = {"ETag": ref("headers", "ETag"), **NO_STORE}


def event_stream(component: str, description: str) -> Schema:
    """Return the answer of a Server-Sent Events route whose events are `component`."""
    return answer(
        component,
        description,
        {
            "Cache-Control": {"schema": {"const": "no-cache"}},
            "X-Accel-Buffering": {"schema": {"const": "no"}},
        },
        media="text/event-stream",
    )


def header_param(name: str, description: str) -> Schema:
    """Return a request-header Parameter Object."""
    return {"name": name, "in": "header", "description": description, "schema": {"type": "string"}}


def path_param(name: str, value: Schema, description: str | None = None) -> Schema:
    """Return a path Parameter Object."""
    parameter = {"name": name, "in": "path", "required": True, "schema": value}
    return {**parameter, "description": description} if description else parameter


PARAMETERS: dict[str, Schema] = {
    "IfMatch": header_param(
        "If-Match",
        'Write only if the stored version is this one ("<version>" or *); else 412. Empty: '
        "no condition",
    ),
    "IfNoneMatch": header_param(
        "If-None-Match", "The ETag last seen; 304 when the state is still that version"
    ),
    "LastEventId": header_param("Last-Event-ID", "Skip the first snapshot when it has this id"),
    "StepIndex": path_param(
        "index",
        # No workflow has more steps than that; the stored one may have fewer (400 then too).
        {"type": "integer", "minimum": 0, "maximum": schema.MAX_STEPS - 1},
        "The step's position; anything but a whole number below len(steps) is 400",
    ),
    "WorkflowId": path_param(
        "workflow_id",
        {"type": "string", "pattern": schema.WORKFLOW_ID_PATTERN},
        "The workflow's id; one that breaks the id rule is 400 `invalid_workflow_id`, one the "
        "owner does not have is 404 `no_workflow`",
    ),
    "ListStatus": {
        "name": "status",
        "in": "query",
        "description": "running, finished (completed, failed or cancelled) or all",
        "schema": {"enum": ["running", "finished", "all"], "default": "all"},
    },
    "ListLimit": {
        "name": "limit",
        "in": "query",
        "description": "How many workflows a page holds; anything else is 400",
        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50},
    },
    "Cursor": {
        "name": "cursor",
        "in": "query",
        "description": "A page's `next_cursor` (empty: the first page); one not issued for "
        "this list is 400 `invalid_cursor`",
        "schema": {"type": "string"},
    },
    "Owner": {
        "name": "owner",
        "in": "query",
        "description": "An admin acts on this owner's workflows (`*` on a list: every owner's); "
        "anyone else asking for another owner is 403, a name that is not a user name 400",
        "schema": {"anyOf": [schema.ref("UserName"), {"const": "*"}]},
    },
    "HistoryLimit": {
        "name": "limit",
        "in": "query",
        "description": "How many finished workflows to answer; anything else is 400",
        "schema": {"type": "integer", "minimum": 1, "maximum": HISTORY_MAX, "default": HISTORY_MAX},
    },
}
# A path segment of any text (the route decides what it means).
ANY_TEXT: Schema = {"type": "string", "minLength": 1}

# Each error status, and the shared response that documents it.
ERRORS: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "400": (
        "BadRequest",
        "The body is empty or not a JSON object (`state_required`, message contains "
        '"required"), a field breaks its rule (`invalid_state`, message `Invalid field '
        "'<path>': <rule>` quoting the field's description), a bad step index "
        "(`invalid_index`), an ?owner= that is not a user name (`invalid_owner`), or a resume's "
        "input that does not answer the blocked step's fields (`invalid_input`)",
        None,
    ),
    "401": (
        "Unauthorized",
        "WORKFLOW_STATE_TOKEN is set and the bearer token is missing or wrong (`unauthorized`)",
        {"WWW-Authenticate": ref("headers", "WWW-Authenticate")},
    ),
    "403": (
        "Forbidden",
        "?owner= names another owner and the caller is not an admin, or a progress report's "
        "token is missing, unknown or its step call has ended (`forbidden`)",
        None,
    ),
    "404": ("NotFound", "No such path, or no stored workflow to update (`no_workflow`)", None),
    "405": (
        "MethodNotAllowed",
        "The path does not serve this method (`method_not_allowed`)",
        {"Allow": ref("headers", "Allow")},
    ),
    "409": (
        "Conflict",
        "The stored workflow is finished, and finished is final (`workflow_finished`), the "
        "workflow_id guard differs from the stored one (`workflow_mismatch`), a run is active "
        "(`run_active`), a runner's or a progress token's run was superseded "
        "(`run_superseded`), a resume of a workflow that is not blocked (`not_blocked`), or a "
        "retry of one that has not failed (`not_failed`)",
        None,
    ),
    "412": (
        "PreconditionFailed",
        "If-Match does not name the stored version, or there is no state (`precondition_failed`)",
        None,
    ),
    "413": (
        "PayloadTooLarge",
        "The body is over WORKFLOW_STATE_MAX_BODY (`payload_too_large`), the workflow would be "
        "stored larger than WORKFLOW_STATE_MAX_WORKFLOW_BYTES (`state_too_large`), or the "
        "owner's unexpired workflows together larger than WORKFLOW_STATE_MAX_OWNER_BYTES "
        "(`owner_quota_exceeded`); nothing was stored",
        None,
    ),
    "429": (
        "TooManyWorkflows",
        "The owner has WORKFLOW_STATE_MAX_WORKFLOWS unexpired workflows (`too_many_workflows`)",
        None,
    ),
    "503": (
        "Unavailable",
        "Storage is down or the write lock stayed busy past WORKFLOW_STATE_LOCK_WAIT "
        "(`backend_unavailable`); answered within 2 s",
        {"Retry-After": ref("headers", "Retry-After")},
    ),
}
RESPONSES: dict[str, Schema] = {
    name: answer("Error", description, headers) for name, description, headers in ERRORS.values()
}
RESPONSES["Preflight"] = answer(
    None,
    "CORS preflight: always answered, never needs the token",
    {name: ref("headers", name) for name in HEADERS if name.startswith("Access-Control-")},
)

# --- operations ------------------------------------------------------------------------------

# With WORKFLOW_STATE_TOKEN set the bearer token is required; unset, no credentials at all.
TOKEN: list[dict[str, list[str]]] = [{"bearerAuth": []}, {}]
OPEN: list[dict[str, list[str]]] = []
# As service/identity.py: /workflow/* and /workflows*, but a step's progress report.
PROTECTED_PREFIX = "/workflow"
PROGRESS_SUFFIX = "/progress"


def op(
    operation_id: str,
    summary: str,
    ok: dict[str, Schema],
    errors: str = "",
    *,
    body: str | None = None,
    parameters: tuple[Schema, ...] = (),
    tag: str = "state",
    description: str | None = None,
) -> Schema:
    """Return an Operation Object; `errors` lists its error statuses ("400 409 503")."""
    operation: Schema = {"operationId": operation_id, "summary": summary, "tags": [tag]}
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = list(parameters)
    if body:
        operation["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": schema.ref(body)}},
        }
    errors_answers = {code: ref("responses", ERRORS[code][0]) for code in errors.split()}
    operation["responses"] = {**ok, **errors_answers}
    return operation


def saved(
    name: str, summary: str, errors: str, body: str, *extra: Schema, tag: str = "state"
) -> Schema:
    """Return a write operation: If-Match, a JSON body, and the stored state as its answer."""
    return op(
        name,
        summary,
        {"200": answer("SavedResponse", "Stored; the state as stored", VERSIONED)},
        errors,
        body=body,
        parameters=(*extra, ref("parameters", "IfMatch")),
        tag=tag,
    )


WRITE_ERRORS = "400 404 409 412 413 503"

# path -> method -> operation. Every path also answers a CORS preflight (added below), and
# every /workflow/ operation the bearer token and its 401.
ROUTES: dict[str, dict[str, Schema]] = {
    "/workflow/state": {
        "get": op(
            "getState",
            "The current state (null when none); ETag is its version",
            {
                "200": answer(
                    "StateResponse",
                    'The state; ETag is its version, or "0" when there is none',
                    VERSIONED,
                ),
                "304": answer(
                    None,
                    'If-None-Match names the current version (or "0")',
                    {"ETag": ref("headers", "ETag")},
                ),
            },
            "503",
            parameters=(ref("parameters", "IfNoneMatch"),),
        ),
        "post": saved(
            "saveState", "Save or replace the whole state", "400 409 412 413 503", "StateInput"
        ),
        "patch": saved(
            "mergeState", "Replace top-level fields of the stored state", WRITE_ERRORS, "MergeInput"
        ),
        "delete": op(
            "clearState",
            "Clear the state (also when there is none)",
            {"200": answer("ClearedResponse", "Cleared")},
            "503",
        ),
    },
    "/workflow/state/steps/{index}": {
        "patch": saved(
            "updateStep",
            "Set one step's status (and data) atomically and make it the current step",
            WRITE_ERRORS,
            "StepChange",
            ref("parameters", "StepIndex"),
        ),
    },
    "/workflow/state/summary": {
        "get": op(
            "getSummary",
            "Progress summary",
            {"200": answer("SummaryResponse", "The summary", NO_STORE)},
            "503",
        ),
    },
    "/workflow/state/stream": {
        "get": op(
            "streamState",
            "Live updates (Server-Sent Events): `event: state`, `id: <version>`, "
            "`data: <the GET /workflow/state body>`",
            {"200": event_stream("StateEvent", "An event stream that stays open")},
            "503",
            parameters=(ref("parameters", "LastEventId"),),
            description=(
                "A 503 is `backend_unavailable` when storage is down at connect time, or "
                "`too_many_streams` when this worker has no thread to spare for another stream."
            ),
        ),
    },
    "/workflow/state/cancel": {
        "post": op(
            "cancelState",
            "Cancel the current workflow: its running step, itself and its server run",
            {"200": answer("CancelledResponse", "Cancelled (also when it already was)", NO_STORE)},
            "404 409 503",
            tag="runs",
        ),
    },
    "/workflows": {
        "get": op(
            "listWorkflows",
            "The owner's workflows, most recent last_update first (expired ones never)",
            {"200": answer("WorkflowList", "A page of the list", NO_STORE)},
            "400 403 503",
            parameters=(
                ref("parameters", "ListStatus"),
                ref("parameters", "ListLimit"),
                ref("parameters", "Cursor"),
                ref("parameters", "Owner"),
            ),
            tag="workflows",
        ),
        "post": op(
            "createWorkflow",
            "Create a workflow and make it the owner's current one; `run: true` also starts it",
            {
                "201": answer(
                    "Created",
                    "Created; the state as stored (with `run: true`, the message says the run "
                    "started)",
                    {**VERSIONED, "Location": ref("headers", "Location")},
                )
            },
            "400 409 413 429 503",
            body="CreateWorkflowInput",
            tag="workflows",
            description=(
                "409 is `workflow_exists` when the owner has this id, `workflow_finished` when "
                "that one is finished; a deleted or expired id may be created again."
            ),
        ),
    },
    "/workflows/stream": {
        "get": op(
            "streamWorkflows",
            "The owner's list, live (Server-Sent Events): `event: workflow`, `data:` the list "
            'entry on every change, or `{"workflow_id", "state": null}` on delete or expiry',
            {
                "200": event_stream(
                    "WorkflowEvent",
                    "An event stream that stays open; no snapshot: read GET /workflows once "
                    "it is open, and again whenever it reconnects",
                )
            },
            "503",
            tag="workflows",
        ),
    },
    "/workflows/{workflow_id}": {
        "get": op(
            "getWorkflow",
            "One workflow; ETag is its version",
            {
                "200": answer("StateResponse", "The workflow", VERSIONED),
                "304": answer(
                    None, "If-None-Match names its version", {"ETag": ref("headers", "ETag")}
                ),
            },
            "400 404 503",
            parameters=(ref("parameters", "WorkflowId"), ref("parameters", "IfNoneMatch")),
            tag="workflows",
        ),
        "patch": saved(
            "mergeWorkflow",
            "Replace top-level fields of one workflow",
            WRITE_ERRORS,
            "MergeInput",
            ref("parameters", "WorkflowId"),
            tag="workflows",
        ),
        "delete": op(
            "deleteWorkflow",
            "Delete one workflow",
            {"200": answer("ClearedResponse", "Deleted")},
            "400 404 503",
            parameters=(ref("parameters", "WorkflowId"),),
            tag="workflows",
        ),
    },
    "/workflows/{workflow_id}/steps/{index}": {
        "patch": saved(
            "updateWorkflowStep",
            "Set one step's status (and data) atomically and make it the current step",
            WRITE_ERRORS,
            "StepChange",
            ref("parameters", "WorkflowId"),
            ref("parameters", "StepIndex"),
            tag="workflows",
        ),
    },
    "/workflows/{workflow_id}/summary": {
        "get": op(
            "getWorkflowSummary",
            "One workflow's progress summary",
            {"200": answer("SummaryResponse", "The summary", NO_STORE)},
            "400 404 503",
            parameters=(ref("parameters", "WorkflowId"),),
            tag="workflows",
        ),
    },
    "/workflows/{workflow_id}/stream": {
        "get": op(
            "streamWorkflow",
            "One workflow, live (Server-Sent Events), as GET /workflow/state/stream",
            {"200": event_stream("StateEvent", "An event stream that stays open")},
            "400 404 503",
            parameters=(ref("parameters", "WorkflowId"), ref("parameters", "LastEventId")),
            tag="workflows",
        ),
    },
    "/workflows/{workflow_id}/run": {
        "post": op(
            "startRun",
            "Start a server run of the workflow's steps that are not completed or skipped",
            {"202": answer("RunStarted", "The run is queued; a runner takes it", NO_STORE)},
            "400 404 409 503",
            parameters=(ref("parameters", "WorkflowId"),),
            tag="runs",
            description=(
                "409 is `run_active` when a run is queued or running with a live lease, "
                "`workflow_finished` when the workflow is finished."
            ),
        ),
    },
    "/workflows/{workflow_id}/cancel": {
        "post": op(
            "cancelWorkflow",
            "Cancel the workflow: its running step, itself and its server run",
            {"200": answer("CancelledResponse", "Cancelled (also when it already was)", NO_STORE)},
            "400 404 409 503",
            parameters=(ref("parameters", "WorkflowId"),),
            tag="runs",
        ),
    },
    "/workflows/{workflow_id}/resume": {
        "post": op(
            "resumeWorkflow",
            "Answer a blocked workflow's question; a new run starts at the blocked step",
            {"202": answer("ResumedResponse", "The run is queued at the blocked step", NO_STORE)},
            "400 404 409 503",
            body="ResumeInput",
            parameters=(ref("parameters", "WorkflowId"),),
            tag="runs",
            description=(
                "The body may be left out when the step asks for no input (an approval). A "
                "`secret` value reaches only the step's endpoint."
            ),
        ),
    },
    "/workflows/{workflow_id}/retry": {
        "post": op(
            "retryWorkflow",
            "Run a failed workflow again from its failed step, with a fresh retry budget",
            {"202": answer("RetriedResponse", "The run is queued at the failed step", NO_STORE)},
            "400 404 409 503",
            parameters=(ref("parameters", "WorkflowId"),),
            tag="runs",
        ),
    },
    "/workflows/{workflow_id}/steps/{index}/progress": {
        "post": op(
            "reportProgress",
            "A running step's report on itself (its progress_token is the only identity)",
            {"200": answer("ProgressResponse", "Stored, and pushed on every stream", NO_STORE)},
            "400 403 409 413 503",
            body="ProgressReport",
            parameters=(ref("parameters", "WorkflowId"), ref("parameters", "StepIndex")),
            tag="runs",
            description=(
                "The token comes as `Authorization: Bearer <progress_token>`, an "
                "`X-Progress-Token` header, or `progress_token` in the body."
            ),
        ),
    },
    "/workflow/state/resume": {
        "post": op(
            "resumeState",
            "Answer the current workflow's question, as POST /workflows/{workflow_id}/resume",
            {"202": answer("ResumedResponse", "The run is queued at the blocked step", NO_STORE)},
            "400 404 409 503",
            body="ResumeInput",
            tag="runs",
        ),
    },
    "/workflow/state/retry": {
        "post": op(
            "retryState",
            "Run the current workflow again from its failed step",
            {"202": answer("RetriedResponse", "The run is queued at the failed step", NO_STORE)},
            "404 409 503",
            tag="runs",
        ),
    },
    "/workflow/history": {
        "get": op(
            "getHistory",
            "The last finished workflows, newest first",
            {"200": answer("HistoryResponse", "Finished workflows")},
            "400 503",
            parameters=(ref("parameters", "HistoryLimit"),),
        ),
    },
    "/workflow/config": {
        "get": op(
            "getConfig",
            "The steps the page shows and its pause between steps",
            {"200": answer("ConfigResponse", "The page's configuration")},
            tag="page",
        ),
    },
    "/workflow/actions/{action}": {
        "post": op(
            "runAction",
            "The built-in step simulator (takes WORKFLOW_DEMO_STEP_SECONDS)",
            {"200": answer("ActionResponse", "The step ran")},
            "404",
            parameters=(path_param("action", ANY_TEXT),),
            tag="page",
        ),
    },
    "/healthz": {
        "get": op(
            "healthz",
            "Liveness; never touches storage",
            {"200": answer("Health", "The process is alive")},
            tag="operations",
        ),
    },
    "/readyz": {
        "get": op(
            "readyz",
            "Readiness: 200 when storage answers",
            {"200": answer("Ready", "Storage answers")},
            "503",
            tag="operations",
        ),
    },
    "/metrics": {
        "get": op(
            "metrics",
            "Prometheus metrics, summed over every gunicorn worker",
            {"200": text("text/plain", "Prometheus text exposition format")},
            tag="operations",
        ),
    },
    OPENAPI_PATH: {
        "get": op(
            "openapi",
            "This document",
            {"200": answer("OpenAPIDocument", "The OpenAPI 3.1 document")},
            tag="operations",
        ),
    },
    "/": {
        "get": op(
            "page",
            "The web page (strict Content-Security-Policy, no inline script)",
            {
                "200": text(
                    "text/html",
                    "The page",
                    {"Content-Security-Policy": {"required": True, "schema": {"type": "string"}}},
                )
            },
            tag="page",
        ),
    },
    "/static/{path}": {
        "get": op(
            "asset",
            "The page's scripts, styles and icons",
            {"200": text("*/*", "The asset")},
            "404",
            parameters=(path_param("path", ANY_TEXT),),
            tag="page",
        ),
    },
}
# Flask serves /static/* itself; a preflight there is never needed.
NO_PREFLIGHT = frozenset({"/static/{path}"})


def _preflight(path: str) -> Schema:
    """Return the OPTIONS operation of a path: open, and answered for any path parameter."""
    name = re.sub(r"\W+", "_", path).strip("_") or "page"
    # A preflight is answered for any index: the browser asks before it knows the answer.
    names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
    operation = op(
        f"preflight_{name}",
        "CORS preflight",
        {"204": ref("responses", "Preflight")},
        parameters=tuple(path_param(param, ANY_TEXT) for param in names),
        tag="cors",
    )
    operation["security"] = OPEN
    return operation


def build_paths() -> dict[str, Schema]:
    """Return the Paths Object: each route with its security, its 401 and its preflight."""
    paths: dict[str, Schema] = {}
    for path, methods in ROUTES.items():
        item: dict[str, Schema] = {}
        # A progress report's only identity is its step call's token (identity.py).
        protected = path.startswith(PROTECTED_PREFIX) and not path.endswith(PROGRESS_SUFFIX)
        for method, operation in methods.items():
            answers = operation["responses"]
            if protected:
                answers = {**answers, "401": ref("responses", "Unauthorized")}
            item[method] = {
                **operation,
                "security": TOKEN if protected else OPEN,
                "responses": dict(sorted(answers.items())),
            }
        if path not in NO_PREFLIGHT:
            item["options"] = _preflight(path)
        paths[path] = item
    return paths


DESCRIPTION = """\
Server-side state for a multi-step web workflow, shared by every worker and instance.

* Every JSON body has a boolean `success`. Errors are `{"success": false, "message": ...,
  "error": ...}` (the `Error` schema) and never carry a stack trace; no input produces a 500.
* A field that breaks its rule is answered 400 `invalid_state` with the message
  `Invalid field '<path>': <rule>`, where the rule is that field's description below.
* A path that does not exist answers 404 and a method a path does not serve answers 405, both
  with the `Error` body (`x-unknown-path` and `x-unlisted-method` name those answers).
* With `WORKFLOW_STATE_TOKEN` set, every `/workflow/*` operation needs
  `Authorization: Bearer <token>` (401 otherwise). `/`, `/static/*`, `/healthz`, `/readyz`,
  `/metrics`, `/openapi.json` and every `OPTIONS` preflight stay open.
* Every response carries `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer` and
  `X-Frame-Options: DENY`; the page and its assets also a `Content-Security-Policy`.
* Some schemas (workflow lists, runs) describe bodies of routes still to come (contract
  sections 8 and 9).
"""


def build_document() -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of every route the service serves."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Workflow State Service",
            "version": VERSION,
            "description": DESCRIPTION,
        },
        "tags": [
            {"name": "state", "description": "the workflow state"},
            {"name": "page", "description": "the web page and its helpers (section 4)"},
            {"name": "workflows", "description": "many workflows per owner"},
            {"name": "runs", "description": "server runs"},
            {"name": "operations", "description": "health, readiness, metrics, this document"},
            {"name": "cors", "description": "CORS preflights"},
        ],
        "paths": build_paths(),
        "components": {
            "schemas": schema.components(),
            "headers": HEADERS,
            "parameters": PARAMETERS,
            "responses": RESPONSES,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the value of WORKFLOW_STATE_TOKEN, compared in constant time",
                }
            },
        },
        "x-unknown-path": ref("responses", "NotFound"),
        "x-unlisted-method": ref("responses", "MethodNotAllowed"),
    }


@functools.cache
def document_json() -> str:
    """Return the document serialised, built on first use.

    The document is a constant (the same for every app and every request), so one copy per
    process is shared; building it takes pydantic a tenth of a second that a process which
    never serves it (the CLI, a worker before its first request) should not pay at import.
    """
    return dumps(build_document())


@bp.get(OPENAPI_PATH)
def openapi() -> Response:
    """Serve the OpenAPI document."""
    return Response(document_json(), mimetype="application/json")


def init_app(app: Flask) -> None:
    """Register GET /openapi.json."""
    app.register_blueprint(bp)
