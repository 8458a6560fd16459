"""GET /openapi.json: a valid OpenAPI 3.1 document that every real answer matches.

The document itself is checked against the official OpenAPI 3.1 schema
(tests/data/openapi-3.1-schema.json, https://spec.openapis.org/oas/3.1/schema/2022-10-07) and
every schema in it against JSON Schema 2020-12. Then, on every backend, the tests provoke every
documented status of every operation, check each answer against the document, and check that
nothing documented was left unprovoked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from service import runs
from service.openapi import build_document
from service.store import store_of
from service.stream import close_all_hubs
from tests.conftest import steps
from tests.support import free_port
from tests.support.openapi_check import METHODS, OpenAPIDocument
from tests.support.routes import STATE
from tests.support.runs import calling

OAS_SCHEMA = Path(__file__).resolve().parents[1] / "data" / "openapi-3.1-schema.json"
TOKEN = "fuzzy-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(autouse=True)
def close_stream_hubs():
    """Stop the stream feed threads the apps of a test started (one may follow a dead Redis)."""
    yield
    close_all_hubs()


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The document as built (the served one is checked equal to it below)."""
    return build_document()


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1.")
    validator = Draft202012Validator(json.loads(OAS_SCHEMA.read_text()))
    errors = list(validator.iter_errors(document))
    assert not errors, [f"{list(e.path)}: {e.message[:200]}" for e in errors[:5]]


def test_every_schema_in_it_is_valid_json_schema_2020_12(document):
    def schemas(node: Any, where: str):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("schema", "contentSchema") and isinstance(value, dict):
                    yield f"{where}/{key}", value
                yield from schemas(value, f"{where}/{key}")
        elif isinstance(node, list):
            for position, value in enumerate(node):
                yield from schemas(value, f"{where}/{position}")

    found = list(schemas(document, "")) + [
        (f"/components/schemas/{name}", schema)
        for name, schema in document["components"]["schemas"].items()
    ]
    assert len(found) > 30
    for where, schema in found:
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as error:
            pytest.fail(f"{where}: {error.message}")


def test_the_served_document_is_the_built_one_and_open(make_app, document):
    client = make_app(STATE_TOKEN=TOKEN).test_client()
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == json.loads(json.dumps(document))


def test_every_route_the_app_serves_is_documented_and_vice_versa(app: Flask, document):
    served = set()
    for rule in app.url_map.iter_rules():
        path = rule.rule.replace("<path:filename>", "{path}")
        path = re.sub(r"<(\w+)>", r"{\1}", path)
        for method in rule.methods - {"HEAD"}:
            served.add((path, method.lower()))
    documented = {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }
    # Flask answers OPTIONS on every rule; /static/* is served by Flask and needs no preflight.
    assert documented - served == set()
    assert served - documented <= {("/static/{path}", "options")}


def test_every_operation_states_its_auth_and_the_error_shape(document):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            # A progress report's only identity is its step call's progress token.
            protected = (
                path.startswith("/workflow")
                and method != "options"
                and not path.endswith("/progress")
            )
            if protected:
                assert operation["security"] == [{"bearerAuth": []}, {}], (path, method)
                assert "401" in operation["responses"], (path, method)
            else:
                assert operation["security"] == [], (path, method)
                assert "401" not in operation["responses"], (path, method)


# --- every route and status, on every backend ------------------------------------------------


class Recorder:
    """Send requests through a test client, check each answer, and remember what was seen."""

    def __init__(self, client: FlaskClient, doc: OpenAPIDocument, seen: set) -> None:
        self.client = client
        self.doc = doc
        self.seen = seen

    def __call__(self, method: str, path: str, expect: int, **kw: Any) -> Any:
        """Send one request, check it answers `expect` as documented, and record it."""
        response = self.client.open(path, method=method, **kw)
        assert response.status_code == expect, (method, path, response.get_data(as_text=True))
        self.doc.check_flask(method, path, response)
        self.note(method, path, expect)
        return response

    def stream(self, path: str, expect: int, **kw: Any) -> None:
        """Open the event stream, read its first event, check it, and close it."""
        response = self.client.get(path, buffered=False, **kw)
        assert response.status_code == expect
        if expect == 200:
            body = b""
            for chunk in response.response:
                body += chunk if isinstance(chunk, bytes) else chunk.encode()
                if b"\ndata:" in body and body.endswith(b"\n\n"):
                    break
            response.close()
        else:
            body = response.get_data()
        self.doc.check_flask("GET", path, response, body=body)
        self.note("GET", path, expect)

    def note(self, method: str, path: str, status: int) -> None:
        """Record that a documented (path, method, status) was provoked."""
        template = self.doc.template(path)
        if template is not None:
            self.seen.add((template, method.lower(), str(status)))


def broken_config(kind: str, tmp_path: Path) -> dict[str, Any]:
    """Return an app config whose storage (of backend `kind`) cannot answer."""
    if kind == "fakeredis":
        server = fakeredis.FakeServer()
        server.connected = False
        return {
            "STATE_URL": "redis://fakeredis/0",
            "REDIS_CLIENT_FACTORY": lambda: fakeredis.FakeRedis(server=server),
        }
    if kind == "redis":
        return {"STATE_URL": f"redis://127.0.0.1:{free_port()}/0", "IO_TIMEOUT": 0.2}
    # A symlink planted at the state path (and the history path) is refused, never followed.
    directory = tmp_path / "broken"
    directory.mkdir()
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    for name in ("workflow_state.json", "workflow_state.json.history.json"):
        (directory / name).symlink_to(outside)
    return {"STATE_URL": f"file://{directory}/workflow_state.json"}


def concrete_path(path: str) -> str:
    """Fill a documented path's parameters with values that fit them."""
    return (
        path.replace("{index}", "0").replace("{action}", "test_ssh").replace("{workflow_id}", "wf")
    )


STALE = {"If-Match": '"999999"'}
QUESTION = {"message": "Trust the host key?", "input": [{"name": "trust", "type": "boolean"}]}


def bearer(token: str) -> dict[str, str]:
    """Return the header a step sends its progress token in."""
    return {"Authorization": f"Bearer {token}"}


def test_every_documented_answer_is_provoked_and_matches(
    make_app: Callable[..., Flask], backend: dict[str, Any], document, tmp_path: Path
):
    doc = OpenAPIDocument(document)
    seen: set[tuple[str, str, str]] = set()
    call = Recorder(make_app(DEMO_STEP_SECONDS=0).test_client(), doc, seen)

    # No state yet.
    call("POST", f"{STATE}/resume", 404, json={"input": {}})
    call("POST", f"{STATE}/retry", 404)
    call("GET", STATE, 200)
    call("GET", f"{STATE}/summary", 200)
    call.stream(f"{STATE}/stream", 200)
    call("PATCH", STATE, 404, json={"status": "failed"})
    call("PATCH", f"{STATE}/steps/0", 404, json={"status": "completed"})
    call("POST", STATE, 412, json={"steps": steps(1)}, headers={"If-Match": '"1"'})
    # A running state.
    saved = call("POST", STATE, 200, json={"workflow_id": "wf", "steps": steps(3)})
    etag = saved.headers["ETag"]
    call("GET", STATE, 304, headers={"If-None-Match": etag})
    call("GET", STATE, 200)
    call("GET", f"{STATE}/summary", 200)
    call.stream(f"{STATE}/stream", 200)
    call("POST", STATE, 400, data=b"")
    call("PATCH", STATE, 400, data=b"[1]")
    call("PATCH", f"{STATE}/steps/x", 400, json={"status": "completed"})
    call("PATCH", f"{STATE}/steps/0", 409, json={"status": "completed", "workflow_id": "zz"})
    call("PATCH", STATE, 409, json={"workflow_id": "other"})
    call("PATCH", STATE, 412, json={"note": 1}, headers={"If-Match": '"999999"'})
    call("PATCH", f"{STATE}/steps/0", 412, json={"status": "failed"}, headers={"If-Match": '"0"'})
    call("PATCH", f"{STATE}/steps/0", 200, json={"status": "completed", "data": {"ms": 3}})
    call("PATCH", STATE, 200, json={"status": "completed"}, headers={"If-Match": "*"})
    # A finished state: final.
    call("POST", STATE, 409, json={"workflow_id": "wf", "steps": steps(1)})
    call("GET", "/workflow/history", 200)
    call("GET", "/workflow/history?limit=2", 200)
    call("GET", "/workflow/history?limit=0", 400)
    call("DELETE", STATE, 200)
    call("DELETE", STATE, 200)
    huge = b'{"pad": "' + b"x" * 300_000 + b'"}'
    for method, path in (("POST", STATE), ("PATCH", STATE), ("PATCH", f"{STATE}/steps/0")):
        call(method, path, 413, data=huge)
    # Server runs (contract section 9): enough steps that the file backend's run thread is
    # still at it when the cancel comes.
    call("POST", "/workflows/a%20b/run", 400)
    call("POST", "/workflows/a%20b/cancel", 400)
    call("POST", "/workflows/nope/run", 404)
    call("POST", "/workflows/nope/cancel", 404)
    call("POST", f"{STATE}/cancel", 404)
    call("POST", STATE, 200, json={"workflow_id": "wf-run", "steps": steps(50)})
    call("POST", "/workflows/wf-run/run", 202)
    call("POST", "/workflows/wf-run/run", 409)
    call("POST", "/workflows/wf-run/cancel", 200)
    call("POST", f"{STATE}/cancel", 200)
    call("POST", STATE, 200, json={"workflow_id": "wf-done", "status": "completed"})
    call("POST", "/workflows/wf-done/cancel", 409)
    call("POST", f"{STATE}/cancel", 409)
    # Runs that ask, report and recover.
    store = store_of(call.client.application)
    call("POST", "/workflows/nope/resume", 404, json={"input": {}})
    call("POST", "/workflows/nope/retry", 404)
    call("POST", "/workflows/a%20b/retry", 400)
    call("POST", "/workflows/a%20b/resume", 400, json={"input": {}})
    fence, token = calling(store, "wf-ask")
    progress = "/workflows/wf-ask/steps/0/progress"
    call("POST", progress, 200, json={"percent": 40, "message": "half"}, headers=bearer(token))
    call("POST", progress, 400, json={"percent": 400}, headers=bearer(token))
    call("POST", progress, 403, json={"percent": 40})
    old = runs.make_progress_token("public", runs.Fence(fence.incarnation, 0), "old")
    call("POST", progress, 409, json={"percent": 40}, headers=bearer(old))
    call("POST", progress, 413, data=huge, headers=bearer(token))
    store.block_step("public", "wf-ask", fence, 0, QUESTION)
    call("POST", f"{STATE}/resume", 400, json={"input": {"trust": "yes"}})
    call("POST", f"{STATE}/resume", 202, json={"input": {"trust": True}})
    call("POST", f"{STATE}/resume", 409, json={"input": {"trust": True}})
    fence, _ = calling(store, "wf-ask2")
    store.block_step("public", "wf-ask2", fence, 0, QUESTION)
    call("POST", "/workflows/wf-ask2/resume", 400, json={"input": {"nope": True}})
    call("POST", "/workflows/wf-ask2/resume", 202, json={"input": {"trust": False}})
    call("POST", "/workflows/wf-ask2/resume", 409, json={"input": {"trust": False}})
    failed = {"workflow_id": "wf-failed", "status": "failed", "steps": steps(1)}
    call("POST", STATE, 200, json=failed)
    call("POST", f"{STATE}/retry", 202)
    call("POST", f"{STATE}/retry", 409)
    call("POST", STATE, 200, json={**failed, "workflow_id": "wf-failed2"})
    call("POST", "/workflows/wf-failed2/retry", 202)
    call("POST", "/workflows/wf-failed2/retry", 409)
    # Many workflows (contract section 8).
    call("GET", "/workflows", 200)
    call("GET", "/workflows?status=finished&limit=1", 200)
    call("GET", "/workflows?limit=0", 400)
    call("GET", "/workflows?owner=someone", 403)
    created = call("POST", "/workflows", 201, json={"workflow_id": "wf8", "steps": steps(2)})
    call("POST", "/workflows", 409, json={"workflow_id": "wf8"})
    call("POST", "/workflows", 400, data=b"[]")
    call("POST", "/workflows", 413, data=huge)
    call("GET", "/workflows/wf8", 200)
    call("GET", "/workflows/wf8", 304, headers={"If-None-Match": created.headers["ETag"]})
    call("GET", "/workflows/a%20b", 400)
    call("GET", "/workflows/nope", 404)
    call("GET", "/workflows/wf8/summary", 200)
    call("GET", "/workflows/a%20b/summary", 400)
    call("GET", "/workflows/nope/summary", 404)
    call.stream("/workflows/wf8/stream", 200)
    call.stream("/workflows/a%20b/stream", 400)
    call.stream("/workflows/nope/stream", 404)
    call.stream("/workflows/stream", 200)
    call("PATCH", "/workflows/wf8/steps/0", 200, json={"status": "completed"})
    call("PATCH", "/workflows/wf8/steps/9", 400, json={"status": "completed"})
    call("PATCH", "/workflows/nope/steps/0", 404, json={"status": "completed"})
    call("PATCH", "/workflows/wf8/steps/0", 409, json={"status": "failed", "workflow_id": "x"})
    call("PATCH", "/workflows/wf8/steps/0", 412, json={"status": "failed"}, headers=STALE)
    call("PATCH", "/workflows/wf8/steps/0", 413, data=huge)
    call("PATCH", "/workflows/wf8", 400, data=b"[1]")
    call("PATCH", "/workflows/nope", 404, json={"status": "failed"})
    call("PATCH", "/workflows/wf8", 409, json={"workflow_id": "other"})
    call("PATCH", "/workflows/wf8", 412, json={"note": 1}, headers=STALE)
    call("PATCH", "/workflows/wf8", 413, data=huge)
    call("PATCH", "/workflows/wf8", 200, json={"status": "completed"})
    call("POST", "/workflows", 409, json={"workflow_id": "wf8", "steps": steps(1)})
    call("DELETE", "/workflows/wf8", 200)
    call("DELETE", "/workflows/wf8", 404)
    call("DELETE", "/workflows/a%20b", 400)
    # An empty storage of its own: the workflows above (finished ones stay 30 s) must not count.
    empty = {"STATE_PREFIX": "crowded"}
    if backend["BACKEND_KIND"] == "file":
        empty = {"STATE_URL": f"file://{tmp_path}/crowded/workflow_state.json"}
    crowded = Recorder(make_app(MAX_WORKFLOWS=1, **empty).test_client(), doc, seen)
    crowded("POST", "/workflows", 201, json={"workflow_id": "one"})
    crowded("POST", "/workflows", 429, json={"workflow_id": "two"})
    # The page's helpers, operations, this document, the page.
    call("GET", "/workflow/config", 200)
    call("POST", "/workflow/actions/test_ssh", 200)
    call("POST", "/workflow/actions/nope", 404)
    call("GET", "/healthz", 200)
    call("GET", "/readyz", 200)
    call("GET", "/metrics", 200)
    call("GET", "/openapi.json", 200)
    call("GET", "/", 200)
    call("GET", "/static/js/app.js", 200)
    call("GET", "/static/nope.js", 404)
    call("GET", "/nowhere", 404)
    call("PUT", STATE, 405, json={})
    call("DELETE", "/healthz", 405)
    for path, item in document["paths"].items():
        if "options" in item:
            concrete = concrete_path(path)
            call("OPTIONS", concrete, 204, headers={"Origin": "https://x.example"})

    # With a token, every /workflow/* operation refuses a caller without it.
    guarded = Recorder(make_app(STATE_TOKEN=TOKEN).test_client(), doc, seen)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if "401" in operation.get("responses", {}):
                concrete = concrete_path(path)
                guarded(method.upper(), concrete, 401, json={"status": "completed"})

    # Storage down: every route that touches it answers 503 with Retry-After.
    down = Recorder(
        make_app(**broken_config(backend["BACKEND_KIND"], tmp_path)).test_client(), doc, seen
    )
    down("GET", STATE, 503)
    down("POST", STATE, 503, json={"steps": steps(1)})
    down("PATCH", STATE, 503, json={"status": "failed"})
    down("PATCH", f"{STATE}/steps/0", 503, json={"status": "completed"})
    down("DELETE", STATE, 503)
    down("GET", f"{STATE}/summary", 503)
    down("GET", "/workflow/history", 503)
    down("POST", "/workflows/wf/run", 503)
    down("POST", "/workflows/wf/cancel", 503)
    down("POST", f"{STATE}/cancel", 503)
    down("POST", "/workflows/wf/resume", 503, json={"input": {}})
    down("POST", "/workflows/wf/retry", 503)
    down("POST", f"{STATE}/resume", 503, json={"input": {}})
    down("POST", f"{STATE}/retry", 503)
    down("POST", "/workflows/wf/steps/0/progress", 503, json={"percent": 1}, headers=bearer(token))
    down("GET", "/workflows", 503)
    down("POST", "/workflows", 503, json={"steps": steps(1)})
    down("GET", "/workflows/wf", 503)
    down("PATCH", "/workflows/wf", 503, json={"status": "failed"})
    down("PATCH", "/workflows/wf/steps/0", 503, json={"status": "completed"})
    down("DELETE", "/workflows/wf", 503)
    down("GET", "/workflows/wf/summary", 503)
    down.stream("/workflows/wf/stream", 503)
    down.stream("/workflows/stream", 503)
    down("GET", "/readyz", 503)
    down.stream(f"{STATE}/stream", 503)
    down("GET", "/healthz", 200)

    documented = {
        (path, method, status)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        for status in operation["responses"]
    }
    missing = documented - seen
    assert not missing, sorted(missing)


def test_a_protected_response_is_checked_with_the_token_too(make_app, document):
    doc = OpenAPIDocument(document)
    client = make_app(STATE_TOKEN=TOKEN).test_client()
    response = client.post(STATE, json={"steps": steps(1)}, headers=AUTH)
    assert response.status_code == 200
    doc.check_flask("POST", STATE, response)


def test_the_checker_rejects_answers_the_document_does_not_describe(document):
    doc = OpenAPIDocument(document)
    error = b'{"success": false, "message": "x", "error": "x"}'
    with pytest.raises(AssertionError, match="not documented"):
        doc.check("GET", "/healthz", 500, {"Content-Type": "application/json"}, error)
    with pytest.raises(AssertionError, match="Retry-After"):
        doc.check("GET", STATE, 503, {"Content-Type": "application/json"}, error)
    with pytest.raises(AssertionError, match="Additional properties"):
        doc.check(
            "GET",
            STATE,
            401,
            {"Content-Type": "application/json", "WWW-Authenticate": "Bearer"},
            b'{"success": false, "message": "x", "error": "x", "trace": "..."}',
        )
    with pytest.raises(AssertionError, match="content type"):
        doc.check("GET", "/healthz", 200, {"Content-Type": "text/html"}, b"<p>")
