"""A Redis Sentinel group the tests own: a master, its replicas and three sentinels on loopback.

Every process runs on a free port in a directory of its own, can be killed with SIGKILL (an
outage, not a shutdown) or frozen with SIGSTOP, and is cleaned up by `close()`. A listener
subscribes to every sentinel's event channels, so a test can tell when the sentinels saw the
master go down and when they promoted a replica, on the same clock as its own requests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.processes import REDIS_SERVER, free_port, wait_until

REDIS_SENTINEL = None if os.environ.get("WSS_FAKE_REDIS") == "1" else shutil.which("redis-sentinel")
SKIP_REASON = "needs the redis-server and redis-sentinel binaries (Debian: redis-sentinel)"


@dataclass
class Node:
    """One redis-server of the group (the master or a replica)."""

    port: int
    directory: Path
    process: subprocess.Popen | None = None

    def client(self, timeout: float | None = 2) -> redis.Redis:
        """Return a plain client of this server (no retries: a dead server fails at once)."""
        return redis.Redis(
            port=self.port,
            socket_timeout=timeout,
            socket_connect_timeout=2,
            retry=Retry(NoBackoff(), 0),
        )

    @property
    def alive(self) -> bool:
        """Tell whether the process runs."""
        return self.process is not None and self.process.poll() is None


class SentinelGroup:
    """1 master, `replicas` replicas and `sentinels` sentinels (quorum 2) watching `service`.

    With `sentinels=0` it is just a master and its replicas (`master_url` reaches the master).
    """

    def __init__(
        self,
        *,
        replicas: int = 1,
        sentinels: int = 3,
        service: str = "wss",
        down_after_ms: int = 1500,
        failover_timeout_ms: int = 2000,
    ) -> None:
        self.service = service
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.root = Path(tempfile.mkdtemp(prefix="wss-sentinel-"))
        self.nodes = [self._node(f"redis-{i}") for i in range(1 + replicas)]
        self.sentinels = [self._node(f"sentinel-{i}") for i in range(sentinels)]
        self.master = self.nodes[0]
        # (monotonic time, sentinel port, event channel, payload), in the order seen.
        self.events: list[tuple[float, int, str, str]] = []
        self._events_guard = threading.Lock()
        self._stop = threading.Event()
        self._listeners: list[threading.Thread] = []

    def _node(self, name: str) -> Node:
        directory = self.root / name
        directory.mkdir()
        return Node(free_port(), directory)

    @property
    def master_url(self) -> str:
        """Return a plain redis:// URL of the first master (database 0)."""
        return f"redis://127.0.0.1:{self.master.port}/0"

    @property
    def url(self) -> str:
        """Return the service's redis+sentinel:// URL (database 0)."""
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> SentinelGroup:
        """Start the servers, then the sentinels; return once all of them know each other."""
        try:
            for node in self.nodes:
                self._start_server(node, replica_of=None if node is self.master else self.master)
            for sentinel in self.sentinels:
                self._start_sentinel(sentinel)
            wait_until(self._settled, timeout=30, interval=0.1)
            for sentinel in self.sentinels:
                thread = threading.Thread(target=self._listen, args=(sentinel,), daemon=True)
                thread.start()
                self._listeners.append(thread)
        except BaseException:
            self.close()
            raise
        return self

    def _start_server(self, node: Node, replica_of: Node | None) -> None:
        command = [
            REDIS_SERVER,
            "--port", str(node.port),
            "--bind", "127.0.0.1",
            "--dir", str(node.directory),
            "--save", "",
            "--appendonly", "no",
            # Replicas attach at once (Redis 7 waits 5 s for more replicas by default).
            "--repl-diskless-sync-delay", "0",
            "--logfile", str(node.directory / "redis.log"),
        ]  # fmt: skip
        if replica_of is not None:
            command += ["--replicaof", "127.0.0.1", str(replica_of.port)]
        node.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: node.client().ping(), timeout=10)

    def _start_sentinel(self, sentinel: Node) -> None:
        config = sentinel.directory / "sentinel.conf"
        config.write_text(
            f"port {sentinel.port}\n"
            "bind 127.0.0.1\n"
            f"dir {sentinel.directory}\n"
            f"logfile {sentinel.directory / 'sentinel.log'}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 2\n"
            f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {self.service} 1\n"
        )
        sentinel.process = subprocess.Popen(
            [REDIS_SENTINEL, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: sentinel.client().ping(), timeout=10)

    def _settled(self) -> bool:
        """Every replica is in sync and every sentinel sees the master, the replicas, its peers."""
        for node in self.nodes:
            if node is not self.master:
                info = node.client().info("replication")
                if info.get("master_link_status") != "up":
                    return False
        # After a full sync the master streams to a replica only from its first acknowledgement
        # (sent once a second): until then WAIT would count none. A PUBLISH is replicated and
        # leaves no key behind.
        probe = self.master.client().pipeline(transaction=False)
        probe.publish("wss:probe", "")
        probe.execute_command("WAIT", len(self.nodes) - 1, 100)
        if probe.execute()[1] != len(self.nodes) - 1:
            return False
        for sentinel in self.sentinels:
            state = sentinel.client().sentinel_master(self.service)
            if state["num-other-sentinels"] != len(self.sentinels) - 1:
                return False
            if state["num-slaves"] != len(self.nodes) - 1:
                return False
            replicas = sentinel.client().sentinel_slaves(self.service)
            if any(replica["is_sdown"] or replica["is_odown"] for replica in replicas):
                return False
        return True

    def close(self) -> None:
        """Kill every process of the group and remove its directories."""
        self._stop.set()
        for node in (*self.sentinels, *self.nodes):
            if node.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    node.process.send_signal(signal.SIGCONT)
                node.process.kill()
                node.process.wait(timeout=10)
                node.process = None
        for thread in self._listeners:
            thread.join(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)

    # --- faults ----------------------------------------------------------------------------

    def kill_master(self) -> Node:
        """SIGKILL the current master (a crash); return it."""
        master = self.current_master()
        assert master.process is not None
        master.process.kill()
        master.process.wait(timeout=10)
        return master

    def freeze(self, node: Node) -> None:
        """Stop `node` (SIGSTOP): it neither reads nor answers until `thaw`."""
        assert node.process is not None
        node.process.send_signal(signal.SIGSTOP)

    def thaw(self, node: Node) -> None:
        """Let a frozen node run again (SIGCONT)."""
        assert node.process is not None
        node.process.send_signal(signal.SIGCONT)

    # --- what the sentinels say ------------------------------------------------------------

    def current_master(self) -> Node:
        """Return the node a live sentinel names master."""
        for sentinel in self.sentinels:
            if sentinel.alive:
                _, port = sentinel.client().sentinel_get_master_addr_by_name(self.service)
                return next(node for node in self.nodes if node.port == int(port))
        raise AssertionError("no sentinel is running")

    def replicas(self) -> list[Node]:
        """Return the live nodes that are not the current master."""
        master = self.current_master()
        return [node for node in self.nodes if node is not master and node.alive]

    def _listen(self, sentinel: Node) -> None:
        client = sentinel.client(timeout=None)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.psubscribe("*")
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=0.1)
                if message is not None and message["type"] == "pmessage":
                    channel = message["channel"].decode()
                    data = message["data"].decode(errors="replace")
                    with self._events_guard:
                        self.events.append((time.monotonic(), sentinel.port, channel, data))
        except (redis.RedisError, OSError):
            pass  # the sentinel was killed under the listener
        finally:
            with contextlib.suppress(Exception):
                pubsub.close()
                client.close()

    def first_event(self, channel: str, after: float = 0.0) -> tuple[float, int, str] | None:
        """Return (time, sentinel port, payload) of the first `channel` event after `after`."""
        with self._events_guard:
            for seen, port, name, data in self.events:
                if name == channel and seen >= after:
                    return seen, port, data
        return None

    def wait_for_event(self, channel: str, after: float = 0.0, timeout: float = 30) -> float:
        """Wait until some sentinel publishes `channel` after `after`; return when it did."""
        return wait_until(lambda: self.first_event(channel, after), timeout=timeout)[0]

    def logs(self) -> str:
        """Return the tail of every process's log, for a failing test's report."""
        parts: list[Any] = []
        for node in (*self.nodes, *self.sentinels):
            for log in node.directory.glob("*.log"):
                text = log.read_text(errors="replace").splitlines()[-30:]
                parts.append(f"--- {node.directory.name} ({node.port})\n" + "\n".join(text))
        return "\n".join(parts)
