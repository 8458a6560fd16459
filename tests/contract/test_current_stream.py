"""GET /workflow/state/stream follows the owner's *current* workflow (contract sections 5 and 8),
on every backend: a new current workflow replaces the old one in the stream, changes to other
workflows stay out of it, and deletes and expiry read as `state: null`."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from service.stream import close_all_hubs
from tests.conftest import steps
from tests.support import layout
from tests.support.routes import STATE


class Frames:
    """The events of one in-process stream, read in a thread so a test can wait with a timeout."""

    def __init__(self, app: Flask) -> None:
        self.response = app.test_client().get(f"{STATE}/stream", buffered=False)
        self.queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for chunk in self.response.response:
            text = chunk.decode()
            if text.startswith("id:"):
                self.queue.put(text)

    def next(self, timeout: float = 5.0) -> tuple[str, Any]:
        """Return the next event's (id, data)."""
        text = self.queue.get(timeout=timeout)
        lines = dict(line.split(": ", 1) for line in text.strip().splitlines())
        return lines["id"], json.loads(lines["data"])

    def quiet(self, seconds: float = 0.3) -> bool:
        """Tell whether no event comes for `seconds`."""
        try:
            self.queue.get(timeout=seconds)
        except queue.Empty:
            return True
        return False


@pytest.fixture
def frames(make_app) -> Iterator[Any]:
    opened: list[Frames] = []

    def open_stream(app: Flask) -> Frames:
        opened.append(Frames(app))
        return opened[-1]

    yield open_stream
    close_all_hubs()  # every stream ends, and with it its reader
    for stream in opened:
        stream.reader.join(timeout=5)
        stream.response.close()


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
