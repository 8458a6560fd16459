"""`fakeredis://`: the Redis backend on an in-memory fakeredis server, for tests.

The state lives in this process's memory, so it cannot be shared with another process: the
server refuses it under gunicorn with more than one worker (see `store.check_environment`).
fakeredis (and lupa, which runs the Lua scripts) are test dependencies, imported only here.
"""

from __future__ import annotations

from typing import Any

from .redis import RedisStore

MISSING = (
    "WORKFLOW_STATE_URL fakeredis:// needs the test packages fakeredis and lupa "
    "(pip install -r requirements-dev.txt)"
)


class FakeRedisStore(RedisStore):
    """Keep the state in a fakeredis server of this store's own."""

    schemes = ("fakeredis",)
    single_process = True

    def __init__(self, url: str, **options: Any) -> None:
        try:
            import fakeredis
            import lupa  # noqa: F401  (fakeredis needs it for EVAL; fail here, not on a write)
        except ImportError:
            raise ValueError(MISSING) from None
        server = fakeredis.FakeServer()
        options.pop("client_factory", None)
        super().__init__(url, client_factory=lambda: fakeredis.FakeRedis(server=server), **options)

    def _describe(self) -> str:
        return "fakeredis://"
