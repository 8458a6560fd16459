"""Where a store keeps owner `public`'s workflows: what tests read and plant behind its back.

A seed client (no identity configured) is owner `public`, and `/workflow/state` is its current
workflow. Redis: `workflow:{public}:state:<id>` and the owner's other keys; file:
`<dir>/workflows/public/<id>.json` and the owner's dot files (service/storage/keys.py and
service/storage/file.py say why).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

from service import model
from service.storage import CurrentWorkflow, FileStore, RedisStore, StateStore
from tests.conftest import steps

PUBLIC = "public"


def file_of(store: FileStore, owner: str, name: str) -> str:
    """Return the path of one of an owner's files on the file backend."""
    return os.path.join(store.root, owner, name)


def current(store: StateStore) -> CurrentWorkflow:
    """Return owner public's current workflow in `store`, behind the one-workflow interface."""
    return CurrentWorkflow(store, PUBLIC)


def current_id(store: StateStore) -> str | None:
    """Return the id of owner public's current workflow, or None."""
    if isinstance(store, RedisStore):
        raw = store.client().get(store.keys.current(PUBLIC))
        return raw.decode() if raw is not None else None
    assert isinstance(store, FileStore)
    try:
        with open(file_of(store, PUBLIC, ".current")) as handle:
            return handle.read().strip() or None
    except FileNotFoundError:
        return None


def state_location(store: StateStore, workflow_id: str | None = None) -> str:
    """Return the Redis key or the file of a workflow (None: the current one) of owner public."""
    workflow_id = workflow_id or current_id(store)
    assert workflow_id is not None, "owner public has no current workflow"
    if isinstance(store, RedisStore):
        return store.keys.state(PUBLIC, workflow_id)
    assert isinstance(store, FileStore)
    return file_of(store, PUBLIC, f"{workflow_id}.json")


def raw_state(store: StateStore, workflow_id: str | None = None) -> bytes | None:
    """Return a workflow (None: the current one) of owner public exactly as stored, or None."""
    if workflow_id is None and current_id(store) is None:
        return None
    where = state_location(store, workflow_id)
    if isinstance(store, RedisStore):
        return store.client().get(where)
    try:
        with open(where, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def put_raw_state(store: StateStore, document: bytes | str, workflow_id: str | None = None) -> None:
    """Write bytes where a workflow (None: the current one) of owner public is stored."""
    data = document.encode() if isinstance(document, str) else document
    where = state_location(store, workflow_id)
    if isinstance(store, RedisStore):
        store.client().set(where, data)
    else:
        with open(where, "wb") as handle:
            handle.write(data)


def raw_history(store: StateStore) -> bytes:
    """Return owner public's history exactly as stored (Redis entries joined by newlines)."""
    if isinstance(store, RedisStore):
        return b"\n".join(store.client().lrange(store.keys.history(PUBLIC), 0, -1))
    assert isinstance(store, FileStore)
    try:
        with open(file_of(store, PUBLIC, ".history"), "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return b""


def history_location(store: StateStore) -> str:
    """Return the Redis key or the file of owner public's history."""
    if isinstance(store, RedisStore):
        return store.keys.history(PUBLIC)
    assert isinstance(store, FileStore)
    return file_of(store, PUBLIC, ".history")


def lock_location(store: StateStore, workflow_id: str | None = None) -> str:
    """Return the lock a write to owner public's workflow takes: its Redis key, or the owner's
    lock file."""
    if isinstance(store, RedisStore):
        workflow_id = workflow_id or current_id(store)
        assert workflow_id is not None
        return store.keys.lock(PUBLIC, workflow_id)
    assert isinstance(store, FileStore)
    return file_of(store, PUBLIC, ".lock")


def events_location(store: StateStore) -> str:
    """Return owner public's event channel (Redis), or the journal of every owner (file)."""
    if isinstance(store, RedisStore):
        return store.keys.events(PUBLIC)
    assert isinstance(store, FileStore)
    return store.events_path


def owner_directory(store: Any) -> str:
    """Return the directory of owner public's files (file backend)."""
    assert isinstance(store, FileStore)
    return os.path.join(store.root, PUBLIC)


def single_workflow_state(version: int = 42) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return what an earlier, single-workflow version left: its running state (`seed-wf`, at
    `version`) and a finished one of its history (`older`)."""
    now = datetime.now(UTC)
    state = {
        "workflow_id": "seed-wf",
        "status": "running",
        "current_step": 0,
        "steps": steps(2),
        "start_time": model.format_time(now - timedelta(minutes=5)),
        "last_update": model.format_time(now - timedelta(minutes=1)),
        "version": version,
    }
    return state, dict(state, workflow_id="older", status="completed", version=version - 5)
