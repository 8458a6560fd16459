"""Where the Redis backend connects: one place maps a URL scheme to how a client is made.

`redis://`, `rediss://` and `unix://` name one server. `redis+sentinel://` names a service that
Redis Sentinel watches: every new connection asks the sentinels for the current master, so the
store follows a failover without a restart. A scheme is parsed (and refused) when the store is
created, so a bad URL stops the server at start; clients are made later, after gunicorn forks.
`redis+cluster://` names a Redis Cluster: every key of one owner shares a hash slot, so each script
runs on the one node that serves it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelConnectionPoolProxy,
    SentinelManagedConnection,
)

SENTINEL_DEFAULT_PORT = 26379
# Asking the sentinels for the master must fit in one I/O timeout however many are listed
# (each is tried in turn until one names a healthy master), but never gets less than this.
MIN_SENTINEL_TIMEOUT = 0.05
HEALTH_CHECK_SECONDS = 10


class BadRedisURL(ValueError):
    """WORKFLOW_STATE_URL names a Redis target the service cannot use."""


class RedisTarget(Protocol):
    """A parsed Redis URL: makes clients and describes itself without credentials."""

    def connect(self, *, io_timeout: float, retry: Retry) -> redis.Redis:
        """Return a client whose every call is bounded by `io_timeout` and `retry`."""

    def describe(self) -> str:
        """Return the URL without credentials or query."""


def close_client(client: redis.Redis) -> None:
    """Close a client made by a target, and the sentinel connections behind it."""
    client.close()
    # A cluster client has a pool per node and no sentinels.
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    if manager is not None:
        manager.close()


@dataclass(frozen=True)
class DirectTarget:
    """One Redis server: redis://, rediss:// (TLS) or unix://, as redis-py reads them."""

    url: str = field(repr=False)

    @classmethod
    def parse(cls, url: str) -> DirectTarget:
        """Accept the URL as it is; redis-py parses it when it connects."""
        return cls(url)

    def connect(self, *, io_timeout: float, retry: Retry) -> redis.Redis:
        """Return a client of this server."""
        return redis.Redis.from_url(
            self.url,
            socket_timeout=io_timeout,
            socket_connect_timeout=io_timeout,
            retry=retry,
            health_check_interval=HEALTH_CHECK_SECONDS,
        )

    def describe(self) -> str:
        """Return scheme, host, port and path (the database), without user or password."""
        parts = urlsplit(self.url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        return f"{parts.scheme}://{netloc}{parts.path}"


@dataclass(frozen=True)
class SentinelTarget:
    """The master of a service watched by Redis Sentinel.

    `redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/<service>[/<db>]`; the
    password is the master's (and its replicas'); `?sentinel_password=` is the sentinels' own,
    when they have one.
    """

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> SentinelTarget:
        """Parse a redis+sentinel:// URL; raise BadRedisURL (never naming the password)."""
        rest = url.partition("://")[2]
        rest, _, query = rest.partition("?")
        authority, slash, path = rest.partition("/")
        userinfo, _, hosts = authority.rpartition("@")
        username = password = None
        if userinfo:
            user, colon, secret = userinfo.partition(":")
            username = unquote(user) or None
            password = unquote(secret) if colon else None
        sentinels = tuple(_host_port(item) for item in hosts.split(","))
        segments = path.strip("/").split("/") if slash else []
        if not segments or not segments[0]:
            raise BadRedisURL(
                "WORKFLOW_STATE_URL: redis+sentinel:// needs the service name Sentinel monitors, "
                "e.g. redis+sentinel://host:26379/mymaster"
            )
        if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
            raise BadRedisURL(
                "WORKFLOW_STATE_URL: after the service name, redis+sentinel:// takes only a "
                "database number, e.g. redis+sentinel://host:26379/mymaster/0"
            )
        options = parse_qs(query, keep_blank_values=True)
        unknown = sorted(set(options) - {"sentinel_password"})
        if unknown:
            raise BadRedisURL(
                f"WORKFLOW_STATE_URL: redis+sentinel:// does not take {', '.join(unknown)}; "
                "the only option is sentinel_password"
            )
        sentinel_password = options.get("sentinel_password", [None])[-1] or None
        return cls(
            sentinels=sentinels,
            service=unquote(segments[0]),
            db=int(segments[1]) if len(segments) == 2 else 0,
            username=username,
            password=password,
            sentinel_password=sentinel_password,
        )

    def connect(self, *, io_timeout: float, retry: Retry) -> redis.Redis:
        """Return a client of whichever server the sentinels name master, asked per connection."""
        each = max(io_timeout / len(self.sentinels), MIN_SENTINEL_TIMEOUT)
        manager = Sentinel(
            list(self.sentinels),
            sentinel_kwargs={
                "socket_timeout": each,
                "socket_connect_timeout": each,
                # redis-py's default retries a dead sentinel three times with backoff: the next
                # sentinel is the retry.
                "retry": Retry(NoBackoff(), 0),
                "password": self.sentinel_password,
            },
        )
        return manager.master_for(
            self.service,
            connection_pool_class=_MasterPool,
            connection_class=_MasterConnection,
            db=self.db,
            username=self.username,
            password=self.password,
            socket_timeout=io_timeout,
            socket_connect_timeout=io_timeout,
            retry=retry,
            health_check_interval=HEALTH_CHECK_SECONDS,
        )

    def describe(self) -> str:
        """Return the URL without credentials or options."""
        hosts = ",".join(f"{_bracketed(host)}:{port}" for host, port in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/{self.db}"


def _host_port(item: str) -> tuple[str, int]:
    """Split one `host[:port]` (or `[v6]:port`) of a sentinel list."""
    item = item.strip()
    if item.startswith("["):
        host, _, tail = item[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else tail
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise BadRedisURL(
            "WORKFLOW_STATE_URL: redis+sentinel:// needs host:port for each sentinel, "
            "separated by commas"
        )
    if not port_text:
        return host, SENTINEL_DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BadRedisURL(f"WORKFLOW_STATE_URL: sentinel {host!r} has a bad port {port_text!r}")
    return host, int(port_text)


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _MasterConnection(SentinelManagedConnection):
    """redis-py's Sentinel connection, except that reconnecting in place asks the sentinels too.

    redis-py asks the sentinels only when a pool hands out a connection; a connection that
    lost its socket and sends again (the store's dedicated clients keep theirs) reconnects to
    the address it had: the dead master, for good.
    """

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        """Reconnect to whichever server the sentinels name master, then send."""
        if not self._sock:
            self.connect()
        super().send_packed_command(command, check_health)


class _MasterProxy(SentinelConnectionPoolProxy):
    """redis-py's proxy, except that a new master also ends the connections in use.

    redis-py drops only idle connections when Sentinel names a new master. The store keeps a
    read and a write connection checked out for good: left alone, the read connection would go
    on reading a demoted master (still answering, as a replica) after the first write had
    already moved to the new one.
    """

    def get_master_address(self) -> Any:
        """Ask the sentinels for the master; on a change, drop every connection of the pool."""
        previous = self.master_address
        address = super().get_master_address()
        pool = self.connection_pool_ref()
        if previous is not None and address != previous and pool is not None:
            pool.disconnect(inuse_connections=True)
        return address


class _MasterPool(SentinelConnectionPool):
    """SentinelConnectionPool whose connections ask a _MasterProxy for the master."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)
        self.proxy = _MasterProxy(
            connection_pool=self,
            is_master=self.is_master,
            check_connection=self.check_connection,
            service_name=service_name,
            sentinel_manager=sentinel_manager,
        )
        self.connection_kwargs["connection_pool"] = self.proxy


@dataclass(frozen=True)
class ClusterTarget:
    """A Redis Cluster: `redis+cluster://[[user]:password@]host:port[,host:port...]`, any of its
    nodes (the client learns the others and which slots each serves)."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> ClusterTarget:
        """Parse a redis+cluster:// URL; raise BadRedisURL (never naming the password)."""
        rest = url.partition("://")[2]
        authority, _, path = rest.partition("?")[0].partition("/")
        userinfo, _, hosts = authority.rpartition("@")
        username = password = None
        if userinfo:
            user, colon, secret = userinfo.partition(":")
            username, password = unquote(user) or None, unquote(secret) if colon else None
        if path not in ("", "0"):
            raise BadRedisURL("WORKFLOW_STATE_URL: a Redis Cluster has only database 0")
        nodes = []
        for item in hosts.split(","):
            host, _, port = item.strip().rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise BadRedisURL(
                    "WORKFLOW_STATE_URL: redis+cluster:// needs host:port for each node, "
                    "separated by commas"
                )
            nodes.append((host.strip("[]"), int(port)))
        return cls(tuple(nodes), username, password)

    def connect(self, *, io_timeout: float, retry: Retry) -> Any:
        """Return a cluster client; it asks a node for the slot map at once (down: RedisError)."""
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self.nodes],
            username=self.username,
            password=self.password,
            socket_timeout=io_timeout,
            socket_connect_timeout=io_timeout,
            retry=retry,
        )

    def describe(self) -> str:
        """Return the URL without credentials."""
        hosts = ",".join(f"{_bracketed(host)}:{port}" for host, port in self.nodes)
        return f"redis+cluster://{hosts}"


# The one place a scheme picks how Redis is reached.
TARGETS: dict[str, Callable[[str], RedisTarget]] = {
    "redis": DirectTarget.parse,
    "rediss": DirectTarget.parse,
    "unix": DirectTarget.parse,
    "redis+sentinel": SentinelTarget.parse,
    "redis+cluster": ClusterTarget.parse,
}


def redis_target(url: str) -> RedisTarget:
    """Parse `url` with the parser of its scheme."""
    scheme = url.partition("://")[0].lower()
    parse = TARGETS.get(scheme)
    if parse is None:
        raise BadRedisURL(f"WORKFLOW_STATE_URL: {scheme or '(none)'}:// is not a Redis scheme")
    return parse(url)
