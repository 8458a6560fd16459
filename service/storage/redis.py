"""Redis backend: every owner's workflows, shared by every worker and instance.

Keys (service/storage/keys.py) all carry the owner's `{<owner>}` hash tag, so each Lua script
(service/storage/redis_scripts.py) touches one slot, also on a Cluster. A write takes the
workflow's lock and reads the workflow (and, for a legacy write, which one is current) in the
same round trip, applies the pure model in Python, then commits with one script that is fenced
on the lock token and on the state being the one read (so a writer whose lock expired
mid-write is refused, never lost), stamps the owner's next version, sets the TTL, updates the
index and the current pointer, publishes the event, records history and releases the lock.
Two round trips in the locked section, whatever the write. A read is one round trip, also of
the current workflow (a script looks up which it is).
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from .. import model
from .base import (
    CORRUPT_KEEP_SECONDS,
    FENCE_ATTEMPTS,
    HISTORY_MAX,
    HISTORY_SECONDS,
    MIGRATION_OWNER,
    RESYNC,
    Event,
    Found,
    LockStuck,
    LockTimeout,
    Snapshot,
    StateStore,
    StorageUnavailable,
    log,
    over_quota,
)
from .batching import Keyed, PendingWrite, ReadCoalescer
from .keys import Keys
from .listing import Position, matches
from .listing import score as score_of
from .redis_scripts import SCRIPTS
from .redis_urls import TARGETS, RedisTarget, close_client, redis_target

# A batch holds a lock for well under a millisecond. Only one writer per workflow and process
# polls at a time (the combiner queues the rest).
LOCK_POLL_SECONDS = 0.001
# The owners index scores each owner by an upper bound of its workflows' last_update (ms): a
# write past the bound raises it to its own last_update plus this much, so a busy owner costs
# one more command every 2 s per process, and a page of every owner's list skips owners whose
# bound is older than the page's last entry.
OWNER_BOUND_SLACK_MS = 2_000
# Owners whose bound this process remembers; past this many it forgets them all (one more
# ZADD each, no harm).
KNOWN_OWNERS_MAX = 4096
# Owners read per call while walking the owners index.
OWNERS_PAGE = 100
# Idle connections of its own a process keeps for reads and write batches (see `_lease`).
IDLE_CONNECTIONS_MAX = 16
# Stored documents whose served Snapshot a process keeps (then it starts afresh).
SNAPSHOTS_KEPT = 512
# How often the lock releaser tries again while Redis does not answer.
RELEASE_RETRY_SECONDS = 0.05
# WAIT must answer (how many replicas confirmed) well before the socket's I/O timeout cuts it
# off. Redis checks WAIT's deadline on its 10 Hz cron, so it answers up to this late; WAIT gets
# half of what is left of the I/O timeout (200 ms of the default 500), but never less than a
# quarter of it.
WAIT_LATE_MS = 100


class NotDurable(StorageUnavailable):
    """A write ran on the master, but fewer replicas than required confirmed it in time."""


_retrying = threading.local()


class _FlatRetry(Retry):
    """redis-py's Retry, except that a retry never nests inside another one.

    redis-py retries a command and, inside that, retries a fresh connection's connect and
    handshake with the same policy: against a hung Redis (CLIENT PAUSE, a stalled host) "one
    retry" then costs four I/O timeouts, past the 2 s promise. Here only the outermost call
    retries, so a call costs at most two.
    """

    def call_with_retry(
        self,
        do: Callable[[], Any],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> Any:
        """Run `do`, retrying as configured unless this call is nested in another retry."""
        if getattr(_retrying, "active", False):
            try:
                return do()
            except self._supported_errors as error:
                if is_retryable is None or is_retryable(error):
                    # The failure handler disconnects; it must still run.
                    fail(error, 1) if with_failure_count else fail(error)
                raise
        _retrying.active = True
        try:
            return super().call_with_retry(do, fail, is_retryable, with_failure_count)
        finally:
            _retrying.active = False


@contextmanager
def _sent_once() -> Iterator[None]:
    """Send the commands of this block once, without redis-py's retry.

    For scripts that must not run twice: when Redis ran one but its answer was lost (a timeout,
    a dropped connection), the retry would run it again.
    """
    outer = getattr(_retrying, "active", False)
    _retrying.active = True
    try:
        yield
    finally:
        _retrying.active = outer


# A lock a writer may have left held: (owner, workflow id or None for the current one, token).
Held = tuple[str, str | None, str]


class _LockReleaser:
    """Release, in the background, locks that a lost answer may have left held.

    When an acquire (or the commit after it) fails on I/O, Redis may still have run it; the
    lock would then be held by a token nobody uses, and refuse every writer of that workflow, in
    every process, until it expired. This releases such tokens as soon as Redis answers again.
    """

    def __init__(self, release: Callable[[list[Held]], None], lock_timeout: float) -> None:
        self._release = release
        self._lock_timeout = lock_timeout
        # what -> when (monotonic) its lock has expired anyway
        self._held: dict[Held, float] = {}
        self._guard = threading.Lock()
        self._running = False
        self.stop = threading.Event()

    def add(self, owner: str, workflow_id: str | None, token: str) -> None:
        """Release `token`'s lock of that workflow, if it holds it, once Redis answers."""
        with self._guard:
            self._held[(owner, workflow_id, token)] = time.monotonic() + self._lock_timeout
            if self._running:
                return
            self._running = True
        threading.Thread(target=self._run, name="redis-lock-releaser", daemon=True).start()

    def _run(self) -> None:
        while not self.stop.is_set():
            with self._guard:
                now = time.monotonic()
                self._held = {held: end for held, end in self._held.items() if end > now}
                pending = list(self._held)
                if not pending:
                    self._running = False
                    return
            try:
                self._release(pending)
            except (RedisError, StorageUnavailable):
                self.stop.wait(RELEASE_RETRY_SECONDS)
                continue
            with self._guard:
                for held in pending:
                    self._held.pop(held, None)


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _held(raw: Any) -> list[Any]:
    """Return a fence's (exists, value) arguments for a state as read."""
    return [0, ""] if raw is None else [1, raw]


class RedisStore(StateStore):
    """Keep every owner's workflows in Redis; safe across processes and hosts."""

    schemes = tuple(TARGETS)
    incarnation_at_commit = True

    def __init__(
        self,
        url: str,
        *,
        client_factory: Callable[[], redis.Redis] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(url, **options)
        self.keys = Keys(self.prefix)
        scheme = url.partition("://")[0].lower()
        # Where Redis is (one server, Sentinel's master, a Cluster); parsed now, so a bad URL
        # stops the server at start. A subclass with a scheme of its own (fakeredis://)
        # connects only through its factory.
        self.target: RedisTarget | None = (
            redis_target(url) if scheme in TARGETS or client_factory is None else None
        )
        self.min_replicas = self.options.min_replicas
        io_ms = int(self.io_timeout * 1000)
        self._wait_ms = max((io_ms - WAIT_LATE_MS) // 2, io_ms // 4, 1)
        self._factory = client_factory
        self._client_guard = threading.Lock()
        self._pid: int | None = None
        self._migrated_pid: int | None = None
        self._redis: redis.Redis | None = None
        # owner -> the bound this process last gave it in the owners index.
        self._owner_bounds: dict[str, int] = {}
        self.owner_bound_slack_ms = OWNER_BOUND_SLACK_MS
        # When (monotonic) and why the last locked write found Redis unavailable.
        self._last_failure: tuple[float, str] | None = None
        # Stored document -> (its workflow id, the Snapshot served for it).
        self._snapshots: dict[bytes, tuple[str, Snapshot]] = {}
        self._reads: Keyed[tuple[str, str | None], ReadCoalescer[Snapshot]] = Keyed(
            lambda where: ReadCoalescer(lambda: self._fetch(*where))
        )

    # --- connection ------------------------------------------------------------------------

    def _connect(self, retries: int) -> redis.Redis:
        if self._factory is not None:
            return self._factory()
        # One bounded retry absorbs a dropped idle connection; more would break the 2 s promise.
        retry = (
            _FlatRetry(ExponentialBackoff(cap=0.1, base=0.02), retries)
            if retries
            else Retry(NoBackoff(), 0)
        )
        assert self.target is not None, "a store without a Redis URL connects through its factory"
        try:
            return self.target.connect(io_timeout=self.io_timeout, retry=retry)
        except RedisError as error:  # a Cluster asks for its slot map at once
            raise self._unavailable(error) from None

    def client(self) -> redis.Redis:
        """Return this process's client, creating it after a fork (gunicorn workers)."""
        pid = os.getpid()
        if self._pid != pid:
            with self._client_guard:
                if self._pid != pid:
                    self._redis = self._connect(retries=1)
                    self._idle: list[redis.Redis] = []
                    self._scripts = {
                        name: self._redis.register_script(script)
                        for name, script in SCRIPTS.items()
                    }
                    self._releaser = _LockReleaser(self._release_all, self.lock_timeout)
                    self._token_prefix = f"{socket.gethostname()}:{pid}:{secrets.token_hex(4)}:"
                    self._tokens = itertools.count()
                    self._owner_bounds = {}
                    self._pid = pid
        assert self._redis is not None
        return self._redis

    def new_client(self) -> redis.Redis:
        """Return a new client of this Redis with a connection pool of its own (the run queue)."""
        return self._connect(retries=1)

    def _started(self) -> redis.Redis:
        """Return this process's client, once the single-workflow layout is migrated."""
        client = self.client()
        if self._migrated_pid != os.getpid():
            self._migrate(client)
            self._migrated_pid = os.getpid()
        return client

    @contextmanager
    def _lease(self) -> Iterator[redis.Redis]:
        """Lend a client with a connection of its own for one read or one write batch.

        No pool checkout and no readiness poll of the connection per command, as a dedicated
        connection has; yet reads and batches of different workflows run side by side, each
        within its own I/O timeout, rather than queueing behind one connection.
        """
        shared = self._started()
        if isinstance(shared, RedisCluster):
            yield shared  # thread-safe, a pool per node
            return
        try:
            client = self._idle.pop()
        except IndexError:
            try:
                client = (
                    self._factory()
                    if self._factory is not None
                    # This connects at once, so an outage surfaces here as a RedisError.
                    else redis.Redis(
                        connection_pool=shared.connection_pool, single_connection_client=True
                    )
                )
            except RedisError as error:
                raise self._unavailable(error) from None
        try:
            yield client
        finally:
            if len(self._idle) < IDLE_CONNECTIONS_MAX:
                self._idle.append(client)
            else:
                with suppress(RedisError):
                    client.close()

    def _lock_token(self) -> str:
        # Unique per lock hold across hosts and processes; cheaper than redis-py's uuid1.
        return f"{self._token_prefix}{next(self._tokens)}"

    def _unavailable(self, error: Exception) -> StorageUnavailable:
        return StorageUnavailable(
            f"Redis at {self._describe()} is unavailable ({type(error).__name__}: {error})"[:300]
        )

    def _run(
        self,
        name: str,
        keys: list[str],
        args: list[Any],
        client: redis.Redis,
        *,
        once: bool = False,
    ) -> Any:
        """Run one of the scripts (`once`: never sent again); Redis errors: StorageUnavailable."""
        try:
            if once:
                with _sent_once():
                    return self._scripts[name](keys=keys, args=args, client=client)
            return self._scripts[name](keys=keys, args=args, client=client)
        except RedisError as error:
            raise self._unavailable(error) from None

    # --- reading ---------------------------------------------------------------------------

    def _get(self, owner: str, workflow_id: str | None, *, with_id: bool) -> Snapshot:
        if with_id:
            return self._fetch(owner, workflow_id, with_id=True)
        with self._reads.use((owner, workflow_id)) as reads:
            return reads.read()

    def _fetch(self, owner: str, workflow_id: str | None, *, with_id: bool = False) -> Snapshot:
        with self._lease() as reader:
            found, raw, wrong, seq = self._run(
                "read",
                [self.keys.current(owner)],
                [self.keys.base(owner), workflow_id or "", 1 if with_id else 0],
                reader,
            )
        if found is None:
            return Snapshot(None, "null", _counter(seq)) if with_id else Snapshot(None, "null")
        workflow = _text(found)
        # The same stored document of the same workflow is served as the same Snapshot
        # (immutable), made once: no decode lookup, UTF-8 decoding or Snapshot per read. Only
        # a document that decoded cleanly is kept; a sealed state is opened afresh each time.
        made = self._snapshots.get(raw) if not wrong and isinstance(raw, bytes) else None
        if made is not None and made[0] == workflow:
            return made[1]
        stored = self._stored(owner, workflow, raw, wrong)
        if with_id and stored is None:
            return Snapshot(None, "null", _counter(seq))
        snapshot = self._served(stored, raw)
        if stored is not None and snapshot.state is stored and isinstance(raw, bytes):
            if len(self._snapshots) >= SNAPSHOTS_KEPT:
                self._snapshots = {}
            self._snapshots[raw] = (workflow, snapshot)
        return snapshot

    def _stored(self, owner: str, workflow_id: str, raw: Any, wrong: Any) -> dict[str, Any] | None:
        """Decode a state as read; a value of another type goes aside too."""
        if wrong:
            self._quarantine(owner, workflow_id, None, "a Redis value that is not a string")
            return None
        return self._decode(owner, workflow_id, raw)

    def _list(
        self, owner: str, status: str, after: Position | None, count: int
    ) -> list[tuple[Position, dict[str, Any]]]:
        client = self._started()
        found: list[tuple[Position, dict[str, Any]]] = []
        position = after
        while len(found) < count:
            want = count - len(found)
            flat = self._run(
                "list",
                [self.keys.index(owner)],
                [
                    self.keys.base(owner),
                    status,
                    "" if position is None else position[0],
                    "" if position is None else position[1],
                    want,
                ],
                client,
            )
            moved, *flat = flat
            self._log_set_aside(moved)
            for i in range(0, len(flat), 4):
                member, score, raw, wrong = flat[i : i + 4]
                position = (int(float(score)), _text(member))
                state = self._stored(owner, position[1], raw, wrong)
                if state is not None and matches(state, status):
                    found.append((position, state))
            if len(flat) < 4 * want:
                break  # the index has no more; otherwise some were not states: read on
        return found

    def _owners(self) -> list[str]:
        try:
            members = self._started().zrange(self.keys.owners(), 0, -1)
        except RedisError as error:
            raise self._unavailable(error) from None
        return [_text(member) for member in members]

    def _owners_by_latest(self) -> Iterator[tuple[str, int]]:
        client = self._started()
        start = 0
        while True:
            try:
                page = client.zrevrange(
                    self.keys.owners(), start, start + OWNERS_PAGE - 1, withscores=True
                )
            except RedisError as error:
                raise self._unavailable(error) from None
            for member, bound in page:
                yield _text(member), int(bound)
            if len(page) < OWNERS_PAGE:
                return
            start += OWNERS_PAGE

    def _owner_bytes(self, owner: str) -> int:
        keys = [self.keys.index(owner), self.keys.bytes_of(owner)]
        return int(self._run("owner_bytes", keys, [self.keys.base(owner)], self._started()))

    def _history(self, owner: str, limit: int) -> list[str]:
        try:
            raws = self._started().lrange(self.keys.history(owner), 0, limit - 1)
        except redis.ResponseError:
            return []
        except RedisError as error:
            raise self._unavailable(error) from None
        return [raw.decode("utf-8", "replace") for raw in raws]

    # --- writing ---------------------------------------------------------------------------

    def _run_batch(self, owner: str, workflow_id: str | None, batch: list[PendingWrite]) -> None:
        """Commit a batch of writes to one workflow, or fail them all with the reason."""
        failure = self._last_failure
        if failure is not None:
            # The batch ahead found Redis unavailable while these waited: trying again would
            # add a whole round of I/O timeouts to their wait, past the 2 s promise.
            for write in batch:
                if write.arrived <= failure[0]:
                    write.fail(StorageUnavailable(failure[1]))
            batch = [write for write in batch if write.error is None]
            if not batch:
                return
        deadline = min(write.arrived for write in batch) + self.lock_wait
        try:
            self._commit_batch(owner, workflow_id, batch, deadline)
        except LockTimeout:
            raise
        except StorageUnavailable as error:
            self._last_failure = (time.monotonic(), error.message)
            raise

    def _acquire(
        self,
        writer: redis.Redis,
        owner: str,
        workflow_id: str | None,
        token: str,
        deadline: float,
        with_other: bool,
    ) -> list[Any]:
        """Take the workflow's lock (waiting until `deadline`) and read it; see ACQUIRE."""
        started = time.monotonic()
        args = [
            token,
            int(self.lock_timeout * 1000),
            self.keys.base(owner),
            workflow_id or "",
            1 if with_other else 0,
        ]
        while True:
            try:
                result = self._run("acquire", [self.keys.current(owner)], args, writer)
            except StorageUnavailable:
                # Redis may have run the acquire and lost only its answer.
                self._releaser.add(owner, workflow_id, token)
                raise
            if result[0]:
                self.observer.lock_waited(time.monotonic() - started)
                return result
            if time.monotonic() >= deadline:
                self.observer.lock_timed_out()
                name = self.keys.lock(owner, workflow_id) if workflow_id else "lock"
                raise LockTimeout(
                    f"The workflow lock {name} stayed held by another writer "
                    f"for {self.lock_wait:g}s"
                )
            time.sleep(LOCK_POLL_SECONDS)

    def _commit_batch(
        self, owner: str, workflow_id: str | None, batch: list[PendingWrite], deadline: float
    ) -> None:
        # Only a POST /workflow/state checks If-Match against the current workflow.
        with_other = any(write.change.if_match is not None for write in batch)
        # The bytes of the owner's other workflows, once a commit refused the batch for the
        # owner's quota: the next attempt then refuses just the writes that do not fit.
        others: list[int | None] = [None]
        with self._lease() as writer:
            for _ in range(FENCE_ATTEMPTS):
                token = self._lock_token()
                result = self._acquire(writer, owner, workflow_id, token, deadline, with_other)
                try:
                    committed = self._locked_batch(writer, owner, batch, token, result, others)
                except BaseException:
                    self._release_quietly(writer, owner, _text(result[1]), token)
                    raise
                if committed:
                    return
        raise StorageUnavailable(
            f"Redis at {self._describe()}: {FENCE_ATTEMPTS} writes in a row lost the version fence"
        )

    def _locked_batch(
        self,
        writer: redis.Redis,
        owner: str,
        batch: list[PendingWrite],
        token: str,
        result: list[Any],
        others: list[int | None],
    ) -> bool:
        """Apply the batch to what the lock read and commit it; False if the fence refused it
        (or the owner's quota did, with `others` still unknown: then `others` is filled in)."""
        _, locked, raw, wrong, current, other_raw, other_wrong, seq = result[:8]
        workflow_id, current = _text(locked), _text(current)
        if len(result) > 8:
            token = _text(result[8])  # the lock's value: the token, stamped with the master
        if workflow_id is None:
            # No current workflow: nothing was locked, and every write to it is refused.
            applied = self._apply_batch(Found(None, None, False, seq=_number(seq)), batch)
            assert not applied.chain, "a write to no workflow produced a state"
            self._settle(applied.answers, [], Snapshot(None, "null"))
            return True
        stored = self._stored(owner, workflow_id, raw, wrong)
        other = None
        if other_raw is not None or other_wrong:
            other = self._stored(owner, current, other_raw, other_wrong)
        found = Found(
            workflow_id,
            stored,
            current == workflow_id,
            other,
            _number(seq),
            len(raw) if stored is not None else 0,
            others[0],
        )
        applied = self._apply_batch(found, batch)
        unchanged = self._served(stored, raw)
        if not applied.chain:
            self._release_quietly(writer, owner, workflow_id, token)
            self._settle(applied.answers, [], unchanged)
            return True
        # A missing counter: the owner's first write, or Redis lost its data (and the index too).
        self._note_owner(owner, score_of(applied.chain[-1]), lost=found.seq is None)
        encoded = applied.encoded
        fence_other = applied.checked_other and current is not None
        args: list[Any] = [
            self.keys.base(owner),
            workflow_id,
            token,
            *_held(raw if stored is not None else None),
            current if fence_other else "",
            *_held(other_raw if fence_other and other is not None else None),
            self._ttl_for(applied.chain[-1]) * 1000,
            score_of(applied.chain[-1]),
            HISTORY_MAX,
            HISTORY_SECONDS * 1000,
            self.max_workflows,
            found.floor(),
            self.max_owner_bytes if applied.limited else 0,
        ]
        for (head, _), done, makes, born in zip(
            encoded, applied.finished, applied.makes_current, applied.born, strict=True
        ):
            args += [head, 1 if done else 0, 1 if makes else 0, born]
        keys = [
            self.keys.current(owner),
            self.keys.seq(owner),
            self.keys.index(owner),
            self.keys.history(owner),
            self.keys.events(owner),
            self.keys.bytes_of(owner),
        ]
        try:
            result, replicas = self._replicated(writer, "commit", keys, args)
        except StorageUnavailable:
            # Whether it ran is unknown: answer 503 (never redo it), and free the lock once
            # Redis answers, if the commit did not.
            self._releaser.add(owner, workflow_id, token)
            raise
        outcome, *moved = result
        self._log_set_aside(*moved[:3])
        first = int(outcome)
        if first == -1:
            return False
        if first == -3 and others[0] is None:
            others[0] = int(moved[3])
            return False
        if first in (-2, -3):
            refused: model.StateError = model.TooManyWorkflows(
                f"Owner {owner!r} has {self.max_workflows} workflows, the most allowed; "
                "delete some or let finished ones expire"
            )
            if first == -3:
                refused = over_quota(int(moved[3]) + applied.sizes[-1], self.max_owner_bytes)
            answers = [(w, a if isinstance(a, Exception) else refused) for w, a in applied.answers]
            self._settle(answers, [], unchanged)
            return True
        if not self._confirmed(replicas):
            # Each write that changed the state is refused; refusals and no-ops stand.
            answers = [
                (write, self._not_durable(replicas, f"the write of version {first + answer}"))
                if isinstance(answer, int) and answer >= 0
                else (write, answer)
                for write, answer in applied.answers
            ]
            self._settle(answers, [], unchanged)
            return True
        snapshots = []
        for offset, (new, (head, sealed), born) in enumerate(
            zip(applied.chain, encoded, applied.born, strict=True)
        ):
            incarnation = first + born if born >= 0 else None
            snapshots.append(self._committed(owner, new, head, sealed, first + offset, incarnation))
            self.observer.wrote()
        self._settle(applied.answers, snapshots, unchanged)
        return True

    def _replicated(
        self, client: redis.Redis, script: str, keys: list[str], args: list[Any]
    ) -> tuple[Any, int | None]:
        """Run a write script once; with MIN_REPLICAS, WAIT for the replicas in the same round
        trip.

        Return the script's result and how many replicas confirmed it (None: not asked). WAIT
        counts the writes of the connection it is sent on, so it is pipelined right behind the
        script: one connection (on a Cluster, one to the node serving the owner's slot), one
        round trip. Never sent again: a script whose answer was lost must not run twice.
        """
        if not self.min_replicas:
            return self._run(script, keys, args, client, once=True), None
        code = self._scripts[script]
        if isinstance(client, RedisCluster):
            client = client.get_redis_connection(client.get_node_from_key(keys[0]))
        try:
            with _sent_once():
                for _ in range(2):
                    pipe = client.pipeline(transaction=False)
                    pipe.evalsha(code.sha, len(keys), *keys, *args)
                    pipe.execute_command("WAIT", self.min_replicas, self._wait_ms)
                    result, replicas = pipe.execute(raise_on_error=False)
                    if isinstance(result, NoScriptError):
                        # A new master (failover, restart) has not cached the script yet.
                        client.script_load(code.script)
                        continue
                    for answer in (result, replicas):
                        if isinstance(answer, Exception):
                            raise answer
                    return result, int(replicas)
                raise NoScriptError(f"Redis keeps forgetting the {script} script")
        except RedisError as error:
            raise self._unavailable(error) from None

    def _confirmed(self, replicas: int | None) -> bool:
        """Tell whether enough replicas confirmed a write (None: none were asked for)."""
        return replicas is None or replicas >= self.min_replicas

    def _not_durable(self, replicas: int | None, what: str) -> NotDurable:
        """Describe a write that ran on the master but that too few replicas confirmed."""
        return NotDurable(
            f"Redis at {self._describe()}: {what} was applied on the master but may not be "
            f"durable: only {replicas} of the {self.min_replicas} replicas "
            f"WORKFLOW_STATE_MIN_REPLICAS requires confirmed it within {self._wait_ms} ms, and "
            "a failover would lose it; read the state before retrying"
        )

    def _note_owner(self, owner: str, score: int, *, lost: bool) -> None:
        """Keep the owner in the owners index with a bound above `score` (a last_update in ms).

        Another slot than the owner's, so not in the commit script; sent before the commit, so
        no workflow exists whose owner the index lacks. `lost`: the index may have lost the
        owner whatever this process remembers.
        """
        known = self._owner_bounds.get(owner)
        if not lost and known is not None and known >= score:
            return
        bound = score + self.owner_bound_slack_ms
        try:
            self.client().zadd(self.keys.owners(), {owner: bound}, gt=True)
        except RedisError as error:
            raise self._unavailable(error) from None
        if len(self._owner_bounds) >= KNOWN_OWNERS_MAX:
            self._owner_bounds = {}
        self._owner_bounds[owner] = bound

    def _release_quietly(
        self, writer: redis.Redis, owner: str, workflow_id: str | None, token: str
    ) -> None:
        """Release a lock this process holds; if Redis does not answer, release it later."""
        if workflow_id is None:
            return
        try:
            self._release(writer, owner, workflow_id, [token])
        except StorageUnavailable:
            self._releaser.add(owner, workflow_id, token)

    def _release(
        self, client: redis.Redis, owner: str, workflow_id: str | None, tokens: list[str]
    ) -> None:
        args = [self.keys.base(owner), workflow_id or "", *tokens]
        self._run("release", [self.keys.current(owner)], args, client)

    def _release_all(self, held: list[Held]) -> None:
        """Delete the locks that these tokens hold (the lock releaser's work)."""
        client = self.client()
        for owner, workflow_id, token in held:
            self._release(client, owner, workflow_id, [token])

    def _delete(self, owner: str, workflow_id: str | None) -> int:
        keys = [
            self.keys.current(owner),
            self.keys.seq(owner),
            self.keys.index(owner),
            self.keys.events(owner),
            self.keys.bytes_of(owner),
        ]
        # Through the pool, whose checkout finds a connection Redis closed (a restart): sent
        # once, never retried, this must not be the call that discovers it.
        args = [self.keys.base(owner), workflow_id or ""]
        (outcome, moved), replicas = self._replicated(self._started(), "delete", keys, args)
        self._log_set_aside(moved)
        version = int(outcome)
        if version < 0:
            raise model.NoWorkflow(f"There is no workflow {workflow_id!r} to delete")
        if not self._confirmed(replicas):
            raise self._not_durable(replicas, f"the delete (version {version})")
        return version

    def _log_set_aside(self, *targets: Any) -> None:
        """Log the keys of another type a script moved aside before it wrote (see set_aside)."""
        for target in targets:
            if target:
                self._log_quarantine(
                    _text(target), "a Redis key of another type than the service's"
                )

    def _quarantine(
        self, owner: str, workflow_id: str, raw: str | bytes | None, reason: str
    ) -> None:
        self._move_aside(
            self.keys.state(owner, workflow_id), self.keys.corrupt(owner, workflow_id), raw, reason
        )

    def _move_aside(self, key: str, target: str, raw: str | bytes | None, reason: str) -> None:
        moved = self._run(
            "quarantine",
            [key],
            [raw if raw is not None else "", CORRUPT_KEEP_SECONDS * 1000, target, int(time.time())],
            self.client(),
        )
        if moved:
            self._log_quarantine(_text(moved), reason)

    # --- migration -------------------------------------------------------------------------

    def _migrate(self, client: redis.Redis) -> None:
        """Move the single-workflow layout of an earlier version into owner `public`, and the
        owners set of an earlier version into the owners index.

        Idempotent and atomic (one script each, retried if the old keys change meanwhile); run
        once per process before its first use, and again on the next use if Redis was down. The
        single-workflow layout is not looked for on a Cluster: no such version ran on one.
        """
        now_ms = int(time.time() * 1000)
        self._run("owners_index", [self.keys.owners()], [now_ms + OWNER_BOUND_SLACK_MS], client)
        if isinstance(client, RedisCluster):
            return
        old_seq_key, old_history_key = f"{self.key}:seq", f"{self.key}:history"
        for _ in range(FENCE_ATTEMPTS):
            try:
                pipe = client.pipeline(transaction=False)
                pipe.type(self.key)
                pipe.get(self.key)
                pipe.pttl(self.key)
                pipe.get(old_seq_key)
                pipe.exists(old_history_key)
                kind, raw, pttl, seq, history = pipe.execute(raise_on_error=False)
            except RedisError as error:
                raise self._unavailable(error) from None
            kind = _text(kind)
            if kind == "none" and seq is None and not history:
                return
            state = None
            if kind not in ("none", "string"):
                raw = None
            if kind != "none":
                try:
                    state = model.parse_stored(raw) if raw is not None else None
                except ValueError as error:
                    reason = str(error)
                else:
                    reason = ""
                if state is None:
                    reason = reason or "not a string"
                    self._move_aside(self.key, f"{self.key}:corrupt:", raw, reason)
                    continue
            ttl_ms = 0
            if state is not None:
                ttl_ms = pttl if isinstance(pttl, int) and pttl > 0 else self._ttl_for(state) * 1000
            moved = self._run(
                "migrate",
                [
                    self.key,
                    old_seq_key,
                    old_history_key,
                    self.keys.current(MIGRATION_OWNER),
                    self.keys.seq(MIGRATION_OWNER),
                    self.keys.index(MIGRATION_OWNER),
                    self.keys.history(MIGRATION_OWNER),
                    self.keys.owners(),
                ],
                [
                    self.keys.base(MIGRATION_OWNER),
                    *_held(raw if state is not None else None),
                    _text(seq) or "",
                    state["workflow_id"] if state else "",
                    ttl_ms,
                    score_of(state) if state else 0,
                    state["version"] if state else 0,
                    HISTORY_MAX,
                    HISTORY_SECONDS * 1000,
                    MIGRATION_OWNER,
                    now_ms + OWNER_BOUND_SLACK_MS,
                ],
                client,
            )
            if moved:
                log.warning(
                    "moved the single-workflow state of %s into owner %r (version %s)",
                    self.key,
                    MIGRATION_OWNER,
                    state["version"] if state else "-",
                )
                return
        raise StorageUnavailable(f"Redis at {self._describe()}: {self.key} kept changing")

    # --- the rest --------------------------------------------------------------------------

    def _put_input(self, owner: str, workflow_id: str, text: str, ttl: int) -> None:
        try:
            self._started().set(self.keys.input(owner, workflow_id), text, ex=ttl)
        except RedisError as error:
            raise self._unavailable(error) from None

    def _get_input(self, owner: str, workflow_id: str) -> str | bytes | None:
        try:
            return self._started().get(self.keys.input(owner, workflow_id))
        except RedisError as error:
            raise self._unavailable(error) from None

    def _delete_input(self, owner: str, workflow_id: str) -> None:
        try:
            self._started().delete(self.keys.input(owner, workflow_id))
        except RedisError as error:
            raise self._unavailable(error) from None

    def _ping(self) -> None:
        try:
            self._started().ping()
        except RedisError as error:
            raise self._unavailable(error) from None

    def _ready(self) -> None:
        # The shared namespace's current workflow: where every seed client writes. (Locks of
        # other workflows are not scanned; a stuck one refuses its writers for at most the lock
        # timeout, from the first writer that finds it.)
        owner = MIGRATION_OWNER
        stuck = self._run(
            "ready",
            [self.keys.current(owner)],
            [self.keys.base(owner), int(self.lock_timeout * 1000)],
            self._started(),
        )
        if stuck:
            left, lock = stuck
            raise LockStuck(
                f"The write lock {_text(lock)} is stuck (found with no expiry, or one past the "
                "lock timeout); writers of that workflow are refused until it expires within "
                f"{max(left, 0) / 1000:g}s"
            )

    def _events(self, stop: threading.Event) -> Iterator[Event]:
        backoff = 0.05
        pattern = self.keys.events_pattern()
        while not stop.is_set():
            # A client of its own with no silent retry: a reconnect must surface as RESYNC.
            try:
                client = self._connect(retries=0)
            except StorageUnavailable as error:  # a Cluster asks for its slots at once
                log.warning("event subscription to %s lost: %s", self._describe(), error.message)
                stop.wait(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            # One pattern for every owner; on a Cluster, classic pub/sub reaches every node.
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.psubscribe(pattern)
                yield RESYNC
                backoff = 0.05
                while not stop.is_set():
                    message = pubsub.get_message(timeout=0.25)
                    if message is not None and message["type"] == "pmessage":
                        owner = self.keys.owner_of_events(_text(message["channel"]))
                        if owner is not None:
                            yield _parse_event(owner, message["data"])
            except RedisError as error:
                log.warning("event subscription to %s lost: %s", self._describe(), error)
                stop.wait(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                _close_quietly(pubsub, client)

    def _close(self) -> None:
        if self._redis is not None:
            self._releaser.stop.set()
            for client in self._idle:
                with suppress(RedisError):
                    client.close()
            with suppress(RedisError):
                close_client(self._redis)
            self._redis = None
            self._pid = None

    def _describe(self) -> str:
        if self.target is None:
            return f"{self.url.partition('://')[0]}://"
        return self.target.describe()


def _number(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _counter(seq: Any) -> str:
    return str(_number(seq) or 0)


_EVENT_PARTS = ('{"id":"', '","workflow_id":"', '","current":')


def _parse_event(owner: str, data: bytes) -> Event:
    """Split a published event message without re-serialising the state."""
    text = data.decode("utf-8", "replace")
    head, middle, tail = _EVENT_PARTS
    if text.startswith(head):
        id_end = text.find(middle, len(head))
        if id_end > 0:
            workflow_end = text.find(tail, id_end + len(middle))
            if workflow_end > 0:
                rest = text[workflow_end + len(tail) :]
                current = rest.startswith("true")
                flag = "true" if current else "false"
                marker = f'{flag},"state":'
                if rest.startswith(marker):
                    return Event(
                        id=text[len(head) : id_end],
                        json=rest[len(marker) : -1],
                        owner=owner,
                        workflow_id=text[id_end + len(middle) : workflow_end],
                        current=current,
                    )
    return Event(id="", json="null", owner=owner)


def _close_quietly(pubsub: Any, client: redis.Redis) -> None:
    with suppress(RedisError):
        pubsub.close()
        close_client(client)
