"""Each person their own workflows (contract section 8), on every backend, in each of the three
ways to know who is asking: another owner's workflow reads as one that does not exist, lists
never mix owners, and an admin acts on others with `?owner=`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import steps
from tests.support import STATE
from tests.support.identity import identity_config, write_tokens
from tests.support.routes import WORKFLOWS

PROXY = "10.0.0.5"


class Person:
    """A client that always asks as one person."""

    def __init__(self, client: FlaskClient, headers: dict[str, str], peer: str) -> None:
        self.client = client
        self.headers = headers
        self.peer = peer

    def __getattr__(self, method: str) -> Callable[..., Any]:
        call = getattr(self.client, method)

        def send(path: str, **kwargs: Any) -> Any:
            headers = {**self.headers, **kwargs.pop("headers", {})}
            return call(path, headers=headers, environ_base={"REMOTE_ADDR": self.peer}, **kwargs)

        return send


def tokens_people(make_app: Callable[..., Any], tmp_path: Path) -> dict[str, Person]:
    path = write_tokens(
        tmp_path / "tokens.json",
        {"alice": ("alice-token", False), "bob": ("bob-token", False), "root": ("root-t", True)},
    )
    client = make_app(**identity_config(WORKFLOW_STATE_TOKENS_FILE=str(path))).test_client()
    tokens = {"alice": "alice-token", "bob": "bob-token", "root": "root-t"}
    return {
        name: Person(client, {"Authorization": f"Bearer {token}"}, "127.0.0.1")
        for name, token in tokens.items()
    }


def header_people(make_app: Callable[..., Any], tmp_path: Path) -> dict[str, Person]:
    config = identity_config(
        WORKFLOW_STATE_USER_HEADER="X-Forwarded-User",
        WORKFLOW_STATE_TRUSTED_PROXIES="10.0.0.0/8",
        WORKFLOW_STATE_ADMINS="root",
    )
    client = make_app(**config).test_client()
    return {
        name: Person(client, {"X-Forwarded-User": name}, PROXY) for name in ("alice", "bob", "root")
    }


MODES = {"tokens_file": tokens_people, "user_header": header_people}


@pytest.fixture(params=sorted(MODES))
def people(request, make_app, tmp_path) -> dict[str, Person]:
    return MODES[request.param](make_app, tmp_path)


def create(person: Person, workflow_id: str) -> dict[str, Any]:
    response = person.post(WORKFLOWS, json={"workflow_id": workflow_id, "steps": steps(2)})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["state"]


def listed(person: Person, query: str = "") -> list[str]:
    response = person.get(f"{WORKFLOWS}{query}")
    assert response.status_code == 200, response.get_json()
    return [entry["workflow_id"] for entry in response.get_json()["workflows"]]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "", None),
        ("get", "/summary", None),
        ("get", "/stream", None),
        ("patch", "", {"status": "cancelled"}),
        ("patch", "/steps/0", {"status": "completed"}),
        ("delete", "", None),
        ("post", "/run", None),
        ("post", "/cancel", None),
    ],
)
def test_another_owners_workflow_is_a_plain_404(people, method, path, body):
    create(people["alice"], "secret")
    stranger = getattr(people["bob"], method)(f"{WORKFLOWS}/secret{path}", json=body)
    missing = getattr(people["bob"], method)(f"{WORKFLOWS}/nothing{path}", json=body)
    assert stranger.status_code == missing.status_code == 404
    assert stranger.get_json() == {
        **missing.get_json(),
        "message": missing.get_json()["message"].replace("nothing", "secret"),
    }
    alice_view = people["alice"].get(f"{WORKFLOWS}/secret").get_json()["state"]
    assert alice_view["steps"][0]["status"] == "pending" and alice_view["status"] == "running"


def test_the_same_id_is_two_workflows_for_two_owners(people):
    a = create(people["alice"], "same")
    b = create(people["bob"], "same")
    people["bob"].patch(f"{WORKFLOWS}/same/steps/1", json={"status": "completed"})
    assert people["alice"].get(f"{WORKFLOWS}/same").get_json()["state"] == a
    assert people["bob"].get(f"{WORKFLOWS}/same").get_json()["state"]["version"] > b["version"]


def test_lists_and_current_workflows_never_mix_owners(people):
    for name in ("a1", "a2"):
        create(people["alice"], name)
    create(people["bob"], "b1")
    assert listed(people["alice"]) == ["a2", "a1"]
    assert listed(people["bob"]) == ["b1"]
    assert people["alice"].get(STATE).get_json()["state"]["workflow_id"] == "a2"
    assert people["bob"].get(STATE).get_json()["state"]["workflow_id"] == "b1"
    people["bob"].delete(STATE)
    assert listed(people["alice"]) == ["a2", "a1"]


def test_an_admin_acts_on_another_owner_with_the_owner_parameter(people):
    create(people["alice"], "job")
    root = people["root"]
    assert root.get(f"{WORKFLOWS}/job").status_code == 404  # its own namespace by default
    assert root.get(f"{WORKFLOWS}/job?owner=alice").get_json()["state"]["workflow_id"] == "job"
    stepped = root.patch(f"{WORKFLOWS}/job/steps/0?owner=alice", json={"status": "completed"})
    assert stepped.status_code == 200
    alice_state = people["alice"].get(f"{WORKFLOWS}/job").get_json()["state"]
    assert alice_state["steps"][0]["status"] == "completed"
    assert listed(root, "?owner=alice") == ["job"]


def test_an_admin_lists_every_owner_with_a_star(people):
    create(people["alice"], "a1")
    create(people["bob"], "b1")
    create(people["alice"], "a2")
    body = people["root"].get(f"{WORKFLOWS}?owner=*").get_json()
    assert [(e["owner"], e["workflow_id"]) for e in body["workflows"]] == [
        ("alice", "a2"),
        ("bob", "b1"),
        ("alice", "a1"),
    ]
    first = people["root"].get(f"{WORKFLOWS}?owner=*&limit=2").get_json()
    rest = people["root"].get(f"{WORKFLOWS}?owner=*&limit=2&cursor={first['next_cursor']}")
    assert [e["workflow_id"] for e in first["workflows"] + rest.get_json()["workflows"]] == [
        "a2",
        "b1",
        "a1",
    ]


def test_a_non_admin_may_not_ask_for_another_owner(people):
    create(people["bob"], "b1")
    for query in ("?owner=bob", "?owner=*"):
        refused = people["alice"].get(f"{WORKFLOWS}{query}")
        assert (refused.status_code, refused.get_json()["error"]) == (403, "forbidden")


def test_unknown_callers_are_401_and_change_nothing(people, make_app):
    alice = people["alice"]
    stranger = Person(alice.client, {"Authorization": "Bearer nope"}, "127.0.0.1")
    if "X-Forwarded-User" in alice.headers:
        stranger = Person(alice.client, dict(alice.headers), "192.0.2.7")  # untrusted address
    refused = stranger.post(WORKFLOWS, json={"workflow_id": "x"})
    assert (refused.status_code, refused.get_json()["error"]) == (401, "unauthorized")
    assert stranger.get(WORKFLOWS).status_code == 401
    assert listed(alice) == []


@pytest.mark.parametrize("name", ["a b", "x" * 65, "..", "émile"])
def test_a_bad_user_name_from_the_proxy_is_400(make_app, tmp_path, name):
    alice = header_people(make_app, tmp_path)["alice"]
    response = alice.get(WORKFLOWS, headers={"X-Forwarded-User": name})
    assert (response.status_code, response.get_json()["error"]) == (400, "invalid_owner")


def test_without_auth_everyone_shares_public(client):
    client.post(WORKFLOWS, json={"workflow_id": "shared", "steps": steps(1)})
    assert client.get(f"{WORKFLOWS}/shared?owner=public").status_code == 200
    refused = client.get(f"{WORKFLOWS}/shared?owner=alice")
    assert (refused.status_code, refused.get_json()["error"]) == (403, "forbidden")
