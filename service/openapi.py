"""GET /openapi.json: the HTTP contract as an OpenAPI 3.1 document.

The document is plain Python data built once at import. The tests validate the service's real
responses against it (JSON Schema draft 2020-12, the dialect OpenAPI 3.1 uses) and fuzz the
API from it, so it cannot drift from what the code answers without a test failing.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response

from . import model
from .storage import HISTORY_MAX, dumps

bp = Blueprint("openapi", __name__)

OPENAPI_PATH = "/openapi.json"
VERSION = "1.0.0"
JSON = "application/json"

Schema = dict[str, Any]


def ref(kind: str, name: str) -> Schema:
    """Return a $ref to a component, e.g. ref("schemas", "State")."""
    return {"$ref": f"#/components/{kind}/{name}"}


def _json_body(schema: Schema, description: str, headers: dict[str, Any] | None = None) -> Schema:
    response: Schema = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _error(description: str, headers: dict[str, Any] | None = None) -> Schema:
    return _json_body(ref("schemas", "Error"), description, headers)


# --- schemas -----------------------------------------------------------------------------

_WORKFLOW_ID: Schema = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_.:-]{1,128}$",
    "description": "1-128 characters of A-Z a-z 0-9 _ . : -",
}
_TIME: Schema = {"type": "string", "format": "date-time", "description": "ISO-8601"}
_ERROR_CODE: Schema = {"type": "string", "pattern": "^[a-z]+(_[a-z]+)*$"}
# The fields a client may send; the stored State adds last_update and version.
_STATE_FIELDS: dict[str, Schema] = {
    "workflow_id": ref("schemas", "WorkflowId"),
    "status": ref("schemas", "WorkflowStatus"),
    "current_step": {"type": "integer", "minimum": 0},
    "steps": {
        "type": "array",
        "items": ref("schemas", "Step"),
        "maxItems": model.MAX_STEPS,
    },
    "start_time": _TIME,
    "ssh_connection": {"type": ["string", "null"]},
}

SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "description": "Every error answer has exactly this shape, and never a stack trace.",
        "required": ["success", "message", "error"],
        "properties": {
            "success": {"const": False},
            "message": {"type": "string", "minLength": 1, "description": "for a person"},
            "error": _ERROR_CODE,
        },
        "additionalProperties": False,
    },
    "WorkflowId": _WORKFLOW_ID,
    "WorkflowStatus": {"type": "string", "enum": list(model.STATUSES)},
    "StepStatus": {"type": "string", "enum": list(model.STEP_STATUSES)},
    "Step": {
        "type": "object",
        "description": "A step; fields other than action and status are kept as sent.",
        "required": ["action", "status"],
        "properties": {
            "action": {"type": "string", "minLength": 1},
            "status": ref("schemas", "StepStatus"),
            "data": {"description": "kept as sent; a step PATCH sets it to an object"},
        },
        "additionalProperties": True,
    },
    "State": {
        "type": "object",
        "description": (
            "The stored state. `version` comes from a counter that never goes back (it "
            "survives DELETE and expiry). `ssh_connection` is null when it is stored encrypted "
            "and no configured key opens it. Fields beyond these are kept as sent."
        ),
        "required": [
            "workflow_id",
            "status",
            "current_step",
            "steps",
            "start_time",
            "last_update",
            "version",
        ],
        "properties": {
            **_STATE_FIELDS,
            "last_update": _TIME,
            "version": {"type": "integer", "minimum": 1},
        },
        "additionalProperties": True,
    },
    "StateInput": {
        "type": "object",
        "description": (
            "A whole state to save. Absent fields get defaults: workflow_id "
            "`workflow_<ms>_<random>`, status `running`, current_step 0, steps [], start_time "
            "now. `version` and `last_update` are set by the server whatever is sent. "
            "current_step must be below the number of steps when there are steps. "
            "Any Content-Type is accepted; the body must be a non-empty JSON object."
        ),
        "minProperties": 1,
        "properties": _STATE_FIELDS,
        "additionalProperties": True,
    },
    "MergeInput": {
        "type": "object",
        "description": (
            "Top-level fields that replace the stored ones; the merged state must satisfy the "
            "POST rules. A workflow_id, when given, must equal the stored one (a guard)."
        ),
        "minProperties": 1,
        "properties": _STATE_FIELDS,
        "additionalProperties": True,
    },
    "StepChange": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": ref("schemas", "StepStatus"),
            "data": {"type": ["object", "null"], "description": "replaces the step's data"},
            "workflow_id": {
                "type": "string",
                "description": "a guard: must equal the stored workflow_id (else 409)",
            },
        },
        "additionalProperties": True,
    },
    "StateResponse": {
        "type": "object",
        "required": ["success", "active", "progress_percent", "state"],
        "properties": {
            "success": {"const": True},
            "active": {"type": "boolean", "description": "true exactly when status is running"},
            "progress_percent": {
                "type": "number",
                "description": "the summary's progress_percent (0 with no state)",
            },
            "state": {"anyOf": [ref("schemas", "State"), {"type": "null"}]},
        },
        "additionalProperties": False,
    },
    "SavedResponse": {
        "type": "object",
        "required": ["success", "message", "state"],
        "properties": {
            "success": {"const": True},
            "message": {"const": "Workflow state saved"},
            "state": ref("schemas", "State"),
        },
        "additionalProperties": False,
    },
    "ClearedResponse": {
        "type": "object",
        "required": ["success", "message"],
        "properties": {
            "success": {"const": True},
            "message": {"const": "Workflow state cleared"},
        },
        "additionalProperties": False,
    },
    "Summary": {
        "oneOf": [
            {
                "type": "object",
                "description": "a stored state",
                "required": [
                    "active",
                    "workflow_id",
                    "status",
                    "current_step",
                    "total_steps",
                    "progress_percent",
                    "start_time",
                    "last_update",
                ],
                "properties": {
                    "active": {"type": "boolean"},
                    "workflow_id": ref("schemas", "WorkflowId"),
                    "status": ref("schemas", "WorkflowStatus"),
                    "current_step": {"type": "integer", "minimum": 0},
                    "total_steps": {"type": "integer", "minimum": 0},
                    "progress_percent": {
                        "type": "number",
                        "minimum": 0,
                        "maximum": 100,
                        "description": "(current_step + 1) / total_steps * 100, 2 decimals; "
                        "0 with no steps",
                    },
                    "start_time": _TIME,
                    "last_update": _TIME,
                },
                "additionalProperties": False,
            },
            {
                "type": "object",
                "description": "no stored state",
                "required": ["active", "workflow_id", "status"],
                "properties": {
                    "active": {"const": False},
                    "workflow_id": {"type": "null"},
                    "status": {"type": "null"},
                },
                "additionalProperties": False,
            },
        ]
    },
    "SummaryResponse": {
        "type": "object",
        "required": ["success", "summary"],
        "properties": {"success": {"const": True}, "summary": ref("schemas", "Summary")},
        "additionalProperties": False,
    },
    "HistoryResponse": {
        "type": "object",
        "required": ["success", "workflows"],
        "properties": {
            "success": {"const": True},
            "workflows": {
                "type": "array",
                "items": ref("schemas", "State"),
                "maxItems": HISTORY_MAX,
                "description": "finished states of the last 7 days, newest first",
            },
        },
        "additionalProperties": False,
    },
    "ConfigResponse": {
        "type": "object",
        "required": ["success", "steps", "step_delay_ms"],
        "properties": {
            "success": {"const": True},
            "steps": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["action", "label"],
                    "properties": {
                        "action": ref("schemas", "WorkflowId"),
                        "label": {"type": "string", "minLength": 1},
                        "endpoint": {
                            "type": "string",
                            "description": "the host application's action, POSTed by the page",
                        },
                    },
                },
            },
            "step_delay_ms": {"type": "integer", "minimum": 0},
            "stream_url": {
                "type": ["string", "null"],
                "description": "the live-updates path, null when this server has none",
            },
        },
    },
    "StateEvent": {
        "type": "object",
        "description": (
            "One Server-Sent Event (OpenAPI 3.1 describes each event of a stream). The first is "
            "the current snapshot, then one per accepted write or delete; an expiry's id is "
            "`<last version>:expired`. Comment lines (`: keepalive`) come at least every 15 s."
        ),
        "required": ["event", "data"],
        "properties": {
            "event": {"const": "state"},
            "id": {"type": "string", "pattern": "^[0-9]+(:expired)?$"},
            "retry": {"type": "integer", "minimum": 0},
            "data": {
                "type": "string",
                "contentMediaType": JSON,
                "contentSchema": ref("schemas", "StateResponse"),
            },
        },
    },
    "ActionResponse": {
        "type": "object",
        "description": "The step simulator's answer; success is false for WORKFLOW_DEMO_FAIL.",
        "required": ["success", "message"],
        "properties": {
            "success": {"type": "boolean"},
            "message": {"type": "string"},
            "error": _ERROR_CODE,
        },
        "additionalProperties": False,
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "ok"}},
        "additionalProperties": False,
    },
    "Ready": {
        "type": "object",
        "required": ["success", "status"],
        "properties": {
            "success": {"const": True},
            "status": {"const": "ready"},
            "backend": {"type": "string", "description": "where the state lives, no credentials"},
        },
        "additionalProperties": False,
    },
}

# --- headers, parameters, responses --------------------------------------------------------

HEADERS: dict[str, Schema] = {
    "ETag": {
        "description": 'The stored version, quoted: "<version>" ("0" when there is no state)',
        "schema": {"type": "string", "pattern": '^"[0-9]+"$'},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    },
    "CacheControlNoStore": {"schema": {"const": "no-store"}},
    "WWW-Authenticate": {"required": True, "schema": {"type": "string", "pattern": "^Bearer"}},
    "Allow": {"description": "the methods the path serves", "schema": {"type": "string"}},
    "Access-Control-Allow-Origin": {"schema": {"type": "string"}},
    "Access-Control-Allow-Methods": {"required": True, "schema": {"type": "string"}},
    "Access-Control-Allow-Headers": {"required": True, "schema": {"type": "string"}},
}


def _header(name: str, required: bool | None = None) -> Schema:
    header = ref("headers", name)
    if required is None:
        return header
    # A $ref can't carry siblings in a Header Object, so a required variant is spelled out.
    return {**{k: v for k, v in HEADERS[name].items() if k != "required"}, "required": required}


PARAMETERS: dict[str, Schema] = {
    "IfMatch": {
        "name": "If-Match",
        "in": "header",
        "description": 'Write only if the stored version is this one ("<version>" or *); else 412',
        "schema": {"type": "string"},
    },
    "IfNoneMatch": {
        "name": "If-None-Match",
        "in": "header",
        "description": "The ETag last seen; 304 when the state is still that version",
        "schema": {"type": "string"},
    },
    "StepIndex": {
        "name": "index",
        "in": "path",
        "required": True,
        "description": "The step's position; anything but a whole number below len(steps) is 400",
        "schema": {"type": "integer", "minimum": 0},
    },
    "HistoryLimit": {
        "name": "limit",
        "in": "query",
        "description": "How many finished workflows to answer; anything else is 400",
        "schema": {"type": "integer", "minimum": 1, "maximum": HISTORY_MAX, "default": HISTORY_MAX},
    },
    "LastEventId": {
        "name": "Last-Event-ID",
        "in": "header",
        "description": "Skip the first snapshot when it has this id",
        "schema": {"type": "string"},
    },
}

RESPONSES: dict[str, Schema] = {
    "Saved": _json_body(
        ref("schemas", "SavedResponse"),
        "Stored; the state as stored",
        {
            "ETag": _header("ETag", required=True),
            "Cache-Control": ref("headers", "CacheControlNoStore"),
        },
    ),
    "BadRequest": _error(
        "The body is empty or not a JSON object (`state_required`, message contains "
        '"required"), a field breaks its rule (`invalid_state`, naming it), or a bad step '
        "index (`invalid_index`)"
    ),
    "Unauthorized": _error(
        "WORKFLOW_STATE_TOKEN is set and the bearer token is missing or wrong (`unauthorized`)",
        {"WWW-Authenticate": ref("headers", "WWW-Authenticate")},
    ),
    "NotFound": _error("No such path, or no stored workflow to update (`no_workflow`)"),
    "MethodNotAllowed": _error(
        "The path does not serve this method (`method_not_allowed`)",
        {"Allow": ref("headers", "Allow")},
    ),
    "Conflict": _error(
        "The stored workflow is finished, and finished is final (`workflow_finished`), or the "
        "workflow_id guard differs from the stored one (`workflow_mismatch`)"
    ),
    "PreconditionFailed": _error(
        "If-Match does not name the stored version, or there is no state (`precondition_failed`)"
    ),
    "PayloadTooLarge": _error("The body is over WORKFLOW_STATE_MAX_BODY (`payload_too_large`)"),
    "Unavailable": _error(
        "Storage is down or the write lock stayed busy past WORKFLOW_STATE_LOCK_WAIT "
        "(`backend_unavailable`); answered within 2 s",
        {"Retry-After": ref("headers", "Retry-After")},
    ),
    "Preflight": {
        "description": "CORS preflight: always answered, never needs the token",
        "headers": {
            "Access-Control-Allow-Origin": ref("headers", "Access-Control-Allow-Origin"),
            "Access-Control-Allow-Methods": ref("headers", "Access-Control-Allow-Methods"),
            "Access-Control-Allow-Headers": ref("headers", "Access-Control-Allow-Headers"),
        },
    },
}

# --- operations ----------------------------------------------------------------------------

# With WORKFLOW_STATE_TOKEN set the bearer token is required; unset, no credentials at all.
TOKEN: list[dict[str, list[str]]] = [{"bearerAuth": []}, {}]
OPEN: list[dict[str, list[str]]] = []


def _responses(ok: dict[str, Any], *codes: str) -> dict[str, Any]:
    names = {
        "400": "BadRequest",
        "401": "Unauthorized",
        "404": "NotFound",
        "409": "Conflict",
        "412": "PreconditionFailed",
        "413": "PayloadTooLarge",
        "503": "Unavailable",
    }
    return {**ok, **{code: ref("responses", names[code]) for code in codes}}


def _operation(
    operation_id: str,
    summary: str,
    responses: dict[str, Any],
    *,
    security: list[dict[str, list[str]]] = TOKEN,
    parameters: list[Schema] | None = None,
    body: str | None = None,
    tag: str = "state",
    description: str | None = None,
) -> Schema:
    operation: Schema = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "security": security,
        "responses": responses,
    }
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if body:
        operation["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": ref("schemas", body)}},
        }
    return operation


def _preflight(path_name: str, parameters: list[Schema] | None = None) -> Schema:
    return _operation(
        f"preflight_{path_name}",
        "CORS preflight",
        {"204": ref("responses", "Preflight")},
        security=OPEN,
        parameters=parameters,
        tag="cors",
    )


# A path segment of any text (the route decides what it means).
PATH_TEXT: Schema = {"in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}


_OK_SAVED = {"200": ref("responses", "Saved")}
_WRITE_ERRORS = ("400", "401", "404", "409", "412", "413", "503")

PATHS: dict[str, Schema] = {
    "/workflow/state": {
        "get": _operation(
            "getState",
            "The current state (null when none); ETag is its version",
            _responses(
                {
                    "200": _json_body(
                        ref("schemas", "StateResponse"),
                        'The state; ETag is its version, or "0" when there is none',
                        {
                            "ETag": _header("ETag", required=True),
                            "Cache-Control": ref("headers", "CacheControlNoStore"),
                        },
                    ),
                    "304": {
                        "description": 'If-None-Match names the current version (or "0")',
                        "headers": {"ETag": _header("ETag", required=True)},
                    },
                },
                "401",
                "503",
            ),
            parameters=[ref("parameters", "IfNoneMatch")],
        ),
        "post": _operation(
            "saveState",
            "Save or replace the whole state",
            _responses(_OK_SAVED, "400", "401", "409", "412", "413", "503"),
            parameters=[ref("parameters", "IfMatch")],
            body="StateInput",
        ),
        "patch": _operation(
            "mergeState",
            "Replace top-level fields of the stored state",
            _responses(_OK_SAVED, *_WRITE_ERRORS),
            parameters=[ref("parameters", "IfMatch")],
            body="MergeInput",
        ),
        "delete": _operation(
            "clearState",
            "Clear the state (also when there is none)",
            _responses(
                {"200": _json_body(ref("schemas", "ClearedResponse"), "Cleared")}, "401", "503"
            ),
        ),
        "options": _preflight("state"),
    },
    "/workflow/state/steps/{index}": {
        "patch": _operation(
            "updateStep",
            "Set one step's status (and data) atomically and make it the current step",
            _responses(_OK_SAVED, *_WRITE_ERRORS),
            parameters=[ref("parameters", "StepIndex"), ref("parameters", "IfMatch")],
            body="StepChange",
        ),
        # A preflight is answered for any index: the browser asks before it knows the answer.
        "options": _preflight("step", [{**PATH_TEXT, "name": "index"}]),
    },
    "/workflow/state/summary": {
        "get": _operation(
            "getSummary",
            "Progress summary",
            _responses(
                {
                    "200": _json_body(
                        ref("schemas", "SummaryResponse"),
                        "The summary",
                        {"Cache-Control": ref("headers", "CacheControlNoStore")},
                    )
                },
                "401",
                "503",
            ),
        ),
        "options": _preflight("summary"),
    },
    "/workflow/state/stream": {
        "get": _operation(
            "streamState",
            "Live updates (Server-Sent Events): `event: state`, `id: <version>`, "
            "`data: <the GET /workflow/state body>`",
            _responses(
                {
                    "200": {
                        "description": "An event stream that stays open",
                        "headers": {
                            "Cache-Control": {"schema": {"const": "no-cache"}},
                            "X-Accel-Buffering": {"schema": {"const": "no"}},
                        },
                        "content": {"text/event-stream": {"schema": ref("schemas", "StateEvent")}},
                    }
                },
                "401",
                "503",
            ),
            parameters=[ref("parameters", "LastEventId")],
            description=(
                "A 503 is `backend_unavailable` when storage is down at connect time, or "
                "`too_many_streams` when this worker has no thread to spare for another stream."
            ),
        ),
        "options": _preflight("stream"),
    },
    "/workflow/history": {
        "get": _operation(
            "getHistory",
            "The last finished workflows, newest first",
            _responses(
                {"200": _json_body(ref("schemas", "HistoryResponse"), "Finished workflows")},
                "400",
                "401",
                "503",
            ),
            parameters=[ref("parameters", "HistoryLimit")],
        ),
        "options": _preflight("history"),
    },
    "/workflow/config": {
        "get": _operation(
            "getConfig",
            "The steps the page shows and its pause between steps",
            {
                "200": _json_body(ref("schemas", "ConfigResponse"), "The page's configuration"),
                "401": ref("responses", "Unauthorized"),
            },
            tag="page",
        ),
        "options": _preflight("config"),
    },
    "/workflow/actions/{action}": {
        "post": _operation(
            "runAction",
            "The built-in step simulator (takes WORKFLOW_DEMO_STEP_SECONDS)",
            {
                "200": _json_body(ref("schemas", "ActionResponse"), "The step ran"),
                "401": ref("responses", "Unauthorized"),
                "404": ref("responses", "NotFound"),
            },
            parameters=[{**PATH_TEXT, "name": "action"}],
            tag="page",
        ),
        "options": _preflight("action", [{**PATH_TEXT, "name": "action"}]),
    },
    "/healthz": {
        "get": _operation(
            "healthz",
            "Liveness; never touches storage",
            {"200": _json_body(ref("schemas", "Health"), "The process is alive")},
            security=OPEN,
            tag="operations",
        ),
        "options": _preflight("healthz"),
    },
    "/readyz": {
        "get": _operation(
            "readyz",
            "Readiness: 200 when storage answers",
            {
                "200": _json_body(ref("schemas", "Ready"), "Storage answers"),
                "503": ref("responses", "Unavailable"),
            },
            security=OPEN,
            tag="operations",
        ),
        "options": _preflight("readyz"),
    },
    "/metrics": {
        "get": _operation(
            "metrics",
            "Prometheus metrics, summed over every gunicorn worker",
            {
                "200": {
                    "description": "Prometheus text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
            security=OPEN,
            tag="operations",
        ),
        "options": _preflight("metrics"),
    },
    OPENAPI_PATH: {
        "get": _operation(
            "openapi",
            "This document",
            {
                "200": _json_body(
                    {"type": "object", "required": ["openapi", "info", "paths"]},
                    "The OpenAPI 3.1 document",
                )
            },
            security=OPEN,
            tag="operations",
        ),
        "options": _preflight("openapi"),
    },
    "/": {
        "get": _operation(
            "page",
            "The web page (strict Content-Security-Policy, no inline script)",
            {
                "200": {
                    "description": "The page",
                    "headers": {
                        "Content-Security-Policy": {"required": True, "schema": {"type": "string"}}
                    },
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            },
            security=OPEN,
            tag="page",
        ),
        "options": _preflight("page"),
    },
    "/static/{path}": {
        "get": _operation(
            "asset",
            "The page's scripts, styles and icons",
            {
                "200": {
                    "description": "The asset",
                    "content": {"*/*": {"schema": {"type": "string"}}},
                },
                "404": ref("responses", "NotFound"),
            },
            security=OPEN,
            parameters=[{**PATH_TEXT, "name": "path"}],
            tag="page",
        ),
    },
}

DESCRIPTION = """\
Server-side state for a multi-step web workflow, shared by every worker and instance.

* Every JSON body has a boolean `success`. Errors are `{"success": false, "message": ...,
  "error": ...}` (the `Error` schema) and never carry a stack trace; no input produces a 500.
* A path that does not exist answers 404 and a method a path does not serve answers 405, both
  with the `Error` body (`x-unknown-path` and `x-unlisted-method` name those answers).
* With `WORKFLOW_STATE_TOKEN` set, every `/workflow/*` operation needs
  `Authorization: Bearer <token>` (401 otherwise). `/`, `/static/*`, `/healthz`, `/readyz`,
  `/metrics`, `/openapi.json` and every `OPTIONS` preflight stay open.
* Every response carries `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer` and
  `X-Frame-Options: DENY`; the page and its assets also a `Content-Security-Policy`.
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
            {"name": "state", "description": "the workflow state (contract section 2)"},
            {"name": "page", "description": "the web page and its helpers (section 4)"},
            {"name": "operations", "description": "health, readiness, metrics, this document"},
            {"name": "cors", "description": "CORS preflights"},
        ],
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
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


# Serialised once: the document is the same for every request and every process.
DOCUMENT_JSON = dumps(build_document())


@bp.get(OPENAPI_PATH)
def openapi() -> Response:
    """Serve the OpenAPI document."""
    return Response(DOCUMENT_JSON, mimetype="application/json")


def init_app(app: Flask) -> None:
    """Register GET /openapi.json."""
    app.register_blueprint(bp)
