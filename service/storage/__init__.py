"""Storage backends for the workflow state, chosen by the URL scheme of WORKFLOW_STATE_URL."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..config import StoreOptions
from .base import (
    HISTORY_MAX,
    RESYNC,
    Event,
    LimitExceeded,
    LockStuck,
    LockTimeout,
    Observer,
    OwnerQuotaExceeded,
    Snapshot,
    StateStore,
    StateTooLarge,
    StorageUnavailable,
    Write,
    dumps,
)
from .current import CurrentWorkflow
from .fake import FakeRedisStore
from .file import FileStore
from .listing import Page, list_entry
from .redis import RedisStore

# The one place a URL scheme picks a backend.
BACKENDS: dict[str, type[StateStore]] = {
    scheme: backend
    for backend in (RedisStore, FileStore, FakeRedisStore)
    for scheme in backend.schemes
}


class UnknownBackend(ValueError):
    """WORKFLOW_STATE_URL names a scheme no backend serves."""


def open_store(url: str, options: StoreOptions | None = None, **extra: Any) -> StateStore:
    """Create the backend that serves `url` (redis://, rediss://, unix://, redis+sentinel://,
    redis+cluster://, file://, fakeredis://)."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    backend = BACKENDS.get(scheme)
    if backend is None:
        known = ", ".join(f"{name}://" for name in BACKENDS)
        raise UnknownBackend(
            f"WORKFLOW_STATE_URL has unsupported scheme {scheme or '(none)'!r}; use one of {known}"
        )
    if backend is not RedisStore:
        extra.pop("client_factory", None)
        if replace(options or StoreOptions(), **extra).min_replicas:
            raise ValueError(
                "WORKFLOW_STATE_MIN_REPLICAS needs a Redis backend with replicas; "
                f"{scheme}:// keeps a single copy"
            )
    return backend(url, options=options, **extra)


__all__ = [
    "BACKENDS",
    "HISTORY_MAX",
    "RESYNC",
    "CurrentWorkflow",
    "Event",
    "FakeRedisStore",
    "FileStore",
    "LimitExceeded",
    "LockStuck",
    "LockTimeout",
    "Observer",
    "OwnerQuotaExceeded",
    "Page",
    "RedisStore",
    "Snapshot",
    "StateStore",
    "StateTooLarge",
    "StorageUnavailable",
    "UnknownBackend",
    "Write",
    "dumps",
    "list_entry",
    "open_store",
]
