"""Fixtures: every test gets its own storage, on every backend the contract suite covers."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
from flask import Flask
from flask.testing import FlaskClient

from service import create_app
from tests.support import RedisServer

BACKENDS = ("fakeredis", "redis", "file")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's own WORKFLOW_* / REDIS_URL settings out of every test."""
    for name in list(os.environ):
        if name.startswith("WORKFLOW_") or name in ("REDIS_URL", "PORT", "WEB_CONCURRENCY"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server owned by this test session (never the shared one on 6379)."""
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server owned by one test, which may kill and restart it."""
    server = RedisServer().start()
    yield server
    server.close()


def backend_config(kind: str, request: pytest.FixtureRequest, tmp_path: Any) -> dict[str, Any]:
    """Return the create_app config that puts the state on backend `kind`, empty."""
    if kind == "fakeredis":
        server = fakeredis.FakeServer()
        return {
            "STATE_URL": "redis://fakeredis/0",
            "REDIS_CLIENT_FACTORY": lambda: fakeredis.FakeRedis(server=server),
        }
    if kind == "redis":
        real: RedisServer = request.getfixturevalue("redis_server")
        real.flush()
        return {"STATE_URL": real.url}
    if kind == "file":
        return {"STATE_URL": f"file://{tmp_path}/state/workflow_state.json"}
    raise ValueError(kind)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> dict[str, Any]:
    """The storage config of one backend; the test runs once per backend."""
    config = backend_config(request.param, request, tmp_path)
    config["BACKEND_KIND"] = request.param
    return config


@pytest.fixture
def make_app(backend: dict[str, Any]) -> Callable[..., Flask]:
    """Build apps on this test's backend, with config overrides."""
    apps: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        app = create_app({"TESTING": True, **backend, **overrides})
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["workflow_stream_hub"].close()
        app.extensions["workflow_state"].close()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """An app on this test's backend with default settings."""
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client for `app`."""
    return app.test_client()


def steps(count: int, status: str = "pending") -> list[dict[str, Any]]:
    """Return `count` steps named step0, step1, ... all with `status`."""
    return [{"action": f"step{i}", "status": status, "label": f"Step {i}"} for i in range(count)]
