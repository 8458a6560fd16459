"""Who is asking (contract §6, §8), through real requests to the app.

A test-only blueprint echoes `current_identity()`. The identity never touches storage, so one
backend (the file) will do. Until the routes of §8 exist every route acts on the one shared
state; these tests only pin who is asking and on whose behalf.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service import create_app, identity
from service.stream import close_all_hubs
from tests.support import STATE, wait_until
from tests.support.identity import (
    WHOAMI,
    WHOAMI_LIST,
    WHOAMI_OPEN,
    identity_config,
    whoami_blueprint,
    write_tokens,
)
from tests.support.routes import OPEN_ROUTES

ALICE, BOB, ROOT, SHARED = "alice-token-1", "bob-token-22", "root-token-333", "shared-token"
TRUSTED_V4, TRUSTED_V6 = "10.20.30.40", "fd00::17"
UNTRUSTED_V4, UNTRUSTED_V6 = "192.0.2.9", "2001:db8::9"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(autouse=True)
def close_stream_hubs() -> Iterator[None]:
    yield
    close_all_hubs()


@pytest.fixture
def tokens_path(tmp_path: Path) -> Path:
    """alice and bob are users, root an admin."""
    return write_tokens(
        tmp_path / "tokens.json",
        {"alice": (ALICE, False), "bob": (BOB, False), "root": (ROOT, True)},
    )


@pytest.fixture
def build(tmp_path: Path) -> Iterator[Callable[..., FlaskClient]]:
    """Build a client of an app with the whoami routes, from identity environment variables."""
    apps: list[Flask] = []

    def make(**environ: str) -> FlaskClient:
        app = create_app(
            {
                "TESTING": True,
                "STATE_URL": f"file://{tmp_path}/state/workflow_state.json",
                "DEMO_STEP_SECONDS": 0,
                **identity_config(**environ),
            }
        )
        app.register_blueprint(whoami_blueprint())
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.extensions["workflow_stream_hub"].close()
        app.extensions["workflow_state"].close()


def who(
    client: FlaskClient,
    path: str = WHOAMI,
    headers: dict[str, str] | None = None,
    peer: str = "127.0.0.1",
    query: str = "",
) -> dict[str, Any]:
    """Return the echoed identity; fail with the answer when it is not a 200."""
    response = ask(client, path + query, headers, peer)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def ask(client: FlaskClient, path: str, headers=None, peer="127.0.0.1", method="GET"):
    return client.open(
        path, method=method, headers=headers or {}, environ_base={"REMOTE_ADDR": peer}
    )


def me(user: str, admin: bool = False, owner: str | None = None, all_owners: bool = False):
    return {"user": user, "admin": admin, "owner": owner or user, "all_owners": all_owners}


def assert_error(response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body == {"success": False, "error": code, "message": body["message"]}
    assert body["message"]
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    return body


# --- no auth configured -----------------------------------------------------------------------


def test_without_auth_everyone_is_public(build):
    client = build()
    assert who(client) == me("public")
    assert who(client, headers=bearer("anything")) == me("public")
    assert who(client, headers={"X-Forwarded-User": "root"}) == me("public")
    assert who(client, WHOAMI_LIST) == me("public")
    assert who(client, WHOAMI_OPEN) == me("public")


def test_without_auth_public_may_name_itself_only(build):
    client = build()
    assert who(client, query="?owner=public") == me("public")
    assert_error(ask(client, WHOAMI + "?owner=alice"), 403, "forbidden")
    assert_error(ask(client, WHOAMI_LIST + "?owner=*"), 403, "forbidden")


# --- the shared token -------------------------------------------------------------------------


def test_the_shared_token_is_public(build):
    client = build(WORKFLOW_STATE_TOKEN=SHARED)
    assert who(client, headers=bearer(SHARED)) == me("public")
    for headers in ({}, bearer("wrong"), bearer(SHARED + "x"), {"Authorization": SHARED}):
        assert_error(ask(client, WHOAMI, headers), 401, "unauthorized")
        assert_error(ask(client, WHOAMI_LIST, headers), 401, "unauthorized")


def test_current_identity_on_an_open_path_identifies_on_demand(build):
    client = build(WORKFLOW_STATE_TOKEN=SHARED)
    assert_error(ask(client, WHOAMI_OPEN), 401, "unauthorized")
    assert who(client, WHOAMI_OPEN, bearer(SHARED)) == me("public")


# --- the tokens file --------------------------------------------------------------------------


def test_each_token_names_its_user(build, tokens_path):
    client = build(WORKFLOW_STATE_TOKENS_FILE=str(tokens_path))
    assert who(client, headers=bearer(ALICE)) == me("alice")
    assert who(client, headers=bearer(BOB)) == me("bob")
    assert who(client, headers=bearer(ROOT)) == me("root", admin=True)
    for headers in ({}, bearer("wrong"), bearer(ALICE[:-1]), bearer(SHARED), bearer("")):
        assert_error(ask(client, WHOAMI, headers), 401, "unauthorized")


def test_the_shared_token_and_the_tokens_file_together(build, tokens_path):
    client = build(WORKFLOW_STATE_TOKENS_FILE=str(tokens_path), WORKFLOW_STATE_TOKEN=SHARED)
    assert who(client, headers=bearer(SHARED)) == me("public")
    assert who(client, headers=bearer(ALICE)) == me("alice")
    assert_error(ask(client, WHOAMI), 401, "unauthorized")


def test_every_entry_is_compared_whichever_matches(build, tokens_path, monkeypatch):
    client = build(WORKFLOW_STATE_TOKENS_FILE=str(tokens_path), WORKFLOW_STATE_TOKEN=SHARED)
    compared: list[bytes] = []
    real = identity.hmac.compare_digest

    def spy(supplied: bytes, stored: bytes) -> bool:
        compared.append(stored)
        return real(supplied, stored)

    monkeypatch.setattr(identity.hmac, "compare_digest", spy)
    everyone = [hashlib.sha256(t.encode()).digest() for t in (SHARED, ALICE, BOB, ROOT)]
    for token in (SHARED, ALICE, ROOT, "nobody's"):
        compared.clear()
        ask(client, WHOAMI, bearer(token))
        assert compared == everyone, token


def test_a_user_added_to_the_file_gets_in_without_a_restart(build, tokens_path):
    client = build(WORKFLOW_STATE_TOKENS_FILE=str(tokens_path))
    assert_error(ask(client, WHOAMI, bearer("carol-token")), 401, "unauthorized")
    write_tokens(tokens_path, {"alice": (ALICE, False), "carol": ("carol-token", True)})
    # The file is looked at once a second at most.
    wait_until(lambda: ask(client, WHOAMI, bearer("carol-token")).status_code == 200, timeout=5)
    assert who(client, headers=bearer("carol-token")) == me("carol", admin=True)
    assert_error(ask(client, WHOAMI, bearer(BOB)), 401, "unauthorized")  # removed: out


def test_a_broken_edit_keeps_everyone_in(build, tokens_path, caplog):
    client = build(WORKFLOW_STATE_TOKENS_FILE=str(tokens_path))
    tokens_path.write_text('{"alice": {"token_sha256": "')

    def seen_and_still_in() -> bool:
        # The file is looked at when a request comes; alice stays in all along.
        assert who(client, headers=bearer(ALICE)) == me("alice")
        return "keeping the 3 users" in caplog.text

    with caplog.at_level(logging.ERROR, logger="service.identity"):
        wait_until(seen_and_still_in, timeout=5, interval=0.1)


def test_no_token_is_ever_logged(build, tokens_path, caplog):
    client = build(WORKFLOW_STATE_TOKENS_FILE=str(tokens_path), WORKFLOW_STATE_TOKEN=SHARED)
    with caplog.at_level(logging.DEBUG):
        for token in (ALICE, ROOT, SHARED, "wrong-token-value"):
            ask(client, WHOAMI, bearer(token))
            client.post(STATE, json={"steps": []}, headers=bearer(token))
    for token in (ALICE, ROOT, SHARED, "wrong-token-value"):
        assert token not in caplog.text


# --- ?owner= ----------------------------------------------------------------------------------


def test_a_user_acts_on_their_own_and_may_say_so(build, tokens_path):
    client = build(WORKFLOW_STATE_TOKENS_FILE=str(tokens_path))
    assert who(client, headers=bearer(ALICE), query="?owner=alice") == me("alice")


def test_a_non_admin_naming_another_owner_is_forbidden(build, tokens_path):
    client = build(WORKFLOW_STATE_TOKENS_FILE=str(tokens_path))
    body = assert_error(ask(client, WHOAMI + "?owner=bob", bearer(ALICE)), 403, "forbidden")
    assert "admin" in body["message"] and "'bob'" in body["message"]
    assert_error(ask(client, WHOAMI_LIST + "?owner=*", bearer(ALICE)), 403, "forbidden")
    # On the routes of today too: the check runs before any route.
    assert_error(ask(client, STATE + "?owner=bob", bearer(ALICE)), 403, "forbidden")


def test_an_admin_acts_on_another_owner(build, tokens_path):
    client = build(WORKFLOW_STATE_TOKENS_FILE=str(tokens_path))
    assert who(client, headers=bearer(ROOT), query="?owner=alice") == me("root", True, "alice")
    assert who(client, headers=bearer(ROOT), query="?owner=nobody-yet") == me(
        "root", True, "nobody-yet"
    )


def test_owner_star_is_list_wide_for_admins_on_list_routes_only(build, tokens_path):
    client = build(WORKFLOW_STATE_TOKENS_FILE=str(tokens_path))
    everyone = me("root", True, "root", all_owners=True)
    assert who(client, WHOAMI_LIST, bearer(ROOT), query="?owner=*") == everyone
    assert who(client, WHOAMI_LIST, bearer(ROOT), query="?owner=%2A") == everyone
    assert who(client, WHOAMI_LIST, bearer(ROOT)) == me("root", True)
    body = assert_error(ask(client, WHOAMI + "?owner=*", bearer(ROOT)), 400, "invalid_owner")
    assert "listing" in body["message"]


@pytest.mark.parametrize(
    "query",
    [
        "?owner=",
        "?owner=..",
        "?owner=.",
        "?owner=../alice",
        "?owner=a%2Fb",
        "?owner=al%20ice",
        "?owner=%C3%A9",
        "?owner=" + "x" * 65,
        "?owner=**",
        "?owner=alice&owner=alice",
    ],
)
@pytest.mark.parametrize("token", [ALICE, ROOT])
def test_a_bad_owner_is_400(build, tokens_path, query, token):
    client = build(WORKFLOW_STATE_TOKENS_FILE=str(tokens_path))
    assert_error(ask(client, WHOAMI_LIST + query, bearer(token)), 400, "invalid_owner")


# --- the user header from a trusted proxy -----------------------------------------------------


def header_mode(build, **more: str) -> FlaskClient:
    return build(
        WORKFLOW_STATE_USER_HEADER="X-Forwarded-User",
        WORKFLOW_STATE_TRUSTED_PROXIES="10.0.0.0/8, fd00::/8, 127.0.0.1",
        WORKFLOW_STATE_ADMINS="root",
        **more,
    )


def user(name: str) -> dict[str, str]:
    return {"X-Forwarded-User": name}


@pytest.mark.parametrize("peer", [TRUSTED_V4, TRUSTED_V6, "::ffff:10.1.1.1", "127.0.0.1"])
def test_the_header_from_a_trusted_proxy_names_the_user(build, peer):
    client = header_mode(build)
    assert who(client, headers=user("alice@example.com"), peer=peer) == me("alice@example.com")
    assert who(client, headers=user("root"), peer=peer) == me("root", admin=True)
    assert who(client, WHOAMI_LIST, user("root"), peer, "?owner=*") == me(
        "root", True, all_owners=True
    )


@pytest.mark.parametrize("peer", [UNTRUSTED_V4, UNTRUSTED_V6, "::ffff:192.0.2.9", "127.0.0.2"])
def test_the_header_from_anywhere_else_is_401(build, peer, caplog):
    client = header_mode(build)
    with caplog.at_level(logging.WARNING, logger="service.identity"):
        for headers in (user("alice"), {**user("root"), "X-Forwarded-For": TRUSTED_V4}):
            body = assert_error(ask(client, WHOAMI, headers, peer), 401, "unauthorized")
            assert "trusted proxy" in body["message"]
    assert peer in caplog.text


def test_the_header_is_a_header_only_when_configured(build):
    client = build(WORKFLOW_STATE_TOKEN=SHARED)
    assert who(client, headers={**bearer(SHARED), **user("root")}, peer=UNTRUSTED_V4) == me(
        "public"
    )


def test_a_trusted_proxy_without_the_header_is_401(build):
    client = header_mode(build)
    for headers in ({}, user(""), bearer(ALICE)):
        body = assert_error(ask(client, WHOAMI, headers, TRUSTED_V4), 401, "unauthorized")
        assert "X-Forwarded-User" in body["message"]
    assert_error(ask(client, WHOAMI, {}, UNTRUSTED_V4), 401, "unauthorized")


@pytest.mark.parametrize("name", ["..", ".", "a/b", "a b", "*", "x" * 65, "caf\xe9", " alice"])
def test_a_bad_name_in_the_header_is_400(build, name):
    client = header_mode(build)
    assert_error(ask(client, WHOAMI, user(name), TRUSTED_V4), 400, "invalid_owner")


def test_admins_in_header_mode_come_from_the_admins_setting(build):
    client = header_mode(build)
    assert who(client, headers=user("root"), peer=TRUSTED_V4, query="?owner=bob") == me(
        "root", True, "bob"
    )
    assert_error(ask(client, WHOAMI + "?owner=bob", user("alice"), TRUSTED_V4), 403, "forbidden")


def test_header_and_tokens_together(build, tokens_path):
    client = header_mode(build, WORKFLOW_STATE_TOKENS_FILE=str(tokens_path))
    # No header: the bearer token decides, from any address.
    assert who(client, headers=bearer(ALICE), peer=UNTRUSTED_V4) == me("alice")
    assert who(client, headers=bearer(ROOT), peer=UNTRUSTED_V4) == me("root", admin=True)
    assert_error(ask(client, WHOAMI, {}, TRUSTED_V4), 401, "unauthorized")
    # The header: judged alone. The proxy's word wins over a token it passes through ...
    assert who(client, headers={**user("carol"), **bearer(ALICE)}, peer=TRUSTED_V4) == me("carol")
    # ... and from anywhere else the header is refused, even next to a good token.
    headers = {**user("carol"), **bearer(ALICE)}
    assert_error(ask(client, WHOAMI, headers, UNTRUSTED_V4), 401, "unauthorized")


# --- what is protected ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", [STATE, "/workflow/history", "/workflow/anything", "/workflows", "/workflows/x/y"]
)
def test_workflow_paths_need_an_identity(build, path):
    client = header_mode(build)
    assert_error(ask(client, path, user("alice"), UNTRUSTED_V4), 401, "unauthorized")
    assert ask(client, path, user("alice"), TRUSTED_V4).status_code != 401


@pytest.mark.parametrize("path", OPEN_ROUTES)
def test_open_paths_stay_open_in_every_mode(build, tokens_path, path):
    for client in (
        build(WORKFLOW_STATE_TOKEN=SHARED),
        build(WORKFLOW_STATE_TOKENS_FILE=str(tokens_path)),
        header_mode(build),
    ):
        response = ask(client, path, user("alice"), UNTRUSTED_V4)
        assert response.status_code == 200, path


@pytest.mark.parametrize("path", [STATE, "/workflow/history"])
def test_preflights_stay_open_even_with_the_header_from_anywhere(build, path):
    client = header_mode(build)
    headers = {**user("alice"), "Origin": "https://page.example"}
    assert ask(client, path, headers, UNTRUSTED_V4, method="OPTIONS").status_code == 204


def test_refusals_change_nothing(build, tokens_path):
    client = build(WORKFLOW_STATE_TOKENS_FILE=str(tokens_path))
    saved = client.post(STATE, json={"workflow_id": "wf", "steps": []}, headers=bearer(ALICE))
    assert saved.status_code == 200
    before = client.get(STATE, headers=bearer(ALICE)).get_json()
    assert client.delete(STATE, headers=bearer("wrong")).status_code == 401
    assert client.delete(STATE + "?owner=bob", headers=bearer(ALICE)).status_code == 403
    assert client.delete(STATE + "?owner=..", headers=bearer(ALICE)).status_code == 400
    assert client.get(STATE, headers=bearer(ALICE)).get_json() == before
