"""Compare this checkout's service with another checkout's, in one run, route by route.

    .venv/bin/python bench/ab.py /path/to/other/checkout [--rounds 7] [--seconds 3]

`make bench` compares the service with references; this compares it with itself before a change
(e.g. `git worktree add /tmp/before <commit>`): both served by the real gunicorn with their own
`deploy/gunicorn.conf.py` and 2 workers, each on a private redis-server of its own and on a file
backend of its own, with this checkout's bare Flask hello beside them. For every route,
the servers take turns in each round; each figure is the median round's req/s and the median
CPU time of the server's workers per request. On a machine shared with other work, req/s swings
with what else runs; the CPU per request, taken in the same moments for both, moves much less.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import WORKFLOW, Route, cpu_seconds, wait_for_workers, wrk_run  # noqa: E402
from tests.support import Gunicorn, RedisServer, http  # noqa: E402

ROUTES = {
    "healthz": Route("GET", "/healthz", seed=None),
    "GET state": Route("GET", "/workflow/state", seed=None),
    "summary": Route("GET", "/workflow/state/summary", seed=None),
}


class OtherGunicorn(Gunicorn):
    """The real gunicorn serving another checkout's code with that checkout's config."""

    def __init__(self, root: Path, env: dict[str, str], **kwargs) -> None:
        super().__init__(env, **kwargs)
        self.root = root
        self.env["PYTHONPATH"] = str(root)

    def start(self, timeout: float = 20) -> Gunicorn:
        """Start from the other checkout: its config, its code."""
        import tests.support.processes as processes

        saved = processes.ROOT
        processes.ROOT = self.root
        try:
            return super().start(timeout)
        finally:
            processes.ROOT = saved


def main() -> int:
    """Measure; print one table per backend."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--backends", default="redis,file")
    args = parser.parse_args()
    redis = {"this": RedisServer().start(), "other": RedisServer().start()}
    scratch = tempfile.mkdtemp(prefix="wss-ab-")
    servers: dict[str, Gunicorn] = {}
    try:
        for backend in args.backends.split(","):
            for label, root in (("this", ROOT), ("other", args.other.resolve())):
                url = (
                    redis[label].url
                    if backend == "redis"
                    else f"file://{scratch}/{label}/workflow_state.json"
                )
                env = {"WORKFLOW_STATE_URL": url}
                server = OtherGunicorn(root, env, workers=2)
                servers[f"{backend} {label}"] = server.start()
        servers["hello"] = Gunicorn({}, workers=2, app="bench.references:hello_app").start()
        for name, server in servers.items():
            wait_for_workers(server, "/healthz")
            if name != "hello":
                assert http("POST", server.url + "/workflow/state", WORKFLOW)[0] == 200
        samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for number in range(args.rounds):
            print(f"round {number + 1} of {args.rounds}...", flush=True)
            for route_name, route in ROUTES.items():
                for name, server in servers.items():
                    if name == "hello" and route_name != "healthz":
                        continue
                    wrk_run(server.url, route, 1, args.connections)  # warm-up
                    pids = server.worker_pids()
                    before = cpu_seconds(pids)
                    run = wrk_run(server.url, route, args.seconds, args.connections)
                    cpu = (cpu_seconds(pids) - before) / max(run.requests, 1) * 1e6
                    samples.setdefault((name, route_name), []).append((run.rps, cpu))
        hello_rps = statistics.median(rps for rps, _ in samples[("hello", "healthz")])
        hello_cpu = statistics.median(cpu for _, cpu in samples[("hello", "healthz")])
        print(f"\nbare Flask hello: {hello_rps:,.0f} req/s, {hello_cpu:.0f} µs CPU/req\n")
        print(
            "| backend | route | this req/s | other req/s | this CPU µs/req | other CPU µs/req "
            "| CPU other/this | this / hello (req/s, CPU-based) |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for backend in args.backends.split(","):
            for route_name in ROUTES:
                this = samples[(f"{backend} this", route_name)]
                other = samples[(f"{backend} other", route_name)]
                this_rps = statistics.median(r for r, _ in this)
                other_rps = statistics.median(r for r, _ in other)
                this_cpu = statistics.median(c for _, c in this)
                other_cpu = statistics.median(c for _, c in other)
                print(
                    f"| {backend} | {route_name} | {this_rps:,.0f} | {other_rps:,.0f} | "
                    f"{this_cpu:.0f} | {other_cpu:.0f} | {other_cpu / this_cpu:.2f} | "
                    f"{this_rps / hello_rps:.2f}, {hello_cpu / this_cpu:.2f} |"
                )
    finally:
        for server in servers.values():
            server.stop()
        for server in redis.values():
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
