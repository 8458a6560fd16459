"""Fuzz the whole HTTP surface from GET /openapi.json with Schemathesis, on every backend.

Schemathesis reads the document the service serves and generates requests for each operation,
in its two phases: coverage (every boundary of every schema, deterministic: each enum value,
each limit and one past it, each missing or wrong-typed field) and fuzzing (random bodies,
path and query parameters and headers that fit the schemas, and that break them). Every
response must not be a 500 and must match the document: status code, content type, required
headers, body schema. A request that breaks the document must be refused with a 4xx, and one
that fits it must be accepted unless the stored state refuses it (below). On top of
Schemathesis's checks, a request answered 4xx must leave the stored state exactly as it was.

Streams never end, so they get the fuzzing phase only (their first event is read).

Schemathesis's own pytest plugin (`from_fixture`) does not run on this pytest, so the coverage
phase's cases are iterated and the fuzzing phase's strategy is drawn inside an ordinary
Hypothesis test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from service import create_app
from service.openapi import build_document
from service.store import get_store
from service.stream import close_all_hubs
from tests.conftest import BACKENDS, backend_config, steps
from tests.support import layout

# Statuses an invalid request may get: Schemathesis's (those this service answers), and 412, 413.
REJECTIONS = ["400", "401", "403", "404", "405", "409", "412", "413"]
# Statuses a valid request may get: Schemathesis's list, plus 412 (If-Match names a version
# other than the stored one) and 400, which `refused_for_the_state` then narrows down.
ACCEPTANCES = ["2xx", "3xx", "400", "401", "403", "404", "409", "412", "429", "5xx"]
# The 400s a request that fits the document may still get, by error code: the stored state
# decides them, or a rule the document states in words because JSON Schema cannot (current_step
# below the number of steps, the stored ones for a PATCH: the field's description says so).
STATE_REFUSALS: dict[str, tuple[str, ...]] = {
    "invalid_index": ("",),  # a step index past the stored workflow's last step
    "invalid_cursor": ("",),  # a cursor this service did not issue
    "invalid_state": (
        "Invalid field 'current_step': must be less than the number of steps",
        "Invalid field 'current_step': must be 0 when there are no steps",
    ),
}

CONFIG = {
    "checks": {
        "positive_data_acceptance": {"expected-statuses": ACCEPTANCES},
        "negative_data_rejection": {"expected-statuses": REJECTIONS},
    },
    # The stream never ends: read its first event, or give up after a second.
    "max-stream-events": 1,
    "request-timeout": 1.0,
}

# Before each request the state is one of these, so writes meet every situation. "0" is the id
# the coverage phase gives a workflow_id path parameter first, so those requests find one.
BASELINES: tuple[dict[str, Any] | None, ...] = (
    {"workflow_id": "0", "steps": steps(3), "ssh_connection": "ssh root@fuzz"},
    None,
    {"workflow_id": "done", "status": "completed", "current_step": 1, "steps": steps(2)},
)

# Routes whose answer does not depend on the storage backend are fuzzed on one backend only.
STORAGE_FREE = ("/healthz", "/metrics", "/openapi.json", "/", "/static/{path}", "/workflow/config")
EXAMPLES = 20


def operations() -> list[Any]:
    """Return (backend, path, method) for every documented operation, as pytest params."""
    return [
        pytest.param(kind, path, method.upper(), id=f"{kind}-{method.upper()} {path}")
        for path, item in build_document()["paths"].items()
        for method in item
        for kind in (("file",) if path in STORAGE_FREE else BACKENDS)
    ]


@pytest.fixture(autouse=True)
def close_stream_hubs() -> Iterator[None]:
    """Stop the stream feed threads the fuzzed apps started."""
    yield
    close_all_hubs()


def fuzz_app(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Flask:
    """An app on backend `kind`, empty, whose step simulator answers at once."""
    config = backend_config(kind, request, tmp_path)
    app = create_app({"TESTING": True, **config, "DEMO_STEP_SECONDS": 0, "STREAM_KEEPALIVE": 0.1})
    request.addfinalizer(app.extensions["workflow_state"].close)
    return app


class Baseline:
    """Puts a baseline state in place before each request, when it is not there already."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.placed: tuple[dict[str, Any] | None, str] | None = None

    def stored(self) -> str:
        """Return the stored JSON of the current workflow."""
        with self.app.app_context():
            return layout.current(get_store()).get().json

    def place(self, baseline: dict[str, Any] | None) -> str:
        """Put `baseline` in place (a write only when the state is not it); return its JSON."""
        placed = self.placed
        if placed is not None and placed[0] is baseline and self.stored() == placed[1]:
            return placed[1]
        with self.app.app_context():
            store = layout.current(get_store())
            store.clear()
            if baseline is not None:
                store.save(baseline)
            self.placed = (baseline, store.get().json)
        return self.placed[1]


def refused_for_the_state(response: Any) -> bool:
    """Tell whether a 400 is one a request that fits the document may get (STATE_REFUSALS)."""
    body = response.json()
    return body["message"].startswith(STATE_REFUSALS.get(body["error"], ()))


def check(place: Baseline, case: Any, baseline: dict[str, Any] | None) -> None:
    """Send `case` against `baseline`; its answer must fit the document and the rules above."""
    before = place.place(baseline)
    response = case.call()
    case.validate_response(response)
    described = f"{case.method} {case.formatted_path} -> {response.status_code} {response.text}"
    if response.status_code == 400 and case.meta.generation.mode.is_positive:
        assert refused_for_the_state(response), f"fits the document but refused: {described}"
    if 400 <= response.status_code < 500:
        assert place.stored() == before, f"refused but changed the stored state: {described}"


def coverage_cases(schema: Any, operation: Any) -> Iterator[Any]:
    """Return the coverage phase's cases for `operation`, valid and invalid."""
    return schema.iter_coverage_cases(
        operation,
        generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        generation_config=schema.config.generation_for(operation=operation, phase="coverage"),
    )


@pytest.mark.parametrize(("kind", "path", "method"), operations())
def test_every_response_matches_the_document(
    kind: str, path: str, method: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    app = fuzz_app(kind, request, tmp_path)
    schema = schemathesis.openapi.from_wsgi(
        "/openapi.json", app, config=SchemathesisConfig.from_dict(CONFIG)
    )
    operation = schema[path][method]
    place = Baseline(app)
    if not path.endswith("/stream"):
        cases = list(coverage_cases(schema, operation))
        for number, case in enumerate(cases):
            # In turn, so consecutive reads meet the same state and need no write to set it.
            check(place, case, BASELINES[number * len(BASELINES) // len(cases)])
    drawn = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=drawn, baseline=st.sampled_from(BASELINES))
    def fuzz(case: Any, baseline: dict[str, Any] | None) -> None:
        check(place, case, baseline)

    fuzz()
