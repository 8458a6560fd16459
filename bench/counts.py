"""Instructions per request for every budgeted route, on the file backend and on Redis.

Timings on a shared machine swing too much to judge a change; instruction counts do not. For
each backend, `valgrind --tool=callgrind` runs `bench/tax.py --count <url>`: the service's app as
a gunicorn worker has it (bench/tax.py builds it) and the bare Flask hello, their WSGI callables
called in-process. The counting process switches callgrind's instrumentation on only around each
route's batch of requests (after a warm-up) and dumps the count under the route's name, so the
app's start-up and the seeding are not counted. Only that process is counted: the Redis backend
talks to a real redis-server this module starts on a free port, outside valgrind.

Each route's figure is its instructions per request divided by the hello's, beside its budget.
`python bench/tax.py --budgets` prints the table and exits 1 when a budget is missed; `make bench`
(bench/run.py) does the same before its req/s rounds.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Counted:
    """One request whose instructions are counted, and its budget (÷ the hello's count)."""

    method: str
    path: str
    body: dict | None
    budget: float | None  # None: the unit itself


PATCH_BODY = {"status": "in_progress", "data": {"progress": 42}}
LIST_STORED = 1000
HELLO = "hello"


def counted_routes(workflow: dict, only: str | None = None) -> dict[str, Counted]:
    """Return the counted requests by name: the hello first, then each budgeted route (`only`:
    those named, comma-separated)."""
    routes = {
        HELLO: Counted("GET", "/healthz", None, None),
        "healthz": Counted("GET", "/healthz", None, 1.10),
        "GET /workflow/state": Counted("GET", "/workflow/state", None, 1.30),
        "GET /workflows/<id>": Counted("GET", f"/workflows/{workflow['workflow_id']}", None, 1.30),
        "summary": Counted("GET", "/workflow/state/summary", None, 1.30),
        f"list 50 of {LIST_STORED}": Counted("GET", "/workflows?limit=50", None, 2.1),
        "POST /workflow/state": Counted("POST", "/workflow/state", workflow, 2.0),
        "PATCH /workflow/state/steps/1": Counted(
            "PATCH", "/workflow/state/steps/1", PATCH_BODY, 2.0
        ),
    }
    if only is None:
        return routes
    chosen = {HELLO, *(name.strip() for name in only.split(","))}
    unknown = chosen - routes.keys()
    if unknown:
        raise ValueError(f"unknown routes {sorted(unknown)}; known: {list(routes)}")
    return {name: route for name, route in routes.items() if name in chosen}


# --- inside the counted process ------------------------------------------------------------

# Valgrind's client requests are a no-op instruction sequence valgrind recognises (valgrind.h,
# amd64): rax points at [request, arg1..arg5], rdx holds the default answer and gets the reply.
# As a function of one argument (the array, in rdi): mov rax,rdi; xor edx,edx; the four
# rotations of rdi by 128 bits in all; xchg rbx,rbx; mov rax,rdx; ret.
_CLIENT_REQUEST = bytes.fromhex("4889f831d248c1c70348c1c70d48c1c73d48c1c7334887db4889d0c3")
_CALLGRIND = (ord("C") << 24) | (ord("T") << 16)
ZERO_STATS, DUMP_STATS_AT = _CALLGRIND + 1, _CALLGRIND + 3
START_INSTRUMENTATION, STOP_INSTRUMENTATION = _CALLGRIND + 4, _CALLGRIND + 5
RUNNING_ON_VALGRIND = 0x1001


class Valgrind:
    """Send client requests to the valgrind this process runs under (answers 0 without one)."""

    def __init__(self) -> None:
        if not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_void_p) != 8:
            raise RuntimeError("client requests are written for Linux on x86-64")
        self._page = mmap.mmap(
            -1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
        )
        self._page.write(_CLIENT_REQUEST)
        address = ctypes.addressof(ctypes.c_char.from_buffer(self._page))
        self._call = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint64))(address)

    def request(self, code: int, argument: int = 0) -> int:
        """Send one client request; return valgrind's answer."""
        return self._call((ctypes.c_uint64 * 6)(code, argument, 0, 0, 0, 0))

    def count(self, name: str, calls: Callable[[], None]) -> None:
        """Count the instructions `calls` runs, dumped under `name`."""
        label = ctypes.create_string_buffer(name.encode())
        self.request(START_INSTRUMENTATION)
        self.request(ZERO_STATS)
        calls()
        self.request(DUMP_STATS_AT, ctypes.addressof(label))
        self.request(STOP_INSTRUMENTATION)


def count_routes(
    callers: dict[str, Callable[[], int]], number: dict[str, int], warm_up: int = 20
) -> None:
    """Warm each caller up, then count `number[name]` calls of it under valgrind."""
    valgrind = Valgrind()
    if not valgrind.request(RUNNING_ON_VALGRIND):
        raise RuntimeError("not running under valgrind: use `python bench/tax.py --budgets`")
    for name, call in callers.items():
        for _ in range(warm_up):
            status = call()
            if status >= 300:
                raise RuntimeError(f"{name} answered {status}")

        def batch(call=call, times=number[name]) -> None:
            for _ in range(times):
                call()

        valgrind.count(f"{name} x{number[name]}", batch)


# --- the measuring process -----------------------------------------------------------------

_DUMP = re.compile(r"^desc: Trigger: Client Request: (.+) x(\d+)$", re.M)
_SUMMARY = re.compile(r"^summary: (\d+)$", re.M)


def read_dumps(directory: Path) -> dict[str, float]:
    """Return instructions per request by route name from callgrind's dumps in `directory`."""
    counts = {}
    for path in directory.iterdir():
        text = path.read_text(errors="replace")
        if (match := _DUMP.search(text)) and (total := _SUMMARY.search(text)):
            counts[match.group(1)] = int(total.group(1)) / int(match.group(2))
    return counts


def count_backend(url: str, requests: int, only: str | None = None) -> dict[str, float]:
    """Count every route on the backend `url` names, in one process under callgrind."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise RuntimeError("valgrind is not installed (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="wss-counts-") as scratch:
        command = [
            valgrind,
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={scratch}/callgrind.out",
            sys.executable,
            str(ROOT / "bench" / "tax.py"),
            "--count",
            url,
            "--requests",
            str(requests),
            *(["--routes", only] if only else []),
        ]
        # One hash seed for every run: dict and set layouts, and so the counts, repeat.
        env = dict(os.environ, PYTHONHASHSEED="0")
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"counting on {url} failed:\n{done.stdout}\n{done.stderr[-3000:]}")
        return read_dumps(Path(scratch))


def measure(
    backends: list[str], requests: int, only: str | None = None
) -> dict[str, dict[str, float]]:
    """Return instructions per request by backend and route (a private redis-server for Redis)."""
    sys.path.insert(0, str(ROOT))
    from tests.support import RedisServer

    results = {}
    with tempfile.TemporaryDirectory(prefix="wss-counts-file-") as scratch:
        for backend in backends:
            if backend == "redis":
                redis = RedisServer().start()
                try:
                    results[backend] = count_backend(redis.url, requests, only)
                finally:
                    redis.close()
            else:
                url = f"file://{scratch}/workflow_state.json"
                results[backend] = count_backend(url, requests, only)
    return results


def render(
    results: dict[str, dict[str, float]], routes: dict[str, Counted]
) -> tuple[list[str], bool]:
    """Render the counts beside their budgets as Markdown; also tell whether all held."""
    lines = [
        "## Instructions per request",
        "",
        "Counted by `valgrind --tool=callgrind` on the app's WSGI callable called in-process "
        "(`python bench/tax.py --budgets`), only the service's own process; each route's count "
        "divided by the bare Flask hello's, counted in the same process.",
        "",
        "| route | backend | instructions | ÷ hello | budget | holds |",
        "|---|---|---:|---:|---:|:---:|",
    ]
    all_ok = True
    for backend, counts in results.items():
        hello = counts[HELLO]
        for name, route in routes.items():
            value = counts[name]
            if route.budget is None:
                lines.append(f"| bare Flask hello | {backend} | {value:,.0f} | 1.00 | | |")
                continue
            share = value / hello
            ok = share <= route.budget
            all_ok &= ok
            lines.append(
                f"| {name} | {backend} | {value:,.0f} | {share:.2f} | ≤ {route.budget:.2f} | "
                f"{'yes' if ok else '**no**'} |"
            )
    return lines, all_ok
