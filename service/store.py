"""Attach the configured state store to the app, one per process."""

from __future__ import annotations

from flask import Flask, current_app

from .secrets import FieldCipher
from .storage import StateStore, open_store

EXTENSION = "workflow_state"


def build_store(config: dict) -> StateStore:
    """Create the backend the config's STATE_URL names, with the config's timings."""
    keys = config.get("STATE_SECRET_KEYS") or ()
    options = {
        "key": config["STATE_KEY"],
        "ttl": config["STATE_TTL"],
        "stale_ttl": config["STATE_STALE_TTL"],
        "lock_timeout": config["LOCK_TIMEOUT"],
        "lock_wait": config["LOCK_WAIT"],
        "io_timeout": config["IO_TIMEOUT"],
        "cipher": FieldCipher(keys) if keys else None,
        "min_replicas": config["MIN_REPLICAS"],
    }
    if config.get("REDIS_CLIENT_FACTORY") is not None:
        options["client_factory"] = config["REDIS_CLIENT_FACTORY"]
    return open_store(config["STATE_URL"], **options)


def init_app(app: Flask) -> None:
    """Create the store for this app; clients connect lazily, after gunicorn forks."""
    app.extensions[EXTENSION] = build_store(app.config)


def get_store() -> StateStore:
    """Return the current app's store."""
    return current_app.extensions[EXTENSION]
