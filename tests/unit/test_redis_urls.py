"""Redis URLs: each scheme parses into where to connect, and a bad one stops the server at start."""

from __future__ import annotations

import pytest
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.storage import BACKENDS, RedisStore, open_store
from service.storage.redis_urls import (
    TARGETS,
    BadRedisURL,
    ClusterTarget,
    DirectTarget,
    SentinelTarget,
    close_client,
    redis_target,
)
from service.store import check_environment


def test_every_redis_scheme_is_served_by_the_redis_store():
    assert set(TARGETS) == {"redis", "rediss", "unix", "redis+sentinel", "redis+cluster"}
    assert {scheme for scheme, backend in BACKENDS.items() if backend is RedisStore} == set(TARGETS)


def test_a_sentinel_url_names_every_sentinel_the_service_and_the_database():
    target = redis_target("redis+sentinel://10.0.0.1:26379,10.0.0.2:26380,sentinel-c/mymaster/3")
    assert isinstance(target, SentinelTarget)
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("sentinel-c", 26379))
    assert (target.service, target.db) == ("mymaster", 3)
    assert target.username is None and target.password is None


def test_a_sentinel_url_defaults_to_database_0_and_port_26379():
    target = redis_target("redis+sentinel://127.0.0.1/workflow-state")
    assert target.sentinels == (("127.0.0.1", 26379),)
    assert (target.service, target.db) == ("workflow-state", 0)
    assert redis_target("redis+sentinel://h:1/svc/").db == 0


def test_a_sentinel_url_carries_the_masters_password_and_the_sentinels_own():
    target = redis_target(
        "redis+sentinel://:p%40ss@h1:26379,[::1]:26380/svc/1?sentinel_password=s%3Acret"
    )
    assert target.password == "p@ss" and target.username is None
    assert target.sentinel_password == "s:cret"
    assert target.sentinels == (("h1", 26379), ("::1", 26380))
    assert redis_target("redis+sentinel://app:pw@h/svc").username == "app"


def test_describing_a_sentinel_url_leaves_out_every_secret():
    url = "redis+sentinel://app:hunter2@h1:26379,[::1]:26380/svc/1?sentinel_password=topsecret"
    target = redis_target(url)
    assert target.describe() == "redis+sentinel://h1:26379,[::1]:26380/svc/1"
    assert "hunter2" not in repr(target) and "topsecret" not in repr(target)
    store = open_store(url)
    assert store.describe() == target.describe()


@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("redis+sentinel://h1:26379", "service name"),
        ("redis+sentinel://h1:26379/", "service name"),
        ("redis+sentinel:///svc", "host:port"),
        ("redis+sentinel://h1:26379,,h2/svc", "host:port"),
        ("redis+sentinel://h1:notaport/svc", "bad port"),
        ("redis+sentinel://h1:70000/svc", "bad port"),
        ("redis+sentinel://h1/svc/db", "database number"),
        ("redis+sentinel://h1/svc/0/extra", "database number"),
        ("redis+sentinel://h1/svc?ssl=true", "sentinel_password"),
    ],
)
def test_a_bad_sentinel_url_is_refused_with_a_sentence(url, names):
    with pytest.raises(BadRedisURL, match=names):
        redis_target(url)


def test_a_bad_sentinel_url_stops_the_server_at_start_without_leaking_the_password():
    problem = check_environment({"WORKFLOW_STATE_URL": "redis+sentinel://:hunter2@h1:x/svc"})
    assert problem is not None and "WORKFLOW_STATE_URL" in problem
    assert "hunter2" not in problem
    assert check_environment({"WORKFLOW_STATE_URL": "redis+sentinel://h1,h2/svc"}) is None


def test_direct_urls_keep_redis_pys_parsing_and_lose_their_credentials_in_descriptions():
    target = redis_target("redis://user:pw@cache.example:6380/2")
    assert isinstance(target, DirectTarget)
    assert target.describe() == "redis://cache.example:6380/2"
    assert redis_target("unix:///run/redis.sock").describe() == "unix:///run/redis.sock"


def test_a_sentinel_client_has_bounded_timeouts_and_no_retry_of_its_own_on_sentinels():
    target = redis_target("redis+sentinel://127.0.0.1:1,127.0.0.1:2/svc/2")
    retry = Retry(NoBackoff(), 1)
    client = target.connect(io_timeout=0.5, retry=retry)
    try:
        pool = client.connection_pool
        assert pool.connection_kwargs["socket_timeout"] == 0.5
        assert pool.connection_kwargs["socket_connect_timeout"] == 0.5
        assert pool.connection_kwargs["db"] == 2
        assert pool.connection_kwargs["retry"].get_retries() == 1
        manager = pool.sentinel_manager
        assert len(manager.sentinels) == 2
        for sentinel in manager.sentinels:
            kwargs = sentinel.connection_pool.connection_kwargs
            # Asking every sentinel in turn fits in one I/O timeout.
            assert kwargs["socket_timeout"] == 0.25
            assert kwargs["retry"].get_retries() == 0
    finally:
        close_client(client)


def test_min_replicas_needs_a_redis_backend(tmp_path):
    problem = check_environment(
        {
            "WORKFLOW_STATE_URL": f"file://{tmp_path}/state.json",
            "WORKFLOW_STATE_MIN_REPLICAS": "1",
        }
    )
    assert problem is not None and "WORKFLOW_STATE_MIN_REPLICAS" in problem
    assert check_environment({"WORKFLOW_STATE_MIN_REPLICAS": "-1"}) is not None
    assert check_environment({"WORKFLOW_STATE_MIN_REPLICAS": "0"}) is None


def test_a_cluster_url_names_its_nodes_and_never_its_password():
    target = redis_target("redis+cluster://user:s3cret@10.0.0.1:7000,10.0.0.2:7001")
    assert isinstance(target, ClusterTarget)
    assert target.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert (target.username, target.password) == ("user", "s3cret")
    assert target.describe() == "redis+cluster://10.0.0.1:7000,10.0.0.2:7001"
    assert "s3cret" not in repr(target)
    for bad in ("redis+cluster://", "redis+cluster://host", "redis+cluster://h:1/3"):
        with pytest.raises(BadRedisURL, match="WORKFLOW_STATE_URL"):
            redis_target(bad)
