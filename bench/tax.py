"""Measure the per-request tax in-process: what each request hook costs, hook by hook.

`python bench/tax.py` builds the service's app as a gunicorn worker has it (gevent's patching,
Prometheus multiprocess mode, logs at INFO to a file standing in for gunicorn's stderr, the file
backend) and the bare Flask hello of bench/references.py, and calls each app's WSGI callable
directly, with no server and no socket, so the figures are the app's own CPU time per request:

1. whole requests: the service's /healthz, GET /workflow/state and POST /workflow/state, and the
   bare Flask hello;
2. each per-request step the app has (the steps service/hooks.py runs from its two Flask hooks,
   or, for an app without them, each Flask before/after-request hook), called on its own inside
   a request;
3. each step taken out of the app (ablation): how much faster the whole request gets;
4. pieces that are not hooks: URL matching on each app's map, gevent.sleep(0) (gunicorn's
   pre_request yield), and one Prometheus counter/histogram write (multiprocess mode, as under
   gunicorn; `--no-multiproc` for the in-memory values).

Each figure is the best of several repeats of CPU time (a shared machine only ever adds time).

`python bench/tax.py --budgets` counts instructions per request instead (bench/counts.py): the
same app, run under `valgrind --tool=callgrind` by `--count`, for every budgeted route.
"""

from __future__ import annotations

import sys

# --budgets only starts the counting processes (each a `--count` run of this file, patched).
if "--no-gevent" not in sys.argv and "--budgets" not in sys.argv:
    from gevent import monkey

    monkey.patch_all()

import argparse
import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SCRATCH = tempfile.mkdtemp(prefix="wss-tax-")
# As deploy/gunicorn.conf.py does, before anything imports prometheus_client.
if "--no-multiproc" not in sys.argv:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(SCRATCH, "metrics")

from flask import Response, g, request  # noqa: E402
from werkzeug.test import EnvironBuilder  # noqa: E402

from bench import counts  # noqa: E402
from bench.references import create_hello_app  # noqa: E402
from bench.run import WORKFLOW  # noqa: E402
from service.hooks import EXTENSION  # noqa: E402
from service.storage.file import RACY_SECONDS  # noqa: E402

REQUESTS = {
    "GET /healthz": ("GET", "/healthz", None),
    "GET /workflow/state": ("GET", "/workflow/state", None),
    "POST /workflow/state": ("POST", "/workflow/state", WORKFLOW),
}


def best_us(call: Callable[[], object], number: int, repeat: int) -> float:
    """Return the best per-call CPU time of `call` over `repeat` batches of `number`, in µs.

    CPU time of this thread (user and system), not wall time: on a machine shared with other
    work, waiting for a core would otherwise be counted as the request's cost.
    """
    best = float("inf")
    for _ in range(repeat):
        started = time.thread_time()
        for _ in range(number):
            call()
        best = min(best, (time.thread_time() - started) / number)
    return best * 1e6


def wsgi_caller(app, method: str, path: str, body: dict | None) -> Callable[[], int]:
    """Return a function that sends one request straight to `app`'s WSGI callable."""
    data = b"" if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    template = EnvironBuilder(path=path, method=method, data=data, headers=headers).get_environ()
    template["REMOTE_ADDR"] = "127.0.0.1"
    statuses: list[str] = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    def call() -> int:
        environ = dict(template)
        environ["wsgi.input"] = io.BytesIO(data)
        result = app(environ, start_response)
        try:
            for _ in result:
                pass
        finally:
            if hasattr(result, "close"):
                result.close()
        return int(statuses.pop()[:3])

    return call


def hook_name(hook: Callable) -> str:
    """Name a hook by its module and function."""
    return f"{getattr(hook, '__module__', '?')}.{getattr(hook, '__qualname__', repr(hook))}"


def step_lists(app) -> tuple[list, list, bool]:
    """Return the app's before and after steps (lists to edit in place), and whether they are
    service/hooks.py steps (called with the request and `g`) rather than Flask hooks."""
    steps = app.extensions.get(EXTENSION)
    if steps is not None:
        return steps.before, steps.after, True
    before = app.before_request_funcs.setdefault(None, [])
    return before, app.after_request_funcs.setdefault(None, []), False


def isolated_hooks(app, method: str, path: str, body: dict | None, number: int, repeat: int):
    """Time each per-request step alone inside one request; yield (kind, name, µs).

    An after-step gets a fresh response each call (a header it set on the last call would make
    the next one cheaper); the cost of making that response is subtracted.
    """
    kwargs = {"json": body} if body is not None else {}
    before, after, with_args = step_lists(app)
    with app.test_request_context(path, method=method, **kwargs):
        args = (request._get_current_object(), vars(g._get_current_object())) if with_args else ()
        for hook in before:
            yield "before", hook_name(hook), best_us(lambda h=hook: h(*args), number, repeat)
        if with_args:
            g.request_started = time.perf_counter()
        for hook in before:
            hook(*args)  # the after steps read what the before steps left in `g`

        def fresh() -> Response:
            return Response('{"success":true}', mimetype="application/json")

        baseline = best_us(fresh, number, repeat)
        for hook in after:
            us = best_us(lambda h=hook: h(*args, fresh()), number, repeat) - baseline
            yield "after", hook_name(hook), us


def paired_us(first: Callable, second: Callable, number: int, repeat: int) -> tuple[float, float]:
    """Time two calls in alternating batches; return the best of each, in µs.

    Alternating puts both in the same moments of a shared machine, so their difference is less
    noisy than two separate timings.
    """
    a, b = float("inf"), float("inf")
    for _ in range(repeat):
        a = min(a, best_us(first, number, 1))
        b = min(b, best_us(second, number, 1))
    return a, b


def ablation(full, cut, hello, call_for: Callable, number: int, repeat: int, path: str):
    """Yield (what was taken out, µs saved per request), one hook at a time, then more.

    `full` and `cut` are two instances of the same app; things are taken out of `cut` only, and
    it is timed against `full` in alternating batches.
    """
    whole = call_for(full)

    def saved() -> float:
        first, second = paired_us(whole, call_for(cut), number, repeat)
        return first - second

    for hooks in step_lists(cut)[:2]:
        for position, hook in enumerate(list(hooks)):
            hooks.pop(position)
            try:
                yield hook_name(hook), saved()
            finally:
                hooks.insert(position, hook)
    spec = cut.error_handler_spec
    handlers = dict(spec)
    spec.clear()
    try:
        yield "every error handler (error_handler_spec emptied)", saved()
    finally:
        spec.update(handlers)
    before = cut.before_request_funcs.setdefault(None, [])
    after = cut.after_request_funcs.setdefault(None, [])
    hooks = list(before), list(after)
    before.clear()
    after.clear()
    try:
        yield "every hook", saved()
        if path == "/healthz":
            first, second = paired_us(call_for(cut), call_for(hello), number, repeat)
            yield "what is left (no hook) vs the bare Flask hello", first - second
    finally:
        before.extend(hooks[0])
        after.extend(hooks[1])


def prometheus_writes(app, number: int, repeat: int) -> dict[str, float]:
    """Time prometheus_client's counter.inc() and histogram.observe(), and the service's one
    RequestMeter.observe() that does both, as this process's metrics do them."""
    from service.metrics import metrics_of

    metrics = metrics_of(app)
    counter, histogram = metrics.children("/bench", "GET", 200)
    meter = metrics.meter("/bench", "GET", 200)
    return {
        "counter.inc()": best_us(counter.inc, number, repeat),
        "histogram.observe()": best_us(lambda: histogram.observe(0.0012), number, repeat),
        "RequestMeter.observe() (count + time)": best_us(
            lambda: meter.observe(0.0012, metrics.add), number, repeat
        ),
    }


def gevent_yield(number: int, repeat: int, idle: int) -> float:
    """Time gevent.sleep(0) with `idle` other greenlets parked on sockets (keep-alive clients)."""
    import socket

    import gevent

    pairs = [socket.socketpair() for _ in range(idle)]
    parked = [gevent.spawn(a.recv, 1) for a, _ in pairs]
    gevent.sleep(0)
    try:
        return best_us(lambda: gevent.sleep(0), number, repeat)
    finally:
        gevent.killall(parked)
        for a, b in pairs:
            a.close()
            b.close()


def url_matching(app, path: str, number: int, repeat: int) -> float:
    """Time matching `path` against the app's URL map."""
    adapter = app.url_map.bind("localhost")
    return best_us(lambda: adapter.match(path, method="GET"), number, repeat)


def count_in_valgrind(url: str, requests: int, only: str | None) -> int:
    """Seed the state on `url`, then count each budgeted route (run by bench/counts.py)."""
    from service import create_app

    log_file = open(os.path.join(SCRATCH, "stderr.log"), "w")  # noqa: SIM115
    real_stderr, sys.stderr = sys.stderr, log_file
    try:
        service = create_app({"STATE_URL": url})
        hello = create_hello_app()
        routes = counts.counted_routes(WORKFLOW, only)
        listed = any(route.path.startswith("/workflows?") for route in routes.values())
        for n in range(counts.LIST_STORED - 1 if listed else 0):  # and the POST's: 1,000
            body = dict(WORKFLOW, workflow_id=f"bench-list-{n:04d}")
            status = wsgi_caller(service, "POST", "/workflows", body)()
            assert status in (201, 409), f"POST /workflows answered {status}"
        callers, number = {}, {}
        for name, route in routes.items():
            app = hello if name == counts.HELLO else service
            callers[name] = wsgi_caller(app, route.method, route.path, route.body)
            # A write costs several reads (lock, fsync): a quarter as many are enough.
            number[name] = requests if route.method == "GET" else max(1, requests // 4)
        seed = wsgi_caller(service, *REQUESTS["POST /workflow/state"])
        assert seed() == 200, "the POST that seeds the state failed"
        # The file backend re-reads a file written in the last RACY_SECONDS (its mtime may not
        # tell a later write apart): count the steady state of reads, not that moment.
        time.sleep(RACY_SECONDS + 0.1)
        counts.count_routes(callers, number)
    finally:
        sys.stderr = real_stderr
        log_file.close()
    return 0


def main() -> int:
    """Print the tax figures as Markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=2000, help="calls per repeat")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-gevent", action="store_true", help="skip gevent's patching")
    parser.add_argument("--no-multiproc", action="store_true", help="metrics in memory")
    parser.add_argument(
        "--spin",
        metavar="REQUEST",
        choices=[*REQUESTS, "hello"],
        help="only send this request over and over for --seconds (for `py-spy record`)",
    )
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument(
        "--budgets",
        action="store_true",
        help="count instructions per request of every budgeted route under callgrind, on "
        "--backends; exit 1 when a budget is missed",
    )
    parser.add_argument("--backends", default="file,redis")
    parser.add_argument("--requests", type=int, default=100, help="counted requests per route")
    parser.add_argument(
        "--routes",
        help="count only these routes (comma-separated names of bench/counts.py; the hello "
        "always): a quick A/B while changing one path",
    )
    parser.add_argument("--count", metavar="URL", help=argparse.SUPPRESS)  # one backend, counted
    args = parser.parse_args()
    number, repeat = args.number, args.repeat
    if args.budgets:
        routes = counts.counted_routes(WORKFLOW, args.routes)
        results = counts.measure(args.backends.split(","), args.requests, args.routes)
        lines, ok = counts.render(results, routes)
        print("\n".join(lines))
        print(f"\nbudgets {'hold' if ok else 'MISSED'}")
        return 0 if ok else 1
    if args.count:
        return count_in_valgrind(args.count, args.requests, args.routes)

    from service import create_app

    # Where gunicorn's workers write: a file, flushed per line (logging's StreamHandler).
    log_file = open(os.path.join(SCRATCH, "stderr.log"), "w")  # noqa: SIM115
    real_stderr, sys.stderr = sys.stderr, log_file  # stdout stays the report
    try:
        config = {"STATE_URL": f"file://{SCRATCH}/state.json"}
        service = create_app(config)
        second = create_app(config)  # the ablation takes hooks out of this one
        hello = create_hello_app()
        post = wsgi_caller(service, *REQUESTS["POST /workflow/state"])
        assert post() == 200, "the POST that seeds the state failed"
        if args.spin:
            spin = (
                wsgi_caller(hello, "GET", "/healthz", None)
                if args.spin == "hello"
                else wsgi_caller(service, *REQUESTS[args.spin])
            )
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                spin()
            return 0

        print(
            f"gevent patched: {not args.no_gevent}; Prometheus multiprocess: "
            f"{not args.no_multiproc}; best of {repeat} x {number} calls\n"
        )
        rows = ["| request | µs per request |", "|---|---:|"]
        hello_us = best_us(wsgi_caller(hello, "GET", "/healthz", None), number, repeat)
        rows.append(f"| bare Flask hello GET /healthz | {hello_us:.1f} |")
        for name, (method, path, body) in REQUESTS.items():
            calls = number if method == "GET" else max(1, number // 10)
            us = best_us(wsgi_caller(service, method, path, body), calls, repeat)
            rows.append(f"| service {name} | {us:.1f} |")
        print("\n".join(rows) + "\n")

        for name, (method, path, body) in REQUESTS.items():
            # A write is a thousand times a hook (fsync): its hooks alone, a tenth as often.
            calls = number if method == "GET" else max(1, number // 10)
            rows = [f"**{name}**: each hook alone", "", "| hook | kind | µs |", "|---|---|---:|"]
            for kind, hook, us in isolated_hooks(service, method, path, body, calls, repeat):
                rows.append(f"| {hook} | {kind} | {us:.2f} |")
            print("\n".join(rows) + "\n")
        for name in ("GET /healthz", "GET /workflow/state"):
            method, path, body = REQUESTS[name]
            rows = [
                f"**{name}**: whole request, one hook taken out",
                "",
                "| taken out | µs saved |",
                "|---|---:|",
            ]
            for hook, saved in ablation(
                service,
                second,
                hello,
                lambda app, m=method, p=path, b=body: wsgi_caller(app, m, p, b),
                number,
                repeat,
                path,
            ):
                rows.append(f"| {hook} | {saved:.1f} |")
            print("\n".join(rows) + "\n")

        rows = ["| piece | µs |", "|---|---:|"]
        for app, label in ((hello, "bare Flask"), (service, "service")):
            us = url_matching(app, "/healthz", number * 5, repeat)
            rows.append(
                f"| URL match /healthz, {label} ({len(list(app.url_map.iter_rules()))} "
                f"rules) | {us:.2f} |"
            )
        for label, us in prometheus_writes(service, number * 5, repeat).items():
            rows.append(f"| Prometheus {label} | {us:.2f} |")
        if not args.no_gevent:
            for idle in (0, 16, 200):
                us = gevent_yield(number * 5, repeat, idle)
                rows.append(f"| gevent.sleep(0), {idle} parked greenlets | {us:.2f} |")
        print("\n".join(rows))
    finally:
        sys.stderr = real_stderr
        log_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
