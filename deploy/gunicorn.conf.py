"""Gunicorn settings for the Workflow State Service (`gunicorn -c deploy/gunicorn.conf.py ...`).

Worker model: gthread. Every Server-Sent Events stream holds one thread for as long as it is
open, while ordinary requests take a thread for a millisecond or two. With many threads per
worker and a per-worker cap on streams (see service/stream.py), hundreds of open streams leave
threads free for GET and POST. README's "Server concurrency" section explains the choice.
"""

import os
import sys

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


def on_starting(server):
    """Refuse to start, with one line naming the variable, when the configuration is wrong."""
    sys.path.insert(0, os.getcwd())
    from service.config import check_environment

    problem = check_environment()
    if problem:
        print(f"workflow-state: {problem}", file=sys.stderr)
        sys.exit(1)


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
