"""A fault found by attacking server runs across owners (contract sections 8 and 9) on the real
server: a step endpoint that is a path on this service was called with the shared
WORKFLOW_STATE_TOKEN, so a workflow of any tokens-file user acted as owner `public`. Now a path
into the state API is refused (the step fails), and this test pins it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Gunicorn, http, wait_until
from tests.support.identity import write_tokens
from tests.support.routes import WORKFLOWS

pytestmark = pytest.mark.slow

PUBLIC = {"Authorization": "Bearer shared-token"}
ALICE = {"Authorization": "Bearer alice-token"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Gunicorn]:
    """The shared token (owner `public`) and a tokens file (alice), runs in the web process."""
    tokens = write_tokens(tmp_path / "tokens.json", {"alice": ("alice-token", False)})
    gunicorn = Gunicorn(
        {
            "WORKFLOW_STATE_URL": f"file://{tmp_path}/state.json",
            "WORKFLOW_STATE_TOKEN": "shared-token",
            "WORKFLOW_STATE_TOKENS_FILE": str(tokens),
        },
        workers=1,
    )
    gunicorn.env["WORKFLOW_SELF_URL"] = gunicorn.url
    gunicorn.start()
    try:
        yield gunicorn
    finally:
        gunicorn.stop()


def finished(server: Gunicorn, workflow_id: str, headers: dict[str, str]) -> Any:
    state = http("GET", f"{server.url}{WORKFLOWS}/{workflow_id}", None, headers)[2]["state"]
    return state if state["status"] != "running" else None


def test_a_step_endpoint_on_this_service_acts_as_the_workflows_owner(server: Gunicorn):
    steps = [{"action": "a", "status": "pending"}]
    body = {"workflow_id": "theirs", "steps": steps}
    assert http("POST", server.url + WORKFLOWS, body, PUBLIC)[0] == 201
    attack = {
        "workflow_id": "mine",
        "run": True,
        "steps": [{"action": "x", "status": "pending", "endpoint": f"{WORKFLOWS}/theirs/cancel"}],
    }
    assert http("POST", server.url + WORKFLOWS, attack, ALICE)[0] == 201
    mine = wait_until(lambda: finished(server, "mine", ALICE), timeout=20)
    # Alice's step could not act on public's workflow (in her own namespace it does not exist)...
    assert mine["steps"][0]["status"] == "failed", mine["steps"][0]
    # ...and public's workflow is untouched.
    theirs = http("GET", f"{server.url}{WORKFLOWS}/theirs", None, PUBLIC)[2]["state"]
    assert theirs["status"] == "running"
