"""Gunicorn settings for the Workflow State Service (`gunicorn -c deploy/gunicorn.conf.py ...`).

Worker model: gthread. Every Server-Sent Events stream holds one thread for as long as it is
open, while ordinary requests take a thread for a millisecond or two. With many threads per
worker and a per-worker cap on streams (see service/stream.py), hundreds of open streams leave
threads free for GET and POST. README's "Server concurrency" section explains the choice.
"""

import glob
import os
import secrets
import shutil
import sys
import tempfile

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
worker_class = "gthread"
threads = 256
keepalive = 5
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


def on_starting(server):
    """Refuse to start, in one line, when the config is wrong; make the metrics directory."""
    sys.path.insert(0, os.getcwd())
    from service.config import check_environment

    problem = check_environment()
    if problem:
        print(f"workflow-state: {problem}", file=sys.stderr)
        sys.exit(1)
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


def post_fork(server, worker):
    """Tell the app how many threads this worker has, so streams never take them all."""
    os.environ["WORKFLOW_WORKER_THREADS"] = str(worker.cfg.threads)


def post_worker_init(worker):
    """End open streams at once when this worker is told to stop, instead of after the
    graceful timeout: EventSource clients reconnect to a live worker within a second."""
    import signal

    from service.stream import close_all_hubs

    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        close_all_hubs()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
