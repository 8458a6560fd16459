"""Versions never go back (contract §2, §8 "Versions"), on every backend.

A counter that is missing (a Redis that restarted without its data, a fresh store, a deleted
`.seq` file) starts again from the clock in microseconds, never below the stored state's
version; and numbers that large are stored and served exactly.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
import redis as redis_py

from tests.conftest import steps
from tests.support import STATE

# Above 1e14 (where Lua 5.1's `..` writes 5e+15) and above today's clock in microseconds.
BIG = 5 * 10**15 + 7


def clock_us() -> int:
    return time.time_ns() // 1000


class Backdoor:
    """Reach under the service into owner public's counter and its workflow "wf"."""

    def __init__(self, backend: dict[str, Any]) -> None:
        self.kind = backend["BACKEND_KIND"]
        url = backend["STATE_URL"]
        if self.kind == "file":
            owner = os.path.join(
                os.path.dirname(url.removeprefix("file://")), "workflows", "public"
            )
            self.seq, self.path = os.path.join(owner, ".seq"), os.path.join(owner, "wf.json")
        elif "REDIS_CLIENT_FACTORY" in backend:
            self.redis = backend["REDIS_CLIENT_FACTORY"]()
        else:
            self.redis = redis_py.Redis.from_url(url)

    def set_counter(self, value: int | None) -> None:
        """Set the version counter, or remove it (None)."""
        if self.kind == "file":
            if value is None:
                os.unlink(self.seq)
            else:
                with open(self.seq, "w") as handle:
                    handle.write(str(value))
        elif value is None:
            self.redis.delete("workflow:{public}:seq")
        else:
            self.redis.set("workflow:{public}:seq", value)

    def set_stored_version(self, version: int) -> None:
        """Rewrite the stored state with another version (a state restored from a backup)."""
        if self.kind == "file":
            with open(self.path) as handle:
                state = json.load(handle)
            state["version"] = version
            with open(self.path, "w") as handle:
                json.dump(state, handle)
        else:
            state = json.loads(self.redis.get("workflow:{public}:state:wf"))
            state["version"] = version
            self.redis.set("workflow:{public}:state:wf", json.dumps(state), keepttl=True)


@pytest.fixture
def backdoor(backend: dict[str, Any]) -> Backdoor:
    return Backdoor(backend)


def post(client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(STATE, json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["state"]


def test_the_first_version_comes_from_the_clock(client):
    started = clock_us()
    version = post(client, {"steps": steps(1)})["version"]
    # The clock of the backend (Redis TIME) and this process's: the same host here.
    assert started - 1_000_000 <= version <= clock_us() + 1_000_000


def test_a_lost_counter_starts_again_from_the_clock(client, backdoor):
    first = post(client, {"workflow_id": "wf", "steps": steps(1)})["version"]
    backdoor.set_counter(None)
    started = clock_us()
    version = client.patch(STATE, json={"n": 1}).get_json()["state"]["version"]
    assert version > first
    assert version >= started - 1_000_000


def test_a_lost_counter_never_starts_below_the_stored_version(client, backdoor):
    post(client, {"workflow_id": "wf", "steps": steps(1)})
    restored = clock_us() + 10**12  # a state from a backup, numbered past today's clock
    backdoor.set_stored_version(restored)
    backdoor.set_counter(None)
    assert client.patch(STATE, json={"n": 1}).get_json()["state"]["version"] == restored + 1


def test_a_delete_with_a_lost_counter_takes_a_number_from_the_clock(app, client, backdoor):
    first = post(client, {"workflow_id": "wf", "steps": steps(1)})["version"]
    backdoor.set_counter(None)
    assert app.extensions["workflow_state"].delete("public", None) > first
    assert post(client, {"workflow_id": "wf", "steps": steps(1)})["version"] > first + 1


def test_versions_above_1e14_are_stored_and_served_exactly(client, backdoor):
    post(client, {"workflow_id": "wf", "steps": steps(2)})
    backdoor.set_counter(BIG)
    response = client.post(STATE, json={"workflow_id": "wf", "steps": steps(2)})
    assert response.get_json()["state"]["version"] == BIG + 1
    assert response.headers["ETag"] == f'"{BIG + 1}"'
    assert client.get(STATE).get_json()["state"]["version"] == BIG + 1
    patched = client.patch(
        f"{STATE}/steps/0", json={"status": "completed"}, headers={"If-Match": f'"{BIG + 1}"'}
    )
    assert patched.status_code == 200
    assert patched.get_json()["state"]["version"] == BIG + 2
