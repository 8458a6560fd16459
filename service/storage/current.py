"""One owner's current workflow behind the seed's one-workflow interface.

What the CLI acts on (owner `public`) until it takes workflow ids, and what tests written for
the single-workflow store use: `get()`, `save(body)`, `clear()`, ... on the owner's current
workflow, with `events()` narrowed to the changes a stream of `/workflow/state` sees.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from .base import HISTORY_MAX, RESYNC, Event, Snapshot, StateStore


class CurrentWorkflow:
    """The current workflow of `owner` in `store`."""

    def __init__(self, store: StateStore, owner: str) -> None:
        self.store = store
        self.owner = owner

    @property
    def ttl(self) -> int:
        """Return the store's TTL of a finished workflow."""
        return self.store.ttl

    @property
    def stale_ttl(self) -> int:
        """Return the store's TTL of a running workflow."""
        return self.store.stale_ttl

    @property
    def failed_ttl(self) -> int:
        """Return the store's TTL of a failed workflow."""
        return self.store.failed_ttl

    def get(self) -> Snapshot:
        """Return the current workflow (state None when there is none)."""
        return self.store.get(self.owner)

    def get_for_stream(self) -> Snapshot:
        """Return the current workflow with its event id (the owner's counter when none)."""
        return self.store.get_for_stream(self.owner)

    def save(self, body: Any, *, if_match: frozenset[str] | None = None) -> Snapshot:
        """Save a whole workflow and make it current, as POST /workflow/state."""
        return self.store.save(self.owner, body, if_match=if_match)

    def update_step(
        self, index: int, body: Any, *, if_match: frozenset[str] | None = None
    ) -> Snapshot:
        """Update one step of the current workflow."""
        return self.store.update_step(self.owner, None, index, body, if_match=if_match)

    def merge(self, body: Any, *, if_match: frozenset[str] | None = None) -> Snapshot:
        """Replace top-level fields of the current workflow."""
        return self.store.merge(self.owner, None, body, if_match=if_match)

    def clear(self) -> int:
        """Delete the current workflow (also when there is none); return the counter value."""
        return self.store.delete(self.owner, None)

    def history(self, limit: int = HISTORY_MAX) -> list[dict[str, Any]]:
        """Return the owner's last finished workflows, newest first."""
        return self.store.history(self.owner, limit)

    def events(self, stop: threading.Event) -> Iterator[Event]:
        """Yield RESYNCs and the changes of whichever workflow is the owner's current one."""
        for event in self.store.events(stop):
            if event is RESYNC or (event.owner == self.owner and event.current):
                yield event

    def ping(self) -> None:
        """Raise StorageUnavailable unless the backend answers."""
        self.store.ping()

    def describe(self) -> str:
        """Describe where the state lives."""
        return self.store.describe()

    def close(self) -> None:
        """Release the store's connections and handles."""
        self.store.close()
