"""`python -m service watch | head -1`: the CLI ends quietly, exit 0, when its reader goes away."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.config import from_env
from service.store import build_store
from tests.conftest import steps
from tests.support import ROOT

pytestmark = pytest.mark.slow


def test_watch_ends_quietly_when_the_pipe_closes(tmp_path):
    url = f"file://{tmp_path}/state.json"
    store = build_store(from_env({"WORKFLOW_STATE_URL": url}))
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "watch", "--timeout", "30"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "WORKFLOW_STATE_URL": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert b"no workflow" in process.stdout.readline()
        process.stdout.close()  # the reader is gone, as after `| head -1`
        store.save("public", {"workflow_id": "after-reader-left", "steps": steps(2)})
        assert process.wait(timeout=10) == 0
        assert process.stderr.read() == b""  # no traceback, no "Exception ignored"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
        store.close()
