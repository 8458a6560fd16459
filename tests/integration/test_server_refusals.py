"""Requests gunicorn refuses before the app sees them answer the contract's JSON error shape:
real gunicorn with the production config, raw bytes on real sockets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import STATE, Gunicorn, http
from tests.support.sockets import assert_json_error, raw_exchange

pytestmark = pytest.mark.slow

# name: (raw request, status, error code)
REFUSED = {
    "bad UTF-8 in the path": (
        b"GET /workflow/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "invalid_request_line",
    ),
    "request line too long (414)": (
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        414,
        "uri_too_long",
    ),
    "a header field too large (431)": (
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
        431,
        "header_fields_too_large",
    ),
    "too many header fields (431)": (
        b"GET / HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: 1\r\n" % n for n in range(120))
        + b"\r\n",
        431,
        "header_fields_too_large",
    ),
    "Content-Length with Transfer-Encoding": (
        f"POST {STATE} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode(),
        400,
        "invalid_header",
    ),
    "two Content-Lengths": (
        f"POST {STATE} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        "Content-Length: 2\r\n\r\n{}".encode(),
        400,
        "invalid_header",
    ),
    "a negative Content-Length": (
        f"POST {STATE} HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".encode(),
        400,
        "invalid_header",
    ),
    "a NUL in a header value": (
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
        400,
        "invalid_header",
    ),
    "a space in a header name": (
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n",
        400,
        "invalid_header",
    ),
    "obsolete line folding": (
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n",
        400,
        "invalid_header",
    ),
    "a bad method": (b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_method"),
    "an unknown HTTP version": (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 400, "invalid_http_version"),
    "bare LF line endings": (b"GET / HTTP/1.1\nHost: x\n\n", 400, "invalid_request_line"),
    "TLS spoken to the plain port": (
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",
        400,
        "invalid_request_line",
    ),
    "an unsupported Transfer-Encoding": (
        f"POST {STATE} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: foo\r\n\r\n".encode(),
        501,
        "unsupported_transfer_coding",
    ),
    "an Expect the server cannot meet": (
        f"POST {STATE} HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n"
        "Content-Length: 2\r\n\r\n{}".encode(),
        417,
        "expectation_failed",
    ),
    # This one used to reach the app, which answered a 500.
    "a malformed chunk size": (
        f"POST {STATE} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".encode(),
        400,
        "invalid_chunked_body",
    ),
    "a chunk without its CRLF": (
        f"POST {STATE} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        "2\r\n{}XX0\r\n\r\n".encode(),
        400,
        "invalid_chunked_body",
    ),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """The production config on the file backend, one worker."""
    directory: Path = tmp_path_factory.mktemp("refusals")
    gunicorn = Gunicorn({"WORKFLOW_STATE_URL": f"file://{directory}/state.json"}, workers=1)
    gunicorn.start()
    try:
        yield gunicorn
    finally:
        gunicorn.stop()


@pytest.mark.parametrize("name", list(REFUSED))
def test_gunicorn_refusals_answer_the_json_error_shape(server: Gunicorn, name: str):
    request, status, code = REFUSED[name]
    response, closed = raw_exchange(server.port, request)
    assert_json_error(response, status, code)
    assert response.headers["connection"] == "close" and closed
    # The server goes on serving.
    assert http("GET", server.url + "/healthz")[0] == 200


def test_percent_encoded_bad_utf8_reaches_the_app_and_is_json_too(server: Gunicorn):
    response, _ = raw_exchange(
        server.port, b"GET /workflow/%ff%fe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert response.status == 404
    assert response.json()["error"] == "not_found"
