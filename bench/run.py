"""Benchmark the service's routes against two references and a bare route, in one run.

`make bench` starts a private redis-server and, all at once, the real gunicorn with the shipped
config serving the service on Redis, the service on the file backend, and the two references of
bench/references.py (a bare Flask hello; a naive GET that reads the state file on every request).
It loads each route with wrk (Debian's package) or, without it, a built-in load generator, the
routes of every server taking turns, and prints each route's ratio to the same run's `/healthz`
and to both references, RSS per worker and the live-update figures. It writes the results to
docs/benchmarks.md and exits 1 if a budget is missed.

Routes, budgets and probes are data (ROUTES, BUDGETS, PROBES): a route of a later issue is listed
with `pending=` and its budget is reported as pending until the route exists.

First, and steadier than any req/s on a shared machine, it counts instructions per request of
every budgeted route on both backends under callgrind (bench/counts.py) and judges them against
their budgets; `--no-rps` (or BENCH_NO_RPS=1) stops there, `--no-counts` skips them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.client import HTTPConnection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import counts  # noqa: E402
from tests.support import Gunicorn, RedisServer, http  # noqa: E402

STEPS = [
    {"action": action, "label": label, "status": "pending"}
    for action, label in [
        ("test_ssh", "Test SSH"),
        ("set_ui_home", "Set UI Home"),
        ("setup_civitdl", "Set up CivitDL"),
        ("sync_instance", "Sync Instance"),
        ("install_custom_nodes", "Install Custom Nodes"),
        ("verify_dependencies", "Verify Dependencies"),
    ]
]
# The product's reference workflow: the VastAI setup, six steps.
WORKFLOW = {
    "workflow_id": "bench",
    "status": "running",
    "current_step": 0,
    "steps": STEPS,
    "ssh_connection": "ssh -p 41022 root@203.0.113.7 -L 8080:localhost:8080",
}
# Sixteen clients patching sixteen different steps need a workflow of sixteen steps.
WIDE_WORKFLOW = dict(
    WORKFLOW,
    steps=[{"action": f"step_{i}", "label": f"Step {i}", "status": "pending"} for i in range(16)],
)


@dataclass(frozen=True)
class Route:
    """One request wrk repeats, and what the server must hold before it."""

    method: str
    path: str
    body: dict | None = None
    # "distinct": each connection patches its own step (DISTINCT_LUA); None: the same request.
    mode: str | None = None
    # The state stored (DELETE, then POST /workflow/state) before each round on the service.
    seed: dict | None = field(default_factory=lambda: WORKFLOW)
    # Called once with the server's base URL before the first round (e.g. store 1,000 workflows).
    prepare: Callable[[str], None] | None = None
    # Why the route cannot be measured yet: listed, budgeted, reported as pending, never loaded.
    pending: str | None = None


def store_workflows(count: int) -> Callable[[str], None]:
    """Return a `prepare` that creates `count` more workflows (409 for one there is fine)."""

    def prepare(base: str) -> None:
        for n in range(count):
            body = dict(WORKFLOW, workflow_id=f"bench-list-{n:04d}")
            status = http("POST", base + "/workflows", body)[0]
            if status not in (201, 409):
                raise RuntimeError(f"POST /workflows answered {status} storing workflow {n}")

    return prepare


# The service's routes, measured on every backend. A route given `pending=` is listed and
# budgeted but not loaded (a route that does not exist yet).
ROUTES: dict[str, Route] = {
    "healthz": Route("GET", "/healthz"),
    "GET state": Route("GET", "/workflow/state"),
    "summary": Route("GET", "/workflow/state/summary"),
    "POST": Route("POST", "/workflow/state", WORKFLOW),
    "PATCH same step": Route(
        "PATCH", "/workflow/state/steps/1", {"status": "in_progress", "data": {"progress": 42}}
    ),
    "PATCH distinct steps": Route(
        "PATCH", "/workflow/state/steps/", mode="distinct", seed=WIDE_WORKFLOW
    ),
    # --- many workflows (issue 10) ---------------------------------------------------------
    # The seed's POST /workflow/state creates workflow "bench" and makes it the current one.
    "GET workflow": Route("GET", "/workflows/bench"),
    # 999 more, plus "bench": 1,000 stored, the default WORKFLOW_STATE_MAX_WORKFLOWS.
    "list 50 of 1,000": Route(
        "GET",
        "/workflows?limit=50",
        prepare=store_workflows(999),
    ),
}

# The two references, each its own server with the same gunicorn config (bench/references.py).
HELLO = ("hello", "healthz")
NAIVE = ("naive", "GET state")
REFERENCE_ROUTES: dict[str, dict[str, Route]] = {
    "hello": {"healthz": Route("GET", "/healthz", seed=None)},
    "naive": {"GET state": Route("GET", "/workflow/state", seed=None)},
}
TARGET_TITLES = {
    "redis": "the service, Redis backend",
    "file": "the service, file backend",
    "hello": "bare Flask hello",
    "naive": "naive file GET",
}


@dataclass(frozen=True)
class Budget:
    """`figure` req/s divided by `reference` req/s, both (target, route) of the same run."""

    figure: tuple[str, str]
    reference: tuple[str, str]
    minimum: float
    zero_errors: bool = False


def healthz(backend: str) -> tuple[str, str]:
    """Name the service's /healthz on `backend`."""
    return (backend, "healthz")


# Issue 13's budgets, then those of many workflows (issue 10). A budget on a pending route is
# reported as
# pending until the route is measured.
BUDGETS = [
    Budget(healthz("redis"), HELLO, 0.90),
    Budget(("redis", "GET state"), NAIVE, 1.00),
    Budget(("file", "GET state"), NAIVE, 1.10),
    Budget(("redis", "summary"), healthz("redis"), 0.85),
    Budget(("redis", "POST"), healthz("redis"), 0.45, zero_errors=True),
    Budget(("redis", "PATCH same step"), healthz("redis"), 0.40, zero_errors=True),
    # --- many workflows (issue 10) ---------------------------------------------------------
    Budget(("redis", "GET workflow"), NAIVE, 1.00),
    Budget(("file", "GET workflow"), NAIVE, 1.10),
    Budget(("redis", "list 50 of 1,000"), healthz("redis"), 0.30),
]
# Resident memory of each service worker once the load is over (after the rounds).
RSS_BUDGET_MB = 60
PROPAGATION_BUDGET_MS = 100
STREAM_GET_BUDGET = 2.0
WORKERS = int(os.environ.get("WEB_CONCURRENCY", 2))
SERVICE_APP = "service.wsgi:app"

DISTINCT_LUA = """
local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
function init(args)
  sent = 0
  answered = 0
  acked = 0
  path = "/workflow/state/steps/" .. id
end
function request()
  sent = sent + 1
  return wrk.format("PATCH", path, {["Content-Type"] = "application/json"},
    '{"status":"in_progress","data":{"n":' .. sent .. '}}')
end
function response(status, headers, body)
  answered = answered + 1
  if status == 200 then acked = answered end
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    io.write(string.format("THREAD %d %d %d\\n", t:get("id"), t:get("acked"), t:get("sent")))
  end
end
"""


@dataclass
class Run:
    """One route's figures."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    extra: dict = field(default_factory=dict)
    # CPU time (user + system) the server's workers spent per request, in µs.
    cpu_us: float = 0.0


# --- load generators -----------------------------------------------------------------------


def _ms(text: str) -> float:
    value = float(re.match(r"[\d.]+", text).group())
    if text.endswith("us"):
        return value / 1000
    if text.endswith("ms"):
        return value
    if text.endswith("s"):
        return value * 1000
    return value


def wrk_run(base: str, route: Route, seconds: float, connections: int) -> Run:
    """Load one route with wrk."""
    method, path, body, mode = route.method, route.path, route.body, route.mode
    threads = 2
    if mode == "distinct":
        lua = DISTINCT_LUA
        threads = connections  # one connection per thread, one step per connection
    else:
        lua = f'wrk.method = "{method}"\n'
        if body is not None:
            lua += f"wrk.body = [[{json.dumps(body)}]]\n"
            lua += 'wrk.headers["Content-Type"] = "application/json"\n'
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua)
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--latency",
        "-s",
        script.name,
        base + path,
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(match.group(1))
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(g) for g in match.groups())
    extra = {}
    if mode == "distinct":
        extra["threads"] = {
            int(i): (int(acked), int(sent))
            for i, acked, sent in re.findall(r"THREAD (\d+) (\d+) (\d+)", out)
        }
    return Run(rps, p50, p99, requests, errors, extra)


def builtin_run(base: str, route: Route, seconds: float, connections: int) -> Run:
    """Load one route with keep-alive http.client connections in threads (no wrk here)."""
    method, path, body, mode = route.method, route.path, route.body, route.mode
    host, port = base.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors = 0
    per_thread: dict[int, tuple[int, int]] = {}
    guard = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker(index: int) -> None:
        nonlocal errors
        conn = HTTPConnection(host, int(port), timeout=10)
        mine, bad, sent, acked = [], 0, 0, 0
        while time.monotonic() < stop_at:
            sent += 1
            target, payload = path, body
            if mode == "distinct":
                target = f"{path}{index}"
                payload = {"status": "in_progress", "data": {"n": sent}}
            data = None if payload is None else json.dumps(payload)
            started = time.perf_counter()
            conn.request(method, target, body=data, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - started)
            if response.status >= 400:
                bad += 1
            else:
                acked = sent
        with guard:
            latencies.extend(mine)
            errors += bad
            per_thread[index] = (acked, sent)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    latencies.sort()
    extra = {"threads": per_thread} if mode == "distinct" else {}
    return Run(
        len(latencies) / elapsed,
        latencies[len(latencies) // 2] * 1000,
        latencies[int(len(latencies) * 0.99)] * 1000,
        len(latencies),
        errors,
        extra,
    )


# --- the server under test -----------------------------------------------------------------


def cpu_seconds(pids: list[int]) -> float:
    """Return the CPU time (user + system) the processes have used so far, in seconds."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_mb(server: Gunicorn) -> tuple[float, float]:
    """Return the largest RSS now (VmRSS) and at peak (VmHWM) among the server's workers, in MB."""
    now, peak = [], []
    for pid in server.worker_pids():
        status = Path(f"/proc/{pid}/status").read_text()
        now.append(int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024)
        peak.append(int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024)
    return max(now), max(peak)


def check_no_lost_update(base: str, route: str, run: Run, before: int) -> str:
    """Check the contention run's final state holds every acknowledged write."""
    state = http("GET", base + "/workflow/state")[2]["state"]
    if route == "PATCH same step":
        accepted = run.requests - run.errors
        ok = state["version"] - before >= accepted
        return f"versions {state['version'] - before} >= acked {accepted}: {'ok' if ok else 'LOST'}"
    lost = [
        index
        for index, (acked, sent) in run.extra["threads"].items()
        if acked and not acked <= state["steps"][index]["data"]["n"] <= sent
    ]
    return f"{len(run.extra['threads'])} clients, lost updates: {len(lost)}" + (
        "" if not lost else " LOST"
    )


@dataclass
class Target:
    """One server of the run: the service on one backend, or a reference app."""

    app: str
    env: dict[str, str]
    routes: dict[str, Route]
    server: Gunicorn | None = None
    samples: dict[str, list[Run]] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)

    @property
    def live_routes(self) -> dict[str, Route]:
        """Return the routes that can be measured (not pending)."""
        return {name: route for name, route in self.routes.items() if not route.pending}

    def start(self) -> None:
        """Start the server and warm each worker up."""
        self.server = Gunicorn(self.env, workers=WORKERS, app=self.app).start()
        wait_for_workers(self.server, next(iter(self.live_routes.values())).path)
        for route in self.live_routes.values():
            if route.prepare is not None:
                route.prepare(self.server.url)


def service_target(url: str) -> Target:
    """Return the service on the backend `url` names, with every route of ROUTES."""
    # A 0 s step simulator: the run-overhead probe measures the engine, not a pretend step.
    env = {"WORKFLOW_STATE_URL": url, "WORKFLOW_DEMO_STEP_SECONDS": "0"}
    return Target(SERVICE_APP, env, ROUTES)


def measure_round(name: str, target: Target, seconds: float, connections: int, generator) -> None:
    """Load each of the target's routes once, adding one sample to each."""
    base = target.server.url
    for route_name, route in target.live_routes.items():
        if route.seed is not None:
            http("DELETE", base + "/workflow/state")
            http("POST", base + "/workflow/state", route.seed)
        generator(base, route, 1, connections)  # warm-up
        if route.method == "PATCH":
            before = http("GET", base + "/workflow/state")[2]["state"]["version"]
        workers = target.server.worker_pids()
        cpu_before = cpu_seconds(workers)
        run = generator(base, route, seconds, connections)
        run.cpu_us = (cpu_seconds(workers) - cpu_before) / max(run.requests, 1) * 1e6
        target.samples.setdefault(route_name, []).append(run)
        if route.method == "PATCH":
            check = check_no_lost_update(base, route_name, run, before)
            label = f"{name} {route_name}"
            if "LOST" in check or not any(c.startswith(label) for c in target.checks):
                target.checks.append(f"{label}: {check}")


def write_naive_state(path: Path, service: Target) -> None:
    """Give the naive GET's file the state the service answers for the reference workflow."""
    http("POST", service.server.url + "/workflow/state", WORKFLOW)
    state = http("GET", service.server.url + "/workflow/state")[2]["state"]
    path.write_text(json.dumps(state))


def bench(
    targets: dict[str, Target],
    seconds: float,
    connections: int,
    rounds: int,
    generator,
    ready: Callable[[], None] = lambda: None,
    probes: list[Probe] | None = None,
) -> dict[str, dict]:
    """Measure every route of every target, all servers up at once; return each one's figures.

    Every target's routes take turns for `rounds` rounds (the references among them) and each
    route's median round is reported, so a noisy moment on a shared machine moves one sample,
    not a ratio.
    """
    results: dict[str, dict] = {}
    chosen_probes = PROBES if probes is None else probes
    try:
        for target in targets.values():
            target.start()
        ready()
        for number in range(rounds):
            print(f"round {number + 1} of {rounds}...", flush=True)
            for name, target in targets.items():
                measure_round(name, target, seconds, connections, generator)
        for name, target in targets.items():
            rss, peak = rss_mb(target.server)
            measured = {
                probe.name: probe.measure(target.server)
                for probe in chosen_probes
                if probe.target == name and not probe.pending
            }
            results[name] = {
                "runs": {route: median_run(runs) for route, runs in target.samples.items()},
                "rss": rss,
                "peak_rss": peak,
                "checks": target.checks,
                "probes": measured,
            }
    finally:
        for target in targets.values():
            if target.server is not None:
                target.server.stop()
    return results


def median_run(runs: list[Run]) -> Run:
    """Return the run with the median req/s, with the errors of every run added up.

    Its CPU per request is the median of every run's, on its own.
    """
    ordered = sorted(runs, key=lambda run: run.rps)
    middle = ordered[len(ordered) // 2]
    return Run(
        middle.rps,
        middle.p50_ms,
        middle.p99_ms,
        middle.requests,
        sum(run.errors for run in runs),
        middle.extra,
        statistics.median(run.cpu_us for run in runs),
    )


def wait_for_workers(server: Gunicorn, path: str = "/workflow/state") -> None:
    """Wait until every worker has booted, so the first run isn't measuring start-up."""
    wanted = int(server.env["WEB_CONCURRENCY"])
    deadline = time.monotonic() + 20
    while len(server.worker_pids()) < wanted and time.monotonic() < deadline:
        time.sleep(0.05)
    for _ in range(50):
        http("GET", server.url + path)


# --- figures that are not req/s ------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A figure measured once on a target's running server after the rounds, with a maximum."""

    target: str
    name: str
    measure: Callable[[Gunicorn], float]
    maximum: float
    unit: str
    pending: str | None = None


def step_overhead_ms(server: Gunicorn, steps: int = 100) -> float:
    """Run a workflow of `steps` 0 s simulator steps; return the median time per step, in ms.

    Server runs, measured by bench/runs.py (also runnable alone): its own redis-server and a real
    `python -m service worker`, the run started through the run control and followed on the
    store's change feed, each step's time taken from the writer's clock. So it is the engine's
    own time per step (claiming, the step call, the fenced writes, the lease), not this server's.
    """
    from bench.runs import bench_redis

    return bench_redis(steps)["median_ms"]


PROBES = [
    Probe(
        "redis",
        "server run, 0 s simulator: per-step overhead, median of 100 steps",
        step_overhead_ms,
        20,
        "ms",
    ),
]


# --- live updates ----------------------------------------------------------------------------


class StreamReader:
    """Hold many SSE connections in one thread and note when each event id arrives."""

    def __init__(self, base: str, count: int) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.selector = selectors.DefaultSelector()
        self.arrivals: dict[int, dict[int, float]] = {}
        self.buffers: dict[int, bytes] = {}
        for index in range(count):
            sock = socket.create_connection((host, int(port)))
            sock.sendall(f"GET /workflow/state/stream HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, index)
            self.arrivals[index] = {}
            self.buffers[index] = b""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.selector.select(timeout=0.1):
                now = time.perf_counter()
                try:
                    data = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                index = key.data
                buffer = self.buffers[index] + data
                for match in re.finditer(rb"\nid: (\d+)\n", buffer):
                    self.arrivals[index].setdefault(int(match.group(1)), now)
                self.buffers[index] = buffer[-64:]

    def wait_connected(self, timeout: float = 20) -> None:
        """Wait until every stream has sent its first event."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.arrivals[i] or b"retry" in self.buffers[i] for i in self.arrivals):
                return
            time.sleep(0.05)
        raise RuntimeError("streams did not connect")

    def close(self) -> None:
        """Close every connection."""
        self.stop.set()
        self.thread.join()
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()


def bench_streams(redis: RedisServer, seconds: float, connections: int, generator) -> dict:
    """Propagation A -> B with 50 streams; GET latency idle vs with 200 open streams."""
    redis.flush()
    env = {"WORKFLOW_STATE_URL": redis.url}
    a, b = Gunicorn(env).start(), Gunicorn(env).start()
    try:
        wait_for_workers(a)
        wait_for_workers(b)
        http("POST", a.url + "/workflow/state", dict(WORKFLOW))
        reader = StreamReader(b.url, 50)
        reader.wait_connected()
        sends: dict[int, float] = {}
        conn = HTTPConnection(*a.url.removeprefix("http://").split(":"), timeout=10)
        for n in range(200):
            body = json.dumps({"status": "in_progress", "data": {"n": n}})
            started = time.perf_counter()
            conn.request("PATCH", f"/workflow/state/steps/{n % 6}", body=body)
            version = json.loads(conn.getresponse().read())["state"]["version"]
            sends[version] = started
            time.sleep(0.01)  # pacing: ~70 writes/s, a busy workflow, not a flood
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(
            all(v in reader.arrivals[i] for v in sends) for i in reader.arrivals
        ):
            time.sleep(0.05)
        reader.close()
        latencies = sorted(
            (reader.arrivals[i][v] - sent) * 1000
            for i in reader.arrivals
            for v, sent in sends.items()
            if v in reader.arrivals[i]
        )
        missed = len(sends) * len(reader.arrivals) - len(latencies)
        idle = generator(a.url, ROUTES["GET state"], seconds, connections)
        crowd = StreamReader(a.url, 200)
        crowd.wait_connected()
        busy = generator(a.url, ROUTES["GET state"], seconds, connections)
        crowd.close()
    finally:
        a.stop()
        b.stop()
    return {
        "p50": statistics.median(latencies),
        "p99": latencies[int(len(latencies) * 0.99)],
        "missed": missed,
        "pairs": len(sends) * 50,
        "idle": idle,
        "busy": busy,
    }


# --- report --------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    """Describe the machine the figures come from."""
    redis_version = subprocess.run(
        [shutil.which("redis-server") or "redis-server", "--version"],
        capture_output=True,
        text=True,
    ).stdout.split()
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "redis": next((p for p in redis_version if p.startswith("v=")), "?").removeprefix("v="),
        "kernel": platform.release(),
    }


def ratio(results: dict[str, dict], figure: tuple[str, str], reference: tuple[str, str]) -> float:
    """Return figure req/s divided by reference req/s."""
    (target, route), (over, base) = figure, reference
    return results[target]["runs"][route].rps / results[over]["runs"][base].rps


def verdict(ok: bool) -> str:
    """Say whether a budget held."""
    return "yes" if ok else "**no**"


def render_budgets(results: dict[str, dict]) -> tuple[list[str], bool]:
    """Render the budget table; also tell whether every budget that could be measured held."""
    lines = [
        "## Budgets",
        "",
        "Budgets are on req/s. 'CPU-based' is the same ratio from the workers' CPU per request "
        "(the reference's µs divided by the figure's; redis-server's time not included): what "
        "the req/s ratio would be if both were CPU-bound on a machine of their own.",
        "",
        "| budget | measured | margin | holds | CPU-based |",
        "|---|---:|---:|:---:|---:|",
    ]
    all_ok = True

    def name(key: tuple[str, str]) -> str:
        return f"{key[0]} {key[1]}" if key[0] in ("redis", "file") else TARGET_TITLES[key[0]]

    for budget in BUDGETS:
        route = ROUTES.get(budget.figure[1])
        label = f"{name(budget.figure)} / {name(budget.reference)} ≥ {budget.minimum:.2f}"
        label += ", 0 errors" if budget.zero_errors else ""
        if route is not None and route.pending:
            lines.append(f"| {label} | pending ({route.pending}) | | | |")
            continue
        if budget.figure[0] not in results or budget.reference[0] not in results:
            continue
        if budget.figure[1] not in results[budget.figure[0]]["runs"]:
            continue  # not measured in this run (--routes)
        value = ratio(results, budget.figure, budget.reference)
        figure = results[budget.figure[0]]["runs"][budget.figure[1]]
        reference = results[budget.reference[0]]["runs"][budget.reference[1]]
        ok = value >= budget.minimum and (figure.errors == 0 or not budget.zero_errors)
        all_ok &= ok
        lines.append(
            f"| {label} | {value:.2f} ({figure.errors} errors) | {value - budget.minimum:+.2f} | "
            f"{verdict(ok)} | {reference.cpu_us / figure.cpu_us:.2f} |"
        )
    for backend in ("redis", "file"):
        if backend in results:
            rss = results[backend]["rss"]
            ok = rss <= RSS_BUDGET_MB
            all_ok &= ok
            lines.append(
                f"| {backend} RSS per worker after the benchmark ≤ {RSS_BUDGET_MB} MB | "
                f"{rss:.1f} MB | {RSS_BUDGET_MB - rss:+.1f} MB | {verdict(ok)} | |"
            )
    for probe in PROBES:
        label = f"{probe.target} {probe.name} ≤ {probe.maximum:g} {probe.unit}"
        if probe.pending:
            lines.append(f"| {label} | pending ({probe.pending}) | | | |")
        elif probe.name in results.get(probe.target, {}).get("probes", {}):
            value = results[probe.target]["probes"][probe.name]
            ok = value <= probe.maximum
            all_ok &= ok
            lines.append(
                f"| {label} | {value:.1f} {probe.unit} | {probe.maximum - value:+.1f} {probe.unit} "
                f"| {verdict(ok)} | |"
            )
    return lines, all_ok


def render(
    info, generator_name, seconds, rounds, connections, results, streams
) -> tuple[str, bool]:
    """Render the report as Markdown; also tell whether every budget held."""
    lines = [
        "# Benchmarks",
        "",
        f"Measured {info['date']} by `make bench` on {info['cores']} cores ({info['cpu']}), "
        f"Python {info['python']}, Redis {info['redis']}, Linux {info['kernel']}.",
        f"Load generator: {generator_name}; {connections} connections, {seconds:g} s per route "
        f"after a 1 s warm-up, routes taking turns for {rounds} rounds; each figure is the "
        "route's median round (errors: the sum of all rounds). Every server is the real "
        f"gunicorn with `deploy/gunicorn.conf.py` ({WORKERS} gevent workers), all of them up "
        "for the whole run and taking turns in each round: the service on a private "
        "redis-server, the service on the file backend, and the two references of "
        "`bench/references.py`: a bare Flask app with no middleware answering `/healthz`, and a "
        "naive GET that opens and parses a JSON state file on every request (no lock, no fsync, "
        "no cache). The load generator runs on the same machine.",
        "Ratios are req/s divided by, from the same run: the same backend's `/healthz`, the bare "
        "Flask hello, and the naive file GET. The state is the reference workflow (the six "
        "VastAI setup steps, about 700 bytes; the naive GET's file holds the same state), except "
        "for 'PATCH distinct steps', whose sixteen clients need sixteen steps.",
        "CPU µs/req: the CPU time (user + system) the server's gunicorn workers spent per "
        "request, median of the rounds (redis-server's own time not included). On a machine "
        "shared with other work it moves much less than req/s: it is what to compare when "
        "measuring a change of the per-request path.",
        "",
        "## References",
        "",
        "| reference | route | req/s | CPU µs/req | p50 ms | p99 ms | errors | RSS per worker "
        "after (peak) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in REFERENCE_ROUTES:
        if name not in results:
            continue
        result = results[name]
        for route, run in result["runs"].items():
            lines.append(
                f"| {TARGET_TITLES[name]} | {REFERENCE_ROUTES[name][route].path} | "
                f"{run.rps:,.0f} | {run.cpu_us:.0f} | {run.p50_ms:.2f} | {run.p99_ms:.2f} | "
                f"{run.errors} | {result['rss']:.1f} MB ({result['peak_rss']:.1f}) |"
            )
    lines.append("")
    for backend in ("redis", "file"):
        if backend not in results:
            continue
        result = results[backend]
        lines += [
            f"## {backend} backend",
            "",
            "| route | req/s | / `/healthz` | / bare Flask | / naive GET | CPU µs/req | p50 ms "
            "| p99 ms | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for route, run in result["runs"].items():
            figure = (backend, route)
            lines.append(
                f"| {route} | {run.rps:,.0f} | {ratio(results, figure, healthz(backend)):.2f} | "
                f"{ratio(results, figure, HELLO):.2f} | {ratio(results, figure, NAIVE):.2f} | "
                f"{run.cpu_us:.0f} | {run.p50_ms:.2f} | {run.p99_ms:.2f} | {run.errors} |"
            )
        lines += [
            "",
            f"RSS per worker after the benchmark: {result['rss']:.1f} MB "
            f"(peak {result['peak_rss']:.1f} MB).",
            "",
        ]
        lines += [f"- {check}" for check in result["checks"]] + [""]
    budget_lines, all_ok = render_budgets(results)
    lines += budget_lines
    for result in results.values():
        for check in result["checks"]:
            all_ok &= "LOST" not in check
    if streams:
        ok = streams["p99"] <= PROPAGATION_BUDGET_MS and streams["missed"] == 0
        all_ok &= ok
        lines.append(
            f"| propagation p99 ≤ {PROPAGATION_BUDGET_MS} ms, 50 streams, 0 missed | "
            f"{streams['p99']:.1f} ms, {streams['missed']} missed | "
            f"{PROPAGATION_BUDGET_MS - streams['p99']:+.1f} ms | {verdict(ok)} | |"
        )
        busy = streams["busy"].p50_ms / streams["idle"].p50_ms
        ok = busy <= STREAM_GET_BUDGET
        all_ok &= ok
        lines.append(
            f"| GET p50 with 200 open streams ≤ {STREAM_GET_BUDGET:g}× idle | {busy:.2f}× | "
            f"{STREAM_GET_BUDGET - busy:+.2f} | {verdict(ok)} | |"
        )
        lines += [
            "",
            "## Live updates (Redis, two instances)",
            "",
            f"- Propagation from a PATCH on instance A to 50 streams on instance B "
            f"({streams['pairs']} stream-events): p50 {streams['p50']:.1f} ms, "
            f"p99 {streams['p99']:.1f} ms, missed {streams['missed']}.",
            f"- GET /workflow/state on one instance, idle: {streams['idle'].rps:,.0f} req/s, "
            f"p50 {streams['idle'].p50_ms:.2f} ms, p99 {streams['idle'].p99_ms:.2f} ms.",
            f"- The same with 200 open streams: {streams['busy'].rps:,.0f} req/s, "
            f"p50 {streams['busy'].p50_ms:.2f} ms, p99 {streams['busy'].p99_ms:.2f} ms.",
        ]
    return "\n".join(lines) + "\n", all_ok


def main() -> int:
    """Run the benchmark; print the report and write it to docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--backends", default="redis,file")
    parser.add_argument("--no-streams", action="store_true")
    parser.add_argument(
        "--routes",
        help="measure only these routes of ROUTES on the service, comma-separated (a quick A/B "
        "of a change; the references are always measured)",
    )
    parser.add_argument("--no-probes", action="store_true", help="skip the PROBES")
    parser.add_argument("--builtin", action="store_true", help="use the built-in generator")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument(
        "--no-rps",
        action="store_true",
        default=os.environ.get("BENCH_NO_RPS", "") not in ("", "0"),
        help="only count instructions per request (BENCH_NO_RPS=1 does the same)",
    )
    parser.add_argument("--no-counts", action="store_true", help="skip the instruction counts")
    parser.add_argument("--count-requests", type=int, default=100, help="counted per route")
    args = parser.parse_args()
    count_lines: list[str] = []
    counts_ok = True
    if not args.no_counts:
        print("counting instructions per request under callgrind...", flush=True)
        counted = counts.measure(args.backends.split(","), args.count_requests)
        count_lines, counts_ok = counts.render(counted, counts.counted_routes(WORKFLOW))
        print("\n".join(count_lines), flush=True)
    if args.no_rps:
        print(f"budgets on instructions {'hold' if counts_ok else 'MISSED'}")
        return 0 if counts_ok else 1
    use_wrk = shutil.which("wrk") is not None and not args.builtin
    generator = wrk_run if use_wrk else builtin_run
    generator_name = "wrk" if use_wrk else "the built-in generator (no wrk on this machine)"
    print(f"load generator: {generator_name}", flush=True)
    redis = RedisServer().start()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            urls = {"redis": redis.url, "file": f"file://{scratch}/workflow_state.json"}
            naive_file = Path(scratch, "naive_state.json")
            targets = {name: service_target(urls[name]) for name in args.backends.split(",")}
            if args.routes:
                chosen = {name.strip() for name in args.routes.split(",")}
                for target in targets.values():
                    target.routes = {k: v for k, v in target.routes.items() if k in chosen}
            targets["hello"] = Target("bench.references:hello_app", {}, REFERENCE_ROUTES["hello"])
            targets["naive"] = Target(
                f"bench.references:naive_app({str(naive_file)!r})", {}, REFERENCE_ROUTES["naive"]
            )
            service = next(t for t in targets.values() if t.app == SERVICE_APP)
            print("benchmarking " + ", ".join(targets) + "...", flush=True)
            results = bench(
                targets,
                args.seconds,
                args.connections,
                args.rounds,
                generator,
                ready=lambda: write_naive_state(naive_file, service),
                probes=[] if args.no_probes else PROBES,
            )
        streams = None
        if not args.no_streams:
            print("benchmarking live updates...", flush=True)
            streams = bench_streams(redis, args.seconds, args.connections, generator)
    finally:
        redis.close()
    report, ok = render(
        machine(), generator_name, args.seconds, args.rounds, args.connections, results, streams
    )
    if count_lines:
        report += "\n" + "\n".join(count_lines) + "\n"
    ok &= counts_ok
    print(report)
    history = Path(__file__).with_name("history.md").read_text()
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(report + "\n" + history)
    print(f"written to {args.out}; budgets {'hold' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
