"""WORKFLOW_STATE_SECRET_KEY: ssh_connection is sealed at rest and opened for the API.

On every backend: what is stored (the Redis key, the file, the history, the published events)
holds `{"$encrypted": "<fernet token>"}` and never the clear text; every API answer holds the
clear text. Keys rotate by prepending. A value no key opens is answered as null and logged,
never a 500, and a write that cannot read it leaves it sealed as it was.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.fernet import Fernet, InvalidToken
from flask import Flask

from service.storage import FileStore, RedisStore
from service.stream import close_all_hubs
from tests.conftest import steps
from tests.support import layout, wait_until
from tests.support.routes import STATE

SSH = "ssh -p 2222 -i ~/.ssh/vast root@203.0.113.7"
KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()
KEY_C = Fernet.generate_key().decode()


@pytest.fixture(autouse=True)
def close_stream_hubs() -> Iterator[None]:
    """Stop the stream feed threads the apps of a test started."""
    yield
    close_all_hubs()


@pytest.fixture
def keyed(make_app: Callable[..., Flask]) -> Callable[..., Flask]:
    """Build apps on this test's backend with a list of keys (newest first)."""

    def make(*keys: str, **overrides: Any) -> Flask:
        return make_app(STATE_SECRET_KEYS=keys, **overrides)

    return make


def store_of(app: Flask) -> RedisStore | FileStore:
    """Return the app's store."""
    return app.extensions["workflow_state"]


def raw_state(app: Flask) -> dict[str, Any] | None:
    """Return the current workflow exactly as stored (Redis key or file), parsed."""
    raw = layout.raw_state(store_of(app))
    return None if raw is None else json.loads(raw)


def raw_history(app: Flask) -> bytes:
    """Return the stored history, as bytes."""
    return layout.raw_history(store_of(app))


def plant(app: Flask, state: dict[str, Any]) -> None:
    """Write a state straight into storage, as another instance or an operator would."""
    layout.put_raw_state(store_of(app), json.dumps(state), state["workflow_id"])


def opens_with(key: str, sealed: Any) -> str:
    """Decrypt a stored {"$encrypted": token} with one key (raises InvalidToken if it can't)."""
    assert isinstance(sealed, dict) and set(sealed) == {"$encrypted"}, sealed
    return Fernet(key.encode()).decrypt(sealed["$encrypted"].encode()).decode()


def test_stored_sealed_and_served_clear(keyed):
    app = keyed(KEY_A)
    client = app.test_client()
    posted = client.post(
        STATE, json={"workflow_id": "wf", "steps": steps(2), "ssh_connection": SSH}
    )
    assert posted.get_json()["state"]["ssh_connection"] == SSH
    raw = raw_state(app)
    assert opens_with(KEY_A, raw["ssh_connection"]) == SSH
    assert SSH not in json.dumps(raw)
    assert client.get(STATE).get_json()["state"]["ssh_connection"] == SSH

    step = client.patch(f"{STATE}/steps/0", json={"status": "completed"}).get_json()["state"]
    assert step["ssh_connection"] == SSH
    merged = client.patch(STATE, json={"note": "x"}).get_json()["state"]
    assert merged["ssh_connection"] == SSH
    assert opens_with(KEY_A, raw_state(app)["ssh_connection"]) == SSH
    # Everything but the sealed field is stored exactly as served.
    served = client.get(STATE).get_json()["state"]
    raw = raw_state(app)
    assert {k: v for k, v in raw.items() if k != "ssh_connection"} == {
        k: v for k, v in served.items() if k != "ssh_connection"
    }


def test_a_new_secret_replaces_the_old_one(keyed):
    app = keyed(KEY_A)
    client = app.test_client()
    client.post(STATE, json={"steps": steps(1), "ssh_connection": SSH})
    client.patch(STATE, json={"ssh_connection": "ssh root@new"})
    assert opens_with(KEY_A, raw_state(app)["ssh_connection"]) == "ssh root@new"
    client.patch(STATE, json={"ssh_connection": None})
    assert "ssh_connection" not in raw_state(app)
    assert "ssh_connection" not in client.get(STATE).get_json()["state"]


def test_summary_is_unaffected(keyed, make_app):
    body = {"workflow_id": "wf", "current_step": 1, "steps": steps(4), "ssh_connection": SSH}
    sealed = keyed(KEY_A).test_client()
    sealed.post(STATE, json=body)
    summary = sealed.get(f"{STATE}/summary").get_json()["summary"]
    assert summary["progress_percent"] == 50.0
    assert "ssh_connection" not in summary
    assert SSH not in json.dumps(summary)


def test_history_is_sealed_at_rest_and_clear_in_the_api(keyed):
    app = keyed(KEY_A)
    client = app.test_client()
    client.post(STATE, json={"workflow_id": "wf", "steps": steps(1), "ssh_connection": SSH})
    client.patch(STATE, json={"status": "completed"})
    history = client.get("/workflow/history").get_json()["workflows"]
    assert [entry["ssh_connection"] for entry in history] == [SSH]
    stored = raw_history(app)
    assert SSH.encode() not in stored
    assert b'"$encrypted"' in stored


def test_published_events_carry_the_sealed_form(keyed, backend):
    app = keyed(KEY_A)
    store = store_of(app)
    client = app.test_client()
    if isinstance(store, RedisStore):
        pubsub = store.client().pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(layout.events_location(store))
        wait_until(lambda: pubsub.get_message(timeout=0.05) is None and pubsub.subscribed)
        client.post(STATE, json={"steps": steps(1), "ssh_connection": SSH})
        message = wait_until(lambda: pubsub.get_message(timeout=0.1))
        pubsub.close()
        published = json.loads(message["data"])
    else:
        client.post(STATE, json={"steps": steps(1), "ssh_connection": SSH})
        with open(layout.events_location(store), "rb") as handle:
            published = json.loads(handle.read().splitlines()[-1])
    assert SSH not in json.dumps(published)
    assert opens_with(KEY_A, published["state"]["ssh_connection"]) == SSH


def test_a_live_stream_opens_the_sealed_field(keyed):
    client = keyed(KEY_A).test_client()
    client.post(STATE, json={"steps": steps(1), "ssh_connection": SSH})
    response = client.get(f"{STATE}/stream", buffered=False)
    body = b""
    for chunk in response.response:
        body += chunk
        if b"\ndata:" in body and body.endswith(b"\n\n"):
            break
    response.close()
    data = next(line for line in body.decode().splitlines() if line.startswith("data:"))
    assert json.loads(data[5:])["state"]["ssh_connection"] == SSH


def test_keys_rotate_by_prepending(keyed):
    old = keyed(KEY_A)
    old.test_client().post(STATE, json={"steps": steps(2), "ssh_connection": SSH})
    rotated = keyed(KEY_B, KEY_A)
    client = rotated.test_client()
    # Old values still open...
    assert client.get(STATE).get_json()["state"]["ssh_connection"] == SSH
    # ...and any write seals with the new key.
    client.patch(f"{STATE}/steps/0", json={"status": "completed"})
    sealed = raw_state(rotated)["ssh_connection"]
    assert opens_with(KEY_B, sealed) == SSH
    with pytest.raises(InvalidToken):
        opens_with(KEY_A, sealed)
    # During a rollout, an instance that has the new key last still opens what it sealed.
    assert keyed(KEY_A, KEY_B).test_client().get(STATE).get_json()["state"]["ssh_connection"] == SSH
    # Once every value was rewritten, the old key can go.
    assert keyed(KEY_B).test_client().get(STATE).get_json()["state"]["ssh_connection"] == SSH


@pytest.mark.parametrize("keys", [(KEY_C,), ()], ids=["wrong-key", "no-key"])
def test_a_value_no_key_opens_is_null_and_logged_never_a_500(keyed, keys, caplog):
    keyed(KEY_A).test_client().post(
        STATE, json={"workflow_id": "wf", "steps": steps(2), "ssh_connection": SSH}
    )
    sealed_before = raw_state(keyed(KEY_A))["ssh_connection"]
    app = keyed(*keys)
    client = app.test_client()
    with caplog.at_level(logging.WARNING):
        response = client.get(STATE)
        assert response.status_code == 200
        assert response.get_json()["state"]["ssh_connection"] is None
        assert client.get(f"{STATE}/summary").status_code == 200
        assert "cannot be decrypted" in caplog.text
        assert "wf" in caplog.text  # names the workflow, so an operator can find it
        # A write that cannot read the secret leaves it sealed as it was, so configuring the
        # right key again brings it back: a wrong key list must never destroy it.
        step = client.patch(f"{STATE}/steps/0", json={"status": "completed"})
        assert step.status_code == 200
        assert step.get_json()["state"]["ssh_connection"] is None
        merged = client.patch(STATE, json={"note": "x"})
        assert merged.status_code == 200
        assert merged.get_json()["state"]["ssh_connection"] is None
        finished = client.patch(STATE, json={"status": "failed"})
        assert finished.status_code == 200
        history = client.get("/workflow/history")
        assert history.status_code == 200
        assert history.get_json()["workflows"][0]["ssh_connection"] is None
    assert raw_state(app)["ssh_connection"] == sealed_before
    assert keyed(KEY_A).test_client().get(STATE).get_json()["state"]["ssh_connection"] == SSH
    assert sealed_before["$encrypted"] not in caplog.text
    assert SSH not in caplog.text


@pytest.mark.parametrize(
    "sealed",
    [
        {"$encrypted": "not-a-fernet-token"},
        {"$encrypted": ""},
        {"$encrypted": "gAAAAA" + "A" * 200},
    ],
)
def test_a_garbled_sealed_value_is_null_never_a_500(keyed, sealed):
    app = keyed(KEY_A)
    client = app.test_client()
    saved = client.post(STATE, json={"workflow_id": "wf", "steps": steps(1)}).get_json()["state"]
    plant(app, {**saved, "ssh_connection": sealed})
    response = client.get(STATE)
    assert response.status_code == 200
    assert response.get_json()["state"]["ssh_connection"] is None


def test_an_explicit_null_clears_even_a_value_no_key_opens(keyed):
    keyed(KEY_A).test_client().post(STATE, json={"steps": steps(1), "ssh_connection": SSH})
    app = keyed(KEY_C)
    app.test_client().patch(STATE, json={"ssh_connection": None})
    assert "ssh_connection" not in raw_state(app)


def test_without_a_key_the_value_is_stored_as_sent(make_app):
    app = make_app()
    app.test_client().post(STATE, json={"steps": steps(1), "ssh_connection": SSH})
    assert raw_state(app)["ssh_connection"] == SSH


def test_the_clear_text_is_never_logged(keyed, caplog):
    client = keyed(KEY_A).test_client()
    with caplog.at_level(logging.DEBUG):
        client.post(STATE, json={"workflow_id": "wf", "steps": steps(1), "ssh_connection": SSH})
        client.patch(STATE, json={"ssh_connection": 5})  # refused: the message names the field
        client.patch(STATE, json={"status": "completed"})
        client.get(STATE)
        client.get("/workflow/history")
    assert SSH not in caplog.text
