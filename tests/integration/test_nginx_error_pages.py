"""deploy/nginx.conf answers its own errors in the service's JSON error shape, and passes the
instances' answers through untouched: a real nginx in front of real gunicorn, raw sockets."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import STATE, Gunicorn, free_port
from tests.support.nginx import NGINX, Nginx
from tests.support.sockets import assert_json_error, raw_exchange

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        NGINX is None, reason="nginx is not installed (apt-get install nginx-light)"
    ),
]

# The site's client timeouts, shortened so a slow client is refused within the test.
SHORT_TIMEOUTS = {
    "client_body_timeout 10s;": "client_body_timeout 1s;",
    "client_header_timeout 10s;": "client_header_timeout 1s;",
}

# name: (raw request, status, error code)
NGINX_REFUSES = {
    "a request line that is not HTTP": (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    "no Host header": (b"GET / HTTP/1.1\r\n\r\n", 400, "bad_request"),
    "a request line too long (414)": (
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        414,
        "uri_too_long",
    ),
    "a header field too large (431)": (
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
        431,
        "header_fields_too_large",
    ),
    "a body over client_max_body_size (413)": (
        f"POST {STATE} HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n".encode(),
        413,
        "payload_too_large",
    ),
    "Content-Length with Transfer-Encoding": (
        f"POST {STATE} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode(),
        400,
        "bad_request",
    ),
    "a malformed chunk": (
        f"POST {STATE} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".encode(),
        400,
        "bad_request",
    ),
    "the error page's own path": (
        b"GET /_workflow_state_error HTTP/1.1\r\nHost: x\r\n\r\n",
        404,
        "not_found",
    ),
}


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """deploy/nginx.conf in front of one instance."""
    directory: Path = tmp_path_factory.mktemp("nginx-errors")
    instance = Gunicorn({"WORKFLOW_STATE_URL": f"file://{directory}/state.json"}, workers=1)
    instance.start()
    nginx = Nginx([instance.port], SHORT_TIMEOUTS)
    try:
        checked = nginx.check()
        assert checked.returncode == 0, checked.stderr
        yield nginx.start()
    finally:
        nginx.stop()
        instance.stop()


@pytest.mark.parametrize("name", list(NGINX_REFUSES))
def test_nginx_refusals_answer_the_json_error_shape(proxied: Nginx, name: str):
    request, status, code = NGINX_REFUSES[name]
    response, _ = raw_exchange(proxied.port, request)
    assert_json_error(response, status, code)


def test_a_slow_body_is_cut_off_by_nginx_and_never_reaches_an_instance(proxied: Nginx):
    sock = socket.create_connection(("127.0.0.1", proxied.port), timeout=10)
    try:
        sock.sendall(f"POST {STATE} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{{".encode())
        started = time.monotonic()
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        elapsed = time.monotonic() - started
    finally:
        sock.close()
    # nginx ends a timed-out client without an answer (it logs a 408); no HTML page either way.
    assert received == b""
    assert 0.9 <= elapsed < 5


def test_the_instances_own_answers_pass_through_untouched(proxied: Nginx):
    response, _ = raw_exchange(
        proxied.port, b"GET /no/such/route HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert response.status == 404
    assert response.json()["error"] == "not_found"
    assert "x-request-id" in response.headers  # set by the instance, not by nginx's error page
    # A request the instance refuses (gunicorn's JSON, through nginx).
    response, _ = raw_exchange(
        proxied.port, b"GET /workflow/\xff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert response.status == 400
    assert response.json()["error"] == "invalid_request_line"


def test_no_instance_answering_is_a_502_in_json_with_retry_after():
    nginx = Nginx([free_port()])  # nothing listens there
    try:
        nginx.start()
        response, _ = raw_exchange(
            nginx.port, f"GET {STATE} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
    finally:
        nginx.stop()
    assert response.status == 502
    assert response.json() == {
        "success": False,
        "message": "No instance of the service answered",
        "error": "instance_unavailable",
    }
    assert response.headers["retry-after"] == "1"
