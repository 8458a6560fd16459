"""The run metrics, where runs execute in the web processes.

On the file backend (and `fakeredis://`) a web process runs the steps, so its own Prometheus
objects count them; under gunicorn prometheus_client's multiprocess mode sums every worker's
files at scrape time, as for every other metric. On Redis the workers count on the queue's
Redis instead and the web reads the totals there (`queue.QueueStatsCollector`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from ..storage import StorageUnavailable
from .engine import RunObserver
from .queue import STEP_BUCKETS


class PrometheusRunObserver(RunObserver):
    """Count runs in a Prometheus registry (an app's)."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.runs = Counter(
            "workflow_runs_total",
            "Run attempts that ended, by outcome",
            ("outcome",),
            registry=registry,
        )
        self.resumes = Counter(
            "workflow_run_resumes_total",
            "Runs taken over after their runner's lease lapsed",
            registry=registry,
        )
        self.retries = Counter(
            "workflow_step_retries_total",
            "Failed step calls made again after a wait",
            registry=registry,
        )
        self.step_seconds = Histogram(
            "workflow_step_seconds",
            "Time a step of a server run took",
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        # livesum: the runs waiting in the live processes; a dead one's leave with it.
        self.queued = Gauge(
            "workflow_runs_queued",
            "Runs waiting for a run thread",
            multiprocess_mode="livesum",
            registry=registry,
        )

    def leased(self, owner: str, workflow_id: str, deadline: datetime) -> None:
        """Nothing to count."""

    def ended(self, owner: str, workflow_id: str, outcome: str) -> None:
        """Count an attempt that ended."""
        self.runs.labels(outcome).inc()

    def step_done(self, seconds: float) -> None:
        """Observe a step's duration."""
        self.step_seconds.observe(seconds)

    def resumed(self, owner: str, workflow_id: str) -> None:
        """Count a takeover."""
        self.resumes.inc()

    def retried(self) -> None:
        """Count a failed step call that will be made again."""
        self.retries.inc()

    def waiting(self, count: int) -> None:
        """Show how many runs wait for a run thread in this process."""
        self.queued.set(count)


class BlockedCollector:
    """Expose `workflow_blocked`: the workflows waiting for a person, read from storage at
    scrape time (at most every CACHE_SECONDS: a scrape must not scan every owner each time)."""

    CACHE_SECONDS = 1.0

    def __init__(self, store: Any) -> None:
        self.store = store
        self._counted: tuple[float, int] | None = None

    def collect(self) -> Iterator[Any]:
        """Yield the gauge (none while storage does not answer)."""
        from prometheus_client.core import GaugeMetricFamily

        now = time.monotonic()
        if self._counted is None or now - self._counted[0] > self.CACHE_SECONDS:
            try:
                self._counted = (now, self.store.count_blocked())
            except StorageUnavailable:
                return
        yield GaugeMetricFamily(
            "workflow_blocked", "Workflows waiting for a person's input", value=self._counted[1]
        )
