"""JSON-file backend: the embedded default for one host and any number of worker processes.

`file:///dir/workflow_state.json` keeps every workflow under `dir/workflows/`:

    dir/workflows/<owner>/<id>.json   one workflow, exactly its stored state (0600)
    dir/workflows/<owner>/.seq        the owner's version counter (outlives deletes and expiry)
    dir/workflows/<owner>/.current    the id of the owner's current workflow
    dir/workflows/<owner>/.index      {id: [last_update ms, expires ms, stored bytes]}: listing
                                      and the owner's quota read no other
    dir/workflows/<owner>/.history    the owner's finished workflows, newest first
    dir/workflows/<owner>/.lock       flock: one writer of the owner at a time, across processes
    dir/workflows.events              one journal of every owner's changes, tailed by streams

(The per-owner files have no `.json` suffix, so no workflow id can name one; the journal sits
beside `workflows/` because `.events` is a valid owner name.) A write replaces a file
atomically (temp file, fsync, rename, fsync of the directory), so a reader sees the old state or
the new one, never a torn one. Expiry is checked on read; expired files are removed under the
owner's lock by the writes that come later. A state file of an earlier version (the configured
path, with its `.seq` and `.history.json`) is moved into owner `public` on start.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import unquote, urlsplit

from .. import model
from .base import (
    HISTORY_MAX,
    MIGRATION_OWNER,
    OWNER_RE,
    RESYNC,
    Applied,
    Event,
    Found,
    LockTimeout,
    Snapshot,
    StateStore,
    StorageUnavailable,
    TaggedCache,
    clock_microseconds,
    dumps,
    log,
)
from .batching import Keyed, PendingWrite
from .listing import Position, matches
from .listing import score as score_of

STATES_DIRECTORY = "workflows"
STATE_SUFFIX = ".json"
# A person's answer to a blocked step, beside the workflow's file (never served).
INPUT_SUFFIX = ".input"
SEQ_FILE = ".seq"
CURRENT_FILE = ".current"
INDEX_FILE = ".index"
HISTORY_FILE = ".history"
LOCK_FILE = ".lock"
JOURNAL_NAME = "workflows.events"
CORRUPT_SUFFIX = ".corrupt-"
# Milliseconds an index file's mtime may lag behind the last_update it was written after.
OWNER_BOUND_SLACK_MS = 100
# The single-state layout of earlier versions: <path>, <path>.seq, <path>.history.json.
OLD_SEQ_SUFFIX = ".seq"
OLD_HISTORY_SUFFIX = ".history.json"
OLD_LOCK_SUFFIX = ".lock"
# The journal is only for live streams; past this size a writer starts a new one.
EVENTS_MAX_BYTES = 1 << 20
WATCH_POLL_SECONDS = 0.05
LOCK_POLL_SECONDS = 0.001
# A file changed this recently may have an mtime that a later write repeats (coarse clocks),
# so it is re-read rather than served from the cache (git's "racily clean" rule).
RACY_SECONDS = 2.0
# The cache's key of an owner's list order, beside its index file's path.
LIST_ORDER = "list order"
# Files whose decoded content is remembered per process (by their stat identity).
CACHED_FILES = 512
# Owners whose last journal event a follower remembers, to notice a gap; past this it forgets.
FOLLOWED_OWNERS_MAX = 10_000
# `_atomic_write`'s temp files: .<name>.tmp-<pid>-<hex>. One lives for a single write; one that
# outlived its writer (a killed worker) is removed on start.
TEMP_NAME = re.compile(r"\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]+")
# Older than this, a temp file is a leftover even if its pid is alive (the pid was reused).
STALE_TEMP_SECONDS = 60.0

_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# An index entry of an earlier version has no size: counted by its file's size when needed.
UNKNOWN_BYTES = -1


class DiskFull(StorageUnavailable):
    """The file system has no space left (or the user's disk quota is used up)."""


def path_from_url(url: str) -> str:
    """Return the absolute path of a file:// URL, or raise ValueError."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"WORKFLOW_STATE_URL {url!r} names a host; use file:///absolute/path.json")
    path = unquote(parts.path)
    if not os.path.isabs(path) or path.endswith("/"):
        raise ValueError(f"WORKFLOW_STATE_URL {url!r} must be file:///absolute/path/to/state.json")
    return os.path.normpath(path)


def _problem(error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "it is a symlink, which the service refuses to follow"
    if error.errno == errno.ENOSPC:
        return "no space left on device"
    if error.errno == errno.EROFS:
        return "read-only file system"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return error.strerror or str(error)


def _identity(info: os.stat_result) -> tuple[int, ...]:
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _now_ms() -> int:
    return int(time.time() * 1000)


class FileStore(StateStore):
    """Keep every owner's workflows in JSON files guarded by per-owner lock files."""

    schemes = ("file",)

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.path = path_from_url(url)
        self.directory = os.path.dirname(self.path)
        self.root = os.path.join(self.directory, STATES_DIRECTORY)
        self.events_path = os.path.join(self.directory, JOURNAL_NAME)
        self.journal_lock_path = self.events_path + OLD_LOCK_SUFFIX
        # path -> what the file held, under its stat identity.
        self._cache = TaggedCache(CACHED_FILES)
        # Stored JSON -> the Snapshot served for it.
        self._snapshots: dict[str, Snapshot] = {}
        self._owner_locks: Keyed[str, threading.Lock] = Keyed(lambda owner: threading.Lock())
        self._held = threading.local()
        self._migrated_pid: int | None = None
        self.owner_bound_slack_ms = OWNER_BOUND_SLACK_MS
        self._remove_stale_temp_files()

    # --- paths and files -------------------------------------------------------------------

    def _owner_directory(self, owner: str) -> str:
        """Return the directory holding the owner's workflows."""
        return os.path.join(self.root, owner)

    # Owners and workflow ids are checked names (no "/", never "." or ".."), and `root` never
    # ends in "/": plain concatenation is os.path.join's answer at a fraction of its cost.
    def _state_path(self, owner: str, workflow_id: str) -> str:
        """Return the file of one workflow."""
        return f"{self.root}/{owner}/{workflow_id}{STATE_SUFFIX}"

    def _meta(self, owner: str, name: str) -> str:
        return f"{self.root}/{owner}/{name}"

    def _fail(self, action: str, path: str, error: OSError) -> StorageUnavailable:
        kind = DiskFull if error.errno in (errno.ENOSPC, errno.EDQUOT) else StorageUnavailable
        return kind(f"State file backend: cannot {action} {path}: {_problem(error)}")

    def _ensure_directory(self, path: str) -> None:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as error:
            raise self._fail("create directory", path, error) from None
        self._refuse_symlink(path)

    def _refuse_symlink(self, path: str) -> None:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        except OSError as error:
            raise self._fail("inspect", path, error) from None
        if stat.S_ISLNK(mode):
            raise self._fail("use", path, OSError(errno.ELOOP, "symlink"))

    def _read_file(self, path: str) -> bytes | None:
        try:
            fd = os.open(path, _OPEN_READ)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise self._fail("read", path, error) from None
        try:
            return _read_to_end(fd)
        except OSError as error:
            raise self._fail("read", path, error) from None
        finally:
            os.close(fd)

    def _atomic_write(self, path: str, data: bytes, *, sync_directory: bool = True) -> None:
        """Write a temp file beside `path`, fsync it, rename it over `path`, fsync the directory."""
        self._refuse_symlink(path)
        directory, name = os.path.split(path)
        temp = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            fd = os.open(temp, _OPEN_NEW, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
        except OSError as error:
            with suppress(OSError):
                os.unlink(temp)
            raise self._fail("write", path, error) from None
        if sync_directory:
            self._sync_directory(directory)

    def _write_freeing(self, path: str, data: bytes, *, sync_directory: bool = True) -> None:
        """Write a file that a delete changes: atomically, or, when the disk is full, in place.

        A delete is how space is freed, so it must not need a new file. In place, the new
        content is padded with spaces to the old length (both files it is used for, the counter
        and the index, read through trailing white space), so it takes no new block either.
        """
        try:
            self._atomic_write(path, data, sync_directory=sync_directory)
        except DiskFull:
            self._overwrite(path, data)

    def _overwrite(self, path: str, data: bytes) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                data = data.ljust(os.fstat(fd).st_size, b" ")
                written = 0
                while written < len(data):
                    written += os.pwrite(fd, data[written:], written)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            raise self._fail("write", path, error) from None

    def _remove_stale_temp_files(self) -> None:
        """Remove temp files that killed writers left behind: beside the configured path (the
        journal, an earlier version's files) and in every owner's directory.

        Only temp files of this store's own files, and only those whose writer is gone: its pid
        is not a live process, or the file is older than a minute (a write takes milliseconds).
        """
        # Beside the configured path only its own files: the directory may hold others'.
        name = os.path.basename(self.path)
        top = {name, name + OLD_SEQ_SUFFIX, name + OLD_HISTORY_SUFFIX, JOURNAL_NAME}
        try:
            owners = [os.path.join(self.root, name) for name in os.listdir(self.root)]
        except OSError:
            owners = []  # no state directory yet: nothing to clean there
        for directory in (self.directory, *owners):
            try:
                names = os.listdir(directory)
            except OSError:
                continue  # not a directory, or not readable
            for entry in names:
                match = TEMP_NAME.fullmatch(entry)
                if match is None:
                    continue
                if directory == self.directory:
                    if match["name"] not in top:
                        continue
                elif _OWNER_FILE.fullmatch(match["name"]) is None:
                    continue
                path = os.path.join(directory, entry)
                try:
                    info = os.lstat(path)
                    if not stat.S_ISREG(info.st_mode):
                        continue
                    recent = time.time() - info.st_mtime < STALE_TEMP_SECONDS
                    if recent and _process_alive(int(match["pid"])):
                        continue
                    os.unlink(path)
                except OSError:
                    continue
                log.info("removed %s, a temp file left by a writer that stopped mid-write", path)

    def _remove(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise self._fail("delete", path, error) from None

    def _sync_directory(self, directory: str) -> None:
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            raise self._fail("sync directory", directory, error) from None

    @contextmanager
    def _flock(self, path: str, deadline: float, what: str) -> Iterator[None]:
        """Hold an exclusive flock on `path` (created 0600), waiting until `deadline`."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise self._fail("open the lock file", path, error) from None
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        self.observer.lock_timed_out()
                        raise LockTimeout(
                            f"The {what} lock {path} stayed held by another process "
                            f"for {self.lock_wait:g}s"
                        ) from None
                    time.sleep(LOCK_POLL_SECONDS)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    @contextmanager
    def _locked(self, owner: str) -> Iterator[None]:
        """Hold the owner's writer lock: a thread lock in this process, flock across processes."""
        started = time.monotonic()
        deadline = started + self.lock_wait
        directory = self._owner_directory(owner)
        with self._owner_locks.use(owner) as thread_lock:
            if not thread_lock.acquire(timeout=self.lock_wait):
                self.observer.lock_timed_out()
                raise LockTimeout(
                    f"The lock of owner {owner!r} in {self.root} stayed held "
                    f"for {self.lock_wait:g}s"
                )
            try:
                for path in (self.directory, self.root, directory):
                    self._ensure_directory(path)
                with self._flock(self._meta(owner, LOCK_FILE), deadline, "owner"):
                    self.observer.lock_waited(time.monotonic() - started)
                    held = self._holding()
                    held.add(owner)
                    try:
                        yield
                    finally:
                        held.discard(owner)
            finally:
                thread_lock.release()

    def _holding(self) -> set[str]:
        """Return the owners whose lock this thread holds."""
        held = getattr(self._held, "owners", None)
        if held is None:
            held = self._held.owners = set()
        return held

    # --- reading ---------------------------------------------------------------------------

    def _started(self) -> None:
        """Migrate the single-state layout of an earlier version, once per process."""
        if self._migrated_pid != os.getpid():
            self._migrate()
            self._migrated_pid = os.getpid()

    def _read_state(
        self, owner: str, workflow_id: str
    ) -> tuple[dict[str, Any] | None, str | None, int]:
        """Return (stored state or None, its JSON, its version even if expired, else 0)."""
        path = self._state_path(owner, workflow_id)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None, None, 0
        except OSError as error:
            raise self._fail("read", path, error) from None
        if stat.S_ISLNK(info.st_mode):
            raise self._fail("read", path, OSError(errno.ELOOP, "symlink"))
        identity = _identity(info)
        cached = self._cache.get(path, identity)
        if cached is not None:
            stored, text, expiry = cached
        else:
            raw = self._read_file(path)
            if raw is None:
                return None, None, 0
            stored = self._decode(owner, workflow_id, raw)
            if stored is None:
                return None, None, 0
            text = raw.decode("utf-8")
            expiry = model.expires_at(stored, self.ttl, self.stale_ttl, self.failed_ttl)
            if time.time() - info.st_mtime > RACY_SECONDS:
                self._cache.put(path, identity, (stored, text, expiry))
        if time.time() >= expiry:
            return None, None, stored["version"]
        return stored, text, stored["version"]

    def _read_small(self, path: str) -> str | None:
        """Return the text of a small metadata file (remembered by stat identity), or None."""
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise self._fail("read", path, error) from None
        identity = _identity(info)
        cached = self._cache.get(path, identity)
        if cached is not None:
            return cached
        raw = self._read_file(path)
        if raw is None:
            return None
        text = raw.decode("utf-8", "replace").strip()
        if time.time() - info.st_mtime > RACY_SECONDS:
            self._cache.put(path, identity, text)
        return text

    def _read_current(self, owner: str) -> str | None:
        text = self._read_small(self._meta(owner, CURRENT_FILE))
        return text if text and model.WORKFLOW_ID_RE.match(text) else None

    def _read_seq(self, owner: str) -> int | None:
        text = self._read_small(self._meta(owner, SEQ_FILE))
        return int(text) if text and text.isdigit() else None

    def _get(self, owner: str, workflow_id: str | None, *, with_id: bool) -> Snapshot:
        self._started()
        target = workflow_id if workflow_id is not None else self._read_current(owner)
        stored, text, last_version = (
            self._read_state(owner, target) if target is not None else (None, None, 0)
        )
        if stored is None:
            if with_id:
                return Snapshot(None, "null", str(max(self._counter(owner), last_version)))
            return Snapshot(None, "null")
        # The same stored JSON is served as the same Snapshot (immutable; its state is the
        # cached one anyway), made once: a sealed state is opened afresh on every read.
        made = self._snapshots.get(text)  # type: ignore[arg-type]
        if made is not None:
            return made
        snapshot = self._served(stored, text)
        if snapshot.state is stored:
            if len(self._snapshots) >= CACHED_FILES:
                self._snapshots = {}
            self._snapshots[text] = snapshot  # type: ignore[index]
        return snapshot

    def _counter(self, owner: str) -> int:
        """Return the owner's counter, seeding it from the clock when missing.

        For a stream's snapshot of nothing: its id is then a number the next write follows by
        one, as it always was.
        """
        seq = self._read_seq(owner)
        if seq is not None:
            return seq
        with self._locked(owner):
            seq = self._read_seq(owner)
            if seq is None:
                seq = self._seq_or_clock(owner)
                self._atomic_write(self._meta(owner, SEQ_FILE), str(seq).encode())
            return seq

    def _load_index(self, owner: str) -> dict[str, list[int]]:
        """Return the owner's index: id -> [last_update ms, expires ms, bytes or UNKNOWN_BYTES]."""
        raw = self._read_file(self._meta(owner, INDEX_FILE))
        try:
            index = json.loads(raw) if raw else {}
        except (ValueError, RecursionError):
            index = {}
        if not isinstance(index, dict):
            return {}
        return {
            key: value if len(value) == 3 else [*value, UNKNOWN_BYTES]
            for key, value in index.items()
            if isinstance(value, list)
            and len(value) in (2, 3)
            and all(type(v) is int for v in value)
        }

    def _list_order(self, owner: str) -> tuple[tuple[int, str, int], ...]:
        """Return the owner's index as (last_update ms, id, expires ms), newest first.

        Remembered by the index file's stat identity, as a file is: between writes every page
        of a list walks the same order, and parsing, checking and sorting the whole index again
        was most of a page's cost.
        """
        path = self._meta(owner, INDEX_FILE)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return ()
        except OSError as error:
            raise self._fail("read", path, error) from None
        identity = _identity(info)
        key = (LIST_ORDER, path)
        order = self._cache.get(key, identity)
        if order is not None:
            return order
        index = self._load_index(owner)
        rows = ((when, workflow_id, expires) for workflow_id, (when, expires, _) in index.items())
        order = tuple(sorted(rows, reverse=True))
        if time.time() - info.st_mtime > RACY_SECONDS:
            self._cache.put(key, identity, order)
        return order

    def _bytes_in(self, owner: str, index: dict[str, list[int]], but: str | None = None) -> int:
        """Return the bytes of the unexpired workflows `index` lists, except `but`'s."""
        now = _now_ms()
        total = 0
        for workflow_id, (_, expires, size) in index.items():
            if expires <= now or workflow_id == but:
                continue
            if size == UNKNOWN_BYTES:
                try:
                    size = os.stat(self._state_path(owner, workflow_id)).st_size
                except OSError:
                    size = 0
            total += size
        return total

    def _owner_bytes(self, owner: str) -> int:
        self._started()
        return self._bytes_in(owner, self._load_index(owner))

    def _list(
        self, owner: str, status: str, after: Position | None, count: int
    ) -> list[tuple[Position, dict[str, Any]]]:
        self._started()
        now = _now_ms()
        found: list[tuple[Position, dict[str, Any]]] = []
        for when, workflow_id, expires in self._list_order(owner):
            position = (when, workflow_id)
            if expires <= now or (after is not None and not position < after):
                continue
            stored, _, _ = self._read_state(owner, position[1])
            if stored is not None and matches(stored, status):
                found.append((position, stored))
                if len(found) == count:
                    break
        return found

    def _owners(self) -> list[str]:
        return [owner for owner, _ in self._owner_indexes()]

    def _owners_by_latest(self) -> Iterator[tuple[str, int]]:
        # An owner's index is rewritten by each of its writes, after the write's last_update
        # was stamped: its mtime bounds every last_update, give or take the tick of the
        # kernel's coarse clock that stamps it.
        found = sorted(
            (
                (int(info.st_mtime * 1000) + self.owner_bound_slack_ms, owner)
                for owner, info in self._owner_indexes()
            ),
            reverse=True,
        )
        for bound, owner in found:
            yield owner, bound

    def _owner_indexes(self) -> list[tuple[str, os.stat_result]]:
        """Return every owner that ever created a workflow, with its index file's stat."""
        self._started()
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        except OSError as error:
            raise self._fail("list", self.root, error) from None
        found = []
        # An owner that ever created a workflow has an index (a stream alone makes a directory).
        for entry in entries:
            name = entry.name
            if not OWNER_RE.match(name) or name in (".", "..") or entry.is_symlink():
                continue
            try:
                info = os.stat(self._meta(name, INDEX_FILE), follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                found.append((name, info))
        return found

    def _load_history(self, path: str) -> list[Any]:
        raw = self._read_file(path)
        try:
            entries = json.loads(raw) if raw else []
        except (ValueError, RecursionError):
            entries = []
        return entries if isinstance(entries, list) else []

    def _history(self, owner: str, limit: int) -> list[str]:
        self._started()
        entries = self._load_history(self._meta(owner, HISTORY_FILE))
        return [dumps(entry) for entry in entries[:limit]]

    # --- writing ---------------------------------------------------------------------------

    def _seq_or_clock(self, owner: str) -> int:
        """Return the owner's counter, or (missing) the clock in µs less one: never back."""
        seq = self._read_seq(owner)
        return seq if seq is not None else clock_microseconds() - 1

    def _run_batch(self, owner: str, workflow_id: str | None, batch: list[PendingWrite]) -> None:
        """Apply and commit a batch of writes to one workflow under the owner's lock."""
        self._started()
        with self._locked(owner):
            current = self._read_current(owner)
            target = workflow_id if workflow_id is not None else current
            if target is None:
                applied = self._apply_batch(Found(None, None, False), batch)
                assert not applied.chain, "a write to no workflow produced a state"
                self._settle(applied.answers, [], Snapshot(None, "null"))
                return
            stored, text, last_version = self._read_state(owner, target)
            other = None
            checks_current = any(write.change.if_match is not None for write in batch)
            if checks_current and current is not None and current != target:
                other = self._read_state(owner, current)[0]
            seq = max(self._seq_or_clock(owner), last_version)
            index = self._load_index(owner)
            # Under the owner's lock the owner's bytes cannot change: checked here, exactly.
            others = self._bytes_in(owner, index, target) if self.max_owner_bytes else None
            stored_bytes = len(text) if stored is not None and text is not None else 0
            found = Found(target, stored, current == target, other, seq, stored_bytes, others)
            applied = self._apply_batch(found, batch)
            unchanged = self._served(stored, text)
            if applied.chain and stored is None and self._at_limit(index, target):
                refused = model.TooManyWorkflows(
                    f"Owner {owner!r} has {self.max_workflows} workflows, the most allowed; "
                    "delete some or let finished ones expire"
                )
                answers = [
                    (w, a if isinstance(a, Exception) else refused) for w, a in applied.answers
                ]
                self._settle(answers, [], unchanged)
                return
            committed: list[Snapshot] = []
            if applied.chain:
                committed = self._commit(owner, target, current, index, applied)
            self._settle(applied.answers, committed, unchanged)

    def _at_limit(self, index: dict[str, list[int]], workflow_id: str) -> bool:
        """Tell whether the owner has as many unexpired workflows as allowed (besides this one)."""
        now = _now_ms()
        alive = [key for key, (_, expires, _) in index.items() if expires > now]
        return len(alive) - (workflow_id in alive) >= self.max_workflows

    def _commit(
        self,
        owner: str,
        workflow_id: str,
        current: str | None,
        index: dict[str, list[int]],
        applied: Applied,
    ) -> list[Snapshot]:
        directory = self._owner_directory(owner)
        chain = applied.chain
        versions = [new["version"] for new in chain]
        # The counter is written first: a crash after it leaves a gap, never a reused number.
        self._atomic_write(self._meta(owner, SEQ_FILE), str(versions[-1]).encode())
        encoded = applied.encoded
        documents = [
            f"{head}{version}}}" for (head, _), version in zip(encoded, versions, strict=True)
        ]
        last = chain[-1]
        self._atomic_write(
            self._state_path(owner, workflow_id), documents[-1].encode(), sync_directory=False
        )
        expires = int(model.expires_at(last, self.ttl, self.stale_ttl, self.failed_ttl) * 1000)
        index[workflow_id] = [score_of(last), expires, len(documents[-1])]
        self._prune(owner, index)
        self._atomic_write(
            self._meta(owner, INDEX_FILE), dumps(index).encode(), sync_directory=False
        )
        makes = any(applied.makes_current)
        if makes and current != workflow_id:
            self._atomic_write(
                self._meta(owner, CURRENT_FILE), workflow_id.encode(), sync_directory=False
            )
        if any(applied.finished):
            finished = [
                json.loads(d) for d, end in zip(documents, applied.finished, strict=True) if end
            ]
            self._append_history(owner, finished)
        self._sync_directory(directory)
        is_current = current == workflow_id
        events = []
        for version, document, made in zip(versions, documents, applied.makes_current, strict=True):
            is_current = is_current or made
            events.append((workflow_id, is_current, version, document))
        self._journal(owner, events)
        snapshots = []
        for new, (head, sealed) in zip(chain, encoded, strict=True):
            snapshots.append(self._committed(owner, new, head, sealed, new["version"]))
            self.observer.wrote()
        return snapshots

    def _prune(self, owner: str, index: dict[str, list[int]]) -> None:
        """Drop expired workflows from `index` and remove their files (under the owner's lock)."""
        now = _now_ms()
        for workflow_id, (_, expires, _) in list(index.items()):
            if expires > now:
                continue
            # The index may be older than the file (a crash between the two): ask the file.
            stored, _, _ = self._read_state(owner, workflow_id)
            if stored is None:
                self._remove(self._state_path(owner, workflow_id))
                # A blocked step's answer goes with its workflow, expired too.
                self._remove(self._input_path(owner, workflow_id))
                del index[workflow_id]

    def _delete(self, owner: str, workflow_id: str | None) -> int:
        self._started()
        with self._locked(owner):
            current = self._read_current(owner)
            target = workflow_id if workflow_id is not None else current
            stored, last_version = None, 0
            if target is not None:
                stored, _, last_version = self._read_state(owner, target)
            index = self._load_index(owner)
            if workflow_id is not None and stored is None:
                if target in index or last_version:
                    self._remove(self._state_path(owner, target))
                    self._remove(self._input_path(owner, target))
                    index.pop(target, None)
                    self._write_freeing(self._meta(owner, INDEX_FILE), dumps(index).encode())
                raise model.NoWorkflow(f"There is no workflow {workflow_id!r} to delete")
            version = max(self._seq_or_clock(owner), last_version) + 1
            self._write_freeing(self._meta(owner, SEQ_FILE), str(version).encode())
            is_current = workflow_id is None or current == target
            if target is not None:
                self._remove(self._state_path(owner, target))
                # A blocked step's answer goes with its workflow.
                self._remove(self._input_path(owner, target))
                if index.pop(target, None) is not None:
                    self._write_freeing(
                        self._meta(owner, INDEX_FILE), dumps(index).encode(), sync_directory=False
                    )
            if is_current and current is not None:
                self._remove(self._meta(owner, CURRENT_FILE))
            self._sync_directory(self._owner_directory(owner))
            self._journal(owner, [(target or "", is_current, version, "null")])
            return version

    def _append_history(self, owner: str, finished: list[dict[str, Any]]) -> None:
        """Record finished states (given oldest first) at the top of the owner's history."""
        path = self._meta(owner, HISTORY_FILE)
        entries = [*reversed(finished), *self._load_history(path)]
        self._atomic_write(path, dumps(entries[:HISTORY_MAX]).encode(), sync_directory=False)

    def _journal(self, owner: str, events: list[tuple[str, bool, int, str]]) -> None:
        """Append events for streams in every process; start a new journal when it is big."""
        lines = "".join(
            f'{{"owner":"{owner}","workflow_id":"{workflow_id}",'
            f'"current":{"true" if current else "false"},"id":"{version}","state":{document}}}\n'
            for workflow_id, current, version, document in events
        )
        try:
            self._refuse_symlink(self.events_path)
            deadline = time.monotonic() + self.lock_wait
            with self._flock(self.journal_lock_path, deadline, "journal"):
                try:
                    if os.stat(self.events_path).st_size > EVENTS_MAX_BYTES:
                        self._atomic_write(self.events_path, b"")
                except FileNotFoundError:
                    pass
                fd = os.open(
                    self.events_path,
                    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                )
                try:
                    # One write() per batch, so a follower never sees half a batch's lines.
                    os.write(fd, lines.encode())
                finally:
                    os.close(fd)
        except (OSError, StorageUnavailable) as error:
            # The write itself is durable; a stream that misses this event resyncs on its next.
            log.warning("could not journal events %s for streams: %s", events[0][2], error)

    def _quarantine(self, owner: str, workflow_id: str, raw: str | bytes, reason: str) -> None:
        path = self._state_path(owner, workflow_id)
        if owner in self._holding():
            self._move_aside(path, raw, reason)
            return
        with self._locked(owner):
            self._move_aside(path, raw, reason)

    def _move_aside(self, path: str, raw: str | bytes, reason: str) -> None:
        if self._read_file(path) != (raw.encode() if isinstance(raw, str) else raw):
            return  # a writer replaced it meanwhile
        # <unix time>, or <unix time>-<n> when taken: an earlier copy is never overwritten.
        stamp = f"{path}{CORRUPT_SUFFIX}{int(time.time())}"
        target, n = stamp, 0
        while os.path.lexists(target):
            n += 1
            target = f"{stamp}-{n}"
        try:
            os.chmod(path, 0o600, follow_symlinks=False)
            os.replace(path, target)
        except OSError as error:
            raise self._fail("move aside the corrupt state file", path, error) from None
        self._sync_directory(os.path.dirname(path))
        self._log_quarantine(target, reason)

    # --- migration -------------------------------------------------------------------------

    def _migrate(self) -> None:
        """Move the single state file of an earlier version (and its counter and history)
        into owner `public`, keeping its version; idempotent."""
        old_seq, old_history = self.path + OLD_SEQ_SUFFIX, self.path + OLD_HISTORY_SUFFIX
        if not any(os.path.lexists(p) for p in (self.path, old_seq, old_history)):
            return
        owner = MIGRATION_OWNER
        deadline = time.monotonic() + self.lock_wait
        with self._locked(owner), self._flock(self.path + OLD_LOCK_SUFFIX, deadline, "state"):
            raw = self._read_file(self.path)
            state = None
            if raw is not None:
                try:
                    state = model.parse_stored(raw)
                except ValueError as error:
                    self._move_aside(self.path, raw, str(error))
            seq_text = (self._read_file(old_seq) or b"").strip()
            versions = [self._read_seq(owner) or 0, int(seq_text) if seq_text.isdigit() else 0]
            index = self._load_index(owner)
            if state is not None:
                versions.append(state["version"])
                workflow_id = state["workflow_id"]
                target = self._state_path(owner, workflow_id)
                if not os.path.lexists(target):
                    self._atomic_write(target, raw, sync_directory=False)
                    expires = int(
                        model.expires_at(state, self.ttl, self.stale_ttl, self.failed_ttl) * 1000
                    )
                    index[workflow_id] = [score_of(state), expires, len(raw)]
                    self._atomic_write(
                        self._meta(owner, INDEX_FILE), dumps(index).encode(), sync_directory=False
                    )
                    if self._read_current(owner) is None:
                        self._atomic_write(
                            self._meta(owner, CURRENT_FILE),
                            workflow_id.encode(),
                            sync_directory=False,
                        )
            self._atomic_write(self._meta(owner, SEQ_FILE), str(max(versions)).encode())
            old_entries = self._load_history(old_history)
            if old_entries:
                path = self._meta(owner, HISTORY_FILE)
                entries = self._load_history(path)
                seen = {_history_key(entry) for entry in entries}
                entries += [entry for entry in old_entries if _history_key(entry) not in seen]
                self._atomic_write(path, dumps(entries[:HISTORY_MAX]).encode())
            for path in (self.path, old_seq, old_history):
                self._remove(path)
            self._sync_directory(self.directory)
        log.warning(
            "moved the single-workflow state file %s into owner %r (version %s)",
            self.path,
            owner,
            state["version"] if state else "-",
        )

    # --- other -----------------------------------------------------------------------------

    def _ping(self) -> None:
        self._ensure_directory(self.directory)
        self._ensure_directory(self.root)
        self._refuse_symlink(self.events_path)
        # The shared namespace's files too: where every seed client's workflow lives.
        shared = self._owner_directory(MIGRATION_OWNER)
        self._refuse_symlink(shared)
        for name in (LOCK_FILE, CURRENT_FILE):
            self._refuse_symlink(self._meta(MIGRATION_OWNER, name))
        current = self._read_current(MIGRATION_OWNER)
        if current is not None:
            self._refuse_symlink(self._state_path(MIGRATION_OWNER, current))
        self._started()
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise self._fail("write in", self.root, OSError(errno.EACCES, "denied"))

    def _events(self, stop: threading.Event) -> Iterator[Event]:
        """Tail the journal through an open descriptor, across rotations, missing nothing."""
        journal = self._open_journal(at_end=True)
        pending = b""
        # The last counter value seen per owner: each owner's values come in order, one apart.
        last_seq: dict[str, int] = {}
        yield RESYNC  # everything before the journal's present end is in the consumer's snapshot
        try:
            while not stop.is_set():
                if journal is None:
                    # It appeared after our last look, so all of it is news.
                    journal = self._open_journal(at_end=False)
                if journal is not None:
                    chunk = _read_to_end(journal)
                    if self._journal_replaced(journal):
                        # A writer started a new journal; it finished the old one first.
                        chunk += _read_to_end(journal)
                        os.close(journal)
                        journal = self._open_journal(at_end=False)
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        event = _parse_line(line)
                        if event is None:
                            continue
                        seq = int(event.id) if event.id.isdigit() else None
                        previous = last_seq.get(event.owner)
                        if previous is not None and seq is not None and seq != previous + 1:
                            # Journals rotated faster than this loop looked: some events are
                            # gone, so the consumer must take fresh snapshots.
                            yield RESYNC
                        if seq is not None:
                            if len(last_seq) >= FOLLOWED_OWNERS_MAX:
                                last_seq.clear()
                            last_seq[event.owner] = seq
                        yield event
                stop.wait(WATCH_POLL_SECONDS)
        finally:
            if journal is not None:
                os.close(journal)

    def _open_journal(self, *, at_end: bool) -> int | None:
        try:
            fd = os.open(self.events_path, _OPEN_READ)
        except OSError:
            return None
        if at_end:
            os.lseek(fd, 0, os.SEEK_END)
        return fd

    def _journal_replaced(self, fd: int) -> bool:
        try:
            current = os.stat(self.events_path, follow_symlinks=False)
        except OSError:
            return True
        opened = os.fstat(fd)
        return (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino)

    def _close(self) -> None:
        self._cache.clear()
        self._snapshots = {}

    def _describe(self) -> str:
        return "file://" + self.path

    def _input_path(self, owner: str, workflow_id: str) -> str:
        return os.path.join(self.root, owner, workflow_id + INPUT_SUFFIX)

    def _put_input(self, owner: str, workflow_id: str, text: str, ttl: int) -> None:
        self._started()
        path = self._input_path(owner, workflow_id)
        self._ensure_directory(self._owner_directory(owner))
        self._atomic_write(path, text.encode())

    def _get_input(self, owner: str, workflow_id: str) -> str | bytes | None:
        self._started()
        path = self._input_path(owner, workflow_id)
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise self._fail("read", path, error) from None

    def _delete_input(self, owner: str, workflow_id: str) -> None:
        self._started()
        self._remove(self._input_path(owner, workflow_id))


# In an owner's directory every file is the service's: a workflow's or one of the owner's.
_OWNER_FILE = re.compile(r"\.(seq|current|index|history)|[A-Za-z0-9_.:-]{1,128}\.(json|input)")


def _process_alive(pid: int) -> bool:
    """Tell whether a process with this pid exists (on this host, in this pid namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except (OverflowError, ValueError):
        return False
    return True


def _history_key(entry: Any) -> Any:
    if isinstance(entry, dict):
        return (entry.get("workflow_id"), entry.get("version"))
    return dumps(entry)


def _read_to_end(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_line(line: bytes) -> Event | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if (
        not isinstance(event, dict)
        or not isinstance(event.get("id"), str)
        or not isinstance(event.get("owner"), str)
        or not isinstance(event.get("workflow_id"), str)
    ):
        return None
    return Event(
        id=event["id"],
        json=dumps(event.get("state")),
        owner=event["owner"],
        workflow_id=event["workflow_id"],
        current=event.get("current") is True,
    )
