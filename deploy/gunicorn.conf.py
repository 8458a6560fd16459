"""Gunicorn settings for the Workflow State Service (`gunicorn -c deploy/gunicorn.conf.py ...`).

Worker model: gevent. Every Server-Sent Events stream stays open for as long as a page is, while
ordinary requests last a millisecond or two. With gevent each connection is a greenlet, so a
thousand open streams per worker cost memory, not threads, and never starve GET and POST; and
the requests that wait on Redis yield to the others instead of contending for the GIL (bench/
measured 1.3-1.8x the write throughput of gthread on the same machine). docs/architecture.md
("Server concurrency: why gevent") explains the choice.
"""

# gevent's monkey-patching must come before anything imports ssl, threading or socket (gunicorn
# patches again in each worker; patching twice is harmless, patching late is not).
import gevent
from gevent import monkey

monkey.patch_all()

import glob  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

# Prometheus multiprocess mode (service/metrics.py): every worker writes its values to files in
# this directory and GET /metrics sums them. prometheus_client reads the variable when it is
# first imported, so it is set here, in the master, before anything imports it; workers inherit
# it when they fork. Unless one is given, each server start gets a fresh directory of its own:
# only named here, made by on_starting once the configuration is known to be good.
METRICS_DIR_PREFIX = "workflow-state-metrics-"
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(
        tempfile.gettempdir(), f"{METRICS_DIR_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
    )

bind = f"0.0.0.0:{os.environ['PORT']}" if os.environ.get("PORT") else "127.0.0.1:8000"
# WEB_CONCURRENCY is gunicorn's own variable; set here so the default is 2, not 1.
workers = int(os.environ.get("WEB_CONCURRENCY") or 2)
# gunicorn's gevent worker plus a deadline on request bodies (WORKFLOW_STATE_BODY_TIMEOUT) and
# JSON answers for the requests gunicorn refuses itself (service/http_worker.py).
worker_class = "service.http_worker.Worker"
# Connections per worker: open streams, ordinary requests and clients still sending theirs (a
# stream keeps some in reserve). Enough that 2 workers keep answering with 2,500 stalled
# clients open (docs/operations.md); post_fork raises the open-files limit to match.
worker_connections = 4000
# File descriptors a worker needs besides its connections: the listening socket, Redis, the
# state and lock files, the metrics files, logs.
SPARE_FILES = 256
# gunicorn's default: also how long a worker that is stopping waits on an idle connection.
keepalive = 2
# Streams are long-lived: on restart, give them a moment, then move on.
graceful_timeout = 5
timeout = 30
# The control socket has one default path per user, which several instances on one host
# would fight over; nothing here uses gunicornc.
control_socket_disable = True
accesslog = None
errorlog = "-"
loglevel = "info"
# Gunicorn's own lines in the service's format (JSON lines with WORKFLOW_STATE_LOG_FORMAT=json)
# and through its secret-scrubbing filter.
logger_class = "service.logs.GunicornLogger"


def _refuse_a_wrong_configuration(workers: int) -> None:
    """Exit with one line naming the variable when the configuration is wrong.

    Run while gunicorn reads this file, before it logs anything, so the line is all there is.
    """
    # gunicorn has not applied --chdir yet: find the service next to this file.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from service.store import check_environment

    problem = check_environment(workers=workers)
    if problem:
        print(f"workflow-state: {problem}", file=sys.stderr)
        sys.exit(1)


_refuse_a_wrong_configuration(workers)


def on_starting(server):
    """Make (and empty) the metrics directory before any worker starts."""
    if server.cfg.workers != workers:  # `-w N` on the command line: check again with N
        _refuse_a_wrong_configuration(server.cfg.workers)
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # A previous run's counts would be summed into this one's. A master re-executed for an
    # upgrade (USR2, GUNICORN_PID set) shares the directory with the old master's live workers.
    if "GUNICORN_PID" not in os.environ:
        for path in glob.glob(os.path.join(directory, "*.db")):
            os.remove(path)


def child_exit(server, worker):
    """Drop a dead worker's live gauges; its counters stay, so totals neither vanish nor double."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics directory this server made for itself (not one it was given)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    own = os.path.basename(directory).startswith(METRICS_DIR_PREFIX)
    # After a USR2 upgrade the new master goes on using it.
    if own and os.path.dirname(directory) == tempfile.gettempdir() and not server.reexec_pid:
        shutil.rmtree(directory, ignore_errors=True)


def pre_request(worker, req):
    """Yield to the other connections before each request.

    A gevent greenlet whose keep-alive client has already sent its next request never blocks,
    so without this it can serve request after request while other connections wait: p99 was
    0.5 s under load with a p50 of 0.4 ms. One yield per request keeps p99 within tens of ms.
    """
    gevent.sleep(0)


def post_fork(server, worker):
    """Tell the app how many connections this worker serves at once, so streams never take all."""
    gthread_or_sync = worker.cfg.worker_class_str in ("gthread", "sync")
    if gthread_or_sync:
        capacity = worker.cfg.threads
    else:
        capacity = worker.worker_connections = _fit_open_files_limit(worker)
    os.environ["WORKFLOW_WORKER_CAPACITY"] = str(capacity)


def _fit_open_files_limit(worker) -> int:
    """Raise the open-files limit to what worker_connections needs; return what it allows.

    Each connection is a file descriptor. Many systems start processes with a soft limit of
    1024, under which a worker refuses connections (EMFILE) long before worker_connections; the
    hard limit is what an operator actually allowed.
    """
    wanted = worker.cfg.worker_connections
    needed = wanted + SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return wanted
    soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft >= needed:
        return wanted
    allowed = max(soft - SPARE_FILES, 1)
    worker.log.warning(
        "open-files limit %s allows %s connections per worker, not worker_connections %s:"
        " raise the hard limit (LimitNOFILE= in systemd, ulimit -Hn)",
        soft,
        allowed,
        wanted,
    )
    return allowed


def post_worker_init(worker):
    """End open streams at once when this worker is told to stop, instead of after the
    graceful timeout: EventSource clients reconnect to a live worker within a second. On the
    file backend, hand the runs this worker runs to the other workers at once too."""
    import signal

    from service.runner.local import close_all_local_runners
    from service.stream import close_all_hubs

    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        # Not in the handler itself: it may have interrupted a greenlet holding a hub's lock.
        gevent.spawn(close_all_hubs)
        gevent.spawn(close_all_local_runners)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
