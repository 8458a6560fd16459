"""A worker's memory comes back after bursts of streams, slow clients and large bodies: real
gunicorn (2 gevent workers) on a real Redis, rounds of 500 Server-Sent Events streams, 2,500
stalled bodies and 300 large bodies at once, the workers' resident memory read from /proc."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support import STATE, STREAM, Gunicorn, RedisServer, http, wait_until
from tests.support.sockets import (
    close_all,
    open_event_streams,
    open_files_limit,
    open_slow_clients,
    rss_mb,
    wait_for_server_close,
)

pytestmark = pytest.mark.slow

ROUNDS = 3
STREAMS = 500
SLOW_CLIENTS = 2500
BODY_TIMEOUT = 2
SLOW_BODY = f"POST {STATE} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{{".encode()
LARGE_BODIES = 300
LARGE_BODY_SIZE = 100_000
# How far above its warmed-up size a worker may stay once the rounds are over. Measured: 7-9 MiB
# (Python's allocator keeps an arena while one object in it lives). Before: 76-78 MiB above
# (124-126 MiB in all); with stalled bodies fixed but no freed heap returned: 62-66 MiB above.
BOUND_MB = 20


@pytest.fixture
def server(redis_server: RedisServer) -> Iterator[Gunicorn]:
    """Two workers on the session's Redis; departed streams noticed within a second."""
    redis_server.flush()
    gunicorn = Gunicorn(
        {
            "WORKFLOW_STATE_URL": redis_server.url,
            "WORKFLOW_STATE_BODY_TIMEOUT": str(BODY_TIMEOUT),
            "WORKFLOW_STREAM_KEEPALIVE": "1",
            # This machine's load must not turn a slow Redis answer into a 503 here.
            "WORKFLOW_STATE_IO_TIMEOUT": "5",
        },
        workers=2,
    ).start()
    try:
        yield gunicorn
    finally:
        gunicorn.stop()


def burst(server: Gunicorn, streams: int, slow_clients: int, large_bodies: int) -> None:
    """Open streams, write to them, drop them; stall bodies until the server closes them; send
    large bodies that the workers hold all at once."""
    opened = open_event_streams(server.port, STREAM, streams)
    try:
        for n in range(3):
            state = {"workflow_id": f"w{n}", "steps": [{"action": "a", "status": "pending"}] * 20}
            assert http("POST", server.url + STATE, state)[0] == 200
    finally:
        for sock in opened:
            sock.close()
    clients = open_slow_clients(server.port, slow_clients, SLOW_BODY)
    try:
        assert not wait_for_server_close(clients, timeout=BODY_TIMEOUT + 10)
    finally:
        close_all(clients)
    # All but the last byte of each body first, so the workers hold every one of them at once.
    body = json.dumps({"workflow_id": "large", "steps": [], "pad": "x" * LARGE_BODY_SIZE}).encode()
    head = f"POST {STATE} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    clients = open_slow_clients(server.port, large_bodies, head.encode() + body[:-1])
    try:
        for client in clients:
            client.sock.sendall(body[-1:])
        assert not wait_for_server_close(clients, timeout=30)
    finally:
        close_all(clients)
    assert all(client.received.startswith(b"HTTP/1.1 200 ") for client in clients)


def open_streams(server: Gunicorn) -> float:
    """Return the open-streams gauge, summed over the workers."""
    metrics = http("GET", server.url + "/metrics")[2]
    [line] = [
        line for line in metrics.splitlines() if line.startswith("workflow_state_open_streams")
    ]
    return float(line.split()[-1])


def settled_rss(server: Gunicorn) -> dict[int, float]:
    """Wait until every departed stream is gone; return each worker's resident MiB."""
    wait_until(lambda: open_streams(server) == 0, timeout=30)
    return {pid: rss_mb(pid) for pid in server.worker_pids()}


def test_worker_memory_comes_back_after_rounds_of_streams_slow_and_large_bodies(server: Gunicorn):
    wait_until(lambda: len(server.worker_pids()) == 2)
    with open_files_limit(SLOW_CLIENTS + STREAMS + LARGE_BODIES + 500):
        burst(server, streams=20, slow_clients=20, large_bodies=5)  # every code path once
        warm = settled_rss(server)
        for _ in range(ROUNDS):
            burst(server, STREAMS, SLOW_CLIENTS, LARGE_BODIES)
        settled_rss(server)

        # Returned within the trim interval (service/http_worker.py), and by the same
        # workers: a worker restarted would look small and prove nothing.
        def within_bound() -> bool:
            return all(rss_mb(pid) <= warm[pid] + BOUND_MB for pid in warm)

        try:
            wait_until(within_bound, timeout=30, interval=0.5)
        except AssertionError:
            now = {pid: round(rss_mb(pid), 1) for pid in warm}
            pytest.fail(f"worker RSS {now} MiB, warmed up {warm}, bound +{BOUND_MB} MiB")
    assert sorted(server.worker_pids()) == sorted(warm)
