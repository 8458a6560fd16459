"""Answer CORS preflights with 204 and label responses for cross-origin callers.

Hand-written rather than flask-cors (6.0), which cannot give what contract section 2 asks of
every OPTIONS: it answers a preflight with Flask's automatic 200 (not 204); it sends
Access-Control-Allow-Methods and -Allow-Headers only when the request carries
Access-Control-Request-Method; and it lists only the requested headers that are allowed, never
the whole list (Content-Type, Authorization, If-Match, If-None-Match, Last-Event-ID).
"""

from __future__ import annotations

from flask import Flask, Response, current_app, request

ALLOW_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"
ALLOW_HEADERS = "Content-Type, Authorization, If-Match, If-None-Match, Last-Event-ID, X-Request-ID"
EXPOSE_HEADERS = "ETag, Location, Retry-After, X-Request-ID"


def _preflight() -> Response | None:
    # Only routes that exist get a 204; an unknown path still answers 404.
    if request.method != "OPTIONS" or request.url_rule is None:
        return None
    return Response(status=204)


def _label(response: Response) -> Response:
    allowed = current_app.config["CORS_ORIGINS"]
    origin = request.headers.get("Origin")
    if "*" in allowed:
        response.headers["Access-Control-Allow-Origin"] = "*"
    else:
        response.vary.add("Origin")
        if origin in allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
    if request.method == "OPTIONS":
        response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = "600"
    else:
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    return response


def init_app(app: Flask) -> None:
    """Register the preflight answer and the response labels."""
    app.before_request(_preflight)
    app.after_request(_label)
