"""The file backend on the real server: what killed workers leave behind is cleaned on start."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import steps
from tests.support import STATE, Gunicorn, http

pytestmark = pytest.mark.slow


def test_temp_files_of_killed_writers_are_removed_on_start_and_live_ones_kept(tmp_path: Path):
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a writer killed mid-write: its pid is no longer a process
    writing = subprocess.Popen(["sleep", "60"])  # a writer still at work
    try:
        left_over = [
            f".workflow_state.json.tmp-{gone.pid}-0badc0de",
            f".workflow_state.json.seq.tmp-{gone.pid}-12345678",
            f".workflow_state.json.history.json.tmp-{writing.pid}-00000001",  # made below: old
        ]
        kept = [
            f".workflow_state.json.tmp-{writing.pid}-abcdef01",  # a live writer's
            f".notes.json.tmp-{gone.pid}-abcdef01",  # not one of the service's files
            "notes.txt",
        ]
        for name in left_over + kept:
            (state_dir / name).write_text("partial")
        # Older than a minute: no write takes that long, so its pid was reused.
        old = time.time() - 120
        os.utime(state_dir / left_over[2], (old, old))

        server = Gunicorn(
            {"WORKFLOW_STATE_URL": f"file://{state_dir}/workflow_state.json"}, workers=2
        ).start()
        try:
            present = {path.name for path in state_dir.iterdir()}
            assert not present & set(left_over), "leftovers survived the start"
            assert set(kept) <= present
            status, _, body = http("POST", server.url + STATE, {"steps": steps(1)})
            assert status == 200, body
        finally:
            server.stop()
    finally:
        writing.kill()
        writing.wait()
