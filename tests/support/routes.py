"""The service's routes as the tests name them: one place, so a route moves in one edit."""

from __future__ import annotations

from typing import Any

# The one-workflow API (the owner's current workflow) and its live feed.
STATE = "/workflow/state"
STREAM = f"{STATE}/stream"
SUMMARY = f"{STATE}/summary"
HISTORY = "/workflow/history"
# Many workflows (contract section 8) and server runs (section 9).
WORKFLOWS = "/workflows"
# Open to everyone: probes, scrapes, the document and the page.
HEALTHZ = "/healthz"
READYZ = "/readyz"
METRICS = "/metrics"
OPENAPI = "/openapi.json"
OPEN_ROUTES = ["/", "/static/js/app.js", HEALTHZ, READYZ, METRICS, OPENAPI]


def step(index: int | str) -> str:
    """Return the route of step `index` of the current workflow."""
    return f"{STATE}/steps/{index}"


# Every route that touches storage, with a body that would succeed on a healthy service:
# under a storage fault each must answer 503, and each must serve again once storage is back.
_TWO_STEPS = [{"action": name, "status": "pending"} for name in ("a", "b")]
STORAGE_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", STATE, None),
    ("POST", STATE, {"workflow_id": "wf", "steps": _TWO_STEPS}),
    ("PATCH", STATE, {"note": "x"}),
    ("PATCH", step(0), {"status": "completed"}),
    ("DELETE", STATE, None),
    ("GET", SUMMARY, None),
    ("GET", HISTORY, None),
    ("GET", READYZ, None),
]
# The routes of many workflows that touch storage but no one workflow's lock or file.
OWNER_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", WORKFLOWS, None),
    ("POST", WORKFLOWS, {"steps": _TWO_STEPS}),
]
