"""GET /workflow/state/stream follows the owner's *current* workflow (contract sections 5 and 8),
on every backend: a new current workflow replaces the old one in the stream, changes to other
workflows stay out of it, and deletes and expiry read as `state: null`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import steps
from tests.support import layout
from tests.support.inprocess import Events, opened_streams
from tests.support.routes import STATE


class Frames:
    """The current workflow's stream in-process: (id, data) of each event."""

    def __init__(self, events: Events) -> None:
        self.events = events

    def next(self, timeout: float = 5.0) -> tuple[str, Any]:
        """Return the next event's (id, data)."""
        event_id, _, data = self.events.next(timeout)
        return event_id, data

    def quiet(self, seconds: float = 0.3) -> bool:
        """Tell whether no event comes for `seconds`."""
        return self.events.quiet(seconds)


@pytest.fixture
def frames() -> Iterator[Any]:
    with opened_streams() as open_stream:
        yield lambda app: Frames(open_stream(app, f"{STATE}/stream"))


def test_a_new_current_workflow_replaces_the_old_one_in_the_stream(make_app, frames):
    app = make_app()
    client = app.test_client()
    first = client.post(STATE, json={"workflow_id": "a", "steps": steps(2)}).get_json()["state"]
    stream = frames(app)
    assert stream.next() == (
        str(first["version"]),
        {"success": True, "active": True, "progress_percent": 50.0, "state": first},
    )
    second = client.post(STATE, json={"workflow_id": "b", "steps": steps(1)}).get_json()["state"]
    event_id, body = stream.next()
    assert (event_id, body["state"]) == (str(second["version"]), second)
    # "a" goes on, out of the stream's sight: it is no longer the current workflow.
    store = app.extensions["workflow_state"]
    store.update_step(layout.PUBLIC, "a", 1, {"status": "completed"})
    assert stream.quiet()
    stepped = client.patch(f"{STATE}/steps/0", json={"status": "completed"}).get_json()["state"]
    assert stream.next() == (
        str(stepped["version"]),
        {"success": True, "active": True, "progress_percent": 100.0, "state": stepped},
    )
    # Deleting the current workflow: state null, and "a" (still stored) does not come back.
    client.delete(STATE)
    event_id, body = stream.next()
    assert (int(event_id), body["state"]) == (stepped["version"] + 1, None)
    assert client.get(STATE).get_json()["state"] is None
    assert store.get(layout.PUBLIC, "a").state is not None


def test_the_current_workflow_expiring_reads_as_null_with_its_version(make_app, frames):
    app = make_app(STATE_TTL=1)
    client = app.test_client()
    client.post(STATE, json={"workflow_id": "keep", "steps": steps(1)})
    done = client.post(STATE, json={"workflow_id": "done", "status": "completed"}).get_json()
    stream = frames(app)
    assert stream.next()[0] == str(done["state"]["version"])
    assert stream.next(timeout=6) == (
        f"{done['state']['version']}:expired",
        {"success": True, "active": False, "progress_percent": 0, "state": None},
    )
    assert client.get(STATE).get_json()["state"] is None
