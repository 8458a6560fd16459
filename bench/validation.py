"""Time the validation on a write's path and a stored document's parsing on a read's.

    .venv/bin/python bench/validation.py [--against OLD/service/model.py]

Each line is microseconds of CPU per call for a typical workflow (the six VastAI steps, an
ssh_connection, data on the finished steps): the median and the best of several rounds. With
--against, the same calls on another version of the model (a copy of an older
service/model.py that imports nothing from the package) run in alternating rounds in the same
process, so machine load hits both alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service import model

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ACTIONS = ("test_ssh", "set_ui_home", "setup_civitdl", "sync_instance", "install_custom_nodes")
BODY = {
    "workflow_id": "workflow_1767225600000_ab12cd34",
    "ssh_connection": "ssh -p 41234 root@203.0.113.7 -L 8080:localhost:8080",
    "steps": [
        {"index": i, "action": a, "label": a.replace("_", " ").title(), "status": "pending"}
        for i, a in enumerate((*ACTIONS, "verify_dependencies"))
    ],
}
STORED = model.new_state(BODY, now=NOW, random_hex="ab12cd34")
for step in STORED["steps"][:3]:
    step.update(status="completed", data={"ms": 1234, "message": "done"})
STORED["version"] = 42
RAW = json.dumps(STORED).encode()
STEP_BODY = {"status": "completed", "data": {"ms": 1500}, "workflow_id": BODY["workflow_id"]}
MERGE_BODY = {"status": "cancelled"}
ROUNDS = 15


def cases(m: Any) -> dict[str, Callable[[], object]]:
    """Return the calls to time, on model module `m`."""
    return {
        "POST body -> state (new_state)": lambda: m.new_state(BODY, now=NOW, random_hex="ab"),
        "step PATCH body (parse_step_change)": lambda: m.parse_step_change(STEP_BODY),
        "step PATCH apply (apply_step)": lambda: m.apply_step(
            STORED, 3, m.parse_step_change(STEP_BODY), now=NOW
        ),
        "merge PATCH (apply_merge)": lambda: m.apply_merge(STORED, MERGE_BODY, now=NOW),
        "stored document, uncached (parse_stored)": lambda: m.parse_stored(RAW),
    }


def load(path: str) -> ModuleType:
    """Import a model file under another name."""
    spec = importlib.util.spec_from_file_location("other_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rounds(versions: list[Callable[[], object]]) -> list[list[float]]:
    """Time each call in alternating rounds; return microseconds per call, per version."""
    # CPU time of this process: other processes on a busy machine don't count.
    timers = [timeit.Timer(call, timer=time.process_time) for call in versions]
    number = timers[0].autorange()[0]
    times: list[list[float]] = [[] for _ in versions]
    for _ in range(ROUNDS):
        for timer, found in zip(timers, times, strict=True):
            found.append(timer.timeit(number) / number * 1e6)
    return times


def main() -> None:
    """Print the median and best time of each case (and of the other model's, with --against)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="another service/model.py to compare with")
    args = parser.parse_args()
    mine = cases(model)
    other = cases(load(args.against)) if args.against else None
    print(f"{'case':45} {'median':>8} {'best':>8}" + ("   other: median     best" if other else ""))
    for name, call in mine.items():
        times = rounds([call, other[name]] if other else [call])
        line = f"{name:45}"
        for found in times:
            line += f" {statistics.median(found):8.2f} {min(found):8.2f}"
        print(line + "  us")


if __name__ == "__main__":
    main()
