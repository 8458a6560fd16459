"""A real 3-master Redis Cluster (`redis+cluster://`): the storage contract and the HTTP contract
suite's cases run on it, as on one redis-server.

Every key of an owner carries its `{<owner>}` hash tag, so each script runs on the one node that
holds the owner's slot; owners spread over the nodes; one pattern subscription hears every node.
Without redis-server and redis-cli the module skips with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from service.storage import RedisStore, StateStore, StorageUnavailable
from tests.conftest import steps
from tests.contract.store_contract import RedisBacked

# The HTTP contract suite (contract section 2), collected here again: its tests ask for
# `backend`, which this module answers with the cluster.
from tests.contract.test_api_contract import *  # noqa: F403
from tests.support.cluster import RedisCluster, cluster_missing

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(cluster_missing() is not None, reason=cluster_missing() or ""),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    started = RedisCluster().start()
    yield started
    started.close()


@pytest.fixture
def backend(cluster: RedisCluster) -> dict[str, Any]:
    """The create_app config that puts the state on the cluster, empty."""
    cluster.flush()
    return {"STATE_URL": cluster.url, "BACKEND_KIND": "cluster"}


class TestClusterStore(RedisBacked):
    @pytest.fixture
    def make_store(self, cluster: RedisCluster) -> Iterator[Callable[..., StateStore]]:
        cluster.flush()
        stores: list[RedisStore] = []

        def make(**options: Any) -> RedisStore:
            stores.append(RedisStore(cluster.url, **options))
            return stores[-1]

        yield make
        for store in stores:
            store.close()

    @pytest.fixture
    def raw(self, cluster: RedisCluster) -> Any:
        return cluster.client()


def test_owners_spread_over_the_nodes_and_each_owner_stays_on_one(cluster: RedisCluster):
    cluster.flush()
    store = RedisStore(cluster.url)
    try:
        owners = [f"user{n}" for n in range(12)]
        for owner in owners:
            store.create(owner, {"workflow_id": "wf", "status": "completed", "steps": steps(1)})
        raw = cluster.client()
        nodes = set()
        for owner in owners:
            keys = [
                store.keys.state(owner, "wf"),
                store.keys.seq(owner),
                store.keys.index(owner),
                store.keys.current(owner),
                store.keys.history(owner),
            ]
            assert len({raw.keyslot(key) for key in keys}) == 1
            nodes.add(raw.get_node_from_key(keys[0]).port)
        assert len(nodes) > 1, "every owner landed on one node: the test proves nothing"
        assert sorted(store.owners()) == sorted(owners)
        assert store.describe() == cluster.url
    finally:
        store.close()


def test_a_bad_cluster_url_is_refused_when_the_store_is_made():
    with pytest.raises(ValueError, match="WORKFLOW_STATE_URL"):
        RedisStore("redis+cluster://host")
    assert "s3cret" not in RedisStore("redis+cluster://u:s3cret@h:1,k:2").describe()


def test_min_replicas_waits_on_the_node_serving_the_owner(cluster: RedisCluster):
    """No node of this Cluster has a replica: the WAIT behind each commit, sent to the owner's
    node, finds none, and the write answers that it may not be durable (it ran)."""
    cluster.flush()
    store = RedisStore(cluster.url, min_replicas=1, io_timeout=0.25)
    try:
        with pytest.raises(StorageUnavailable, match="0 of the 1 replicas"):
            store.create("alice", {"workflow_id": "wf", "steps": steps(1)})
        assert store.get("alice", "wf").state is not None
        with pytest.raises(StorageUnavailable, match="may not be durable"):
            store.delete("alice", "wf")
        assert store.get("alice", "wf").state is None
    finally:
        store.close()
