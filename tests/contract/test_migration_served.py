"""A state written by the single-workflow layout is served after the upgrade (contract section
8): through both APIs, with its version, and the next write takes a higher one. Each backend's
old layout is planted as the earlier version left it, then the app starts on it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import steps
from tests.support import STATE
from tests.support.routes import WORKFLOWS

OLD_VERSION = 4242
# Written a few seconds before the upgrade: a running state stays 24 hours after its last write.
WRITTEN = datetime.now(UTC) - timedelta(seconds=5)
OLD_STATE = {
    "workflow_id": "seed-run",
    "status": "running",
    "current_step": 1,
    "steps": [*steps(1, "completed"), *steps(1)],
    "start_time": WRITTEN.isoformat(timespec="milliseconds")[:-6] + "Z",
    "last_update": WRITTEN.isoformat(timespec="milliseconds")[:-6] + "Z",
    "version": OLD_VERSION,
}


def plant_old_layout(backend: dict[str, Any]) -> None:
    """Write the state and counter where the single-workflow version kept them."""
    text = json.dumps(OLD_STATE)
    if backend["BACKEND_KIND"] == "file":
        path = Path(backend["STATE_URL"].removeprefix("file://"))
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_text(text)
        Path(f"{path}.seq").write_text(str(OLD_VERSION))
        return
    factory = backend.get("REDIS_CLIENT_FACTORY")
    client = factory() if factory else redis.Redis.from_url(backend["STATE_URL"])
    client.set("workflow:state", text, ex=86400)
    client.set("workflow:state:seq", OLD_VERSION)


@pytest.fixture
def upgraded(backend, make_app):
    plant_old_layout(backend)
    return make_app().test_client()


def test_the_old_state_is_the_current_workflow_with_its_version(upgraded):
    body = upgraded.get(STATE).get_json()
    assert body["active"] is True
    assert body["state"] == OLD_STATE
    assert upgraded.get(f"{WORKFLOWS}/seed-run").get_json()["state"] == OLD_STATE
    listed = upgraded.get(WORKFLOWS).get_json()["workflows"]
    assert [(e["workflow_id"], e["version"]) for e in listed] == [("seed-run", OLD_VERSION)]


def test_the_next_write_takes_a_higher_version(upgraded):
    stepped = upgraded.patch(f"{STATE}/steps/1", json={"status": "completed"}).get_json()
    assert stepped["state"]["version"] > OLD_VERSION
    created = upgraded.post(WORKFLOWS, json={"workflow_id": "next"}).get_json()["state"]
    assert created["version"] > stepped["state"]["version"]
