"""Under gunicorn every worker process logs its storage line once, at start."""

from __future__ import annotations

import re

import pytest

from tests.support import Gunicorn, wait_until

pytestmark = pytest.mark.slow


def test_each_worker_logs_the_backend_once(tmp_path):
    path = tmp_path / "state" / "workflow_state.json"
    server = Gunicorn({"WORKFLOW_STATE_URL": f"file://{path}"}, workers=2).start()
    try:
        line = rf"\[(\d+)\] service\.store \[-\] storage: file at {re.escape(str(path))}$"
        pattern = re.compile(line)

        def lines() -> list[str]:
            found = [m.group(1) for m in map(pattern.search, server.output().splitlines()) if m]
            return found if len(found) >= 2 else []

        pids = wait_until(lines)
        assert sorted(int(pid) for pid in pids) == sorted(server.worker_pids())
    finally:
        server.stop()
