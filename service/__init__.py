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
    hooks,
    identity,
    logs,
    metrics,
    openapi,
    pages,
    run_api,
    store,
    stream,
    workflows,
)
from .pages import STATIC_DIR


def create_app(
    test_config: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None
) -> Flask:
    """Assemble the app: defaults, then the environment (or `environ`), then the test override."""
    app = hooks.App(__name__, static_folder=STATIC_DIR, static_url_path="/static")
    # A path is routed as sent: "/workflows//a1" is no route (a JSON 404), not a redirect.
    app.url_map.merge_slashes = False
    app.config.from_mapping(config.from_env(environ))
    if test_config:
        app.config.update(test_config)
    # Order matters. The store and the stream hub first: metrics plugs into them. The request
    # steps (service/hooks.py) run before-steps in this order and after-steps in the reverse:
    # metrics sees every answer's final status; the request id comes next (every response
    # carries it, every refusal is logged); a preflight is answered before the identity check,
    # which comes before any route work.
    store.init_app(app)
    stream.init_app(app)
    hooks.init_app(app)
    metrics.init_app(app)
    logs.init_app(app)
    errors.init_app(app)
    cors.init_app(app)
    identity.init_app(app)
    pages.init_app(app)
    api.init_app(app)
    run_api.init_app(app)
    workflows.init_app(app)
    app.register_blueprint(health.bp)
    openapi.init_app(app)
    headers.init_app(app)
    return app
