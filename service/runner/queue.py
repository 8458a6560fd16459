"""Runs on Redis: the RQ queue of run jobs, the index of leases, and the runs' counters.

All three live on one Redis: the state's, or WORKFLOW_QUEUE_URL's (a Redis Cluster cannot host
RQ, whose scripts touch keys in many slots). Keys, by WORKFLOW_STATE_PREFIX `P`
(service/storage/keys.py):

    rq:queue:P:runs, rq:job:<id>, ...   RQ's own keys for the queue `P:runs`
    P:runs                              sorted set: `<owner>/<id>` scored by lease deadline (ms)
    P:runs:stats                        hash: the counters behind the run metrics
    P:runs:marker                       string: there while this Redis keeps its data
    P:runs:owners                       set: owners with runs holding or waiting for a turn
    P:runs:admitted:<owner>             hash: the owner's runs holding a turn, id → fence
    P:runs:pending:<owner>              list: the owner's runs waiting for a turn, oldest first

The lease index is only an index: the lease monitor reads each due member's state, which is
the truth, and fixes or drops the member. A job is `service.runner.jobs.run(owner, id,
incarnation, attempt)` with the id `run-<hash of owner and id>-<incarnation>-<attempt>`, so
enqueueing one attempt twice (two monitors racing) leaves one job, and a workflow deleted and
created again under the same id gets jobs of its own at once.

Turns (WORKFLOW_RUNS_PER_OWNER = N > 0): a run is enqueued only while fewer than N runs of its
owner hold a turn; otherwise it waits in the owner's pending list, in the order it was started.
An attempt that ends on a worker, however it ends, hands its turn back and the owner's next
pending run is enqueued. Both moves are one Lua script each, so processes racing never admit
more than N. The RQ queue then never holds more than N runs of one owner, so another owner's
run never waits behind one owner's backlog. The states stay the truth: a lease monitor drops
the turns of runs that ended without handing theirs back (their worker was killed) and the
pending entries of runs that ended while waiting (cancelled, deleted).
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
# Queued jobs a scrape looks at for the runs queued per owner.
QUEUED_SCAN = 10000
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


# A turn's entries: `<incarnation> <attempt>` in the admitted hash, `<id> <incarnation>
# <attempt>` in the pending list (ids have no spaces).
_FILL = """
local function fill(admitted, pending, limit)
  local out = {}
  while redis.call('HLEN', admitted) < limit do
    local entry = redis.call('LPOP', pending)
    if not entry then break end
    local space = string.find(entry, ' ', 1, true)
    if space then
      redis.call('HSET', admitted, string.sub(entry, 1, space - 1), string.sub(entry, space + 1))
      table.insert(out, entry)
    end
  end
  if redis.call('HLEN', admitted) == 0 and redis.call('LLEN', pending) == 0 then
    redis.call('SREM', KEYS[3], ARGV[4])
  end
  return out
end
"""
# KEYS: admitted, pending, owners; ARGV: limit, id, fence, owner. A run holding a turn keeps it
# under its new fence (a takeover, a hand-back); any other waits at the end of the list, and the
# runs that now have a turn are returned, to be enqueued.
ADMIT = (
    _FILL
    + """
local limit = tonumber(ARGV[1])
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  return {ARGV[2] .. ' ' .. ARGV[3]}
end
redis.call('RPUSH', KEYS[2], ARGV[2] .. ' ' .. ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
return fill(KEYS[1], KEYS[2], limit)
"""
)
# KEYS, ARGV as ADMIT's (ARGV[5] "1": also drop the run's pending entry). The run's turn ends
# if it is still that fence's; the runs that now have a turn are returned.
RELEASE = (
    _FILL
    + """
if redis.call('HGET', KEYS[1], ARGV[2]) == ARGV[3] then
  redis.call('HDEL', KEYS[1], ARGV[2])
end
if ARGV[5] == '1' then
  redis.call('LREM', KEYS[2], 0, ARGV[2] .. ' ' .. ARGV[3])
end
return fill(KEYS[1], KEYS[2], tonumber(ARGV[1]))
"""
)


def fence_text(fence: Fence) -> str:
    """Return a fence as a turn's entries hold it."""
    return f"{fence.incarnation} {fence.attempt}"


def parse_turn(entry: bytes | str) -> tuple[str, Fence] | None:
    """Return (id, fence) of a pending entry `<id> <incarnation> <attempt>`, or None."""
    text = entry.decode("utf-8", "replace") if isinstance(entry, bytes) else entry
    parts = text.split(" ")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return parts[0], Fence(int(parts[1]), int(parts[2]))


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

    def __init__(
        self, connection: redis.Redis, keys: Keys, where: str = "", *, per_owner: int = 0
    ) -> None:
        from rq import Queue

        self.connection = connection
        self.keys = keys
        self.where = where or _describe_client(connection)
        self.queue = Queue(keys.run_queue(), connection=connection)
        # WORKFLOW_RUNS_PER_OWNER: 0 enqueues every run at once, as without turns.
        self.per_owner = per_owner
        self._admit = connection.register_script(ADMIT)
        self._release = connection.register_script(RELEASE)

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
        """Have a worker run this attempt, at once or when its owner's turn comes."""
        if not self.per_owner:
            self.enqueue(owner, workflow_id, fence)
            return
        with self._talking():
            admitted = self._admit(
                keys=self._turn_keys(owner),
                args=[self.per_owner, workflow_id, fence_text(fence), owner],
            )
        self._enqueue_turns(owner, admitted)

    def release(self, owner: str, workflow_id: str, fence: Fence, *, pending: bool = False) -> None:
        """End the turn of this attempt (its run ended on a worker); the next run's turn begins.

        `pending`: also drop the attempt's place in the pending list (a run that ended while
        it waited). Nothing when the turn is already another attempt's (a takeover).
        """
        if not self.per_owner:
            return
        with self._talking():
            admitted = self._release(
                keys=self._turn_keys(owner),
                args=[
                    self.per_owner,
                    workflow_id,
                    fence_text(fence),
                    owner,
                    "1" if pending else "0",
                ],
            )
        self._enqueue_turns(owner, admitted)

    def _turn_keys(self, owner: str) -> list[str]:
        return [
            self.keys.run_admitted(owner),
            self.keys.run_pending(owner),
            self.keys.run_turn_owners(),
        ]

    def _enqueue_turns(self, owner: str, entries: list[bytes]) -> None:
        """Enqueue the runs whose turn began; a failed enqueue is a lost job the monitor finds."""
        for entry in entries:
            turn = parse_turn(entry)
            if turn is not None:
                self.enqueue(owner, *turn)

    def turns(self) -> list[tuple[str, str, Fence, bool]]:
        """Return every turn entry: (owner, id, fence, whether it waits for its turn)."""
        found = []
        with self._talking():
            owners = sorted(_text(o) for o in self.connection.smembers(self.keys.run_turn_owners()))
            for owner in owners:
                held = self.connection.hgetall(self.keys.run_admitted(owner))
                for workflow_id, fence in held.items():
                    turn = parse_turn(f"{_text(workflow_id)} {_text(fence)}")
                    if turn is not None:
                        found.append((owner, *turn, False))
                for entry in self.connection.lrange(self.keys.run_pending(owner), 0, -1):
                    turn = parse_turn(entry)
                    if turn is not None:
                        found.append((owner, *turn, True))
        return found

    def end_turns(self) -> None:
        """Forget every turn and enqueue the runs that waited for one (the limit was removed)."""
        for owner, workflow_id, fence, pending in self.turns():
            with self._talking():
                if pending:
                    self.connection.lrem(
                        self.keys.run_pending(owner), 0, f"{workflow_id} {fence_text(fence)}"
                    )
                else:
                    self.connection.hdel(self.keys.run_admitted(owner), workflow_id)
            if pending:
                self.enqueue(owner, workflow_id, fence)
        with self._talking():
            self.connection.delete(self.keys.run_turn_owners())

    def take_check(self, kind: str, seconds: float) -> bool:
        """Tell whether this process checks the turns of `kind` now (one process per `seconds`)."""
        with self._talking():
            return bool(
                self.connection.set(
                    self.keys.run_turns_checked(kind), "1", nx=True, px=int(seconds * 1000)
                )
            )

    def pending_by_owner(self) -> dict[str, int]:
        """Return, per owner with any, the runs waiting for their owner's turn."""
        with self._talking():
            owners = [_text(o) for o in self.connection.smembers(self.keys.run_turn_owners())]
            pipe = self.connection.pipeline(transaction=False)
            for owner in owners:
                pipe.llen(self.keys.run_pending(owner))
            counts = pipe.execute()
        return {owner: int(n) for owner, n in zip(owners, counts, strict=True) if n}

    def queued_by_owner(self) -> dict[str, int]:
        """Return, per owner with any, the runs waiting for a worker or for their owner's turn."""
        found = self.pending_by_owner()
        with self._talking():
            jobs = self.connection.lrange(self.queue.key, 0, QUEUED_SCAN - 1)
            pipe = self.connection.pipeline(transaction=False)
            for job in jobs:
                pipe.hget(self.queue.job_class.key_for(_text(job)), "description")
            descriptions = pipe.execute()
        for description in descriptions:
            owner = _owner_of_description(description)
            if owner is not None:
                found[owner] = found.get(owner, 0) + 1
        return found

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
            if (
                self.per_owner
                and self.connection.lpos(
                    self.keys.run_pending(owner), f"{workflow_id} {fence_text(fence)}"
                )
                is not None
            ):
                return True
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


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _owner_of_description(description: bytes | str | None) -> str | None:
    """Return the owner a job's description (`run <owner>/<id> attempt <n>`) names."""
    if description is None:
        return None
    words = _text(description).split(" ")
    if len(words) < 2 or words[0] != "run":
        return None
    pair = split_member(words[1])
    return None if pair is None else pair[0]


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
            by_owner = queue.queued_by_owner()
            # Runs waiting for their owner's turn wait for a runner too.
            queued = queue.count() + sum(queue.pending_by_owner().values())
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
        yield GaugeMetricFamily("workflow_runs_queued", "Runs waiting for a worker", value=queued)
        owners = GaugeMetricFamily(
            "workflow_owner_runs_queued",
            "Runs waiting for a worker or for their owner's turn, per owner",
            labels=("owner",),
        )
        for owner, count in sorted(by_owner.items()):
            owners.add_metric((owner,), count)
        yield owners
