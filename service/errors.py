"""Answer every error with the contract's JSON shape, and never with a stack trace."""

from __future__ import annotations

import logging
import re

from flask import Flask, Response, g
from werkzeug.exceptions import HTTPException

from . import model, runs
from .storage import LimitExceeded, LockTimeout, StorageUnavailable, dumps

log = logging.getLogger(__name__)

# How each refusal of the state rules is answered.
STATUS_BY_ERROR: dict[type[model.StateError], int] = {
    model.StateRequired: 400,
    model.InvalidState: 400,
    model.InvalidIndex: 400,
    model.NoWorkflow: 404,
    model.WorkflowMismatch: 409,
    model.WorkflowFinished: 409,
    model.PreconditionFailed: 412,
    model.WorkflowExists: 409,
    model.TooManyWorkflows: 429,
    model.InvalidWorkflowId: 400,
    model.InvalidCursor: 400,
    # state_too_large, owner_quota_exceeded: the write would pass a size limit.
    LimitExceeded: 413,
    runs.RunActive: 409,
    runs.RunSuperseded: 409,
    model.NotBlocked: 409,
    model.NotFailed: 409,
    model.InvalidInput: 400,
    runs.ProgressRefused: 403,
}
# Seconds a client should wait before retrying when storage is down or busy.
RETRY_AFTER_SECONDS = 1


def json_response(body: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Wrap an already-serialised JSON body."""
    return Response(body, status=status, mimetype="application/json", headers=headers)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """Build {"success": false, "message": ..., "error": ...} with a status."""
    return json_response(
        dumps({"success": False, "message": message, "error": code}), status, headers
    )


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _state_error(error: model.StateError) -> Response:
    status = next(
        (STATUS_BY_ERROR[kind] for kind in type(error).__mro__ if kind in STATUS_BY_ERROR), 400
    )
    return error_response(status, error.code, error.message)


def _storage_error(error: StorageUnavailable) -> Response:
    # Other subsystems (metrics) read why this request failed from here.
    g.storage_error = error
    if isinstance(error, LockTimeout):
        log.warning("write refused: %s", error.message)
    else:
        log.error("storage unavailable: %s", error.message)
    return error_response(
        503,
        "backend_unavailable",
        error.message,
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _http_error(error: HTTPException) -> Response:
    code = _snake(type(error).__name__)
    if error.code == 413:
        code = "payload_too_large"
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
    message = error.description or error.name
    return error_response(error.code or 500, code, message, headers)


def _unexpected(error: Exception) -> Response:
    log.exception("unhandled error")
    return error_response(500, "internal_error", "The server hit an unexpected error")


def init_app(app: Flask) -> None:
    """Register the JSON error handlers."""
    app.register_error_handler(model.StateError, _state_error)
    app.register_error_handler(StorageUnavailable, _storage_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
