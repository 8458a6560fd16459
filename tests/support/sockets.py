"""Raw-socket clients for the server-level fault tests: slow clients by the thousand, a /healthz
latency probe that runs beside them, one-shot raw requests, and a worker's resident memory."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.support.processes import http


@contextlib.contextmanager
def open_files_limit(needed: int) -> Iterator[None]:
    """Let this process hold `needed` descriptors for a while (skip the test if it may not)."""
    import pytest

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def low_open_files_limit(soft_limit: int) -> Iterator[None]:
    """Start processes under a small soft limit (as many systems do), the hard one unchanged."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Never below what this process already holds: its next open() would fail.
    in_use = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft_limit, in_use + 64), hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@dataclass
class SlowClient:
    """One connection that sent `payload` and then went quiet."""

    sock: socket.socket
    opened: float
    received: bytes = b""
    closed: float | None = None  # when the server closed it (monotonic)


def open_slow_clients(port: int, count: int, payload: bytes) -> list[SlowClient]:
    """Open `count` connections that each send `payload` and nothing more."""
    clients = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if payload:
            sock.sendall(payload)
        clients.append(SlowClient(sock, time.monotonic()))
    return clients


def still_open(clients: list[SlowClient]) -> int:
    """Count the connections the server has neither answered nor closed yet."""
    selector = selectors.DefaultSelector()
    for client in clients:
        selector.register(client.sock, selectors.EVENT_READ)
    ready = {key.fileobj for key, _ in selector.select(timeout=0)}
    selector.close()
    return sum(1 for client in clients if client.sock not in ready)


def wait_for_server_close(clients: list[SlowClient], timeout: float) -> list[SlowClient]:
    """Read every connection until the server closes it; return those still open at `timeout`."""
    selector = selectors.DefaultSelector()
    by_socket = {}
    for client in clients:
        client.sock.setblocking(False)
        selector.register(client.sock, selectors.EVENT_READ)
        by_socket[client.sock] = client
    deadline = time.monotonic() + timeout
    while by_socket and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            client = by_socket[key.fileobj]
            try:
                data = client.sock.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                data = b""
            if data:
                client.received += data
                continue
            client.closed = time.monotonic()
            selector.unregister(client.sock)
            del by_socket[client.sock]
    selector.close()
    return list(by_socket.values())


def close_all(clients: list[SlowClient]) -> None:
    """Close the client side of every connection."""
    for client in clients:
        client.sock.close()


@dataclass
class HealthProbe:
    """GET /healthz one after another in a thread, on new connections, recording latency."""

    url: str
    timeout: float = 5.0
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                status = http("GET", self.url + "/healthz", timeout=self.timeout)[0]
            except OSError as error:
                status = repr(error)
            self.latencies.append(time.monotonic() - started)
            if status != 200:
                self.failures.append(str(status))
            self._stop.wait(0.01)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout + 5)

    def p99(self) -> float:
        """Return the 99th percentile latency in seconds."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@dataclass
class RawResponse:
    """A response read off a raw socket: status, headers (lower-case names), body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """Parse the body as JSON."""
        return json.loads(self.body)


def assert_json_error(response: RawResponse, status: int, code: str) -> None:
    """Check a refusal: its status, and the contract's JSON error shape with that code."""
    assert response.status == status, response
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-content-type-options"] == "nosniff"
    body = response.json()
    assert set(body) == {"success", "message", "error"}
    assert body["success"] is False
    assert body["error"] == code
    assert body["message"] and "<" not in body["message"]  # a sentence, not markup


def parse_response(raw: bytes) -> RawResponse:
    """Parse one HTTP/1.1 response with a Content-Length."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(rest)))
    return RawResponse(status, headers, rest[:length])


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> tuple[RawResponse, bool]:
    """Send raw bytes; return the response and whether the server then closed the connection."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(data)
        received = b""
        closed = False
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            received += chunk
            if b"\r\n\r\n" in received:
                response = parse_response(received)
                if len(response.body) >= int(response.headers.get("content-length", 0)):
                    # Whole answer here: does the server close now, or keep the connection?
                    sock.settimeout(1.5)
        return parse_response(received), closed
    finally:
        sock.close()


def rss_mb(pid: int) -> float:
    """Return a process's resident memory in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for {pid}")


def open_event_streams(port: int, path: str, count: int) -> list[socket.socket]:
    """Open `count` Server-Sent Events streams on raw sockets; return once each has its first
    event."""
    streams = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        streams.append(sock)
    for sock in streams:
        received = b""
        while b"event: state" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError(f"stream closed before its first event: {received[:200]!r}")
            received += chunk
    return streams
