"""Turns between owners on the file backend under the real server: two gunicorn workers, each
with two run threads, never run more than WORKFLOW_RUNS_PER_OWNER runs of one owner at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.storage import open_store
from tests.integration.test_run_gunicorn import LEASE, runner_pid, start_run
from tests.support import Gunicorn, wait_until
from tests.support.runs import finished, plan

pytestmark = pytest.mark.slow


def test_the_limit_per_owner_counts_the_runs_of_every_web_process(tmp_path: Path):
    state_url = f"file://{tmp_path}/state/workflow_state.json"
    store = open_store(state_url)
    # Two web processes of two run threads each; one turn per owner across both.
    env = {
        "WORKFLOW_STATE_URL": state_url,
        "WORKFLOW_RUN_LEASE": str(LEASE),
        "WORKFLOW_DEMO_STEP_SECONDS": "0.4",
        "WORKFLOW_RUN_WORKERS": "2",
        "WORKFLOW_RUNS_PER_OWNER": "1",
    }
    server = Gunicorn(env, workers=2).start()
    try:
        wait_until(lambda: len(server.worker_pids()) == 2)
        names = [f"t{n}" for n in range(6)]
        for name in names:  # each request may reach either process
            start_run(server, name, plan(None))
        runners: set[int] = set()
        most = 0

        def all_done() -> bool:
            nonlocal most
            states = [store.get("public", name).state for name in names]
            running = [s for s in states if s["run"]["status"] == "running"]
            most = max(most, len(running))
            runners.update(runner_pid(s) for s in running)
            return all(finished(s) for s in states)

        wait_until(all_done, timeout=30, interval=0.02)
    finally:
        server.stop()
        store.close()
    assert most == 1
    assert len(runners) == 2  # both processes ran some, one at a time
