"""Slow clients cannot take the server: real gunicorn (2 gevent workers, as `make run` starts
them), thousands of real sockets that stall in the body or in the headers, /healthz measured
beside them."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import STATE, Gunicorn
from tests.support.sockets import (
    HealthProbe,
    close_all,
    low_open_files_limit,
    open_files_limit,
    open_slow_clients,
    parse_response,
    raw_exchange,
    still_open,
    wait_for_server_close,
)

pytestmark = pytest.mark.slow

BODY_TIMEOUT = 3.0
KEEPALIVE = 2.0  # deploy/gunicorn.conf.py: how long gunicorn waits for a request's headers
SLOW_CLIENTS = 2500
# Headers and one byte of a ten-byte body; then nothing.
SLOW_BODY = (
    f"POST {STATE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    "Content-Length: 10\r\n\r\n{"
).encode()
# A request line and one header, never finished.
SLOW_HEADERS = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
# Time the server may take beyond a deadline to answer thousands of expired connections on a
# loaded machine.
SLACK = 6.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Gunicorn]:
    """The production config with a short body timeout, started as systemd often starts
    services: a soft limit of 1024 open files (the worker raises it to what it needs)."""
    env = {
        "WORKFLOW_STATE_URL": f"file://{tmp_path}/state.json",
        "WORKFLOW_STATE_BODY_TIMEOUT": str(BODY_TIMEOUT),
    }
    with low_open_files_limit(1024):
        gunicorn = Gunicorn(env, workers=2).start()
    try:
        yield gunicorn
    finally:
        gunicorn.stop()


def test_slow_bodies_get_408_and_close_while_healthz_stays_fast(server: Gunicorn):
    with open_files_limit(SLOW_CLIENTS + 500), HealthProbe(server.url) as probe:
        clients = open_slow_clients(server.port, SLOW_CLIENTS, SLOW_BODY)
        try:
            # Every one of them is still waiting for its body, and /healthz answers meanwhile.
            assert still_open(clients) == SLOW_CLIENTS
            left = wait_for_server_close(clients, timeout=BODY_TIMEOUT + SLACK)
        finally:
            close_all(clients)
    assert not left, f"{len(left)} slow connections still open"
    assert not probe.failures, probe.failures[:5]
    assert len(probe.latencies) >= 20
    assert probe.p99() < 1.0, f"/healthz p99 {probe.p99():.3f}s"

    for client in clients:
        response = parse_response(client.received)
        assert response.status == 408
        assert response.headers["connection"] == "close"
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {
            "success": False,
            "message": f"The request body did not arrive within {BODY_TIMEOUT:g} seconds",
            "error": "request_timeout",
        }
        # The whole timeout was given, and not much more.
        assert BODY_TIMEOUT - 0.1 <= client.closed - client.opened <= BODY_TIMEOUT + SLACK


def test_slow_headers_are_closed_after_keepalive_while_healthz_stays_fast(server: Gunicorn):
    with open_files_limit(SLOW_CLIENTS + 500), HealthProbe(server.url) as probe:
        clients = open_slow_clients(server.port, SLOW_CLIENTS, SLOW_HEADERS)
        try:
            left = wait_for_server_close(clients, timeout=KEEPALIVE + SLACK)
        finally:
            close_all(clients)
    assert not left, f"{len(left)} connections with unfinished headers still open"
    assert not probe.failures, probe.failures[:5]
    assert probe.p99() < 1.0, f"/healthz p99 {probe.p99():.3f}s"
    for client in clients:
        # Nothing to answer: no request was ever complete. The connection just ends.
        assert client.received == b""
        assert KEEPALIVE - 0.1 <= client.closed - client.opened <= KEEPALIVE + SLACK


def test_a_body_trickled_a_byte_at_a_time_gets_the_timeout_once_not_per_byte(server: Gunicorn):
    body = json.dumps({"workflow_id": "trickle", "steps": [], "pad": "x" * 40}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    head = f"POST {STATE} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    try:
        sock.sendall(head.encode())
        started = time.monotonic()
        received = b""
        sock.settimeout(0.5)  # a byte every half second: no single read ever waits long
        for byte in body:
            with contextlib.suppress(TimeoutError):
                sock.sendall(bytes([byte]))
                received = sock.recv(65536)
            if received:
                break
        answered = time.monotonic() - started
    finally:
        sock.close()
    assert parse_response(received).status == 408
    assert answered < BODY_TIMEOUT + 1.5  # the body would have taken 30 s


def test_a_body_sent_in_pieces_within_the_timeout_is_served_and_the_connection_kept(
    server: Gunicorn,
):
    body = json.dumps({"workflow_id": "pieces", "steps": []}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        sock.sendall(
            f"POST {STATE} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        for piece in (body[:5], body[5:15], body[15:]):
            time.sleep(0.5)  # a slow but steady client: the pauses are the point of the test
            sock.sendall(piece)
        first = _read_one_response(sock)
        assert first.status == 200, first.body
        assert first.json()["state"]["workflow_id"] == "pieces"
        assert first.headers.get("connection", "keep-alive").lower() != "close"
        # The same connection serves the next request.
        sock.sendall(f"GET {STATE} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert _read_one_response(sock).json()["state"]["workflow_id"] == "pieces"
    finally:
        sock.close()


def test_a_client_that_waits_for_100_continue_gets_it_before_the_body_is_due(server: Gunicorn):
    body = json.dumps({"workflow_id": "expect", "steps": []}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        sock.sendall(
            f"POST {STATE} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        response = _read_one_response(sock)
    finally:
        sock.close()
    assert response.status == 200
    assert response.json()["state"]["workflow_id"] == "expect"


def test_bodies_over_the_limit_are_413_in_json_and_the_connection_closes(server: Gunicorn):
    too_large = 262144 + 1  # WORKFLOW_STATE_MAX_BODY's default, plus one
    declared, closed = raw_exchange(
        server.port,
        f"POST {STATE} HTTP/1.1\r\nHost: x\r\nContent-Length: {too_large}\r\n\r\n".encode()
        + b"x" * 1000,
    )
    assert declared.status == 413
    assert declared.json()["error"] == "payload_too_large"
    assert closed
    chunk = b"x" * 65536
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(5))
    streamed, closed = raw_exchange(
        server.port,
        f"POST {STATE} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + chunked
        + b"0\r\n\r\n",
    )
    assert streamed.status == 413
    assert streamed.json()["error"] == "payload_too_large"
    assert closed


def _read_one_response(sock: socket.socket):
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    response = parse_response(received)
    length = int(response.headers["content-length"])
    while len(response.body) < length:
        received += sock.recv(65536)
        response = parse_response(received)
    return response
