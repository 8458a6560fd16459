"""Prometheus metrics: GET /metrics, request counts and latency, and storage measurements.

Each app has its own metric objects in a registry of its own, so two apps in one process count
apart. Under gunicorn, `PROMETHEUS_MULTIPROC_DIR` is set (deploy/gunicorn.conf.py does it before
any worker starts), every worker writes its values to files there, and a scrape sums them, so a
count is right whichever worker answers; that mode is per process by nature (the files are named
by pid), which is fine for a worker that serves one app.

prometheus_client picks its mode when it is first imported, so it is imported lazily here,
after the server had its chance to set the variable.

Every request writes three values (its count, its latency's sum and one latency bucket). Through
prometheus_client's API, in multiprocess mode, each write takes a lock and asks the kernel for the
pid (to notice a fork), 3.3 µs a request; `RequestMeter` writes the same values into the same
memory-mapped files directly, about 1 µs. The writes still land at once in the files a scrape
reads, so a count is never late and a killed worker's counts stay; a fork (which none of the
service's processes does after the app is made) sends the writes back through the API.
"""

from __future__ import annotations

import os
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request

from . import hooks
from .storage import LockTimeout, Observer, StateStore, StorageUnavailable
from .store import store_of
from .stream import hub_of

EXTENSION = "workflow_state_metrics"
# Label values stay few: the URL rule (never the raw path), a known method, the status code.
UNMATCHED_ROUTE = "unmatched"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Requests take a millisecond or two; the buckets resolve that and still show a 2 s outage.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# A lock is held for well under a millisecond; a writer gives up after WORKFLOW_STATE_LOCK_WAIT.
LOCK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

bp = Blueprint("metrics", __name__)


def _add_through_api(value: Any, amount: float) -> None:
    value.inc(amount)


def _add_to_file(value: Any, amount: float) -> None:
    # What prometheus_client's MmapedValue.inc does, without its lock and its pid check: a
    # worker's requests run in greenlets of one thread, and nothing between the two lines yields.
    value._value += amount
    value._file.write_value(value._key, value._value, 0.0)


class RequestMeter:
    """The request counter and latency histogram values of one (route, method, status)."""

    __slots__ = ("bounds", "buckets", "count", "sum")

    def __init__(self, counter: Any, histogram: Any) -> None:
        # prometheus_client's values (pinned in requirements.txt): a Counter child's `_value`, a
        # Histogram child's `_sum`, `_buckets` and `_upper_bounds` (the last one +Inf).
        self.count = counter._value
        self.sum = histogram._sum
        self.buckets = histogram._buckets
        self.bounds = histogram._upper_bounds

    def observe(self, seconds: float | None, add: Callable[[Any, float], None]) -> None:
        """Count one request and, when it was timed, add its time to the histogram."""
        add(self.count, 1.0)
        if seconds is not None:
            add(self.sum, seconds)
            # The first bucket whose upper bound is >= seconds, as Histogram.observe picks it.
            add(self.buckets[bisect_left(self.bounds, seconds)], 1.0)


class Metrics:
    """One app's metric objects, in a registry of the app's own."""

    def __init__(self, multiprocess_dir: str | None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess_dir = multiprocess_dir
        if multiprocess_dir:
            # Normally gunicorn.conf.py made it; a bare `flask run` with the variable set must
            # not crash on a missing directory.
            os.makedirs(multiprocess_dir, mode=0o700, exist_ok=True)
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "workflow_state_requests_total",
            "HTTP requests answered, by URL rule, method and status",
            ("route", "method", "status"),
            registry=registry,
        )
        self.request_seconds = Histogram(
            "workflow_state_request_seconds",
            "Time to answer an HTTP request (a stream: until its headers), by URL rule and method",
            ("route", "method"),
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.writes = Counter(
            "workflow_state_writes_total",
            "Accepted state writes and deletes (exact repeats, which change nothing, excluded)",
            registry=registry,
        )
        self.lock_wait = Histogram(
            "workflow_state_lock_wait_seconds",
            "Time a writer waited for the write lock",
            buckets=LOCK_BUCKETS,
            registry=registry,
        )
        self.lock_timeouts = Counter(
            "workflow_state_lock_timeouts_total",
            "Writes refused (503) because the write lock stayed held past the lock wait",
            registry=registry,
        )
        # livesum: the sum over live workers; a dead worker's streams leave with it.
        self.open_streams = Gauge(
            "workflow_state_open_streams",
            "Server-Sent Events streams open now",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.backend_errors = Counter(
            "workflow_state_backend_errors_total",
            "Storage operations that failed because the backend did not answer",
            registry=registry,
        )
        # Collectors read at scrape time (the run counters kept on the queue's Redis).
        self.collectors: list[Any] = []
        # (route, method, status) -> (counter child, histogram child): one dict lookup per request
        # instead of prometheus_client's label validation and locking.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._meters: dict[tuple[str, str, int], RequestMeter] = {}
        # How a meter adds to a value: straight into this process's file in multiprocess mode.
        self.add: Callable[[Any, float], None] = (
            _add_to_file if multiprocess_dir else _add_through_api
        )
        if multiprocess_dir and hasattr(os, "register_at_fork"):
            # A forked child must not write into its parent's file: the API notices the new pid.
            ref = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: _after_fork(ref))
        # Zero-valued from the start, so every family shows in the first scrape of every worker.
        self.children("/metrics", "GET", 200)

    def children(self, route: str, method: str, status: int) -> tuple[Any, Any]:
        """Return the counter and histogram children for one label set, creating them once."""
        key = (route, method, status)
        pair = self._children.get(key)
        if pair is None:
            pair = (
                self.requests.labels(route, method, str(status)),
                self.request_seconds.labels(route, method),
            )
            self._children[key] = pair
        return pair

    def meter(self, route: str, method: str, status: int) -> RequestMeter:
        """Return the request meter for one label set, creating it once."""
        key = (route, method, status)
        meter = self._meters.get(key)
        if meter is None:
            meter = self._meters[key] = RequestMeter(*self.children(route, method, status))
        return meter

    def record(self, req: Any, ctx: dict[str, Any], response: Response) -> None:
        """Count and time the request, and count a storage failure it met (an after-step)."""
        rule = req.url_rule
        route = rule.rule if rule is not None else UNMATCHED_ROUTE
        method = req.method
        if method not in KNOWN_METHODS:
            method = "other"
        key = (route, method, response.status_code)
        meter = self._meters.get(key) or self.meter(*key)
        started = ctx.get("request_started")
        meter.observe(None if started is None else time.perf_counter() - started, self.add)
        # Each request that storage failed counts once; a lock timeout is contention, not an outage.
        failure = ctx.get("storage_error")
        if failure is not None and not isinstance(failure, LockTimeout):
            self.backend_errors.inc()

    def add_collector(self, collector: Any) -> None:
        """Add a collector whose metrics are read at scrape time, in either mode."""
        self.collectors.append(collector)
        if not self.multiprocess_dir:
            self.registry.register(collector)

    def exposition_registry(self) -> Any:
        """Return the registry a scrape reads: this app's, or every worker's files."""
        if not self.multiprocess_dir:
            return self.registry
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        # A fresh registry per scrape: it reads the files of every worker, live or dead.
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)
        for collector in self.collectors:
            registry.register(collector)
        return registry


def _after_fork(ref: weakref.ReferenceType[Metrics]) -> None:
    metrics = ref()
    if metrics is not None:
        metrics.add = _add_through_api


class PrometheusObserver(Observer):
    """Turn the store's measurements into metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def lock_waited(self, seconds: float) -> None:
        """Record how long a writer waited for the lock."""
        self.metrics.lock_wait.observe(seconds)

    def lock_timed_out(self) -> None:
        """Count a writer that gave up waiting for the lock."""
        self.metrics.lock_timeouts.inc()

    def wrote(self) -> None:
        """Count an accepted write or delete."""
        self.metrics.writes.inc()


class OwnerBytesCollector:
    """Expose each owner's stored bytes (what WORKFLOW_STATE_MAX_OWNER_BYTES limits), read at
    scrape time: one count per owner, each a read of its index (on Redis, one script)."""

    def __init__(self, store: Callable[[], StateStore]) -> None:
        self._store = store

    @staticmethod
    def _family() -> Any:
        from prometheus_client.core import GaugeMetricFamily

        return GaugeMetricFamily(
            "workflow_owner_bytes",
            "Bytes the owner's unexpired workflows take stored, by owner",
            labels=("owner",),
        )

    def describe(self) -> list[Any]:
        """Name the family without reading storage (registering calls this, not `collect`)."""
        return [self._family()]

    def collect(self) -> Iterator[Any]:
        """Yield the gauge of bytes per owner (nothing when storage does not answer)."""
        gauge = self._family()
        store = self._store()
        try:
            for owner in store.owners():
                gauge.add_metric((owner,), store.owner_bytes(owner))
        except StorageUnavailable:
            return
        yield gauge


def metrics_of(app: Flask) -> Metrics:
    """Return `app`'s metrics."""
    return app.extensions[EXTENSION]


@bp.get("/metrics")
def metrics_page() -> Response:
    """Answer every metric, summed over all workers, in the format the scraper asks for."""
    from prometheus_client.exposition import choose_encoder

    registry = metrics_of(current_app).exposition_registry()
    # Prometheus text format (0.0.4) unless the Accept header asks for OpenMetrics.
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encode(registry), headers={"Content-Type": content_type})


def init_app(app: Flask) -> None:
    """Serve /metrics, time and count every request, and plug metrics into the store and hub.

    Call it before any other module adds its request steps: its after-step then runs last, so a
    request that CORS or auth answer is counted with its final status (the request's clock is
    started by service/hooks.py before every step).
    """
    metrics = Metrics(app.config["METRICS_DIR"])
    app.extensions[EXTENSION] = metrics
    app.register_blueprint(bp)
    hooks.steps_of(app).add(after=metrics.record)
    store_of(app).observer = PrometheusObserver(metrics)
    metrics.add_collector(OwnerBytesCollector(lambda: store_of(app)))
    hub_of(app).on_change.append(metrics.open_streams.set)
