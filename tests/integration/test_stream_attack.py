"""Faults found by attacking the streams on the real server (gunicorn, gevent workers), each
pinned by a test that failed before its fix: HEAD requests that used up a worker's streams for
good, and a reader that stalled while the server queued every change for it without bound."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Gunicorn, RedisServer, http
from tests.support.routes import WORKFLOWS
from tests.support.sockets import rss_mb

pytestmark = pytest.mark.slow

LIST_STREAM = f"{WORKFLOWS}/stream"
# gunicorn's connections per worker here; a worker keeps 32 of them from streams (stream.py).
CONNECTIONS = 100
STREAM_CAPACITY = CONNECTIONS - 32


def small_server(env: dict[str, str]) -> Gunicorn:
    """One worker with few connections, so its stream capacity is quick to reach."""
    server = Gunicorn(env, workers=1)
    server.env["GUNICORN_CMD_ARGS"] += f" --worker-connections {CONNECTIONS}"
    return server.start()


def head_statuses(port: int, path: str, count: int) -> list[int]:
    """Send `count` HEAD requests one after another on one keep-alive connection."""
    statuses = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        replies = sock.makefile("rb")
        for _ in range(count):
            sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            statuses.append(int(replies.readline().split()[1]))
            while replies.readline() not in (b"\r\n", b""):
                pass  # the headers; a HEAD answer has no body
    return statuses


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gunicorn]:
    """One worker with few connections, on the file (param "file") or the session's Redis."""
    if request.param == "file":
        url = f"file://{tmp_path}/state.json"
    else:
        redis: RedisServer = request.getfixturevalue("redis_server")
        redis.flush()
        url = redis.url
    gunicorn = small_server({"WORKFLOW_STATE_URL": url})
    try:
        yield gunicorn
    finally:
        gunicorn.stop()


@pytest.mark.parametrize("server", ["file"], indirect=True)
def test_heads_of_the_list_stream_leave_the_workers_streams_to_others(server: Gunicorn):
    # One client, one connection, nothing held open: only HEAD requests.
    assert set(head_statuses(server.port, LIST_STREAM, STREAM_CAPACITY + 2)) == {200}
    gauge = [
        line
        for line in http("GET", server.url + "/metrics")[2].splitlines()
        if line.startswith("workflow_state_open_streams")
    ]
    assert gauge == ["workflow_state_open_streams 0.0"]
    # Someone else's stream still opens.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"GET {LIST_STREAM} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert sock.makefile("rb").readline().split()[1] == b"200"


# One reader that stops reading, and a writer of large states (each change is one frame of the
# whole state, held for the reader until it is sent).
WRITES = 250
BLOB = "x" * 200_000
# Measured before the fix: 75-85 MiB more after 400 writes of 200 KB (so about 50 MiB after
# 250) with one stalled reader (the frames it never takes). A bounded inbox (or dropping a
# stream that falls that far behind) stays well below this.
BOUND_MB = 40


@pytest.mark.parametrize("server", ["redis"], indirect=True)
def test_a_stalled_reader_does_not_grow_the_worker_without_bound(server: Gunicorn):
    assert http("POST", server.url + WORKFLOWS, {"workflow_id": "w"})[0] == 201
    (pid,) = server.worker_pids()
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", server.port))
    try:
        stalled.sendall(f"GET {WORKFLOWS}/w/stream HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        stalled.recv(1)  # the stream is open; from now on it reads nothing
        before = rss_mb(pid)
        for n in range(WRITES):
            status, _, body = http("PATCH", f"{server.url}{WORKFLOWS}/w", {"blob": BLOB, "n": n})
            assert status == 200, body
        grown = rss_mb(pid) - before
        assert grown < BOUND_MB, f"the worker grew {grown:.0f} MiB for one stalled reader"
    finally:
        stalled.close()
