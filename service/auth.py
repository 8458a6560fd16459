"""Require the bearer token on /workflow/* when WORKFLOW_STATE_TOKEN is set."""

from __future__ import annotations

import hmac

from flask import Flask, Response, current_app, request

from .errors import error_response

PROTECTED_PREFIX = "/workflow/"


def token_matches(header: str | None, token: str) -> bool:
    """Tell whether an Authorization header carries `token`, comparing in constant time."""
    scheme, _, supplied = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Headers arrive as latin-1 text; compare bytes so any input is comparable.
    return hmac.compare_digest(supplied.strip().encode("latin-1", "replace"), token.encode("utf-8"))


def _require_token() -> Response | None:
    token = current_app.config.get("STATE_TOKEN")
    if not token or request.method == "OPTIONS":
        return None
    if not request.path.startswith(PROTECTED_PREFIX):
        return None
    if token_matches(request.headers.get("Authorization"), token):
        return None
    return error_response(
        401,
        "unauthorized",
        "A valid bearer token is required (Authorization: Bearer <token>)",
        {"WWW-Authenticate": 'Bearer realm="workflow-state"'},
    )


def init_app(app: Flask) -> None:
    """Register the token check."""
    app.before_request(_require_token)
