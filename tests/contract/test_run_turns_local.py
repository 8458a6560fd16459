"""Turns between owners (WORKFLOW_RUNS_PER_OWNER) where the web processes run the steps: the file
backend (a table of turns next to the state file) and `fakeredis://` (one process, in memory).
The limit holds with more run threads than it, the owner's runs start in order, another owner's
run starts at once, a dead process's turns are freed, and the queued runs per owner are counted."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from service import create_app
from service.model import parse_time
from service.run_api import runs_of
from service.runner.control import LOCAL, RunControl
from service.runner.turns import TurnTable
from service.runs import Fence
from service.store import store_of
from tests.support.runs import finished, plan, wait_for_state

ALICE, BOB = "alice", "bob"


@pytest.fixture(params=["file", "fakeredis-url"])
def control(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunControl]:
    url = (
        f"file://{tmp_path}/state/workflow_state.json"
        if request.param == "file"
        else "fakeredis://"
    )
    app: Flask = create_app(
        {"TESTING": True, "STATE_URL": url},
        environ={
            "WORKFLOW_DEMO_STEP_SECONDS": "0.3",
            "WORKFLOW_RUN_WORKERS": "3",
            "WORKFLOW_RUNS_PER_OWNER": "1",
        },
    )
    made = runs_of(app)
    assert made.mode == LOCAL
    yield made
    made.close()
    store_of(app).close()


def seconds(stamp: str) -> float:
    return parse_time(stamp).timestamp()


def test_one_run_of_an_owner_at_a_time_in_order_and_another_owner_at_once(control: RunControl):
    store = control.store
    names = ["a1", "a2", "a3", "a4"]
    most = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            states = [store.get(ALICE, n).state for n in names]
            most[0] = max(most[0], sum(1 for s in states if s and s["run"]["status"] == "running"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for name in names:
            control.create(ALICE, {"workflow_id": name, "steps": plan(None), "run": True})
        control.create(BOB, {"workflow_id": "b", "steps": plan(None), "run": True})
        assert control.queued_by_owner().get(ALICE, 0) >= 2
        bob = wait_for_state(store, "b", finished, owner=BOB)["run"]
        alice = [wait_for_state(store, n, finished, owner=ALICE) for n in names]
    finally:
        stop.set()
        sampler.join(timeout=5)
    assert most[0] == 1  # three run threads, one turn
    assert seconds(bob["started_at"]) - seconds(bob["queued_at"]) < 1.0
    assert all(s["status"] == "completed" for s in alice)
    starts = [seconds(s["run"]["started_at"]) for s in alice]
    assert starts == sorted(starts)
    ends = [seconds(s["last_update"]) for s in alice]
    assert all(ended <= began for ended, began in zip(ends, starts[1:], strict=False))
    assert control.queued_by_owner() == {}


def test_the_turns_of_a_process_that_died_are_freed(tmp_path: Path):
    path = tmp_path / "workflow_state.json.turns"
    dead = 2**22 + 12345  # above any pid this host hands out
    table: dict[str, Any] = {
        "held": [[ALICE, "gone", 1, 1, dead]],
        "waiting": [[ALICE, "gone2", 1, 1, dead]],
    }
    path.write_text(json.dumps(table))
    turns = TurnTable(str(path), limit=1)
    turns.wait(ALICE, "mine", Fence(1, 1))
    assert turns.take() == (ALICE, "mine", Fence(1, 1))
    assert turns.take() is None
    turns.give_back(ALICE, "mine", Fence(1, 1))
    assert json.loads(path.read_text()) == {"held": [], "waiting": []}
