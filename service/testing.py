"""A pytest plugin for applications that use the service: a live instance for each test.

Installed with the project, pytest loads it by itself (the `pytest11` entry point in
pyproject.toml); without installing, `pytest -p service.testing`. docs/testing.md shows how.

    def test_my_client_saves_its_progress(workflow_state_server):
        my_client.run(base_url=workflow_state_server.url)
        assert workflow_state_server.store.get("public").state["status"] == "completed"

The instance is this service's app served by a real HTTP server (werkzeug's threaded WSGI
server, one thread per connection, so Server-Sent Events streams work) on a free port of
127.0.0.1, in a thread of the test process, with state of its own: a file in a temporary
directory by default, or `fakeredis://`. It reads no WORKFLOW_* variable of the environment;
the `workflow_state_config` fixture gives its settings.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from flask import Flask

    from .storage import StateStore

HOST = "127.0.0.1"
# How often the server thread looks whether it was told to stop.
POLL_SECONDS = 0.05


class LiveServer:
    """A running instance: its base URL, its app and its store."""

    def __init__(self, url: str, app: Flask) -> None:
        self.url = url
        self.app = app

    @property
    def store(self) -> StateStore:
        """Return the instance's store, to arrange or inspect state without HTTP."""
        from .store import store_of

        return store_of(self.app)


@contextmanager
def serve(settings: Mapping[str, Any] | None = None) -> Iterator[LiveServer]:
    """Serve an app with `settings` (app config keys) on a free port until the block ends."""
    from werkzeug.serving import WSGIRequestHandler, make_server

    from . import create_app
    from .run_api import runs_of
    from .store import store_of
    from .stream import hub_of

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, *args: Any) -> None:
            pass  # the app logs each request itself

    app = create_app({"TESTING": True, **(settings or {})}, environ={})
    server = make_server(HOST, 0, app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": POLL_SECONDS},
        name="workflow-state-server",
        daemon=True,
    )
    thread.start()
    try:
        yield LiveServer(f"http://{HOST}:{server.server_port}", app)
    finally:
        hub_of(app).close()  # ends open streams, so their connections close
        server.shutdown()
        server.server_close()
        thread.join()
        runs_of(app).close()  # the run threads a run started (file backend, fakeredis://)
        store_of(app).close()


@pytest.fixture
def workflow_state_config() -> dict[str, Any]:
    """Return settings for `workflow_state_server` (app config keys); override it to change them.

    For example `{"STATE_URL": "fakeredis://", "STATE_TOKEN": "secret"}`.
    """
    return {}


@pytest.fixture
def workflow_state_server(
    workflow_state_config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """Serve a live instance for one test, with empty state (a file in a temporary directory)."""
    directory: Path = tmp_path_factory.mktemp("workflow-state")
    settings = {"STATE_URL": f"file://{directory}/workflow_state.json", **workflow_state_config}
    with serve(settings) as server:
        yield server
