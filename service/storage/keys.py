"""Redis key names: the one place they are built (README's key table).

Every key of one owner is `<prefix>:{<owner>}:<kind>[:<id>]`. The `{<owner>}` hash tag puts all
of them in one Cluster slot, so every Lua script touches one slot; the kind comes before the
id, so no workflow id can name another kind's key. Owner names have no braces (their rule is
`[A-Za-z0-9_.@-]`) and the prefix may not have any (config.py refuses it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STATE = "state"
LOCK = "lock"
CURRENT = "current"
SEQ = "seq"
INDEX = "index"
HISTORY = "history"
EVENTS = "events"
# The owner's stored bytes per workflow id, and their total under BYTES_TOTAL (no id is "*").
BYTES = "bytes"
BYTES_TOTAL = "*"
CORRUPT = "corrupt"
# A person's answer to a blocked step, apart from the state (never served).
INPUT = "input"
# Outside any owner's slot: the set of owners that ever created a workflow (admin `owner=*`).
OWNERS = "owners"
# On the queue's Redis (service/runner/queue.py): the index of run leases, the runs' counters,
# and the RQ queue's name.
RUNS = "runs"
RUN_STATS = "runs:stats"
RUN_MARKER = "runs:marker"
# Turns between owners (WORKFLOW_RUNS_PER_OWNER), on the queue's Redis too.
RUN_TURN_OWNERS = "runs:owners"
RUN_ADMITTED = "runs:admitted"
RUN_PENDING = "runs:pending"
RUN_TURNS_CHECKED = "runs:checked"

# Characters PSUBSCRIBE patterns treat specially.
_GLOB = re.compile(r"([\\*?\[\]])")


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix (WORKFLOW_STATE_PREFIX)."""

    prefix: str = "workflow"

    def base(self, owner: str) -> str:
        """Return `<prefix>:{<owner>}:`, the start of every key of `owner` (scripts add to it)."""
        return f"{self.prefix}:{{{owner}}}:"

    def state(self, owner: str, workflow_id: str) -> str:
        """Return the key holding one workflow's state JSON."""
        return f"{self.base(owner)}{STATE}:{workflow_id}"

    def input(self, owner: str, workflow_id: str) -> str:
        """Return the key holding the answer to a workflow's blocked step."""
        return f"{self.base(owner)}{INPUT}:{workflow_id}"

    def lock(self, owner: str, workflow_id: str) -> str:
        """Return the key of one workflow's write lock."""
        return f"{self.base(owner)}{LOCK}:{workflow_id}"

    def current(self, owner: str) -> str:
        """Return the key naming the owner's current workflow."""
        return self.base(owner) + CURRENT

    def seq(self, owner: str) -> str:
        """Return the key of the owner's version counter."""
        return self.base(owner) + SEQ

    def index(self, owner: str) -> str:
        """Return the sorted set of the owner's workflow ids, scored by last_update (ms)."""
        return self.base(owner) + INDEX

    def history(self, owner: str) -> str:
        """Return the list of the owner's finished workflows, newest first."""
        return self.base(owner) + HISTORY

    def bytes_of(self, owner: str) -> str:
        """Return the hash of the owner's stored bytes per workflow id (and `*`: their total)."""
        return self.base(owner) + BYTES

    def events(self, owner: str) -> str:
        """Return the pub/sub channel of the owner's changes."""
        return self.base(owner) + EVENTS

    def corrupt(self, owner: str, workflow_id: str) -> str:
        """Return the start of a quarantined value's key; `<unix time>[-<n>]` completes it."""
        return f"{self.base(owner)}{CORRUPT}:{workflow_id}:"

    def owners(self) -> str:
        """Return the set of owners that ever created a workflow."""
        return f"{self.prefix}:{OWNERS}"

    def runs(self) -> str:
        """Return the sorted set of active runs (`<owner>/<id>`) scored by lease deadline (ms).

        Only an index for the lease monitor: the states are the truth.
        """
        return f"{self.prefix}:{RUNS}"

    def run_stats(self) -> str:
        """Return the hash of the runs' counters (the metrics)."""
        return f"{self.prefix}:{RUN_STATS}"

    def run_marker(self) -> str:
        """Return the key that is there while the queue's Redis keeps its data.

        Gone means that Redis lost the jobs and the lease index: a lease monitor rebuilds the
        index from the states at once.
        """
        return f"{self.prefix}:{RUN_MARKER}"

    def run_turn_owners(self) -> str:
        """Return the set of owners with runs holding a turn or waiting for one."""
        return f"{self.prefix}:{RUN_TURN_OWNERS}"

    def run_admitted(self, owner: str) -> str:
        """Return the hash of the owner's runs holding a turn: id → `<incarnation> <attempt>`."""
        return f"{self.prefix}:{RUN_ADMITTED}:{owner}"

    def run_pending(self, owner: str) -> str:
        """Return the list of the owner's runs waiting for a turn, oldest first (`<id> <fence>`)."""
        return f"{self.prefix}:{RUN_PENDING}:{owner}"

    def run_turns_checked(self, kind: str) -> str:
        """Return the key a lease monitor sets while it checks the turns (`kind`) against states.

        One monitor checks per interval, whatever the number of worker processes.
        """
        return f"{self.prefix}:{RUN_TURNS_CHECKED}:{kind}"

    def run_queue(self) -> str:
        """Return the name of the RQ queue of runs (RQ keeps it as `rq:queue:<name>`)."""
        return f"{self.prefix}:{RUNS}"

    def events_pattern(self) -> str:
        """Return the PSUBSCRIBE pattern matching every owner's events channel."""
        escaped = _GLOB.sub(r"\\\1", self.prefix)
        return f"{escaped}:{{*}}:{EVENTS}"

    def owner_of_events(self, channel: str) -> str | None:
        """Return the owner whose events channel `channel` is, or None."""
        head, tail = f"{self.prefix}:{{", f"}}:{EVENTS}"
        if channel.startswith(head) and channel.endswith(tail):
            owner = channel[len(head) : -len(tail)]
            return owner if owner and "}" not in owner else None
        return None
