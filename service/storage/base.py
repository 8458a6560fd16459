"""The storage interface every backend implements.

Public methods validate their input with the pure model and are the same for every backend;
the private `_` methods are what a backend supplies. Storage knows nothing of HTTP: it raises
model `StateError`s for refused writes and `StorageUnavailable` when the backend can't answer.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, ClassVar

from .. import model
from ..config import StoreOptions
from ..secrets import FieldCipher, keep_unopened, needs_opening, open_fields
from .batching import PendingWrite

log = logging.getLogger("service.storage")

HISTORY_MAX = 100
HISTORY_DAYS = 7
HISTORY_SECONDS = HISTORY_DAYS * 86400
CORRUPT_KEEP_SECONDS = 7 * 86400
# A write whose fence fails (someone else wrote after our read) is redone this many times.
FENCE_ATTEMPTS = 5

Change = Callable[[dict[str, Any] | None, datetime], dict[str, Any] | None]


class StorageUnavailable(Exception):
    """The backend cannot answer now; the message says which backend and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class LockTimeout(StorageUnavailable):
    """The write lock stayed held by another writer for longer than the lock wait."""


class LockStuck(StorageUnavailable):
    """The write lock was found without an expiry: writers are refused until it expires."""


def dumps(value: Any) -> str:
    """Serialise JSON the one way the service stores and serves it (compact, ASCII-safe)."""
    return json.dumps(value, separators=(",", ":"))


def utc_now() -> datetime:
    """Return the current moment in UTC."""
    return datetime.now(UTC)


def clock_microseconds() -> int:
    """Return the wall clock in microseconds since the epoch (where a lost counter restarts)."""
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One observed state: the plain dict, its JSON as served, and its event id."""

    state: dict[str, Any] | None
    json: str
    event_id: str | None = None

    @property
    def version(self) -> int | None:
        """Return the stored version, or None when there is no state."""
        return None if self.state is None else self.state["version"]


@dataclass(frozen=True, slots=True)
class Event:
    """A change as streams see it: a new state's JSON (or "null") and its event id."""

    id: str
    json: str


# Sent by `events()` when the feed was interrupted (e.g. Redis restarted) and may have gaps:
# a consumer should take a fresh snapshot.
RESYNC = Event(id="", json="")


class Observer:
    """Receives storage measurements; the metrics subsystem supplies a real one."""

    def lock_waited(self, seconds: float) -> None:
        """Record how long a writer waited for the lock."""

    def lock_timed_out(self) -> None:
        """Record a writer that gave up waiting for the lock."""

    def wrote(self) -> None:
        """Record an accepted write or delete."""


class StateStore(ABC):
    """Hold one workflow state with versioned, locked, fenced writes."""

    # URL schemes this backend serves; the registry in `storage/__init__.py` maps them.
    schemes: ClassVar[tuple[str, ...]] = ()
    # True when the state lives in this process's memory, so no other process can share it.
    single_process: ClassVar[bool] = False

    def __init__(self, url: str, options: StoreOptions | None = None, **overrides: Any) -> None:
        """Open the store at `url` with `options` (config.py's defaults), some overridden."""
        options = replace(options or StoreOptions(), **overrides)
        self.url = url
        self.options = options
        self.key = options.key
        self.ttl = options.ttl
        self.stale_ttl = options.stale_ttl
        self.lock_timeout = options.lock_timeout
        self.lock_wait = options.lock_wait
        self.io_timeout = options.io_timeout
        self.cipher = FieldCipher(options.secret_keys) if options.secret_keys else None
        self.observer = Observer()
        # (stored bytes, decoded state) of the last document read or written; see `_decode`.
        self._remembered: tuple[bytes, dict[str, Any]] | None = None

    # --- public interface -----------------------------------------------------------------

    def get(self) -> Snapshot:
        """Return the current state (a Snapshot whose state is None when there is none)."""
        return self._get(with_id=False)

    def get_for_stream(self) -> Snapshot:
        """Return the current state with its event id filled in, also when there is none."""
        return self._get(with_id=True)

    def save(self, body: Any, *, if_match: frozenset[str] | None = None) -> Snapshot:
        """Store a whole new state from a POST body (validated before any storage work)."""
        candidate = model.new_state(body, now=utc_now(), random_hex=secrets.token_hex(4))

        def change(current: dict[str, Any] | None, now: datetime) -> dict[str, Any] | None:
            decided = model.apply_save(current, candidate, body, if_match)
            if decided is not None:
                decided["last_update"] = model.format_time(now)
            return decided

        return self._transact(change)

    def update_step(
        self, index: int, body: Any, *, if_match: frozenset[str] | None = None
    ) -> Snapshot:
        """Set one step's status (and data) atomically and make it the current step."""
        if index < 0:
            raise model.InvalidIndex(f"Step index must be >= 0, got {index}")
        step_change = model.parse_step_change(body)
        return self._transact(
            lambda current, now: model.apply_step(
                current, index, step_change, now=now, if_match=if_match
            )
        )

    def merge(self, body: Any, *, if_match: frozenset[str] | None = None) -> Snapshot:
        """Replace top-level fields of the stored state atomically."""
        model.require_object(body)
        return self._transact(
            lambda current, now: model.apply_merge(current, body, now=now, if_match=if_match)
        )

    def clear(self) -> int:
        """Delete the state; return the version number the delete took."""
        version = self._delete()
        self.observer.wrote()
        return version

    def history(self, limit: int = HISTORY_MAX) -> list[dict[str, Any]]:
        """Return up to `limit` finished states of the last 7 days, newest first."""
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= HISTORY_MAX:
            raise model.InvalidState("limit", f"must be a whole number from 1 to {HISTORY_MAX}")
        oldest = utc_now().timestamp() - HISTORY_SECONDS
        entries = []
        for raw in self._history(HISTORY_MAX):
            try:
                state = model.parse_stored(raw)
            except ValueError:
                continue
            if model.parse_time(state["last_update"]).timestamp() < oldest:
                continue
            entries.append(self._open(state))
            if len(entries) == limit:
                break
        return entries

    def ping(self) -> None:
        """Raise StorageUnavailable unless the backend answers."""
        self._ping()

    def ready(self) -> None:
        """Raise StorageUnavailable unless the backend answers and writers can get the lock."""
        self._ready()

    def events(self, stop: threading.Event) -> Iterator[Event]:
        """Yield every accepted write and delete in order until `stop` is set.

        Yields RESYNC first and after any interruption; the consumer then takes a fresh
        snapshot. Event JSON is as served (secret fields opened).
        """
        for event in self._events(stop):
            if event is RESYNC or model.ENCRYPTED_MARK not in event.json:
                yield event
            else:
                state = json.loads(event.json)
                yield Event(event.id, dumps(self._open(state) if state else state))

    def close(self) -> None:
        """Release connections and handles."""
        self._close()

    def describe(self) -> str:
        """Return a one-line, credential-free description of where the state lives."""
        return self._describe()

    # --- shared machinery for backends -----------------------------------------------------

    def _decode(self, raw: str | bytes | None) -> dict[str, Any] | None:
        """Parse a stored document; move a corrupt one aside and treat it as no state.

        The last document decoded (or committed) here is remembered with its bytes: between
        writes every read returns the same document, and parsing and validating it again would
        be most of a read's cost. Decoded states are shared, so nothing may mutate them.
        """
        if raw is None:
            return None
        key = raw if isinstance(raw, bytes) else raw.encode()
        remembered = self._remembered
        if remembered is not None and remembered[0] == key:
            return remembered[1]
        try:
            state = model.parse_stored(raw)
        except ValueError as error:
            self._quarantine(raw, str(error))
            return None
        self._remembered = (key, state)
        return state

    def _open(self, state: dict[str, Any]) -> dict[str, Any]:
        if not needs_opening(state):
            return state
        return open_fields(state, self.cipher)

    def _served(self, stored: dict[str, Any] | None, raw: str | bytes | None) -> Snapshot:
        """Build the Snapshot a client sees from a stored state and the document it came from."""
        if stored is None:
            return Snapshot(None, "null")
        if needs_opening(stored):
            plain = self._open(stored)
            return Snapshot(plain, dumps(plain), str(plain["version"]))
        if isinstance(raw, bytes):
            # json.loads accepted it, but it may be UTF-16/32: serve our own serialisation then.
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                raw = None
        return Snapshot(stored, raw if raw is not None else dumps(stored), str(stored["version"]))

    def _encode_head(
        self, state: dict[str, Any], previous: dict[str, Any] | None = None
    ) -> tuple[str, bool]:
        """Serialise a state for storage up to the version number, which the commit appends.

        Also tell whether any field was sealed (then the stored and served JSON differ).
        `previous` is the stored (still sealed) state the write started from.
        """
        stored = self.cipher.seal(state) if self.cipher else state
        stored = keep_unopened(stored, previous)
        body = {k: v for k, v in stored.items() if k != "version"}
        return dumps(body)[:-1] + ',"version":', stored is not state

    def _committed(self, new: dict[str, Any], head: str, sealed: bool, version: int) -> Snapshot:
        """Build the Snapshot of a state just committed with `version`."""
        new["version"] = version
        if sealed:
            return Snapshot(new, dumps(new), str(version))
        document = f"{head}{version}}}"
        self._remembered = (document.encode(), new)
        return Snapshot(new, document, str(version))

    def _apply_batch(
        self, stored: dict[str, Any] | None, batch: list[PendingWrite], last_version: int
    ) -> tuple[list[dict[str, Any]], list[bool], list[tuple[PendingWrite, int | Exception]]]:
        """Apply a batch of writes in order to `stored` (whose counter is at `last_version`).

        Return the new states in commit order, whether each finishes a workflow (so it goes
        into the history), and each write's answer: an index into the new states (-1: the
        stored state, for a write that changed nothing) or the StateError that refused it.
        Each new state already carries the version the commit will give it, so a later write's
        If-Match is checked against the right number.
        """
        current = self._open(stored) if stored is not None else None
        now = utc_now()
        chain: list[dict[str, Any]] = []
        finished: list[bool] = []
        answers: list[tuple[PendingWrite, int | Exception]] = []
        for write in batch:
            try:
                new = write.change(current, now)
            except model.StateError as error:
                answers.append((write, error))
                continue
            if new is not None:
                new["version"] = last_version + len(chain) + 1
                finished.append(model.newly_finished(current, new))
                chain.append(new)
                current = new
            answers.append((write, len(chain) - 1))
        return chain, finished, answers

    @staticmethod
    def _settle(
        answers: list[tuple[PendingWrite, int | Exception]],
        committed: list[Snapshot],
        unchanged: Snapshot,
    ) -> None:
        """Give each write of a committed batch its answer."""
        for write, answer in answers:
            if isinstance(answer, Exception):
                write.fail(answer)
            else:
                write.succeed(committed[answer] if answer >= 0 else unchanged)

    def _ttl_for(self, state: dict[str, Any]) -> int:
        return model.ttl_seconds(state, self.ttl, self.stale_ttl)

    def _log_quarantine(self, where: str, reason: str) -> None:
        log.error("stored state is not a valid state (%s); moved it to %s", reason[:200], where)

    # --- what each backend supplies -------------------------------------------------------

    @abstractmethod
    def _get(self, *, with_id: bool) -> Snapshot:
        """Read the current state without taking the lock."""

    @abstractmethod
    def _transact(self, change: Change) -> Snapshot:
        """Under the lock: read, apply `change`, and commit fenced on the version counter."""

    @abstractmethod
    def _delete(self) -> int:
        """Delete the state and take the next version number for the delete."""

    @abstractmethod
    def _history(self, limit: int) -> list[str]:
        """Return up to `limit` stored history documents, newest first."""

    @abstractmethod
    def _quarantine(self, raw: str | bytes, reason: str) -> None:
        """Move a stored value that is not a valid state aside, and log it."""

    @abstractmethod
    def _ping(self) -> None:
        """Check the backend answers."""

    def _ready(self) -> None:
        """Check the backend answers and no stuck lock refuses writers (see `ready`)."""
        self._ping()

    @abstractmethod
    def _events(self, stop: threading.Event) -> Iterator[Event]:
        """Follow changes (see `events`)."""

    @abstractmethod
    def _close(self) -> None:
        """Release connections and handles."""

    @abstractmethod
    def _describe(self) -> str:
        """Describe the backend without credentials."""
