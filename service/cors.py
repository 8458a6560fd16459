"""Answer CORS preflights with 204 and label responses for cross-origin callers.

Hand-written rather than flask-cors (6.0), which cannot give what the API asks of
every OPTIONS: it answers a preflight with Flask's automatic 200 (not 204); it sends
Access-Control-Allow-Methods and -Allow-Headers only when the request carries
Access-Control-Request-Method; and it lists only the requested headers that are allowed, never
the whole list (Content-Type, Authorization, If-Match, If-None-Match, Last-Event-ID). It also
costs 4-5 times as much per request (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask import Flask, Response

from . import hooks

ALLOW_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"
ALLOW_HEADERS = "Content-Type, Authorization, If-Match, If-None-Match, Last-Event-ID, X-Request-ID"
EXPOSE_HEADERS = "ETag, Location, Retry-After, X-Request-ID"
# What a preflight's answer adds, and what every other answer adds.
PREFLIGHT_LABELS = (
    ("Access-Control-Allow-Methods", ALLOW_METHODS),
    ("Access-Control-Allow-Headers", ALLOW_HEADERS),
    ("Access-Control-Max-Age", "600"),
)
SIMPLE_LABELS = (("Access-Control-Expose-Headers", EXPOSE_HEADERS),)
ANY_ORIGIN = (("Access-Control-Allow-Origin", "*"),)


def preflight(req: Any, ctx: dict[str, Any]) -> Response | None:
    """Answer a preflight to a route that exists with 204 (a before-step)."""
    # An unknown path still answers 404.
    if req.method != "OPTIONS" or req.url_rule is None:
        return None
    return Response(status=204)


# With every origin allowed, the labels are the same on every answer of a kind.
ANY_ORIGIN_PREFLIGHT = (*ANY_ORIGIN, *PREFLIGHT_LABELS)
ANY_ORIGIN_SIMPLE = (*ANY_ORIGIN, *SIMPLE_LABELS)


def any_origin_labels(environ: dict[str, Any]) -> hooks.HeaderPairs:
    """Return the CORS headers of an answer when every origin is allowed (a header-step)."""
    return ANY_ORIGIN_PREFLIGHT if environ.get("REQUEST_METHOD") == "OPTIONS" else ANY_ORIGIN_SIMPLE


class Labels:
    """The CORS headers of one app's answers when only some origins are allowed."""

    def __init__(self, allowed: Iterable[str]) -> None:
        self.allowed = frozenset(allowed)

    def label(self, req: Any, ctx: dict[str, Any], response: Response) -> None:
        """Add the CORS headers to an answer (an after-step: it merges `Vary`)."""
        headers = response.headers
        response.vary.add("Origin")
        origin = req.environ.get("HTTP_ORIGIN")
        if origin in self.allowed:
            headers["Access-Control-Allow-Origin"] = origin
        headers.extend(PREFLIGHT_LABELS if req.method == "OPTIONS" else SIMPLE_LABELS)


def init_app(app: Flask) -> None:
    """Add the preflight answer and the response labels to the app's request steps."""
    steps = hooks.steps_of(app)
    allowed = app.config["CORS_ORIGINS"]
    if "*" in allowed:
        steps.add(before=preflight, headers=any_origin_labels)
    else:
        steps.add(before=preflight, after=Labels(allowed).label)
