"""Every backend implements the whole storage interface, and URLs pick backends in one place."""

from __future__ import annotations

import inspect

import pytest

from service.storage import (
    BACKENDS,
    FakeRedisStore,
    FileStore,
    RedisStore,
    StateStore,
    UnknownBackend,
    open_store,
)
from service.storage.base import StateStore as Base


def abstract_methods() -> set[str]:
    return set(Base.__abstractmethods__)


@pytest.mark.parametrize("backend", sorted(set(BACKENDS.values()), key=lambda cls: cls.__name__))
def test_every_backend_implements_every_private_method(backend):
    assert not getattr(backend, "__abstractmethods__", None), backend.__abstractmethods__
    for name in abstract_methods():
        method = getattr(backend, name)
        assert method is not getattr(Base, name), f"{backend.__name__} inherits abstract {name}"
        assert inspect.signature(method).parameters.keys() == (
            inspect.signature(getattr(Base, name)).parameters.keys()
        ), name


def test_public_methods_live_only_in_the_interface():
    public = {n for n, v in vars(Base).items() if callable(v) and not n.startswith("_")}
    assert public >= {
        "get",
        "get_for_stream",
        "list",
        "owners",
        "history",
        "create",
        "save",
        "update_step",
        "merge",
        "delete",
        "ping",
        "events",
    }
    for backend in set(BACKENDS.values()):
        overridden = public & {n for n in vars(backend) if not n.startswith("_")}
        assert overridden <= {"client"}, f"{backend.__name__} overrides {overridden}"


def test_schemes_map_to_backends():
    assert {
        "redis": RedisStore,
        "rediss": RedisStore,
        "unix": RedisStore,
        "redis+cluster": RedisStore,
        "redis+sentinel": RedisStore,
        "file": FileStore,
        "fakeredis": FakeRedisStore,
    } == BACKENDS
    assert issubclass(RedisStore, StateStore) and issubclass(FileStore, StateStore)


@pytest.mark.parametrize("url", ["ftp://x/y", "postgres://db", "state.json", "memory://"])
def test_an_unknown_scheme_is_a_clear_error(url):
    with pytest.raises(UnknownBackend, match="WORKFLOW_STATE_URL") as error:
        open_store(url)
    assert "redis://" in str(error.value) and "file://" in str(error.value)


def test_opening_a_redis_url_does_not_connect(tmp_path):
    # Connection happens lazily in each process (after gunicorn forks), so this must not fail.
    store = open_store("redis://127.0.0.1:1/0")
    assert isinstance(store, RedisStore)
    assert store.describe() == "redis://127.0.0.1:1/0"


def test_descriptions_never_carry_credentials():
    store = open_store("redis://user:s3cret@cache.internal:6380/2")
    assert "s3cret" not in store.describe()
    assert store.describe() == "redis://cache.internal:6380/2"
