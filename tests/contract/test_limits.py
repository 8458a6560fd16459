"""The size limits through the app, on every backend: each write route answers 413 past
WORKFLOW_STATE_MAX_WORKFLOW_BYTES (`state_too_large`) and WORKFLOW_STATE_MAX_OWNER_BYTES
(`owner_quota_exceeded`) and stores nothing; a server run's step whose answer does not fit
fails with the reason; a DELETE always works, at the quota and on a full disk; the bytes per
owner show in /metrics."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from service import runs
from service.runner.engine import FAILED_OUTCOME, RunSettings, run_workflow
from service.runner.steps import StepSettings
from service.storage import FileStore, StateStore
from service.store import store_of
from tests.conftest import steps
from tests.support.endpoints import StepEndpoints
from tests.support.routes import METRICS, STATE, WORKFLOWS, step
from tests.support.runs import OWNER, calling, open_test_store, plan

# Small limits, so a test stores little: a workflow of two steps is about 300 bytes.
MOST_PER_WORKFLOW = 2000
MOST_PER_OWNER = 3000


@pytest.fixture
def limited(make_app: Callable[..., Flask]) -> Flask:
    return make_app(MAX_WORKFLOW_BYTES=MOST_PER_WORKFLOW, MAX_OWNER_BYTES=MOST_PER_OWNER)


def refused(response: Any, code: str) -> None:
    """Check a 413 in the JSON error shape with `code`."""
    assert response.status_code == 413, response.get_data(as_text=True)
    body = response.get_json()
    assert (body["success"], body["error"]) == (False, code)
    assert "allowed" in body["message"]


# Each write route, with a body that adds `text` to the workflow `wf` (created with 2 steps), or
# creates one with it.
WRITES: list[tuple[str, str, Callable[[str], Any]]] = [
    ("POST", STATE, lambda text: {"workflow_id": "wf", "steps": steps(2), "note": text}),
    ("POST", WORKFLOWS, lambda text: {"workflow_id": "new", "steps": steps(2), "note": text}),
    ("PATCH", STATE, lambda text: {"note": text}),
    ("PATCH", f"{WORKFLOWS}/wf", lambda text: {"note": text}),
    ("PATCH", step(1), lambda text: {"status": "completed", "data": {"b": text}}),
    ("PATCH", f"{WORKFLOWS}/wf/steps/1", lambda text: {"status": "completed", "data": {"b": text}}),
]


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
def test_every_write_route_refuses_a_workflow_over_its_limit(limited, method, path, body):
    client = limited.test_client()
    assert client.post(WORKFLOWS, json={"workflow_id": "wf", "steps": steps(2)}).status_code == 201
    before = client.get(f"{WORKFLOWS}/wf").get_json()
    refused(client.open(path, method=method, json=body("x" * MOST_PER_WORKFLOW)), "state_too_large")
    assert client.get(f"{WORKFLOWS}/wf").get_json() == before
    assert client.get(f"{WORKFLOWS}/new").status_code == 404


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
def test_every_write_route_refuses_a_write_past_the_owners_quota(limited, method, path, body):
    client = limited.test_client()
    # Less than 1300 bytes of the quota left: each write below adds 1300 and a little.
    filler = {"workflow_id": "filler", "steps": steps(1), "pad": "p" * 1500}
    assert client.post(WORKFLOWS, json=filler).status_code == 201
    assert client.post(WORKFLOWS, json={"workflow_id": "wf", "steps": steps(2)}).status_code == 201
    before = client.get(f"{WORKFLOWS}/wf").get_json()
    grow = body("q" * 1300)  # under the workflow limit, over the quota
    refused(client.open(path, method=method, json=grow), "owner_quota_exceeded")
    assert client.get(f"{WORKFLOWS}/wf").get_json() == before
    # A DELETE always works at the quota, and frees room for the same write.
    assert client.delete(f"{WORKFLOWS}/filler").status_code == 200
    assert client.open(path, method=method, json=grow).status_code in (200, 201)


def test_the_bytes_per_owner_show_in_metrics(limited):
    client = limited.test_client()
    client.post(WORKFLOWS, json={"workflow_id": "wf", "steps": steps(2)})
    stored = len(store_of(limited).get("public", "wf").json)
    text = client.get(METRICS).get_data(as_text=True)
    assert f'workflow_owner_bytes{{owner="public"}} {float(stored)}' in text
    client.delete(f"{WORKFLOWS}/wf")
    text = client.get(METRICS).get_data(as_text=True)
    assert 'workflow_owner_bytes{owner="public"} 0.0' in text


# --- a server run's step answer ------------------------------------------------------------------


@pytest.fixture(scope="module")
def endpoints() -> Iterator[StepEndpoints]:
    server = StepEndpoints().start()
    yield server
    server.close()


@pytest.mark.parametrize(
    ("limit", "reason"),
    [("MAX_WORKFLOW_BYTES", "allowed per workflow"), ("MAX_OWNER_BYTES", "allowed per owner")],
)
def test_a_step_answer_past_a_limit_fails_its_step_with_the_reason(
    backend: dict[str, Any], endpoints: StepEndpoints, limit: str, reason: str
):
    body = {"workflow_id": "wf", "steps": plan(f"{endpoints.url}/ok", None)}
    unlimited = open_test_store(backend)
    created = unlimited.create(OWNER, body)
    unlimited.close()
    # The workflow as created just fits; a run's bookkeeping may grow it, an answer may not.
    store: StateStore = open_test_store(backend, **{limit: len(created.json)})
    try:
        fence = runs.fence_of(store.request_run(OWNER, "wf", lease=5.0).state)
        step_settings = StepSettings(self_url="http://127.0.0.1:1", timeout=10.0, demo_seconds=0)
        settings = RunSettings(5.0, step_settings, frozenset({endpoints.url}))
        result = run_workflow(store, OWNER, "wf", fence, settings)
        assert result.outcome == FAILED_OUTCOME
        state = store.get(OWNER, "wf").state
        assert [s["status"] for s in state["steps"]] == ["failed", "pending"]
        assert reason in state["steps"][0]["data"]["message"]
        assert "host" not in state["steps"][0]["data"]
        assert state["run"]["status"] == "done"
    finally:
        store.close()


# --- a full disk (file backend) ----------------------------------------------------------------


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Make the file system under a directory full, as ENOSPC: no new file, no write that needs
    a new block; an overwrite within a file's allocated blocks still works (as on a real disk)."""

    def fill(root: str) -> None:
        real_open, real_write, real_pwrite = os.open, os.write, os.pwrite

        def inside(fd: int) -> bool:
            return os.readlink(f"/proc/self/fd/{fd}").startswith(root)

        def no_new_file(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if str(path).startswith(root) and flags & os.O_CREAT and not os.path.exists(path):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_open(path, flags, *args, **kwargs)

        def no_write(fd: int, data: Any) -> int:
            if inside(fd):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        def within_blocks(fd: int, data: Any, offset: int) -> int:
            allocated = -(-os.fstat(fd).st_size // 4096) * 4096
            if inside(fd) and offset + len(data) > allocated:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_pwrite(fd, data, offset)

        monkeypatch.setattr(os, "open", no_new_file)
        monkeypatch.setattr(os, "write", no_write)
        monkeypatch.setattr(os, "pwrite", within_blocks)

    return fill


@pytest.mark.parametrize("backend", ["file"], indirect=True)
def test_a_delete_works_on_a_full_disk_while_a_write_answers_503(app, full_disk):
    client = app.test_client()
    versions = []
    for name in ("a", "b"):
        created = client.post(WORKFLOWS, json={"workflow_id": name, "steps": steps(2)})
        assert created.status_code == 201
        versions.append(created.get_json()["state"]["version"])
    store = store_of(app)
    assert isinstance(store, FileStore)
    full_disk(store.directory)
    write = client.post(STATE, json={"workflow_id": "c", "steps": steps(1)})
    assert write.status_code == 503 and write.get_json()["error"] == "backend_unavailable"
    assert "no space left" in write.get_json()["message"]
    deleted = client.delete(f"{WORKFLOWS}/a")
    assert deleted.status_code == 200, deleted.get_data(as_text=True)
    assert client.get(f"{WORKFLOWS}/a").status_code == 404
    assert client.delete(STATE).status_code == 200  # the current one, b
    assert client.get(f"{WORKFLOWS}/b").status_code == 404
    assert client.get(WORKFLOWS).get_json()["workflows"] == []
    assert store.owner_bytes("public") == 0
    # Each delete took a new number of the owner's counter, never one used before.
    with open(os.path.join(store.root, "public", ".seq")) as counter:
        assert int(counter.read().strip()) == max(versions) + 2


def report(text: str, count: int) -> dict[str, Any]:
    """A progress report carrying `count` tasks whose notes are `text`."""
    return {"percent": 50, "tasks": [{"name": "t", "status": "pending", "note": text}] * count}


@pytest.mark.parametrize(
    ("pad", "note", "tasks", "code"),
    [
        (0, "n" * 400, 5, "state_too_large"),  # ~2,100 bytes more: over 2,000 for one workflow
        (1500, "n" * 150, 6, "owner_quota_exceeded"),  # under it, but over the owner's 3,000
    ],
)
def test_a_progress_report_past_a_limit_is_refused_and_stores_nothing(
    limited, pad, note, tasks, code
):
    client = limited.test_client()
    store = store_of(limited)
    if pad:
        filler = {"workflow_id": "filler", "steps": steps(1), "pad": "p" * pad}
        assert client.post(WORKFLOWS, json=filler).status_code == 201
    headers = {"Authorization": f"Bearer {calling(store)[1]}"}
    before = client.get(f"{WORKFLOWS}/wf").get_json()
    path = f"{WORKFLOWS}/wf/steps/0/progress"
    refused(client.post(path, json=report(note, tasks), headers=headers), code)
    assert client.get(f"{WORKFLOWS}/wf").get_json() == before
    assert client.post(path, json={"percent": 60}, headers=headers).status_code == 200
