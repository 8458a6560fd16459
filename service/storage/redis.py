"""Redis backend: one string key shared by every worker and instance.

A write takes redis-py's Lock and reads the state and the version counter in the same round
trip, applies the pure model in Python, then commits with one Lua script that is fenced on the
counter (so a writer whose lock expired mid-write is refused, never lost), stamps the version,
sets the TTL, publishes the event, records history and releases the lock. Two round trips in
the locked section, whatever the write. With WORKFLOW_STATE_MIN_REPLICAS, a WAIT rides in the
commit's round trip, and a write the replicas did not confirm in time is answered as unavailable.

Where Redis is (one server, or the master Sentinel names) is `redis_urls`'s business.
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
from redis.exceptions import LockNotOwnedError, NoScriptError, RedisError, ResponseError
from redis.lock import Lock
from redis.retry import Retry

from .base import (
    CORRUPT_KEEP_SECONDS,
    FENCE_ATTEMPTS,
    HISTORY_MAX,
    HISTORY_SECONDS,
    RESYNC,
    Change,
    Event,
    LockStuck,
    LockTimeout,
    Snapshot,
    StateStore,
    StorageUnavailable,
    log,
)
from .batching import PendingWrite, ReadCoalescer, WriteCombiner
from .redis_urls import TARGETS, RedisTarget, close_client, redis_target

# Related keys are the state key plus one of these suffixes (README's key table lists them).
LOCK_SUFFIX = "lock"
SEQ_SUFFIX = "seq"
EVENTS_SUFFIX = "events"
HISTORY_SUFFIX = "history"
CORRUPT_SUFFIX = "corrupt"

# redis-py's Lock sleeps 100 ms between tries by default, but a batch holds the lock for well
# under a millisecond. Only one writer per process polls at a time (the combiner queues the rest).
LOCK_POLL_SECONDS = 0.001
# How often the lock releaser tries again while Redis does not answer.
RELEASE_RETRY_SECONDS = 0.05
# WAIT must answer (how many replicas confirmed) well before the socket's I/O timeout cuts it
# off. Redis checks WAIT's deadline on its 10 Hz cron, so it answers up to this late; WAIT gets
# half of what is left of the I/O timeout (200 ms of the default 500), but never less than a
# quarter of it.
WAIT_LATE_MS = 100


class NotDurable(StorageUnavailable):
    """A write ran on the master, but fewer replicas than required confirmed it in time."""


def redis_key(base: str, *parts: str) -> str:
    """Build a key name from the state key and suffixes: workflow:state:lock, ..."""
    return ":".join((base, *parts))


# Lua that more than one script shares, prepended to them.
#
# counter: the version counter's value, seeded when it is missing (a Redis that lost its data, or
# a fresh one) from the clock in microseconds, and never below the version of the stored state
# (its raw value is passed in), so a version is never reused. Numbers are formatted with
# string.format('%.0f'): Lua 5.1 writes a number above 1e14 as "1.7e+15" with `..`.
#
# stuck: a lock that would outlive every writer (no expiry, a longer one than the lock timeout,
# or not a string) is renamed 'stuck:<value>' and given the lock timeout, so it blocks writers for
# at most that long and every instance can tell, until it is gone, that it was stuck.
SHARED_LUA = """
local function counter(seq_key, raw_state)
  local seq = redis.call('GET', seq_key)
  if seq then return seq end
  local now = redis.call('TIME')
  local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
  if type(raw_state) == 'string' then
    local ok, doc = pcall(cjson.decode, raw_state)
    if ok and type(doc) == 'table' and type(doc.version) == 'number' and doc.version > floor then
      floor = doc.version
    end
  end
  seq = string.format('%.0f', floor)
  redis.call('SET', seq_key, seq)
  return seq
end
local function stuck(key, timeout_ms)
  local left = redis.call('PTTL', key)
  if left == -2 then return false end
  local value = redis.pcall('GET', key)
  if type(value) ~= 'string' then value = '' end
  if left == -1 or left > tonumber(timeout_ms) or value == '' then
    redis.call('SET', key, 'stuck:' .. string.sub(value, 1, 100), 'PX', timeout_ms)
    return true
  end
  return string.sub(value, 1, 6) == 'stuck:'
end
"""

# Commit a batch of states, in order, each with the next version, its own event and history.
# KEYS: state, seq, lock, events, history
# ARGV: lock token, expected seq, expected exists (0/1), ttl ms of the last state,
#       history max, history ttl ms, then (document head, finished 0/1) for each state.
# Sent once, never retried: a commit that ran but whose answer was lost would, sent again, find
# the fence moved by itself and be redone on top of its own result.
COMMIT_SCRIPT = """
local function release()
  if redis.pcall('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
end
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[2]
   or redis.call('EXISTS', KEYS[1]) ~= tonumber(ARGV[3]) then
  release()
  return -1
end
local first, doc, finished = nil, nil, false
for i = 7, #ARGV, 2 do
  local v = redis.call('INCR', KEYS[2])
  local id = string.format('%.0f', v)
  first = first or v
  doc = ARGV[i] .. id .. '}'
  redis.call('PUBLISH', KEYS[4], '{"id":"' .. id .. '","state":' .. doc .. '}')
  if ARGV[i + 1] == '1' then
    redis.call('LPUSH', KEYS[5], doc)
    finished = true
  end
end
redis.call('SET', KEYS[1], doc, 'PX', ARGV[4])
if finished then
  redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[5]) - 1)
  redis.call('PEXPIRE', KEYS[5], ARGV[6])
end
release()
return first
"""

# KEYS: state, seq, events. Sent once, never retried (as the commit): a delete sent again could
# delete a state written after the first one ran.
DELETE_SCRIPT = (
    SHARED_LUA
    + """
counter(KEYS[2], redis.pcall('GET', KEYS[1]))
local v = redis.call('INCR', KEYS[2])
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', KEYS[3], '{"id":"' .. string.format('%.0f', v) .. '","state":null}')
return v
"""
)

# Release the lock if one of these tokens holds it (tokens whose holder lost Redis's answer).
# A token may come bare (an acquire whose answer was lost) or as stored, stamped '<token>@<id>'.
# KEYS: lock; ARGV: tokens.
RELEASE_SCRIPT = """
local holder = redis.pcall('GET', KEYS[1])
if type(holder) ~= 'string' then return 0 end
local token = string.match(holder, '^(.*)@%x*$') or holder
for i = 1, #ARGV do
  if holder == ARGV[i] or token == ARGV[i] then return redis.call('DEL', KEYS[1]) end
end
return 0
"""

# Readiness: KEYS: lock; ARGV: lock timeout ms. Returns the stuck lock's ms to live, or false.
READY_SCRIPT = (
    SHARED_LUA
    + """
if stuck(KEYS[1], ARGV[1]) then return redis.call('PTTL', KEYS[1]) end
return false
"""
)

# Rename the value aside only if it is still the one found corrupt (a writer may have fixed it),
# to <prefix><unix time>, or <prefix><unix time>-<n> when that name is taken: an earlier copy is
# never overwritten.
# KEYS: state; ARGV: the corrupt value ('' for a value of the wrong type), keep ms, key prefix,
# unix time. Returns the key it was moved to, or false.
QUARANTINE_SCRIPT = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return false end
if kind == 'string' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local target = ARGV[3] .. ARGV[4]
local n = 0
while redis.call('EXISTS', target) == 1 do
  n = n + 1
  target = ARGV[3] .. ARGV[4] .. '-' .. n
end
redis.call('RENAME', KEYS[1], target)
redis.call('PEXPIRE', target, ARGV[2])
return target
"""


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


class _LockReleaser:
    """Release, in the background, locks that a lost answer may have left held.

    When an acquire (or the commit after it) fails on I/O, Redis may still have run it; the
    lock would then be held by a token nobody uses, and refuse every writer, in every process,
    until it expired. This releases such tokens as soon as Redis answers again.
    """

    def __init__(self, release: Callable[[list[bytes]], None], lock_timeout: float) -> None:
        self._release = release
        self._lock_timeout = lock_timeout
        # token -> when (monotonic) its lock has expired anyway
        self._tokens: dict[bytes, float] = {}
        self._guard = threading.Lock()
        self._running = False
        self.stop = threading.Event()

    def add(self, token: bytes) -> None:
        """Release `token`'s lock, if it holds one, once Redis answers."""
        with self._guard:
            self._tokens[token] = time.monotonic() + self._lock_timeout
            if self._running:
                return
            self._running = True
        threading.Thread(target=self._run, name="redis-lock-releaser", daemon=True).start()

    def _run(self) -> None:
        while not self.stop.is_set():
            with self._guard:
                now = time.monotonic()
                self._tokens = {t: end for t, end in self._tokens.items() if end > now}
                tokens = list(self._tokens)
                if not tokens:
                    self._running = False
                    return
            try:
                self._release(tokens)
            except (RedisError, StorageUnavailable):
                self.stop.wait(RELEASE_RETRY_SECONDS)
                continue
            with self._guard:
                for token in tokens:
                    self._tokens.pop(token, None)


# Take the lock if it is free and, in the same round trip, read what it guards.
# The lock's value is the token stamped with this master's replication id, '<token>@<id>'.
# A lock already held by this token is this acquire's own: a call that ran but whose answer was
# lost, sent again by redis-py's retry or by the Lock's polling. A lock stamped with another id
# was taken on a master that has since been replaced (a failover promotes a replica with a new
# id): its holder's hold ended with that master, so it is taken over instead of waited out
# (waiting would block every writer for up to the lock timeout after a failover; the version
# fence, not the lock, keeps a late commit of the old holder from losing an update). Any other
# lock, stamped with this id or not stamped at all, is waited for.
# KEYS: lock, state, seq; ARGV: token, lock timeout ms
# Returns {0} when the lock is held, else {1, state or nil, seq, 1 if the state key holds a value
# of another type, the lock value stored}.
ACQUIRE_SCRIPT = (
    SHARED_LUA
    + """
local info = redis.pcall('INFO', 'replication')
local master = type(info) == 'string' and string.match(info, 'master_replid:(%x+)') or ''
local value = ARGV[1] .. '@' .. master
if not redis.call('SET', KEYS[1], value, 'NX', 'PX', ARGV[2]) then
  local held = redis.pcall('GET', KEYS[1])
  if type(held) ~= 'string' then held = '' end
  local stamp = string.match(held, '@(%x+)$')
  local own = (string.match(held, '^(.*)@%x*$') or held) == ARGV[1]
  if not own and (not stamp or master == '' or stamp == master) then
    stuck(KEYS[1], ARGV[2])
    return {0}
  end
  redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
end
local raw = redis.pcall('GET', KEYS[2])
local wrong = 0
if type(raw) == 'table' and raw.err then
  raw = false
  wrong = 1
end
return {1, raw or false, counter(KEYS[3], raw), wrong, value}
"""
)
WRONG_TYPE = ResponseError("a Redis value that is not a string")


class _ReadingLock(Lock):
    """redis-py's Lock whose acquire also reads the state and the counter, in one round trip."""

    def __init__(
        self,
        client: redis.Redis,
        name: str,
        read_keys: tuple[str, str],
        acquire_script: Any,
        **kw: Any,
    ) -> None:
        super().__init__(client, name, **kw)
        self._read_keys = read_keys
        self._acquire_script = acquire_script
        self.read: tuple[Any, Any] = (None, None)
        self._stored: bytes | None = None

    def acquire(self, *args: Any, **kw: Any) -> bool:
        """Acquire as redis-py does, then own the value the script stored (token@master id)."""
        acquired = super().acquire(*args, **kw)
        if acquired:
            self.local.token = self._stored
        return acquired

    def do_acquire(self, token: str) -> bool:
        """Set the lock if free and read the state and counter, in one script call."""
        result = self._acquire_script(
            keys=[self.name, *self._read_keys],
            args=[token, int(self.timeout * 1000)],
            client=self.redis,
        )
        if not result[0]:
            return False
        raw, seq, wrong_type, self._stored = result[1], result[2], result[3], result[4]
        self.read = (WRONG_TYPE if wrong_type else raw, seq)
        return True


class RedisStore(StateStore):
    """Keep the state in one Redis key; safe across processes and hosts."""

    schemes = tuple(TARGETS)

    def __init__(
        self,
        url: str,
        *,
        client_factory: Callable[[], redis.Redis] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(url, **options)
        scheme = url.partition("://")[0].lower()
        # A subclass with a scheme of its own (fakeredis://) connects only through its factory.
        self.target: RedisTarget | None = (
            redis_target(url) if scheme in TARGETS or client_factory is None else None
        )
        self._factory = client_factory
        self.min_replicas = self.options.min_replicas
        io_ms = int(self.io_timeout * 1000)
        self._wait_ms = max((io_ms - WAIT_LATE_MS) // 2, io_ms // 4, 1)
        self._client_guard = threading.Lock()
        self._pid: int | None = None
        self._redis: redis.Redis | None = None
        self.lock_key = redis_key(self.key, LOCK_SUFFIX)
        self.seq_key = redis_key(self.key, SEQ_SUFFIX)
        self.events_key = redis_key(self.key, EVENTS_SUFFIX)
        self.history_key = redis_key(self.key, HISTORY_SUFFIX)
        # When (monotonic) and why the last locked write found Redis unavailable.
        self._last_failure: tuple[float, str] | None = None
        self._reads: ReadCoalescer[Snapshot] = ReadCoalescer(self._fetch)
        self._writes = WriteCombiner(self._run_batch)

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
        return self.target.connect(io_timeout=self.io_timeout, retry=retry)

    def client(self) -> redis.Redis:
        """Return this process's client, creating it after a fork (gunicorn workers)."""
        pid = os.getpid()
        if self._pid != pid:
            with self._client_guard:
                if self._pid != pid:
                    self._redis = self._connect(retries=1)
                    self._dedicated_clients: dict[str, redis.Redis] = {}
                    self._scripts = {
                        name: self._redis.register_script(script)
                        for name, script in (
                            ("acquire", ACQUIRE_SCRIPT),
                            ("commit", COMMIT_SCRIPT),
                            ("delete", DELETE_SCRIPT),
                            ("quarantine", QUARANTINE_SCRIPT),
                            ("release", RELEASE_SCRIPT),
                            ("ready", READY_SCRIPT),
                        )
                    }
                    self._releaser = _LockReleaser(self._release_tokens, self.lock_timeout)
                    self._token_prefix = f"{socket.gethostname()}:{pid}:{secrets.token_hex(4)}:"
                    self._tokens = itertools.count()
                    self._pid = pid
        assert self._redis is not None
        return self._redis

    def _dedicated(self, role: str) -> redis.Redis:
        """Return this process's client for `role` ("reads" or "writes"), connecting on first use.

        Reads and writes each run one at a time per process (the coalescer and the combiner see
        to it), so each gets a connection of its own: no pool checkout, and no readiness poll of
        the connection, per command.
        """
        shared = self.client()
        client = self._dedicated_clients.get(role)
        if client is None:
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
            self._dedicated_clients[role] = client
        return client

    def _lock_token(self) -> str:
        # Unique per lock hold across hosts and processes; cheaper than redis-py's uuid1.
        return f"{self._token_prefix}{next(self._tokens)}"

    def _unavailable(self, error: Exception) -> StorageUnavailable:
        return StorageUnavailable(
            f"Redis at {self._describe()} is unavailable ({type(error).__name__}: {error})"[:300]
        )

    # --- backend operations ---------------------------------------------------------------

    def _get(self, *, with_id: bool) -> Snapshot:
        if not with_id:
            return self._reads.read()
        return self._fetch(with_id=True)

    def _fetch(self, *, with_id: bool = False) -> Snapshot:
        client = self.client()
        try:
            if with_id:
                pipe = client.pipeline(transaction=False)
                pipe.get(self.key)
                pipe.get(self.seq_key)
                raw, seq = pipe.execute(raise_on_error=False)
                if isinstance(seq, Exception):
                    raise seq
            else:
                raw, seq = self._dedicated("reads").get(self.key), None
        except ResponseError as error:
            raw, seq = error, None  # a value of the wrong type
        except RedisError as error:
            raise self._unavailable(error) from None
        stored = self._stored(raw)
        if with_id and stored is None:
            return Snapshot(None, "null", str(int(seq or 0)))
        return self._served(stored, raw)

    def _stored(self, raw: Any) -> dict[str, Any] | None:
        """Decode what Redis returned for the state key; a value of another type goes aside."""
        if isinstance(raw, Exception):
            self._quarantine(None, "a Redis value that is not a string")
            return None
        return self._decode(raw)

    def _transact(self, change: Change) -> Snapshot:
        # Concurrent writers of this process share one hold of the lock and one commit.
        return self._writes.submit(change)

    def _run_batch(self, batch: list[PendingWrite]) -> None:
        """Commit a batch of writes, or fail them all with the reason."""
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
            self._commit_batch(batch, deadline)
        except LockTimeout:
            raise
        except StorageUnavailable as error:
            self._last_failure = (time.monotonic(), error.message)
            raise

    def _commit_batch(self, batch: list[PendingWrite], deadline: float) -> None:
        writer = self._dedicated("writes")
        for _ in range(FENCE_ATTEMPTS):
            lock = _ReadingLock(
                writer,
                self.lock_key,
                (self.key, self.seq_key),
                self._scripts["acquire"],
                timeout=self.lock_timeout,
                sleep=LOCK_POLL_SECONDS,
                blocking_timeout=max(deadline - time.monotonic(), 0.001),
                thread_local=False,
            )
            started = time.monotonic()
            token = self._lock_token()
            try:
                acquired = lock.acquire(token=token)
            except RedisError as error:
                # Redis may have run the acquire and lost only its answer.
                self._releaser.add(token.encode())
                raise self._unavailable(error) from None
            self.observer.lock_waited(time.monotonic() - started)
            if not acquired:
                self.observer.lock_timed_out()
                raise LockTimeout(
                    f"The workflow state lock {self.lock_key} stayed held by another writer "
                    f"for {self.lock_wait:g}s"
                )
            try:
                committed = self._locked_batch(lock, batch)
            except BaseException:
                self._release_quietly(lock)
                raise
            if committed:
                return
        raise StorageUnavailable(
            f"Redis at {self._describe()}: {FENCE_ATTEMPTS} writes in a row lost the version fence"
        )

    def _locked_batch(self, lock: _ReadingLock, batch: list[PendingWrite]) -> bool:
        """Apply the batch to what the lock read and commit it; False if the fence refused it."""
        raw, seq = lock.read
        stored = self._stored(raw)
        base_seq = int(seq or 0)
        chain, finished, answers = self._apply_batch(stored, batch, base_seq)
        snapshots: list[Snapshot] = []
        if chain:
            encoded = [self._encode_head(new, stored) for new in chain]
            args: list[Any] = [
                lock.local.token,
                seq or b"0",
                1 if stored is not None else 0,
                self._ttl_for(chain[-1]) * 1000,
                HISTORY_MAX,
                HISTORY_SECONDS * 1000,
            ]
            for (head, _), done in zip(encoded, finished, strict=True):
                args += [head, 1 if done else 0]
            try:
                with _sent_once():
                    first, replicas = self._replicated(
                        lock.redis,
                        "commit",
                        [self.key, self.seq_key, self.lock_key, self.events_key, self.history_key],
                        args,
                    )
            except RedisError as error:
                # Whether it ran is unknown: answer 503 (never redo it), and free the lock
                # once Redis answers, if the commit did not.
                self._releaser.add(lock.local.token)
                lock.local.token = None
                raise self._unavailable(error) from None
            # The script released the lock (or found it taken over); don't release it twice.
            lock.local.token = None
            if first < 0:
                return False
            if self._confirmed(replicas):
                for offset, (new, (head, sealed)) in enumerate(zip(chain, encoded, strict=True)):
                    snapshots.append(self._committed(new, head, sealed, first + offset))
                    self.observer.wrote()
            else:
                # Each write that changed the state is refused; refusals and no-ops stand.
                answers = [
                    (write, self._not_durable(replicas, f"the write of version {first + answer}"))
                    if isinstance(answer, int) and answer >= 0
                    else (write, answer)
                    for write, answer in answers
                ]
        else:
            self._release_quietly(lock)
        self._settle(answers, snapshots, self._served(stored, raw))
        return True

    def _delete(self) -> int:
        client = self.client()
        try:
            with _sent_once():
                version, replicas = self._replicated(
                    client, "delete", [self.key, self.seq_key, self.events_key], []
                )
        except RedisError as error:
            raise self._unavailable(error) from None
        if not self._confirmed(replicas):
            raise self._not_durable(replicas, f"the delete (version {version})")
        return int(version)

    def _replicated(
        self, client: redis.Redis, script: str, keys: list[str], args: list[Any]
    ) -> tuple[Any, int | None]:
        """Run a write script; with MIN_REPLICAS, WAIT for the replicas in the same round trip.

        Return the script's result and how many replicas confirmed it (None: not asked). WAIT
        counts the writes of the connection it is sent on, so it is pipelined right behind the
        script: one connection, one round trip. Callers send it once (`_sent_once`): a script
        whose answer was lost is never run again.
        """
        code = self._scripts[script]
        if not self.min_replicas:
            return code(keys=keys, args=args, client=client), None
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

    def _history(self, limit: int) -> list[str]:
        try:
            raws = self.client().lrange(self.history_key, 0, limit - 1)
        except ResponseError:
            return []
        except RedisError as error:
            raise self._unavailable(error) from None
        return [raw.decode("utf-8", "replace") for raw in raws]

    def _quarantine(self, raw: str | bytes | None, reason: str) -> None:
        client = self.client()
        try:
            moved = self._scripts["quarantine"](
                keys=[self.key],
                args=[
                    raw if raw is not None else "",
                    CORRUPT_KEEP_SECONDS * 1000,
                    redis_key(self.key, CORRUPT_SUFFIX, ""),
                    int(time.time()),
                ],
                client=client,
            )
        except RedisError as error:
            raise self._unavailable(error) from None
        if moved:
            self._log_quarantine(moved.decode(), reason)

    def _ping(self) -> None:
        try:
            self.client().ping()
        except RedisError as error:
            raise self._unavailable(error) from None

    def _ready(self) -> None:
        client = self.client()
        try:
            stuck_ms = self._scripts["ready"](
                keys=[self.lock_key], args=[int(self.lock_timeout * 1000)], client=client
            )
        except RedisError as error:
            raise self._unavailable(error) from None
        if stuck_ms:
            raise LockStuck(
                f"The workflow state lock {self.lock_key} is stuck (found with no expiry, or "
                f"one past the lock timeout); writers are refused until it expires within "
                f"{max(stuck_ms, 0) / 1000:g}s"
            )

    def _release_quietly(self, lock: _ReadingLock) -> None:
        """Release a lock this process holds; if Redis does not answer, release it later."""
        token = lock.local.token
        if token is None:
            return
        try:
            lock.release()
        except LockNotOwnedError:
            pass  # it expired, or the commit released it
        except RedisError:
            self._releaser.add(token)

    def _release_tokens(self, tokens: list[bytes]) -> None:
        """Delete the lock if one of `tokens` holds it (the lock releaser's work)."""
        client = self._dedicated("releases")
        self._scripts["release"](keys=[self.lock_key], args=tokens, client=client)

    def _events(self, stop: threading.Event) -> Iterator[Event]:
        backoff = 0.05
        while not stop.is_set():
            # A client of its own with no silent retry: a reconnect must surface as RESYNC.
            client = self._connect(retries=0)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.events_key)
                yield RESYNC
                backoff = 0.05
                while not stop.is_set():
                    message = pubsub.get_message(timeout=0.25)
                    if message is not None and message["type"] == "message":
                        yield _parse_event(message["data"])
            except RedisError as error:
                log.warning("event subscription to %s lost: %s", self._describe(), error)
                stop.wait(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                _close_quietly(pubsub, client)

    def _close(self) -> None:
        if self._redis is not None:
            self._releaser.stop.set()
            for client in self._dedicated_clients.values():
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


def _parse_event(data: bytes) -> Event:
    """Split a published '{"id":"N","state":...}' message without re-serialising the state."""
    text = data.decode("utf-8", "replace")
    prefix = '{"id":"'
    if text.startswith(prefix):
        end = text.find('"', len(prefix))
        marker = '","state":'
        if end > 0 and text.startswith(marker, end):
            return Event(id=text[len(prefix) : end], json=text[end + len(marker) : -1])
    return Event(id="", json="null")


def _close_quietly(pubsub: Any, client: redis.Redis) -> None:
    with suppress(RedisError):
        pubsub.close()
        close_client(client)
