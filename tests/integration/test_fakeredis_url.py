"""`fakeredis://`: the Redis backend in one process's memory, for tests; refused where state
must be shared (gunicorn with more than one worker)."""

from __future__ import annotations

import subprocess

import pytest

from service import create_app
from service.store import check_environment
from tests.conftest import steps
from tests.support import ROOT, STATE, VENV_BIN, Gunicorn, SSEClient, http


def test_an_app_on_fakeredis_serves_the_api_and_streams():
    app = create_app({"STATE_URL": "fakeredis://"})
    client = app.test_client()
    try:
        assert client.get("/readyz").get_json()["backend"] == "fakeredis://"
        saved = client.post(STATE, json={"workflow_id": "fake-1", "steps": steps(2)}).get_json()
        done = client.patch(f"{STATE}/steps/1", json={"status": "completed"}).get_json()
        assert done["state"]["steps"][1]["status"] == "completed"
        assert done["state"]["version"] == saved["state"]["version"] + 1
        stream = client.get(f"{STATE}/stream", buffered=False)
        frames = iter(stream.response)
        assert next(frames).startswith(b"retry:")
        assert b'"workflow_id":"fake-1"' in next(frames)
        stream.close()
    finally:
        app.extensions["workflow_stream_hub"].close()
        app.extensions["workflow_state"].close()


def test_two_stores_on_fakeredis_share_nothing():
    first, second = (
        create_app({"STATE_URL": "fakeredis://"}),
        create_app({"STATE_URL": "fakeredis://"}),
    )
    first.test_client().post(STATE, json={"workflow_id": "only-in-first"})
    assert second.test_client().get(STATE).get_json()["state"] is None


@pytest.mark.parametrize("workers", [2, 3])
def test_more_than_one_worker_is_refused_in_one_line(workers):
    problem = check_environment({"WORKFLOW_STATE_URL": "fakeredis://"}, workers=workers)
    assert problem is not None and "\n" not in problem
    assert problem.startswith("WORKFLOW_STATE_URL fakeredis://")
    assert f"{workers} gunicorn workers" in problem
    assert check_environment({"WORKFLOW_STATE_URL": "fakeredis://"}, workers=1) is None


def gunicorn(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Run gunicorn with the deploy configuration to its end (it should refuse to start)."""
    return subprocess.run(
        [str(VENV_BIN / "gunicorn"), "-c", "deploy/gunicorn.conf.py", *args, "service.wsgi:app"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.slow
def test_gunicorn_refuses_fakeredis_with_several_workers():
    # The default of deploy/gunicorn.conf.py (2 workers): refused before gunicorn logs anything.
    result = gunicorn({"WORKFLOW_STATE_URL": "fakeredis://"})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "workflow-state: WORKFLOW_STATE_URL fakeredis:// keeps the state in one process, so 2 "
        "gunicorn workers cannot share it; use WEB_CONCURRENCY=1, or redis:// or file://"
    ]
    # Workers from the command line instead: refused as the server starts.
    by_flag = gunicorn({"WORKFLOW_STATE_URL": "fakeredis://", "WEB_CONCURRENCY": "1"}, "-w", "3")
    assert by_flag.returncode != 0
    assert "Traceback" not in by_flag.stderr
    assert [line for line in by_flag.stderr.splitlines() if "WORKFLOW_STATE_URL" in line] == [
        "workflow-state: WORKFLOW_STATE_URL fakeredis:// keeps the state in one process, so 3 "
        "gunicorn workers cannot share it; use WEB_CONCURRENCY=1, or redis:// or file://"
    ]


@pytest.mark.slow
def test_gunicorn_serves_fakeredis_with_one_worker():
    server = Gunicorn({"WORKFLOW_STATE_URL": "fakeredis://"}, workers=1).start()
    try:
        stream = SSEClient(server.url + STATE + "/stream")
        assert stream.next()["json"]["state"] is None
        status, _, body = http("POST", server.url + STATE, {"workflow_id": "served", "steps": []})
        assert status == 200
        event = stream.next()
        assert event["json"]["state"]["workflow_id"] == "served"
        assert event["id"] == str(body["state"]["version"])
        stream.close()
    finally:
        server.stop()
