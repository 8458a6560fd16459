"""WORKFLOW_STATE_TOKEN: every /workflow/* route needs the bearer token; the rest stays open.

Open by design: the page (`/`, `/static/*`), `/healthz`, `/readyz` (load balancers carry no
token), `/metrics` (scrapers; it holds counts, never state) and `/openapi.json` (the contract
is public), and every OPTIONS preflight (browsers send preflights without credentials).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from service import create_app, identity
from service.openapi import build_document
from service.stream import close_all_hubs
from tests.conftest import steps
from tests.support import Gunicorn, http
from tests.support.routes import OPEN_ROUTES, STATE

TOKEN = "s3cret-Token_with.chars~42"
GOOD = {"Authorization": f"Bearer {TOKEN}"}


def protected_operations() -> list[tuple[str, str]]:
    """Every documented /workflow/* operation but preflights, with concrete paths."""
    found = []
    for path, item in build_document()["paths"].items():
        if not path.startswith("/workflow/"):
            continue
        concrete = path.replace("{index}", "0").replace("{action}", "test_ssh")
        found += [(m.upper(), concrete) for m in item if m != "options"]
    return found


PROTECTED = protected_operations()


@pytest.fixture(autouse=True)
def close_stream_hubs() -> Iterator[None]:
    """Stop the stream feed threads the apps of a test started."""
    yield
    close_all_hubs()


@pytest.fixture
def guarded(tmp_path: Path) -> FlaskClient:
    """A client of an app that requires TOKEN, with a stored state.

    The token check runs before any route and never touches storage, so one backend will do.
    """
    app = create_app(
        {
            "STATE_URL": f"file://{tmp_path}/state/workflow_state.json",
            "STATE_TOKEN": TOKEN,
            "DEMO_STEP_SECONDS": 0,
        }
    )
    client = app.test_client()
    saved = client.post(STATE, json={"workflow_id": "wf", "steps": steps(2)}, headers=GOOD)
    assert saved.status_code == 200
    return client


def stored(client: FlaskClient) -> dict[str, Any]:
    """Return the stored state, read with the token."""
    return client.get(STATE, headers=GOOD).get_json()["state"]


def assert_unauthorized(response: Any) -> None:
    """Check the answer is the contract's 401, readable by the page's script."""
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.get_json() == {
        "success": False,
        "message": response.get_json()["message"],
        "error": "unauthorized",
    }
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    # The page's script reads the 401 to ask for the token: CORS must let it see the answer.
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_the_list_covers_every_workflow_route():
    assert {path for _, path in PROTECTED} >= {
        STATE,
        f"{STATE}/steps/0",
        f"{STATE}/summary",
        f"{STATE}/stream",
        "/workflow/history",
        "/workflow/config",
        "/workflow/actions/test_ssh",
    }


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Basic {TOKEN}",
        f"Token {TOKEN}",
        TOKEN,
        f"Bearer{TOKEN}",
        f"Bearer {TOKEN.upper()}",
    ],
)
def test_a_missing_or_wrong_token_is_401_and_changes_nothing(guarded, method, path, header):
    before = stored(guarded)
    headers = {} if header is None else {"Authorization": header}
    response = guarded.open(path, method=method, json={"status": "completed"}, headers=headers)
    assert_unauthorized(response)
    assert stored(guarded) == before


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_the_right_token_passes(guarded, method, path):
    if path.endswith("/stream"):
        response = guarded.get(path, headers=GOOD, buffered=False)
        assert response.status_code == 200
        response.close()
        return
    response = guarded.open(path, method=method, json={"status": "completed"}, headers=GOOD)
    if path.endswith(("/resume", "/retry")):
        # Let in: then refused for what is stored (not blocked, not failed) or the body.
        assert response.status_code in (400, 409), response.get_data(as_text=True)
        assert response.get_json()["error"] in ("invalid_input", "not_blocked", "not_failed")
        return
    assert response.status_code in (200, 204), response.get_data(as_text=True)


@pytest.mark.parametrize("header", [f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer  {TOKEN} "])
def test_the_scheme_is_case_insensitive_and_spaces_around_the_token_are_ignored(guarded, header):
    assert guarded.get(STATE, headers={"Authorization": header}).status_code == 200


def test_an_unknown_workflow_path_is_401_too_so_routes_are_not_revealed(guarded):
    assert_unauthorized(guarded.get("/workflow/secret-admin"))
    assert guarded.get("/workflow/secret-admin", headers=GOOD).status_code == 404


@pytest.mark.parametrize("path", OPEN_ROUTES)
def test_open_routes_need_no_token(guarded, path):
    response = guarded.get(path)
    assert response.status_code == 200, path


@pytest.mark.parametrize("path", sorted({path for _, path in PROTECTED}))
def test_preflights_stay_open(guarded, path):
    response = guarded.options(path, headers={"Origin": "https://page.example"})
    assert response.status_code == 204
    assert "Authorization" in response.headers["Access-Control-Allow-Headers"]


def test_without_a_configured_token_nothing_is_required(client):
    assert client.post(STATE, json={"steps": steps(1)}).status_code == 200
    assert client.get(STATE, headers={"Authorization": "Bearer anything"}).status_code == 200


def test_the_comparison_is_constant_time(guarded, monkeypatch):
    calls = []
    real = identity.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(identity.hmac, "compare_digest", spy)
    assert guarded.get(STATE, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert guarded.get(STATE, headers=GOOD).status_code == 200
    # SHA-256 digests, so the time does not depend on the supplied token's length either.
    nope, token = hashlib.sha256(b"nope").digest(), hashlib.sha256(TOKEN.encode()).digest()
    assert calls == [(nope, token), (token, token)]


def test_a_non_ascii_token_works_as_utf_8_on_the_wire(make_app):
    token = "clé-ünïcode-🔑"
    client = make_app(STATE_TOKEN=token).test_client()
    # WSGI hands header bytes over as latin-1 text; a browser sends the token's UTF-8 bytes.
    wire = "Bearer " + token.encode("utf-8").decode("latin-1")
    assert client.get(STATE, headers={"Authorization": wire}).status_code == 200
    assert client.get(STATE, headers={"Authorization": "Bearer cl\xe9"}).status_code == 401


def test_the_token_is_never_logged(guarded, caplog):
    with caplog.at_level(logging.DEBUG):
        guarded.get(STATE, headers=GOOD)
        guarded.get(STATE, headers={"Authorization": f"Bearer {TOKEN}-wrong"})
        guarded.post(STATE, json={"steps": steps(1)}, headers=GOOD)
    assert TOKEN not in caplog.text


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(header=st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=80))
def test_no_other_header_value_gets_in(guarded, header):
    scheme, _, supplied = header.partition(" ")
    assume(not (scheme.lower() == "bearer" and supplied.strip() == TOKEN))
    response = guarded.patch(STATE, json={"status": "cancelled"}, headers={"Authorization": header})
    assert_unauthorized(response)


@pytest.mark.slow
def test_the_real_server_enforces_the_token(tmp_path: Path):
    server = Gunicorn(
        {"WORKFLOW_STATE_URL": f"file://{tmp_path}/s.json", "WORKFLOW_STATE_TOKEN": TOKEN},
        workers=2,
    ).start()
    try:
        status, headers, body = http("POST", server.url + STATE, {"steps": steps(1)})
        assert (status, body["error"]) == (401, "unauthorized")
        assert headers["WWW-Authenticate"].startswith("Bearer")
        status, _, body = http("GET", server.url + f"{STATE}/stream", timeout=5)
        assert (status, body["error"]) == (401, "unauthorized")
        assert http("POST", server.url + STATE, {"steps": steps(1)}, GOOD)[0] == 200
        assert http("GET", server.url + STATE, headers=GOOD)[2]["state"]["steps"] == steps(1)
        for path in ("/healthz", "/readyz", "/openapi.json", "/"):
            assert http("GET", server.url + path)[0] == 200, path
        assert http("OPTIONS", server.url + STATE)[0] == 204
        assert TOKEN not in server.output()
    finally:
        server.stop()
