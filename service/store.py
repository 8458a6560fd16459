"""Attach the configured state store to the app, one per app, and check a configuration."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, current_app

from .config import StoreOptions, from_env, load_steps
from .identity import Authenticator
from .storage import StateStore, open_store

EXTENSION = "workflow_state"

log = logging.getLogger("service.store")


def build_store(config: Mapping[str, Any]) -> StateStore:
    """Create the backend the config's STATE_URL names, with the config's options."""
    extra = {}
    if config.get("REDIS_CLIENT_FACTORY") is not None:  # tests: a fakeredis server of their own
        extra["client_factory"] = config["REDIS_CLIENT_FACTORY"]
    return open_store(config["STATE_URL"], StoreOptions.from_config(config), **extra)


def check_environment(environ: Mapping[str, str] | None = None, *, workers: int = 1) -> str | None:
    """Return a one-line description of what is wrong with the environment, or None.

    `workers` is how many server processes will share the storage (gunicorn's workers).
    """
    try:
        config = from_env(environ)
        Authenticator(config)
        store = build_store(config)
        store.close()
        load_steps(config["STEPS_FILE"])
    except ValueError as error:  # ConfigError, UnknownBackend and bad keys are ValueErrors
        return str(error)
    if store.single_process and workers > 1:
        scheme = config["STATE_URL"].partition(":")[0]
        return (
            f"WORKFLOW_STATE_URL {scheme}:// keeps the state in one process, so {workers} "
            "gunicorn workers cannot share it; use WEB_CONCURRENCY=1, or redis:// or file://"
        )
    return None


def init_app(app: Flask) -> None:
    """Create the store for this app; clients connect lazily, after gunicorn forks."""
    app.extensions[EXTENSION] = build_store(app.config)


def store_of(app: Flask) -> StateStore:
    """Return `app`'s store."""
    return app.extensions[EXTENSION]


def get_store() -> StateStore:
    """Return the current app's store."""
    return store_of(current_app)


def describe_backend(store: StateStore) -> str:
    """Name the store's backend and where it keeps the state, without credentials."""
    # A file is named by its path; a Redis by its URL (describe() leaves credentials out).
    where = store.describe().removeprefix("file://")
    return f"{store.schemes[0]} at {where}"


def log_backend(app: Flask) -> None:
    """Log which backend `app` serves from and where, in one line (`storage: file at /path`)."""
    with app.app_context():  # the app's own log format and secrets apply
        log.info("storage: %s", describe_backend(store_of(app)))
