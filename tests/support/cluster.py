"""A real Redis Cluster the tests own: three masters on free loopback ports, no replicas.

`redis-server --cluster-enabled yes` three times, joined by `redis-cli --cluster create`. Each
node also listens on its port + 10000 (the cluster bus), so both must be free. Without the
redis-server and redis-cli binaries the fixture skips with the reason.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.support.processes import REDIS_SERVER, free_port, wait_until

REDIS_CLI = shutil.which("redis-cli")
MASTERS = 3
BUS_OFFSET = 10000


def cluster_missing() -> str | None:
    """Return why a cluster cannot be started here, or None."""
    if REDIS_SERVER is None:
        return "needs the redis-server binary (a Redis Cluster of three real masters)"
    if REDIS_CLI is None:
        return "needs redis-cli (redis-cli --cluster create joins the nodes)"
    return None


def _port_pair() -> int:
    """Return a free port whose cluster-bus port (+10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port + BUS_OFFSET > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + BUS_OFFSET))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    """Three cluster-enabled redis-servers joined into one cluster; `url` is redis+cluster://."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="wss-cluster-"))
        self.ports = [_port_pair() for _ in range(MASTERS)]
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)
        self.processes: list[subprocess.Popen] = []

    def start(self) -> RedisCluster:
        """Start the nodes, create the cluster, and wait until every node says it is ok."""
        assert REDIS_SERVER is not None and REDIS_CLI is not None
        for port in self.ports:
            node_dir = self.directory / str(port)
            node_dir.mkdir()
            self.processes.append(
                subprocess.Popen(
                    [
                        REDIS_SERVER,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(node_dir),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.ports:
            wait_until(lambda p=port: self.node(p).ping(), timeout=10)
        subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        wait_until(self.ok, timeout=20, interval=0.1)
        return self

    def node(self, port: int) -> Any:
        """Return a plain client of one node."""
        import redis

        return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2)

    def ok(self) -> bool:
        """Tell whether every node sees the whole cluster, every slot served."""
        for port in self.ports:
            info = self.node(port).execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text or "cluster_slots_ok:16384" not in text:
                return False
        return True

    def client(self) -> Any:
        """Return a redis-py cluster client, as a test would reach under the service."""
        from redis.cluster import ClusterNode
        from redis.cluster import RedisCluster as Client

        return Client(
            startup_nodes=[ClusterNode("127.0.0.1", port) for port in self.ports],
            socket_timeout=2,
            socket_connect_timeout=2,
        )

    def flush(self) -> None:
        """Empty every master (the tests' own cluster, never a shared Redis)."""
        for port in self.ports:
            self.node(port).flushall()

    def close(self) -> None:
        """Stop the nodes and remove their directories."""
        for process in self.processes:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)
