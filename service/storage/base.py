"""The storage interface every backend implements: many workflows, each owner its own.

Public methods validate their input with the pure model and are the same for every backend;
the private `_` methods are what a backend supplies. Storage knows nothing of HTTP: it raises
model `StateError`s for refused writes and `StorageUnavailable` when the backend can't answer.

Every method takes the `owner` whose workflows it acts on, and most a workflow id, where None
means the owner's *current* workflow (the one most recently created or saved): the seed's single
workflow, which `/workflow/state` and the CLI act on.

Every write goes through one hook, `_transact(owner, workflow_id, Write)`: under the
workflow's lock, read it, apply the write's pure change, and commit fenced on what was read, so
a writer whose lock expired is refused and retried, never lost. Concurrent writes to one
workflow from the threads of a process share one hold of the lock and one commit (see
`batching`). A new kind of write (a run's claim, a lease renewal) is a new `Write` whose change
is a pure function in the model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, ClassVar

from .. import model, runs
from ..config import StoreOptions
from ..schema import ENCRYPTED_MARK
from ..secrets import FieldCipher, keep_unopened, needs_opening, open_fields
from .batching import Keyed, PendingWrite, WriteCombiner
from .listing import (
    LIMIT_DEFAULT,
    Page,
    Position,
    check_limit,
    check_status,
    decode_cursor,
    decode_every_cursor,
    encode_cursor,
    encode_every_cursor,
    list_entry,
    owner_position,
)

log = logging.getLogger("service.storage")

HISTORY_MAX = 100
HISTORY_DAYS = 7
HISTORY_SECONDS = HISTORY_DAYS * 86400
CORRUPT_KEEP_SECONDS = 7 * 86400
# A write whose fence fails (someone else wrote after our read) is redone this many times.
FENCE_ATTEMPTS = 5
# The owner a single-workflow layout of an earlier version is migrated into.
MIGRATION_OWNER = "public"
# Decoded documents remembered per process (see `_decode`): enough for the workflows in use.
REMEMBERED_DOCUMENTS = 256
# Running workflows read per step of a scan for active runs (`active_runs`).
SCAN_PAGE = 100

# The owner rule of service/identity.py: an owner names a Redis hash tag and a directory, so
# storage checks it too rather than trust every caller.
OWNER_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}\Z")
OWNER_RULE = "must be 1-64 characters of A-Z a-z 0-9 _ . @ -, and not . or .."

# A pure change: (the workflow's stored state or None, now) -> the new state, or None when
# the write changes nothing; raises a model StateError to refuse.
Change = Callable[[dict[str, Any] | None, datetime], dict[str, Any] | None]


@dataclass(frozen=True, slots=True)
class RunDue:
    """An active server run as a lease monitor sees it."""

    owner: str
    workflow_id: str
    fence: runs.Fence
    status: str
    deadline: datetime


def _merged(
    current: dict[str, Any] | None,
    body: Any,
    now: datetime,
    if_match: frozenset[str] | None,
) -> dict[str, Any] | None:
    """Apply a merge PATCH; the stored `run` stays whatever the body says."""
    new = model.apply_merge(current, body, now=now, if_match=if_match)
    return None if new is None or current is None else model.keep_run_fields(current, new)


def _stamp_incarnation(
    seen: dict[str, Any] | None, new: dict[str, Any], position: int, born: int
) -> int:
    """Give `new` its workflow's incarnation; return where in the batch it was born, or -1.

    A state written over nothing creates the workflow: its incarnation is its own version.
    Every later state keeps the one it was written over (a state stored before incarnations
    were kept has none, and keeps none).
    """
    if seen is None:
        new["incarnation"] = new["version"]
        return position
    if "incarnation" in seen:
        new["incarnation"] = seen["incarnation"]
    else:
        new.pop("incarnation", None)
    return born


class LimitExceeded(model.StateError):
    """A write the size limits refuse (nothing was stored); the message says which and why."""


class StateTooLarge(LimitExceeded):
    """The write would make one workflow's stored JSON larger than its limit (413)."""

    code = "state_too_large"


class OwnerQuotaExceeded(LimitExceeded):
    """The write would make the owner's unexpired workflows together larger than its limit."""

    code = "owner_quota_exceeded"


def document_bytes(head: str, version: int, incarnation: int | None = None) -> int:
    """Return the length of `stored_document(head, version, incarnation)` without building it."""
    size = len(head) + len(str(version)) + 1
    if incarnation is not None:
        size += len(str(incarnation)) + len(',"version":')
    return size


def limit_refusal(
    workflow_id: str,
    size: int,
    before: int,
    others: int | None,
    options: StoreOptions,
) -> LimitExceeded | None:
    """Return why a write that stores `size` bytes in place of `before` breaks a size limit, or
    None. `others`: the bytes of the owner's other unexpired workflows (None: not known here).

    A write that does not grow the workflow is never refused, so a workflow or an owner already
    over a lowered limit can still shrink and be cleaned up (and a run's bookkeeping, which
    `Write.limited` leaves out, can still end its run).
    """
    if size <= before:
        return None
    most = options.max_workflow_bytes
    if most and size > most:
        return StateTooLarge(
            f"Workflow {workflow_id} would take {size} bytes stored, more than the {most} "
            "allowed per workflow; store less in it (large results belong elsewhere)"
        )
    most = options.max_owner_bytes
    if most and others is not None and others + size > most:
        return over_quota(others + size, most)
    return None


def over_quota(total: int, most: int) -> OwnerQuotaExceeded:
    """Return the refusal of a write that would make the owner's workflows take `total` bytes."""
    return OwnerQuotaExceeded(
        f"Your workflows would take {total} bytes stored together, more than the {most} "
        "allowed per owner; delete workflows you no longer need, or let finished ones expire"
    )


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


def stored_document(head: str, version: int, incarnation: int | None = None) -> str:
    """Complete a document head (`_encode_head`) as the commit does: `...,"version":N}`, or
    `...,"incarnation":I,"version":N}` for a workflow the commit creates."""
    if incarnation is None:
        return f"{head}{version}}}"
    return f'{head}{incarnation},"version":{version}}}'


def utc_now() -> datetime:
    """Return the current moment in UTC."""
    return datetime.now(UTC)


def check_owner(owner: Any) -> str:
    """Return `owner`, or raise InvalidState when it is not a valid owner name."""
    if not isinstance(owner, str) or not OWNER_RE.match(owner) or owner in (".", ".."):
        raise model.InvalidState("owner", OWNER_RULE)
    return owner


def check_workflow_id(workflow_id: Any) -> str | None:
    """Return a workflow id given apart from a body (None: the current one), or raise."""
    if workflow_id is None:
        return None
    if not isinstance(workflow_id, str) or not model.WORKFLOW_ID_RE.match(workflow_id):
        shown = workflow_id[:40] if isinstance(workflow_id, str) else type(workflow_id).__name__
        raise model.InvalidWorkflowId(
            f"Workflow id {shown!r} is not valid: it must be 1-128 characters of "
            "A-Z a-z 0-9 _ . : -"
        )
    return workflow_id


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
    """A change as streams see it.

    `id` is the new version (or the counter value a delete took), `json` the state as served
    (or "null"), `owner` and `workflow_id` what changed, and `current` whether that workflow
    was the owner's current one at commit time (or became it by this write).
    """

    id: str
    json: str
    owner: str = ""
    workflow_id: str = ""
    current: bool = False


# Sent by `events()` when the feed was interrupted (e.g. Redis restarted) and may have gaps:
# a consumer should take a fresh snapshot.
RESYNC = Event(id="", json="")


@dataclass(frozen=True, slots=True)
class Write:
    """One write to one workflow, as the locked transaction applies it.

    `change` is pure (see `Change`). `make_current` makes the workflow the owner's current one
    when the write changes it. `seed` marks a write of the one-workflow API (POST
    /workflow/state), whose client knows only the owner's current workflow: it is decided
    against that one alone, as the seed's single state was, so its `if_match` is checked against
    the current workflow, and a stored workflow of the same id that is not the current one is
    replaced as if absent.
    """

    change: Change
    make_current: bool = False
    seed: bool = False
    if_match: frozenset[str] | None = None
    # Checked against the size limits: every write of content. A run's bookkeeping (claim,
    # lease, release, cancel, finish) is not, so a run over a lowered limit can still end.
    limited: bool = True


@dataclass(slots=True)
class Found:
    """What a locked read found: the workflow written and, when it is another, the current one.

    Backends fill it; `state` and `other` are the stored (still sealed) documents, None when
    absent, expired or corrupt. `seq` is the owner's counter as read (None: missing).
    """

    workflow_id: str | None
    state: dict[str, Any] | None
    is_current: bool
    other: dict[str, Any] | None = None
    seq: int | None = None
    # The length of `state`'s stored document (0: none), and the bytes of the owner's other
    # unexpired workflows when the backend knows them under its lock (None: its commit checks).
    stored_bytes: int = 0
    others_bytes: int | None = None

    def floor(self) -> int:
        """Return the lowest version the next write may take: above every version it saw."""
        seen = [s["version"] for s in (self.state, self.other) if s is not None]
        return max([self.seq or 0, *seen]) + 1


@dataclass(slots=True)
class Applied:
    """A batch applied to what was found, ready to commit.

    `chain`: the new states in commit order, each with the version it would take if the
    counter had not moved (the commit stamps the real ones, and the `incarnation` of a state
    created in the batch); per new state, whether it finishes a workflow (history) and whether
    it makes the workflow current; each write's answer: an index into `chain` (-1: the state
    as found) or the StateError refusing it.
    """

    chain: list[dict[str, Any]]
    finished: list[bool]
    makes_current: list[bool]
    answers: list[tuple[PendingWrite, int | Exception]]
    # Per new state, the index in `chain` of the state that created the workflow in this batch
    # (its `incarnation` is that state's version, which only the commit knows for sure), or -1.
    born: list[int] = field(default_factory=list)
    # The owner's current workflow, when another, was part of an If-Match decision.
    checked_other: bool = False
    # Per new state, its document head and whether a field was sealed (`_encode_head`), and
    # the length of its document with the version it would take.
    encoded: list[tuple[str, bool]] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    # Whether a write that the size limits apply to changed the state.
    limited: bool = False


class Observer:
    """Receives storage measurements; the metrics subsystem supplies a real one."""

    def lock_waited(self, seconds: float) -> None:
        """Record how long a writer waited for the lock."""

    def lock_timed_out(self) -> None:
        """Record a writer that gave up waiting for the lock."""

    def wrote(self) -> None:
        """Record an accepted write or delete."""


class TaggedCache:
    """A bounded cache of values by key, each kept with a tag that must match to hit (the bytes
    a document was decoded from, a file's stat identity); least recently used goes first."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._guard = threading.Lock()
        self._entries: OrderedDict[Any, tuple[Any, Any]] = OrderedDict()

    def get(self, key: Any, tag: Any) -> Any:
        """Return the value kept for `key` under `tag`, or None."""
        with self._guard:
            entry = self._entries.get(key)
            if entry is None or entry[0] != tag:
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: Any, tag: Any, value: Any) -> None:
        """Keep `value` for `key` under `tag`, dropping the least recently used past the size."""
        with self._guard:
            self._entries[key] = (tag, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget everything."""
        with self._guard:
            self._entries.clear()


class StateStore(ABC):
    """Hold every owner's workflows with versioned, locked, fenced writes."""

    # URL schemes this backend serves; the registry in `storage/__init__.py` maps them.
    schemes: ClassVar[tuple[str, ...]] = ()
    # True when the state lives in this process's memory, so no other process can share it.
    single_process: ClassVar[bool] = False
    # True when the commit appends the incarnation of a workflow it creates (see `_encode_head`).
    incarnation_at_commit: ClassVar[bool] = False

    def __init__(self, url: str, options: StoreOptions | None = None, **overrides: Any) -> None:
        """Open the store at `url` with `options` (config.py's defaults), some overridden."""
        options = replace(options or StoreOptions(), **overrides)
        self.url = url
        self.options = options
        # The single-workflow key of earlier versions, migrated into owner `public` on start.
        self.key = options.key
        self.prefix = options.prefix
        self.max_workflows = options.max_workflows
        self.max_owner_bytes = options.max_owner_bytes
        self.ttl = options.ttl
        self.stale_ttl = options.stale_ttl
        self.failed_ttl = options.failed_ttl
        self.lock_timeout = options.lock_timeout
        self.lock_wait = options.lock_wait
        self.io_timeout = options.io_timeout
        self.cipher = FieldCipher(options.secret_keys) if options.secret_keys else None
        self.observer = Observer()
        # (owner, id) -> the state decoded (or committed) last, under the bytes it came from.
        self._remembered = TaggedCache(REMEMBERED_DOCUMENTS)
        self._writes: Keyed[tuple[str, str | None], WriteCombiner] = Keyed(
            lambda where: WriteCombiner(lambda batch: self._run_batch(*where, batch))
        )

    # --- reading ---------------------------------------------------------------------------

    def get(self, owner: str, workflow_id: str | None = None) -> Snapshot:
        """Return a workflow (None: the owner's current one); state None when absent or expired."""
        return self._get(check_owner(owner), check_workflow_id(workflow_id), with_id=False)

    def get_for_stream(self, owner: str, workflow_id: str | None = None) -> Snapshot:
        """Return a workflow with its event id filled in: the owner's counter when there is none."""
        return self._get(check_owner(owner), check_workflow_id(workflow_id), with_id=True)

    def list(
        self,
        owner: str,
        *,
        status: str = "all",
        limit: int = LIMIT_DEFAULT,
        cursor: str | None = None,
    ) -> Page:
        """Return a page of the owner's unexpired workflows, most recently updated first.

        `status` is running, finished or all; `cursor` is a page's `next_cursor`, bound to this
        owner and status (InvalidCursor otherwise).
        """
        check_owner(owner)
        check_status(status)
        check_limit(limit)
        position = decode_cursor(cursor, owner, status)
        found = self._list(owner, status, position, limit + 1)
        entries = [list_entry(self._open(state)) for _, state in found[:limit]]
        following = None
        if len(found) > limit:
            following = encode_cursor(owner, status, found[limit - 1][0])
        return Page(entries, following)

    def list_every_owner(
        self, *, status: str = "all", limit: int = LIMIT_DEFAULT, cursor: str | None = None
    ) -> Page:
        """Return a page of every owner's workflows (an admin's `?owner=*`), each with `owner`.

        Ordered by last_update, then owner, then id, descending; cursors as `list`'s. Owners are
        read in the order of the latest update they may have (the owners index), and only until
        none left can have a workflow on the page.
        """
        check_status(status)
        check_limit(limit)
        position = decode_every_cursor(cursor, status)
        want = limit + 1
        found: list[tuple[tuple[int, str, str], dict[str, Any]]] = []
        for owner, bound in self._owners_by_latest():
            if len(found) >= want and found[-1][0][0] > bound:
                break  # every workflow of this owner and the next ones comes later
            for (when, workflow_id), state in self._list(
                owner, status, owner_position(position, owner), want
            ):
                found.append(((when, owner, workflow_id), state))
            found.sort(key=lambda item: item[0], reverse=True)
            del found[want:]
        entries = [
            {**list_entry(self._open(state)), "owner": where[1]} for where, state in found[:limit]
        ]
        following = None
        if len(found) > limit:
            following = encode_every_cursor(status, found[limit - 1][0])
        return Page(entries, following)

    def owners(self) -> list[str]:
        """Return every owner that ever created a workflow, sorted (admin `owner=*`)."""
        return sorted(self._owners())

    def owner_bytes(self, owner: str) -> int:
        """Return the bytes the owner's unexpired workflows take stored (their quota's measure).

        Workflows that expired since their last write stop counting here at the latest.
        """
        return self._owner_bytes(check_owner(owner))

    def history(self, owner: str, limit: int = HISTORY_MAX) -> list[dict[str, Any]]:
        """Return up to `limit` of the owner's finished states of the last 7 days, newest first."""
        check_owner(owner)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= HISTORY_MAX:
            raise model.InvalidState("limit", f"must be a whole number from 1 to {HISTORY_MAX}")
        oldest = utc_now().timestamp() - HISTORY_SECONDS
        entries = []
        for raw in self._history(owner, HISTORY_MAX):
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

    # --- writing ---------------------------------------------------------------------------

    def create(self, owner: str, body: Any, *, run_lease: float | None = None) -> Snapshot:
        """Create a workflow from a POST /workflows body and make it the owner's current one.

        An id the owner has → WorkflowExists, or WorkflowFinished when that one is finished (a
        deleted or expired id may be created again); at the limit → TooManyWorkflows. With
        `run_lease`, the workflow is created with a queued server run in the same write.
        """
        check_owner(owner)
        candidate = model.new_state(body, now=utc_now(), random_hex=secrets.token_hex(4))
        # A client never sets `run` (POST /workflows's `"run": true` means "start one").
        candidate = model.keep_run_fields(None, candidate)

        def change(stored: dict[str, Any] | None, now: datetime) -> dict[str, Any] | None:
            if stored is not None:
                kind = model.WorkflowFinished if model.is_finished(stored) else model.WorkflowExists
                raise kind(f"Workflow {stored['workflow_id']} exists and is {stored['status']}")
            new = dict(candidate)
            new["last_update"] = model.format_time(now)
            if run_lease is not None:
                new = runs.request_run(new, now=now, lease=run_lease)
            return new

        return self._transact(owner, candidate["workflow_id"], Write(change, make_current=True))

    def save(self, owner: str, body: Any, *, if_match: frozenset[str] | None = None) -> Snapshot:
        """Store a whole workflow from a POST /workflow/state body and make it current.

        A new id creates a workflow (the previous current one stays). Decided as the seed's one
        state was: If-Match and finished-is-final against the owner's current workflow, so
        saving the current workflow's id follows the finished-is-final rules, and any other id
        replaces whatever that id held.
        """
        check_owner(owner)
        candidate = model.new_state(body, now=utc_now(), random_hex=secrets.token_hex(4))

        def change(stored: dict[str, Any] | None, now: datetime) -> dict[str, Any] | None:
            # The stored run stays whatever the body says: a client neither forges nor drops it.
            decided = model.apply_save(stored, model.keep_run_fields(stored, candidate), body)
            if decided is not None:
                decided = dict(decided)
                decided["last_update"] = model.format_time(now)
            return decided

        write = Write(change, make_current=True, seed=True, if_match=if_match)
        return self._transact(owner, candidate["workflow_id"], write)

    def update_step(
        self,
        owner: str,
        workflow_id: str | None,
        index: int,
        body: Any,
        *,
        if_match: frozenset[str] | None = None,
    ) -> Snapshot:
        """Set one step's status (and data) atomically and make it the workflow's current step."""
        check_owner(owner)
        check_workflow_id(workflow_id)
        if index < 0:
            raise model.InvalidIndex(f"Step index must be >= 0, got {index}")
        step_change = model.parse_step_change(body)
        return self._transact(
            owner,
            workflow_id,
            Write(
                lambda current, now: model.apply_step(
                    current, index, step_change, now=now, if_match=if_match
                )
            ),
        )

    def merge(
        self,
        owner: str,
        workflow_id: str | None,
        body: Any,
        *,
        if_match: frozenset[str] | None = None,
    ) -> Snapshot:
        """Replace top-level fields of a workflow atomically."""
        check_owner(owner)
        check_workflow_id(workflow_id)
        model.require_object(body)
        return self._transact(
            owner,
            workflow_id,
            Write(lambda current, now: _merged(current, body, now, if_match)),
        )

    def delete(self, owner: str, workflow_id: str | None) -> int:
        """Delete a workflow; return the counter value the delete took.

        An explicit id the owner does not have (or that expired) → NoWorkflow. None deletes
        the current workflow and always succeeds, as DELETE /workflow/state always did: with
        nothing to delete it still takes a number and tells the current workflow's streams.
        """
        version = self._delete(check_owner(owner), check_workflow_id(workflow_id))
        self.observer.wrote()
        return version

    # --- server runs (the rules are service/runs.py) -----------------
    #
    # Every runner write names the fence it holds (incarnation and attempt) and is refused with
    # runs.RunSuperseded, changing nothing, when that is no longer the workflow's run. `lease`
    # is seconds.

    def request_run(self, owner: str, workflow_id: str | None, *, lease: float) -> Snapshot:
        """Queue a run of the workflow's remaining steps; RunActive when one is live."""
        return self._run_write(
            owner,
            workflow_id,
            lambda state, now: runs.request_run(state, now=now, lease=lease),
            limited=False,
        )

    def claim_run(
        self, owner: str, workflow_id: str, fence: runs.Fence, runner: str, *, lease: float
    ) -> Snapshot:
        """Make `runner` (host:pid) the runner of the queued run `fence` names, freshly leased."""
        return self._run_write(
            owner,
            workflow_id,
            lambda state, now: runs.claim_run(state, fence, runner, now=now, lease=lease),
            limited=False,
        )

    def renew_lease(
        self, owner: str, workflow_id: str, fence: runs.Fence, *, lease: float
    ) -> Snapshot:
        """Extend the lease of the run `fence` names (a heartbeat, or a queued run's claim
        deadline)."""
        return self._run_write(
            owner,
            workflow_id,
            lambda state, now: runs.renew_lease(state, fence, now=now, lease=lease),
            limited=False,
        )

    def runner_step(
        self,
        owner: str,
        workflow_id: str,
        fence: runs.Fence,
        index: int,
        status: str,
        data: dict[str, Any] | None = None,
        *,
        token_hash: str | None = None,
    ) -> Snapshot:
        """Record what the runner holding `fence` did with step `index`."""
        return self._run_write(
            owner,
            workflow_id,
            lambda state, now: runs.runner_step(
                state, fence, index, status, data, now=now, token_hash=token_hash
            ),
            # Starting a step stores nothing of its own: only an answer counts against limits.
            limited=data is not None,
        )

    def advance_run(
        self,
        owner: str,
        workflow_id: str,
        fence: runs.Fence,
        index: int,
        status: str,
        data: dict[str, Any] | None = None,
        *,
        limited: bool = True,
        token_hash: str | None = None,
    ) -> Snapshot:
        """Record step `index`'s outcome and start the next step, or finish, in one write.

        A step's answer that would break a size limit → LimitExceeded, nothing stored; the
        runner then fails the step saying why, with `limited` False (that write only shrinks).
        """
        return self._run_write(
            owner,
            workflow_id,
            lambda state, now: runs.advance(
                state, fence, index, status, data, now=now, token_hash=token_hash
            ),
            limited=limited,
        )

    def schedule_retry(
        self,
        owner: str,
        workflow_id: str,
        fence: runs.Fence,
        index: int,
        message: str,
        *,
        wait: float,
    ) -> Snapshot:
        """Record a failed call of step `index` to be made again in `wait` seconds."""
        return self._run_write(
            owner,
            workflow_id,
            lambda state, now: runs.schedule_retry(
                state, fence, index, message, now=now, wait=wait
            ),
            limited=False,  # a run's bookkeeping: a short message
        )

    def fail_step(
        self,
        owner: str,
        workflow_id: str,
        fence: runs.Fence,
        index: int,
        data: dict[str, Any] | None,
    ) -> Snapshot:
        """Record the last failed call of step `index`: the step and the workflow fail."""
        return self._run_write(
            owner,
            workflow_id,
            lambda state, now: runs.note_failure(state, fence, index, data, now=now),
            limited=False,  # a run must be able to end
        )

    def block_step(
        self,
        owner: str,
        workflow_id: str,
        fence: runs.Fence,
        index: int,
        question: dict[str, Any],
    ) -> Snapshot:
        """Make step `index` and the workflow blocked on the step's question; the run ends."""
        return self._run_write(
            owner,
            workflow_id,
            lambda state, now: runs.block(state, fence, index, question, now=now),
            limited=False,  # a run must be able to end; a question's size is bounded
        )

    def wake_run(
        self, owner: str, workflow_id: str, fence: runs.Fence, *, lease: float
    ) -> Snapshot | None:
        """Queue a waiting run whose retry time came as the next attempt; None when it was not
        due, or moved on."""
        woke = [False]

        def change(state: dict[str, Any] | None, now: datetime) -> dict[str, Any] | None:
            new = runs.wake_run(state, fence, now=now, lease=lease)
            woke[0] = new is not None
            return new

        snapshot = self._run_write(owner, workflow_id, change, limited=False)
        return snapshot if woke[0] else None

    def resume(self, owner: str, workflow_id: str, given: Any, *, lease: float) -> Snapshot:
        """Answer a blocked workflow's question and queue a new run at the blocked step."""
        return self._run_write(
            owner,
            workflow_id,
            lambda state, now: runs.resume(state, given, now=now, lease=lease),
        )

    def retry(self, owner: str, workflow_id: str, *, lease: float) -> Snapshot:
        """Queue a new run of a failed workflow from its failed step."""
        return self._run_write(
            owner, workflow_id, lambda state, now: runs.retry(state, now=now, lease=lease)
        )

    def report_progress(
        self, owner: str, workflow_id: str, token: str, index: int, report: dict[str, Any]
    ) -> Snapshot:
        """Store a running step's progress report, if `token` is its call's."""
        return self._run_write(
            owner,
            workflow_id,
            lambda state, now: runs.report_progress(state, token, index, report, now=now),
        )

    # --- a blocked step's input, kept apart from the state --------------------------------

    def put_input(self, owner: str, workflow_id: str, record: dict[str, Any]) -> None:
        """Keep a person's answer to a blocked step (sealed when a secret key is set)."""
        check_owner(owner)
        check_workflow_id(workflow_id)
        text = dumps(record)
        if self.cipher:
            text = dumps({ENCRYPTED_MARK: self.cipher.encrypt(text)})
        self._put_input(owner, workflow_id, text, self.stale_ttl)

    def get_input(self, owner: str, workflow_id: str) -> dict[str, Any] | None:
        """Return the kept answer to a blocked step, or None (none, or unreadable)."""
        check_owner(owner)
        check_workflow_id(workflow_id)
        raw = self._get_input(owner, workflow_id)
        if raw is None:
            return None
        try:
            record = json.loads(raw)
            if isinstance(record, dict) and ENCRYPTED_MARK in record:
                if not self.cipher:
                    return None
                opened = self.cipher.decrypt(record[ENCRYPTED_MARK])
                if opened is None:
                    return None
                record = json.loads(opened)
        except (ValueError, TypeError):
            return None
        return record if isinstance(record, dict) else None

    def delete_input(self, owner: str, workflow_id: str) -> None:
        """Forget the answer to a blocked step (the step settled, or the workflow went)."""
        check_owner(owner)
        check_workflow_id(workflow_id)
        self._delete_input(owner, workflow_id)

    def finish_run(self, owner: str, workflow_id: str, fence: runs.Fence, outcome: str) -> Snapshot:
        """End the run `fence` names with the workflow completed or failed."""
        return self._run_write(
            owner,
            workflow_id,
            lambda state, now: runs.finish_run(state, fence, outcome, now=now),
            limited=False,
        )

    def cancel(self, owner: str, workflow_id: str | None) -> Snapshot:
        """Cancel a workflow (None: the current one): its running step, itself and its run.

        A blocked step's answer goes with it: a cancelled step has settled.
        """
        snapshot = self._run_write(
            owner, workflow_id, lambda state, now: runs.cancel(state, now=now), limited=False
        )
        if snapshot.state is not None:
            with contextlib.suppress(StorageUnavailable):  # it expires anyway
                self._delete_input(owner, snapshot.state["workflow_id"])
        return snapshot

    def take_over(
        self,
        owner: str,
        workflow_id: str,
        expired: runs.Fence,
        *,
        lease: float,
        max_step_attempts: int | None = None,
    ) -> Snapshot | None:
        """Requeue a run whose lease lapsed as the next attempt; None when there was nothing to.

        None also when someone else took it over first, or the run moved on.
        """
        took = [False]

        def change(state: dict[str, Any] | None, now: datetime) -> dict[str, Any] | None:
            new = runs.take_over(
                state, expired, now=now, lease=lease, max_step_attempts=max_step_attempts
            )
            # A fence retry applies the change again: the last application decides.
            took[0] = new is not None
            return new

        snapshot = self._run_write(owner, workflow_id, change, limited=False)
        return snapshot if took[0] else None

    def release_run(
        self, owner: str, workflow_id: str, fence: runs.Fence, *, lease: float
    ) -> Snapshot:
        """Hand the running run `fence` names back to the queue as the next attempt."""
        return self._run_write(
            owner,
            workflow_id,
            lambda state, now: runs.release_run(state, fence, now=now, lease=lease),
            limited=False,
        )

    def runs_due(self, now: datetime, owners: list[str] | None = None) -> list[RunDue]:
        """Return the active runs whose lease has lapsed at `now`, reading the states.

        A scan of every owner's (or `owners`') running workflows: what the file backend's lease
        monitor does every second.
        """
        return [due for due in self.active_runs(owners) if due.deadline <= now]

    def active_runs(self, owners: list[str] | None = None) -> list[RunDue]:
        """Return every queued or running server run, with its lease deadline.

        A scan of the running workflows of every owner (or of `owners`): a Redis lease monitor
        does it now and then to rebuild its index of leases.
        """
        found = []
        for owner in self._owners() if owners is None else owners:
            position = None
            while True:
                page = self._list(owner, "running", position, SCAN_PAGE)
                for _, state in page:
                    run = runs.active_run(state)
                    fence = runs.fence_of(state)
                    deadline = runs.lease_deadline(state)
                    if run is not None and fence is not None and deadline is not None:
                        found.append(
                            RunDue(owner, state["workflow_id"], fence, run["status"], deadline)
                        )
                if len(page) < SCAN_PAGE:
                    break
                position = page[-1][0]
        return found

    def count_blocked(self) -> int:
        """Return how many unexpired workflows, of every owner, wait for a person's input."""
        count = 0
        for owner in self._owners():
            position = None
            while True:
                page = self._list(owner, "running", position, SCAN_PAGE)
                count += sum(1 for _, state in page if state.get("status") == model.BLOCKED)
                if len(page) < SCAN_PAGE:
                    break
                position = page[-1][0]
        return count

    def _run_write(
        self, owner: str, workflow_id: str | None, change: Change, *, limited: bool = True
    ) -> Snapshot:
        check_owner(owner)
        check_workflow_id(workflow_id)
        return self._transact(owner, workflow_id, Write(change, limited=limited))

    # --- the rest --------------------------------------------------------------------------

    def ping(self) -> None:
        """Raise StorageUnavailable unless the backend answers."""
        self._ping()

    def ready(self) -> None:
        """Raise StorageUnavailable unless the backend answers and writers can get the lock."""
        self._ready()

    def events(self, stop: threading.Event) -> Iterator[Event]:
        """Yield every accepted write and delete of every owner, in order, until `stop` is set.

        In order per owner (each owner's counter). Yields RESYNC first and after any
        interruption; the consumer then takes fresh snapshots. Event JSON is as served (secret
        fields opened).
        """
        for event in self._events(stop):
            if event is RESYNC or model.ENCRYPTED_MARK not in event.json:
                yield event
            else:
                state = json.loads(event.json)
                opened = dumps(self._open(state) if state else state)
                yield Event(event.id, opened, event.owner, event.workflow_id, event.current)

    def close(self) -> None:
        """Release connections and handles."""
        self._close()

    def describe(self) -> str:
        """Return a one-line, credential-free description of where the state lives."""
        return self._describe()

    # --- shared machinery for backends -----------------------------------------------------

    def _transact(self, owner: str, workflow_id: str | None, write: Write) -> Snapshot:
        """Under the workflow's lock: read, apply `write`'s pure change, commit fenced.

        `workflow_id` None targets the owner's current workflow (resolved under the lock).
        Concurrent writes to one workflow from this process share one hold of the lock.
        """
        with self._writes.use((owner, workflow_id)) as combiner:
            return combiner.submit(write)

    def _decode(
        self, owner: str, workflow_id: str, raw: str | bytes | None
    ) -> dict[str, Any] | None:
        """Parse a stored document; move a corrupt one aside and treat it as no state.

        The documents last decoded (or committed) are remembered with their bytes: between
        writes every read returns the same document, and parsing and validating it again would
        be most of a read's cost. Decoded states are shared, so nothing may mutate them.
        """
        if raw is None:
            return None
        key = raw if isinstance(raw, bytes) else raw.encode()
        where = (owner, workflow_id)
        remembered = self._remembered.get(where, key)
        if remembered is not None:
            return remembered
        try:
            state = model.parse_stored(raw)
            if state["workflow_id"] != workflow_id:
                raise ValueError(f"it names workflow {state['workflow_id']!r}")
        except ValueError as error:
            self._quarantine(owner, workflow_id, raw, str(error))
            return None
        self._remembered.put(where, key, state)
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
        self,
        state: dict[str, Any],
        previous: dict[str, Any] | None = None,
        *,
        incarnation_at_commit: bool = False,
    ) -> tuple[str, bool]:
        """Serialise a state for storage up to the version number, which the commit appends.

        With `incarnation_at_commit` (a workflow created by this commit, whose version only the
        commit knows) the head stops before the incarnation, which the commit appends too: see
        `document`. Also tell whether any field was sealed (then the stored and served JSON
        differ). `previous` is the stored (still sealed) state the write started from.
        """
        stored = self.cipher.seal(state) if self.cipher else state
        stored = keep_unopened(stored, previous)
        last = ("incarnation", "version") if incarnation_at_commit else ("version",)
        body = {k: v for k, v in stored.items() if k not in last}
        return dumps(body)[:-1] + f',"{last[0]}":', stored is not state

    def _committed(
        self,
        owner: str,
        new: dict[str, Any],
        head: str,
        sealed: bool,
        version: int,
        incarnation: int | None = None,
    ) -> Snapshot:
        """Build the Snapshot of a state just committed with `version` (and `incarnation`, when
        the commit appended it)."""
        new["version"] = version
        if incarnation is not None:
            new["incarnation"] = incarnation
        if sealed:
            return Snapshot(new, dumps(new), str(version))
        document = stored_document(head, version, incarnation)
        self._remembered.put((owner, new["workflow_id"]), document.encode(), new)
        return Snapshot(new, document, str(version))

    def _apply_batch(self, found: Found, batch: list[PendingWrite]) -> Applied:
        """Apply a batch of writes in order to what the locked read found."""
        state = self._open(found.state) if found.state is not None else None
        other = self._open(found.other) if found.other is not None else None
        is_current = found.is_current
        next_version = found.floor()
        now = utc_now()
        applied = Applied([], [], [], [])
        born = -1
        before = found.stored_bytes
        for pending in batch:
            write: Write = pending.change
            # What the write is decided against: a seed write sees the current workflow only.
            seen = state if is_current or not write.seed else None
            try:
                if write.seed and write.if_match is not None:
                    applied.checked_other = applied.checked_other or not is_current
                    model.check_if_match(state if is_current else other, write.if_match)
                new = write.change(seen, now)
            except model.StateError as error:
                applied.answers.append((pending, error))
                continue
            if new is not None:
                new["completed_percent"] = model.completed_percent(new)
                new["version"] = next_version
                new_born = _stamp_incarnation(seen, new, len(applied.chain), born)
                at_commit = self.incarnation_at_commit and new_born >= 0
                head, sealed = self._encode_head(new, found.state, incarnation_at_commit=at_commit)
                size = document_bytes(head, next_version, new["incarnation"] if at_commit else None)
                refusal = write.limited and limit_refusal(
                    new["workflow_id"], size, before, found.others_bytes, self.options
                )
                if refusal:
                    applied.answers.append((pending, refusal))
                    continue
                next_version += 1
                born = new_born
                before = size
                applied.encoded.append((head, sealed))
                applied.sizes.append(size)
                applied.limited = applied.limited or write.limited
                applied.born.append(born)
                applied.finished.append(model.newly_finished(seen, new))
                applied.makes_current.append(write.make_current)
                applied.chain.append(new)
                state = new
                is_current = is_current or write.make_current
            applied.answers.append((pending, len(applied.chain) - 1))
        return applied

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
        return model.ttl_seconds(state, self.ttl, self.stale_ttl, self.failed_ttl)

    def _log_quarantine(self, where: str, reason: str) -> None:
        log.error("stored state is not a valid state (%s); moved it to %s", reason[:200], where)

    # --- what each backend supplies -------------------------------------------------------

    @abstractmethod
    def _get(self, owner: str, workflow_id: str | None, *, with_id: bool) -> Snapshot:
        """Read a workflow (None: the current one) without taking its lock."""

    @abstractmethod
    def _run_batch(self, owner: str, workflow_id: str | None, batch: list[PendingWrite]) -> None:
        """Under the workflow's lock: read, `_apply_batch`, commit fenced, `_settle`."""

    @abstractmethod
    def _delete(self, owner: str, workflow_id: str | None) -> int:
        """Delete a workflow (None: the current one) and take the next counter value."""

    @abstractmethod
    def _list(
        self, owner: str, status: str, after: Position | None, count: int
    ) -> list[tuple[Position, dict[str, Any]]]:
        """Return up to `count` unexpired stored states in list order after `after`."""

    @abstractmethod
    def _owners(self) -> list[str]:
        """Return every owner that ever created a workflow."""

    @abstractmethod
    def _owners_by_latest(self) -> Iterator[tuple[str, int]]:
        """Yield every owner with a bound (ms) no workflow's last_update of it exceeds,
        highest bound first."""

    @abstractmethod
    def _owner_bytes(self, owner: str) -> int:
        """Count the bytes of the owner's unexpired workflows, correcting any running count."""

    @abstractmethod
    def _history(self, owner: str, limit: int) -> list[str]:
        """Return up to `limit` of the owner's history documents, newest first."""

    @abstractmethod
    def _quarantine(self, owner: str, workflow_id: str, raw: str | bytes, reason: str) -> None:
        """Move a stored value that is not a valid state aside, and log it."""

    @abstractmethod
    def _put_input(self, owner: str, workflow_id: str, text: str, ttl: int) -> None:
        """Keep a blocked step's answer (text) for at most `ttl` seconds."""

    @abstractmethod
    def _get_input(self, owner: str, workflow_id: str) -> str | bytes | None:
        """Return a blocked step's kept answer, or None."""

    @abstractmethod
    def _delete_input(self, owner: str, workflow_id: str) -> None:
        """Forget a blocked step's answer (also when there is none)."""

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
