"""JSON-file backend: the embedded default for one host and any number of worker processes.

The state file holds exactly the stored state. Writers serialise on `flock` of a separate
lock file and replace the state atomically (temp file, fsync, rename, fsync of the directory),
so a reader sees the old state or the new one, never a torn one. Beside the state file live
`<name>.seq` (the version counter, which outlives deletes and expiry), `<name>.history.json`
and `<name>.events` (a journal that streams in other processes tail).
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
    RESYNC,
    Change,
    Event,
    LockTimeout,
    Snapshot,
    StateStore,
    StorageUnavailable,
    clock_microseconds,
    dumps,
    log,
)
from .batching import PendingWrite, WriteCombiner

LOCK_SUFFIX = ".lock"
SEQ_SUFFIX = ".seq"
HISTORY_SUFFIX = ".history.json"
EVENTS_SUFFIX = ".events"
CORRUPT_SUFFIX = ".corrupt-"
# The journal is only for live streams; past this size a writer starts a new one.
EVENTS_MAX_BYTES = 1 << 20
WATCH_POLL_SECONDS = 0.05
LOCK_POLL_SECONDS = 0.001
# A file changed this recently may have an mtime that a later write repeats (coarse clocks),
# so it is re-read rather than served from the cache (git's "racily clean" rule).
RACY_SECONDS = 2.0
# `_atomic_write`'s temp files: .<name>.tmp-<pid>-<hex>. One lives for a single write; one that
# outlived its writer (a killed worker) is removed on start.
TEMP_NAME = re.compile(r"\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]+")
# Older than this, a temp file is a leftover even if its pid is alive (the pid was reused).
STALE_TEMP_SECONDS = 60.0

_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


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


class FileStore(StateStore):
    """Keep the state in a JSON file guarded by a lock file."""

    schemes = ("file",)

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.path = path_from_url(url)
        self.directory = os.path.dirname(self.path)
        self.lock_path = self.path + LOCK_SUFFIX
        self.seq_path = self.path + SEQ_SUFFIX
        self.history_path = self.path + HISTORY_SUFFIX
        self.events_path = self.path + EVENTS_SUFFIX
        # (stat identity, stored state, its JSON, expiry time) of the last file read.
        self._cache: tuple[tuple[int, ...], dict[str, Any], str, float] | None = None
        self._thread_lock = threading.Lock()
        self._held = threading.local()
        self._writes = WriteCombiner(self._run_batch)
        self._remove_stale_temp_files()

    # --- files ----------------------------------------------------------------------------

    def _fail(self, action: str, path: str, error: OSError) -> StorageUnavailable:
        return StorageUnavailable(f"State file backend: cannot {action} {path}: {_problem(error)}")

    def _ensure_directory(self) -> None:
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as error:
            raise self._fail("create directory", self.directory, error) from None

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

    def _remove_stale_temp_files(self) -> None:
        """Remove temp files that killed writers left beside the state files.

        Only this store's own temp files, and only those whose writer is gone: its pid is not a
        live process, or the file is older than a minute (a write takes milliseconds).
        """
        ours = {
            os.path.basename(path)
            for path in (self.path, self.seq_path, self.history_path, self.events_path)
        }
        try:
            names = os.listdir(self.directory)
        except OSError:
            return  # no directory yet (or not readable): nothing to clean
        for name in names:
            match = TEMP_NAME.fullmatch(name)
            if match is None or match["name"] not in ours:
                continue
            path = os.path.join(self.directory, name)
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

    def _atomic_write(self, path: str, data: bytes) -> None:
        """Write a temp file beside `path`, fsync it, rename it over `path`, fsync the directory."""
        self._refuse_symlink(path)
        name = os.path.basename(path)
        temp = os.path.join(self.directory, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
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
        self._sync_directory()

    def _sync_directory(self) -> None:
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            raise self._fail("sync directory", self.directory, error) from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the writer lock: a thread lock within this process, flock across processes."""
        started = time.monotonic()
        deadline = started + self.lock_wait
        if not self._thread_lock.acquire(timeout=self.lock_wait):
            self.observer.lock_timed_out()
            raise LockTimeout(
                f"The state lock {self.lock_path} stayed held for {self.lock_wait:g}s"
            )
        try:
            self._ensure_directory()
            try:
                fd = os.open(
                    self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
                )
            except OSError as error:
                raise self._fail("open the lock file", self.lock_path, error) from None
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            self.observer.lock_timed_out()
                            raise LockTimeout(
                                f"The state lock {self.lock_path} stayed held by another process "
                                f"for {self.lock_wait:g}s"
                            ) from None
                        time.sleep(LOCK_POLL_SECONDS)
                self.observer.lock_waited(time.monotonic() - started)
                self._held.active = True
                try:
                    yield
                finally:
                    self._held.active = False
            finally:
                os.close(fd)  # closing the descriptor releases the flock
        finally:
            self._thread_lock.release()

    # --- reading ---------------------------------------------------------------------------

    def _read_stored(self) -> tuple[dict[str, Any] | None, str | None, int]:
        """Return (stored state or None, its JSON, its version even if expired)."""
        try:
            info = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return None, None, 0
        except OSError as error:
            raise self._fail("read", self.path, error) from None
        if stat.S_ISLNK(info.st_mode):
            raise self._fail("read", self.path, OSError(errno.ELOOP, "symlink"))
        identity = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        cached = self._cache
        if cached is not None and cached[0] == identity:
            stored, text, expiry = cached[1], cached[2], cached[3]
        else:
            raw = self._read_file(self.path)
            if raw is None:
                return None, None, 0
            stored = self._decode(raw)
            if stored is None:
                return None, None, 0
            text = raw.decode("utf-8")
            expiry = model.expires_at(stored, self.ttl, self.stale_ttl)
            if time.time() - info.st_mtime > RACY_SECONDS:
                self._cache = (identity, stored, text, expiry)
        if time.time() >= expiry:
            return None, None, stored["version"]
        return stored, text, stored["version"]

    def _read_seq(self) -> int | None:
        """Return the version counter, or None when its file is missing or unreadable."""
        raw = self._read_file(self.seq_path)
        try:
            return int(raw) if raw is not None else None
        except ValueError:
            return None

    def _last_version(self, stored_version: int) -> int:
        """Return the last version number taken (under the lock).

        A missing counter file starts from the clock in microseconds, and never below the stored
        state's version, so a version is never reused.
        """
        seq = self._read_seq()
        if seq is None:
            return max(clock_microseconds(), stored_version)
        return max(seq, stored_version)

    def _get(self, *, with_id: bool) -> Snapshot:
        stored, text, last_version = self._read_stored()
        if stored is None:
            if with_id:
                return Snapshot(None, "null", str(max(self._read_seq() or 0, last_version)))
            return Snapshot(None, "null")
        return self._served(stored, text)

    # --- writing ---------------------------------------------------------------------------

    def _transact(self, change: Change) -> Snapshot:
        # Concurrent writers of this process share one hold of the lock and one set of fsyncs.
        return self._writes.submit(change)

    def _run_batch(self, batch: list[PendingWrite]) -> None:
        """Apply and commit a batch of writes under the lock file."""
        with self._locked():
            stored, text, last_version = self._read_stored()
            base = self._last_version(last_version)
            chain, finished, answers = self._apply_batch(stored, batch, base)
            committed: list[Snapshot] = []
            if chain:
                # The counter is written first: a crash after it leaves a gap, never a reused
                # number.
                self._atomic_write(self.seq_path, str(base + len(chain)).encode())
                encoded = [self._encode_head(new, stored) for new in chain]
                versions = [new["version"] for new in chain]
                documents = [
                    f"{head}{version}}}"
                    for (head, _), version in zip(encoded, versions, strict=True)
                ]
                self._atomic_write(self.path, documents[-1].encode())
                if any(finished):
                    self._append_history(
                        [json.loads(d) for d, end in zip(documents, finished, strict=True) if end]
                    )
                self._journal(list(zip(versions, documents, strict=True)))
                for new, (head, sealed) in zip(chain, encoded, strict=True):
                    committed.append(self._committed(new, head, sealed, new["version"]))
                    self.observer.wrote()
            self._settle(answers, committed, self._served(stored, text))

    def _delete(self) -> int:
        with self._locked():
            _, _, last_version = self._read_stored()
            version = self._last_version(last_version) + 1
            self._atomic_write(self.seq_path, str(version).encode())
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            except OSError as error:
                raise self._fail("delete", self.path, error) from None
            self._sync_directory()
            self._journal([(version, "null")])
            return version

    def _append_history(self, finished: list[dict[str, Any]]) -> None:
        """Record finished states (given oldest first) at the top of the history."""
        entries = [*reversed(finished), *self._load_history()]
        self._atomic_write(self.history_path, dumps(entries[:HISTORY_MAX]).encode())

    def _load_history(self) -> list[Any]:
        raw = self._read_file(self.history_path)
        try:
            entries = json.loads(raw) if raw else []
        except (ValueError, RecursionError):
            entries = []
        return entries if isinstance(entries, list) else []

    def _history(self, limit: int) -> list[str]:
        return [dumps(entry) for entry in self._load_history()[:limit]]

    def _journal(self, events: list[tuple[int, str]]) -> None:
        """Append events for streams in every process; start a new journal when it is big."""
        lines = "".join(
            f'{{"id":"{version}","state":{document}}}\n' for version, document in events
        )
        try:
            self._refuse_symlink(self.events_path)
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
            # The write itself is durable; a stream that misses this event resyncs on its poll.
            log.warning("could not journal events %s for streams: %s", events[0][0], error)

    def _quarantine(self, raw: str | bytes, reason: str) -> None:
        if getattr(self._held, "active", False):
            self._move_aside(raw, reason)
            return
        with self._locked():
            self._move_aside(raw, reason)

    def _move_aside(self, raw: str | bytes, reason: str) -> None:
        if self._read_file(self.path) != (raw.encode() if isinstance(raw, str) else raw):
            return  # a writer replaced it meanwhile
        # <unix time>, or <unix time>-<n> when taken: an earlier copy is never overwritten.
        stamp = f"{self.path}{CORRUPT_SUFFIX}{int(time.time())}"
        target, n = stamp, 0
        while os.path.lexists(target):
            n += 1
            target = f"{stamp}-{n}"
        try:
            os.chmod(self.path, 0o600, follow_symlinks=False)
            os.replace(self.path, target)
        except OSError as error:
            raise self._fail("move aside the corrupt state file", self.path, error) from None
        self._sync_directory()
        self._log_quarantine(target, reason)

    # --- other -----------------------------------------------------------------------------

    def _ping(self) -> None:
        self._ensure_directory()
        for path in (self.path, self.lock_path):
            self._refuse_symlink(path)
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise self._fail("write in", self.directory, OSError(errno.EACCES, "denied"))

    def _events(self, stop: threading.Event) -> Iterator[Event]:
        """Tail the journal through an open descriptor, across rotations, missing nothing."""
        journal = self._open_journal(at_end=True)
        pending = b""
        last_seq: int | None = None
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
                        if last_seq is not None and seq is not None and seq != last_seq + 1:
                            # Journals rotated faster than this loop looked: some events are
                            # gone, so the consumer must take a fresh snapshot.
                            yield RESYNC
                        last_seq = seq if seq is not None else last_seq
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
        self._cache = None

    def _describe(self) -> str:
        return "file://" + self.path


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
    if not isinstance(event, dict) or not isinstance(event.get("id"), str):
        return None
    return Event(id=event["id"], json=dumps(event.get("state")))
