"""Workflow State Service: server-side state for multi-step web workflows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from . import (
    api,
    config,
    cors,
    errors,
    headers,
    health,
    identity,
    logs,
    metrics,
    openapi,
    pages,
    store,
    stream,
)
from .pages import STATIC_DIR


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Assemble the app: defaults, then the environment, then the test override."""
    app = Flask(__name__, static_folder=STATIC_DIR, static_url_path="/static")
    app.config.from_mapping(config.from_env())
    if test_config:
        app.config.update(test_config)
    # Order matters: the request id first (every response carries it, every refusal is logged),
    # a preflight is answered before the identity check, which comes before any route work.
    logs.init_app(app)
    errors.init_app(app)
    cors.init_app(app)
    identity.init_app(app)
    store.init_app(app)
    pages.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(health.bp)
    stream.init_app(app)
    # After the store and the stream hub, which it plugs its observer and gauge into.
    metrics.init_app(app)
    openapi.init_app(app)
    headers.init_app(app)
    return app
