"""Benchmark the per-step overhead of a server run (issue 11).

A workflow of STEPS steps runs on the built-in simulator with WORKFLOW_DEMO_STEP_SECONDS=0, so
each step's time is the run's own overhead: its `in_progress` and `completed` writes (fenced,
locked, fsynced on the file backend), the simulator call, and the watch thread beside it. The
deployment is the real one: on Redis, a private redis-server and a real `python -m service
worker`; on the file backend, the real gunicorn, whose web processes run the steps. This process
starts the run and follows the store's change feed (as a page's stream does), noting when each
step's `completed` version was written; a step's overhead is the time from the previous step's.

    .venv/bin/python bench/runs.py [--steps 100] [--backend redis|file|all]

Prints the median, p90 and max per step and the whole run per backend, and exits 1 when the
Redis median is above BUDGET_MS (the file backend's figures are fsync-bound; see BUDGETED).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.config import from_env  # noqa: E402
from service.model import parse_time  # noqa: E402
from service.runner.control import RunControl  # noqa: E402
from service.storage import RESYNC, StateStore, open_store  # noqa: E402
from tests.support import Gunicorn, RedisServer, http  # noqa: E402
from tests.support.workers import Workers  # noqa: E402

STEPS = 100
# Issue 11: a step's overhead, median over 100 steps. On Redis; the file backend's writes are
# bounded by fsync (five per write: counter, state, index, directory, plus the journal's
# append), so, as in bench/run.py, its figures are reported without a budget.
BUDGET_MS = 20.0
BUDGETED = frozenset({"redis"})
OWNER = "public"
ENV = {"WORKFLOW_DEMO_STEP_SECONDS": "0", "WORKFLOW_RUN_LEASE": "15"}


def workflow(workflow_id: str, steps: int) -> dict[str, Any]:
    """Return a workflow of `steps` simulator steps."""
    return {
        "workflow_id": workflow_id,
        "steps": [{"action": f"step_{i}", "status": "pending"} for i in range(steps)],
    }


class Completions:
    """When each step of one workflow was completed: the `last_update` (the writer's clock, in
    ms) of the first version that shows it completed, so the follower's own delay (the file
    journal is polled every 50 ms) does not count."""

    def __init__(self, store: StateStore, workflow_id: str, steps: int) -> None:
        self.at: dict[int, float] = {}
        self.steps = steps
        self.stop = threading.Event()
        self.done = threading.Event()
        ready = threading.Event()

        def follow() -> None:
            for event in store.events(self.stop):
                if event is RESYNC:
                    ready.set()
                    continue
                if event.workflow_id != workflow_id or event.json == "null":
                    continue
                state = json.loads(event.json)
                written = parse_time(state["last_update"]).timestamp()
                for index, step in enumerate(state["steps"]):
                    if step["status"] == "completed":
                        self.at.setdefault(index, written)
                if state["status"] != "running":
                    self.done.set()

        self.thread = threading.Thread(target=follow, daemon=True)
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("the change feed did not start")

    def wait(self, timeout: float) -> None:
        """Wait for the workflow to finish."""
        if not self.done.wait(timeout):
            raise RuntimeError(f"the run did not finish in {timeout}s ({len(self.at)} steps done)")
        self.stop.set()
        self.thread.join(5)

    def overheads_ms(self) -> list[float]:
        """Return each step's time from the previous step's completion, in ms."""
        times = [self.at[index] for index in range(self.steps)]
        return [(b - a) * 1000 for a, b in itertools.pairwise(times)]


def measure(
    store: StateStore, start: Callable[[], None], workflow_id: str, steps: int
) -> dict[str, float]:
    """Start a run with `start`, follow it to the end, and summarise its step times."""
    completions = Completions(store, workflow_id, steps)
    began = time.perf_counter()
    start()
    completions.wait(timeout=60 + steps)
    total = time.perf_counter() - began
    gaps = sorted(completions.overheads_ms())
    return {
        "median_ms": statistics.median(gaps),
        "p90_ms": gaps[int(len(gaps) * 0.9)],
        "max_ms": gaps[-1],
        "run_s": total,
        "per_step_ms": total / steps * 1000,
    }


def bench_redis(steps: int = STEPS) -> dict[str, float]:
    """Measure on a private redis-server with one real worker process."""
    redis = RedisServer().start()
    workers = Workers({**ENV, "WORKFLOW_STATE_URL": redis.url})
    store = open_store(redis.url)
    try:
        workers.start()
        config = from_env({**ENV, "WORKFLOW_STATE_URL": redis.url})
        control = RunControl(store, config)
        store.create(OWNER, workflow("bench-redis", steps))
        # Warm up the worker (imports, connections) on a workflow of its own.
        store.create(OWNER, workflow("warm-up", 3))
        warm = Completions(store, "warm-up", 3)
        control.start(OWNER, "warm-up")
        warm.wait(30)
        result = measure(store, lambda: control.start(OWNER, "bench-redis"), "bench-redis", steps)
        control.close()
        return result
    finally:
        store.close()
        workers.close()
        redis.close()


def bench_file(steps: int = STEPS) -> dict[str, float]:
    """Measure under the real gunicorn on the file backend (its web processes run the steps)."""
    directory = tempfile.mkdtemp(prefix="wss-bench-runs-")
    url = f"file://{directory}/workflow_state.json"
    server = Gunicorn({**ENV, "WORKFLOW_STATE_URL": url}, workers=2).start()
    store = open_store(url)
    try:
        for name, count in (("warm-up", 3), ("bench-file", steps)):
            assert http("POST", f"{server.url}/workflow/state", workflow(name, count))[0] == 200

        def start(name: str) -> Callable[[], None]:
            return lambda: http("POST", f"{server.url}/workflows/{name}/run")

        measure(store, start("warm-up"), "warm-up", 3)
        return measure(store, start("bench-file"), "bench-file", steps)
    finally:
        store.close()
        server.stop()


BACKENDS: dict[str, Callable[[int], dict[str, float]]] = {"redis": bench_redis, "file": bench_file}


def main() -> int:
    """Run the benchmark; exit 1 when a backend's median step overhead is over budget."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--backend", choices=[*BACKENDS, "all"], default="all")
    args = parser.parse_args()
    os.environ.pop("WORKFLOW_STATE_URL", None)
    chosen = list(BACKENDS) if args.backend == "all" else [args.backend]
    over = False
    print(
        f"Server run, {args.steps} steps of a 0 s simulator; budget on Redis: median <= "
        f"{BUDGET_MS} ms"
    )
    for name in chosen:
        result = BACKENDS[name](args.steps)
        if name not in BUDGETED:
            verdict = "(no budget: fsync-bound)"
        else:
            verdict = "ok" if result["median_ms"] <= BUDGET_MS else "OVER BUDGET"
            over = over or verdict != "ok"
        print(
            f"  {name:<6} per step: median {result['median_ms']:.1f} ms, "
            f"p90 {result['p90_ms']:.1f} ms, max {result['max_ms']:.1f} ms; "
            f"whole run {result['run_s']:.2f} s ({result['per_step_ms']:.1f} ms/step)  {verdict}"
        )
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
