"""Runs on Redis: the RQ queue of run jobs, the index of leases, and the runs' counters.

All three live on one Redis: the state's, or WORKFLOW_QUEUE_URL's (a Redis Cluster cannot host
RQ, whose scripts touch keys in many slots). Keys, by WORKFLOW_STATE_PREFIX `P`
(service/storage/keys.py):

    rq:queue:P:runs, rq:job:<id>, ...   RQ's own keys for the queue `P:runs`
    P:runs                              sorted set: `<owner>/<id>` scored by lease deadline (ms)
    P:runs:stats                        hash: the counters behind the run metrics
    P:runs:marker                       string: there while this Redis keeps its data

The lease index is only an index: the lease monitor reads each due member's state, which is
the truth, and fixes or drops the member. A job is `service.runner.jobs.run(owner, id,
incarnation, attempt)` with the id `run-<hash of owner and id>-<incarnation>-<attempt>`, so
enqueueing one attempt twice (two monitors racing) leaves one job, and a workflow deleted and
created again under the same id gets jobs of its own at once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any

import redis
from redis.exceptions import RedisError

from ..config import ConfigError
from ..runs import Fence
from ..storage import RedisStore, StateStore, StorageUnavailable
from ..storage.keys import Keys
from .engine import BLOCKED_OUTCOME, CANCELLED_OUTCOME, COMPLETED, FAILED_OUTCOME, RunObserver

log = logging.getLogger("service.runner")

JOB_FUNCTION = "service.runner.jobs.run"
# A finished job's record is kept this long (seconds): enough to see it with `rq info`.
RESULT_TTL = 600
FAILURE_TTL = 86400
# Job statuses that mean "a worker will pick it up": the monitor leaves such a run alone.
WAITING = frozenset({"queued", "deferred", "scheduled"})
# Seconds a step took (workflow_step_seconds): a 0 s simulator step up to the 600 s timeout.
STEP_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# The outcomes after which a run needs no index entry any more.
# A blocked run has ended too: a person's resume starts a new one.
ENDED = frozenset({COMPLETED, FAILED_OUTCOME, CANCELLED_OUTCOME, BLOCKED_OUTCOME})
CLUSTER_REFUSED = (
    "WORKFLOW_STATE_URL redis+cluster:// cannot host the run queue (RQ needs one Redis, not a "
    "Cluster): set WORKFLOW_QUEUE_URL to a redis:// URL for the queue"
)


def job_id(owner: str, workflow_id: str, fence: Fence) -> str:
    """Return the RQ job id of one attempt (RQ allows only A-Z a-z 0-9 _ -)."""
    digest = hashlib.sha256(f"{owner}/{workflow_id}".encode()).hexdigest()[:32]
    return f"run-{digest}-{fence.incarnation}-{fence.attempt}"


def member(owner: str, workflow_id: str) -> str:
    """Return a run's member in the lease index (neither an owner nor an id has a '/')."""
    return f"{owner}/{workflow_id}"


def split_member(value: bytes | str) -> tuple[str, str] | None:
    """Return (owner, id) of an index member, or None for one that is not ours."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    owner, slash, workflow_id = text.partition("/")
    return (owner, workflow_id) if slash and owner and workflow_id else None


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def queue_connection(config: Mapping[str, Any], store: StateStore) -> redis.Redis:
    """Return a new client of the queue's Redis: WORKFLOW_QUEUE_URL's, else the state's.

    Raises ConfigError when the state is on a Redis Cluster and no queue URL is set.
    """
    url = config.get("QUEUE_URL")
    if url:
        return redis.Redis.from_url(
            url, socket_timeout=config["IO_TIMEOUT"], socket_connect_timeout=config["IO_TIMEOUT"]
        )
    if config["STATE_URL"].partition(":")[0].lower() == "redis+cluster":
        raise ConfigError(CLUSTER_REFUSED)
    if not isinstance(store, RedisStore):
        raise ConfigError(
            f"WORKFLOW_STATE_URL {store.describe()} is not Redis: runs execute in the web "
            "processes (set WORKFLOW_STATE_URL to a redis:// URL to run them on workers)"
        )
    return store.new_client()


class RunQueue:
    """The RQ queue of run jobs, the lease index and the counters, on the queue's Redis."""

    # A lease monitor takes over a queued run whose job was lost (as the next attempt), rather
    # than enqueue the same attempt again: the lost job's record may still hold its id.
    adopts_orphans = False

    def __init__(self, connection: redis.Redis, keys: Keys, where: str = "") -> None:
        from rq import Queue

        self.connection = connection
        self.keys = keys
        self.where = where or _describe_client(connection)
        self.queue = Queue(keys.run_queue(), connection=connection)

    @contextmanager
    def _talking(self) -> Iterator[None]:
        """Turn Redis errors into StorageUnavailable naming the queue's Redis."""
        try:
            yield
        except RedisError as error:
            raise StorageUnavailable(
                f"Run queue Redis at {self.where} is unavailable ({type(error).__name__}: {error})"[
                    :300
                ]
            ) from None

    # --- jobs ------------------------------------------------------------------------------

    def enqueue(self, owner: str, workflow_id: str, fence: Fence) -> bool:
        """Queue a job for one attempt; False when that attempt already has one."""
        from rq.exceptions import DuplicateJobError

        with self._talking():
            try:
                self.queue.enqueue_call(
                    JOB_FUNCTION,
                    args=(owner, workflow_id, *fence),
                    # RQ's default 180 s would kill a run of long steps: the step timeout and
                    # the lease bound the work instead. No Retry: the lease monitor resumes.
                    timeout=-1,
                    result_ttl=RESULT_TTL,
                    failure_ttl=FAILURE_TTL,
                    job_id=job_id(owner, workflow_id, fence),
                    description=f"run {owner}/{workflow_id} attempt {fence.attempt}",
                    unique=True,
                )
            except DuplicateJobError:
                return False
        return True

    def dispatch(self, owner: str, workflow_id: str, fence: Fence) -> None:
        """Have a worker run this attempt (a lease monitor's dispatch)."""
        self.enqueue(owner, workflow_id, fence)

    def waiting(self, owner: str, workflow_id: str, fence: Fence) -> bool:
        """Tell whether the attempt's job is still waiting for a worker.

        A job RQ calls `queued` is waiting only while it is in the queue: a worker takes a job
        by moving it to the queue's intermediate list, and one killed before it started the job
        leaves it there, still `queued`, for no worker to take.
        """
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        job = job_id(owner, workflow_id, fence)
        with self._talking():
            try:
                status = Job.fetch(job, connection=self.connection).get_status(refresh=False)
            except NoSuchJobError:
                return False
            status = str(getattr(status, "value", status))
            if status == "queued":
                taken = self.connection.lpos(self.queue.intermediate_queue_key, job)
                return taken is None
        return status in WAITING

    def count(self) -> int:
        """Return how many jobs wait in the queue."""
        with self._talking():
            return self.queue.count

    # --- the lease index -------------------------------------------------------------------

    def note(
        self, owner: str, workflow_id: str, deadline: datetime, *, only_new: bool = False
    ) -> bool:
        """Index a run's lease deadline (`only_new`: unless it is indexed already).

        Return whether the run was not indexed before.
        """
        with self._talking():
            added = self.connection.zadd(
                self.keys.runs(), {member(owner, workflow_id): _ms(deadline)}, nx=only_new
            )
        return bool(added)

    def drop(self, owner: str, workflow_id: str) -> None:
        """Take a run out of the lease index."""
        with self._talking():
            self.connection.zrem(self.keys.runs(), member(owner, workflow_id))

    def lost_data(self) -> bool:
        """Tell whether this Redis lost its data (the index with it) since the last look.

        True also the first time any process looks: the index is then built from the states,
        as after a loss.
        """
        with self._talking():
            return bool(self.connection.set(self.keys.run_marker(), "1", nx=True))

    def due(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        """Return up to `limit` indexed runs whose deadline is at or before `now`."""
        with self._talking():
            found = self.connection.zrangebyscore(
                self.keys.runs(), "-inf", _ms(now), start=0, num=limit
            )
        return [pair for pair in map(split_member, found) if pair is not None]

    # --- counters --------------------------------------------------------------------------

    def count_run(self, outcome: str) -> None:
        """Count a run attempt that ended with `outcome`."""
        self._bump({f"runs:{outcome}": 1})

    def count_retry(self) -> None:
        """Count a failed step call that will be made again."""
        self._bump({"retries": 1})

    def count_resume(self) -> None:
        """Count a takeover."""
        self._bump({"resumes": 1})

    def count_step(self, seconds: float) -> None:
        """Add a step's duration to the histogram."""
        bucket = next((str(le) for le in STEP_BUCKETS if seconds <= le), "+Inf")
        self._bump({f"step:{bucket}": 1, "step:count": 1}, {"step:sum": seconds})

    def _bump(self, counts: dict[str, int], sums: dict[str, float] | None = None) -> None:
        # A metric must never stop a run: a failure here is logged and forgotten.
        try:
            pipe = self.connection.pipeline(transaction=False)
            for field, value in counts.items():
                pipe.hincrby(self.keys.run_stats(), field, value)
            for field, amount in (sums or {}).items():
                pipe.hincrbyfloat(self.keys.run_stats(), field, amount)
            pipe.execute()
        except RedisError as error:
            log.warning("could not count a run metric on %s: %s", self.where, error)

    def stats(self) -> dict[str, float]:
        """Return the counters as stored."""
        with self._talking():
            raw = self.connection.hgetall(self.keys.run_stats())
        found = {}
        for field, value in raw.items():
            try:
                found[field.decode()] = float(value)
            except (ValueError, UnicodeDecodeError):
                continue
        return found

    def close(self) -> None:
        """Drop the connection."""
        with suppress(RedisError):
            self.connection.close()


def _describe_client(connection: redis.Redis) -> str:
    kwargs = connection.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


class QueueObserver(RunObserver):
    """What the engine and the monitor hear, kept on the queue's Redis: the lease index
    (kept current with each lease) and the counters every process's /metrics reads."""

    def __init__(self, queue: RunQueue) -> None:
        self.queue = queue

    def leased(self, owner: str, workflow_id: str, deadline: datetime) -> None:
        """Index the new deadline; the index is a hint, so a failure only delays a takeover."""
        try:
            self.queue.note(owner, workflow_id, deadline)
        except StorageUnavailable as error:
            log.warning("could not index the lease of %s/%s: %s", owner, workflow_id, error)

    def ended(self, owner: str, workflow_id: str, outcome: str) -> None:
        """Count the attempt; drop a run that is over from the index."""
        self.queue.count_run(outcome)
        if outcome in ENDED:
            # If this fails, the monitor drops it when it finds the run over.
            with suppress(StorageUnavailable):
                self.queue.drop(owner, workflow_id)

    def step_done(self, seconds: float) -> None:
        """Add the step's duration to the histogram."""
        self.queue.count_step(seconds)

    def resumed(self, owner: str, workflow_id: str) -> None:
        """Count a takeover."""
        self.queue.count_resume()

    def retried(self) -> None:
        """Count a failed step call that will be made again."""
        self.queue.count_retry()


class QueueStatsCollector:
    """Expose the queue's counters and length as the run metrics, read at scrape time.

    The workers count on the queue's Redis, so every web process's /metrics shows the same
    totals, whichever host ran the steps.
    """

    def __init__(self, queue: Callable[[], RunQueue]) -> None:
        self._queue = queue

    def collect(self) -> Iterator[Any]:
        """Yield the run metric families (none when the queue's Redis does not answer)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        try:
            queue = self._queue()
            stats = queue.stats()
            queued = queue.count()
        except StorageUnavailable as error:
            log.warning("run metrics unavailable: %s", error.message)
            return
        runs = CounterMetricFamily(
            "workflow_runs", "Run attempts that ended, by outcome", labels=("outcome",)
        )
        for field, value in sorted(stats.items()):
            if field.startswith("runs:"):
                runs.add_metric((field[len("runs:") :],), value)
        yield runs
        yield CounterMetricFamily(
            "workflow_step_retries",
            "Failed step calls made again after a wait",
            value=stats.get("retries", 0.0),
        )
        yield CounterMetricFamily(
            "workflow_run_resumes",
            "Runs taken over after their runner's lease lapsed",
            value=stats.get("resumes", 0.0),
        )
        buckets, total = [], 0.0
        for le in (*map(str, STEP_BUCKETS), "+Inf"):
            total += stats.get(f"step:{le}", 0.0)
            buckets.append((le, total))
        yield HistogramMetricFamily(
            "workflow_step_seconds",
            "Time a step of a server run took",
            buckets=buckets,
            sum_value=stats.get("step:sum", 0.0),
        )
        yield GaugeMetricFamily(
            "workflow_runs_queued", "Run jobs waiting for a worker", value=queued
        )
