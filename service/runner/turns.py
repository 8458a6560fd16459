"""Turns between owners where runs execute in the web processes (the file backend).

WORKFLOW_RUNS_PER_OWNER counts the runs of all web processes of the host together. The table
of turns is a small JSON file next to the state file (`<state file>.turns`), read and written
under an exclusive `flock`; for a store only one process uses (`fakeredis://`) it lives in
memory. It holds two lists of `[owner, id, incarnation, attempt, pid]`:

- `held`: the runs holding a turn, and the process running each;
- `waiting`: the runs waiting in a process's pool, oldest first, across processes.

A process takes the oldest waiting run of its own whose owner holds fewer turns than the limit
and that no older run of the same owner (in any live process) waits before. The entries of a
process that died (its pid is gone) are dropped whenever the table is read, so a crash never
leaks a turn.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from ..runs import Fence

# [owner, id, incarnation, attempt, pid]
Entry = list
Turn = tuple[str, str, Fence]


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TurnTable:
    """The host's table of turns: a file under a lock, or memory (see the module doc)."""

    def __init__(self, path: str | None, limit: int) -> None:
        self.path = Path(path) if path else None
        self.limit = limit
        self._guard = threading.Lock()
        self._memory: dict[str, list[Entry]] = {"held": [], "waiting": []}

    @contextlib.contextmanager
    def _table(self) -> Iterator[dict[str, list[Entry]]]:
        """Yield the table, locked, with dead processes' entries dropped; store it after."""
        with self._guard:
            if self.path is None:
                yield self._memory
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                handle.seek(0)
                try:
                    table = json.loads(handle.read() or "{}")
                except ValueError:
                    table = {}  # a torn write of a crashed process: the turns are rebuilt
                table = {
                    kind: [e for e in table.get(kind, []) if _alive(e[4])]
                    for kind in ("held", "waiting")
                }
                yield table
                handle.seek(0)
                handle.truncate()
                handle.write(json.dumps(table))
                handle.flush()

    def wait(self, owner: str, workflow_id: str, fence: Fence) -> None:
        """Put a run of this process in line (once per attempt)."""
        entry = [owner, workflow_id, *fence, os.getpid()]
        with self._table() as table:
            if entry not in table["waiting"]:
                table["waiting"].append(entry)

    def take(self) -> Turn | None:
        """Give this process's oldest run whose owner's turn it is a turn; None when none is."""
        pid = os.getpid()
        with self._table() as table:
            held: dict[str, int] = {}
            for entry in table["held"]:
                held[entry[0]] = held.get(entry[0], 0) + 1
            passed: set[str] = set()
            for entry in table["waiting"]:
                owner = entry[0]
                if owner in passed or held.get(owner, 0) >= self.limit:
                    continue
                if entry[4] != pid:
                    passed.add(owner)  # another process's run of that owner is first
                    continue
                table["waiting"].remove(entry)
                table["held"].append(entry)
                return owner, entry[1], Fence(entry[2], entry[3])
        return None

    def give_back(self, owner: str, workflow_id: str, fence: Fence) -> None:
        """End the turn this process's run held."""
        self._remove("held", [owner, workflow_id, *fence, os.getpid()])

    def forget(self, owner: str, workflow_id: str, fence: Fence) -> None:
        """Take a run of this process out of line (handed to another process, or superseded)."""
        self._remove("waiting", [owner, workflow_id, *fence, os.getpid()])

    def _remove(self, kind: str, entry: Entry) -> None:
        with self._table() as table:
            table[kind] = [e for e in table[kind] if e != entry]

    def leave(self) -> None:
        """Drop every entry of this process (it stops)."""
        pid = os.getpid()
        with self._table() as table:
            for kind in ("held", "waiting"):
                table[kind] = [e for e in table[kind] if e[4] != pid]
