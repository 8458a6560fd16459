"""What every test group shares: routes and constants, processes the tests own, polling helpers."""

from tests.support.processes import (
    CHROMIUM,
    CHROMIUM_ARGS,
    REDIS_SERVER,
    ROOT,
    VENV_BIN,
    Gunicorn,
    RedisServer,
    SSEClient,
    Tmpfs,
    free_port,
    http,
    wait_until,
)
from tests.support.routes import STATE, STREAM

__all__ = [
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "REDIS_SERVER",
    "ROOT",
    "STATE",
    "STREAM",
    "VENV_BIN",
    "Gunicorn",
    "RedisServer",
    "SSEClient",
    "Tmpfs",
    "free_port",
    "http",
    "wait_until",
]
