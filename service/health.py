"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

from flask import Blueprint, Response

from .storage import dumps
from .store import get_store

bp = Blueprint("health", __name__)

_OK = '{"status":"ok"}'


@bp.get("/healthz")
def healthz() -> Response:
    """Answer 200 without touching storage: the process is alive."""
    return Response(_OK, mimetype="application/json")


@bp.get("/readyz")
def readyz() -> Response:
    """Answer 200 when the backend answers and writers can get the lock, else 503."""
    store = get_store()
    store.ready()  # StorageUnavailable: the error handler answers 503 backend_unavailable
    body = dumps({"success": True, "status": "ready", "backend": store.describe()})
    return Response(body, mimetype="application/json")
