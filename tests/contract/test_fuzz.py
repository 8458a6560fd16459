"""Fuzz the whole HTTP surface from GET /openapi.json with Schemathesis, on every backend.

Schemathesis reads the document the service serves and generates requests for each
operation: bodies, path and query parameters and headers that fit the schemas (positive) and
that break them (negative). Every response must not be a 500 and must match the document:
status code, content type, required headers, body schema; a broken request must be refused
with a 4xx. On top of Schemathesis's checks, a request answered 4xx must leave the stored state
exactly as it was.

Schemathesis's own pytest plugin (`from_fixture`) does not run on this pytest, so each
operation's strategy is drawn inside an ordinary Hypothesis test.
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

# Statuses an invalid request may get (Schemathesis's list plus the contract's 412 and 413).
REJECTIONS = ["400", "401", "404", "405", "409", "412", "413"]

CONFIG = {
    "checks": {
        # A schema-valid request is still refused when the stored state says so (409, 412, an
        # index past the last step): acceptance depends on state the schema can't describe.
        "positive_data_acceptance": {"enabled": False},
        "negative_data_rejection": {"expected-statuses": REJECTIONS},
    },
    # The stream never ends: read its first event, or give up after a second.
    "max-stream-events": 1,
    "request-timeout": 1.0,
}

# Before each request the state is one of these, so writes meet every situation.
BASELINES: tuple[dict[str, Any] | None, ...] = (
    {"workflow_id": "fuzz", "steps": steps(3), "ssh_connection": "ssh root@fuzz"},
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


def _reset(app: Flask, baseline: dict[str, Any] | None) -> str:
    """Put a baseline state in place; return its stored JSON."""
    with app.app_context():
        store = layout.current(get_store())
        store.clear()
        if baseline is not None:
            store.save(baseline)
        return store.get().json


def _stored(app: Flask) -> str:
    with app.app_context():
        return layout.current(get_store()).get().json


@pytest.mark.parametrize(("kind", "path", "method"), operations())
def test_every_response_matches_the_document(
    kind: str, path: str, method: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    app = fuzz_app(kind, request, tmp_path)
    schema = schemathesis.openapi.from_wsgi(
        "/openapi.json", app, config=SchemathesisConfig.from_dict(CONFIG)
    )
    operation = schema[path][method]
    cases = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=cases, baseline=st.sampled_from(BASELINES))
    def fuzz(case: Any, baseline: dict[str, Any] | None) -> None:
        before = _reset(app, baseline)
        response = case.call()
        case.validate_response(response)
        if 400 <= response.status_code < 500:
            assert _stored(app) == before, (
                f"{case.method} {case.formatted_path} was refused with {response.status_code} "
                "but changed the stored state"
            )

    fuzz()
