"""The gunicorn worker the service runs on: gevent, with a deadline on request bodies and the
contract's JSON error shape for the requests gunicorn refuses before the app sees them.

`deploy/gunicorn.conf.py` names it (`worker_class`). What it adds to gunicorn's gevent worker:

- a request body is read in full before the app runs, and must arrive within
  WORKFLOW_STATE_BODY_TIMEOUT of its headers, else `408` and the connection closes. A client that
  sends one byte of a ten-byte body costs a blocked read for that long and nothing more: no app
  code runs for it, so thousands of them leave the CPU to everyone else. (The request line and
  headers must arrive within gunicorn's `keepalive` seconds, or the connection closes.)
- a malformed chunked body is a `400` (gunicorn's parser error used to reach the app as a 500);
- gunicorn's own refusals (a bad request line, 414, 431, Content-Length with Transfer-Encoding,
  ...) answer JSON instead of an HTML page;
- freed memory goes back to the system (see `_return_free_memory`);
- the objects the app was built from are moved out of the garbage collector's sight once it is
  loaded (see `load_wsgi`).
"""

from __future__ import annotations

import ctypes
import gc
import io
import json
import ssl
from datetime import timedelta

import gevent
from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.http.body import Body, LengthReader
from gunicorn.http.message import Request
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers.ggevent import GeventWorker

from . import config
from .headers import ALWAYS

# After an error answer, how long to keep reading what the client still sends, so closing the
# socket with unread data does not reset the connection before the client has read the answer.
LINGER_SECONDS = 1.0
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# How often a worker hands the memory it has freed back to the system.
TRIM_INTERVAL = 10.0
# glibc's mallopt() parameter, and how many malloc arenas a worker may have (see init_process).
M_ARENA_MAX = -8
ARENA_MAX = 2


# gunicorn's refusals: (status, reason, error code, message for a person). First match wins, so
# a subclass comes before its base.
REFUSALS: tuple[tuple[type[BaseException], int, str, str, str], ...] = (
    (
        http_errors.LimitRequestLine,
        414,
        "URI Too Long",
        "uri_too_long",
        "The request line is too long",
    ),
    (
        http_errors.LimitRequestHeaders,
        431,
        "Request Header Fields Too Large",
        "header_fields_too_large",
        "The request has too many header fields or one that is too large",
    ),
    (
        http_errors.InvalidRequestLine,
        400,
        "Bad Request",
        "invalid_request_line",
        "The request line is not valid HTTP (the path must be ASCII; percent-encode the rest)",
    ),
    (
        http_errors.InvalidRequestMethod,
        400,
        "Bad Request",
        "invalid_method",
        "The request method is not valid",
    ),
    (
        http_errors.InvalidHTTPVersion,
        400,
        "Bad Request",
        "invalid_http_version",
        "The HTTP version is not supported",
    ),
    (
        http_errors.UnsupportedTransferCoding,
        501,
        "Not Implemented",
        "unsupported_transfer_coding",
        "The Transfer-Encoding is not supported (use chunked or none)",
    ),
    (
        http_errors.ExpectationFailed,
        417,
        "Expectation Failed",
        "expectation_failed",
        "The Expect header asks for something the server does not do",
    ),
    (
        http_errors.ObsoleteFolding,
        400,
        "Bad Request",
        "invalid_header",
        "A header field is folded over several lines",
    ),
    (
        (http_errors.InvalidHeader, http_errors.InvalidHeaderName),
        400,
        "Bad Request",
        "invalid_header",
        "A header field is not valid (or Content-Length and Transfer-Encoding contradict)",
    ),
    (
        (
            http_errors.InvalidChunkSize,
            http_errors.ChunkMissingTerminator,
            http_errors.InvalidChunkExtension,
        ),
        400,
        "Bad Request",
        "invalid_chunked_body",
        "The chunked request body is malformed",
    ),
    (
        (
            http_errors.InvalidProxyLine,
            http_errors.InvalidSchemeHeaders,
            http_errors.InvalidH2CPreface,
        ),
        400,
        "Bad Request",
        "bad_request",
        "The request is not valid HTTP",
    ),
    (
        http_errors.ForbiddenProxyRequest,
        403,
        "Forbidden",
        "forbidden",
        "This address may not send PROXY protocol requests",
    ),
)


class _BodyTimedOut(Exception):
    """Raised into a greenlet whose request body is late.

    Not the gevent.Timeout itself: that would be both a local of the reading frame and, through
    its traceback, the owner of that frame, a cycle only the garbage collector frees.
    """


REFUSAL_OF_A_BODY = (400, "Bad Request", "invalid_body", "The request body is malformed")
INTERNAL_ERROR = (500, "Internal Server Error", "internal_error", "The server hit an error")


def refusal_for(error: BaseException) -> tuple[int, str, str, str] | None:
    """Return (status, reason, error code, message) for a request gunicorn refused, else None."""
    for kinds, status, reason, code, message in REFUSALS:
        if isinstance(error, kinds):
            return status, reason, code, message
    return None


def _glibc():
    """Return the C library when it is glibc (malloc_trim, mallopt), else None (musl, macOS)."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def error_bytes(status: int, reason: str, code: str, message: str) -> bytes:
    """Render a complete HTTP/1.1 error response with the contract's JSON body."""
    body = json.dumps({"success": False, "message": message, "error": code}).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "Connection: close",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        *(f"{name}: {value}" for name, value in ALWAYS.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class Worker(GeventWorker):
    """gunicorn's gevent worker with a body deadline and JSON refusals."""

    def init_process(self) -> None:
        """Read the body limits and cap malloc's arenas, then run as gevent does."""
        settings = config.from_env()
        self.body_timeout = settings["BODY_TIMEOUT"]
        self.max_body = settings["MAX_CONTENT_LENGTH"]
        self.libc = _glibc()
        if self.libc is not None:
            # glibc gives each thread that allocates its own arena, up to 8 per core, and
            # keeps them for the life of the process; the few threads here (gevent's resolver
            # pool) need no more than two.
            self.libc.mallopt(M_ARENA_MAX, ARENA_MAX)
        super().init_process()

    def load_wsgi(self) -> None:
        """Load the app, then freeze what exists: modules, the app, its routes and settings.

        They live as long as the worker does, yet every full collection would walk them all
        again (the service's import graph is some 10^5 objects); frozen, a collection walks only
        what requests made since. Nothing frozen is ever freed, and nothing of it needs to be.
        """
        super().load_wsgi()
        gc.freeze()

    def run(self) -> None:
        """Serve connections until told to stop, returning freed memory as it goes."""
        if self.libc is not None:
            gevent.spawn(self._return_free_memory)
        super().run()

    def _return_free_memory(self) -> None:
        # Python frees what a burst of connections allocated (their greenlets, buffers and
        # request bodies), but glibc keeps freed heap pages for reuse, so without this a worker
        # stays at its highest size for good (measured: 49 MiB warmed up, 110-115 MiB for good
        # after three rounds of 500 streams, 2,500 stalled bodies and 300 bodies of 100 KB at
        # once; 57 MiB with this). malloc_trim gives back every free page, not only the top of
        # the heap; it takes about a millisecond when there is little to give back.
        while self.alive:
            gevent.sleep(TRIM_INTERVAL)
            self.libc.malloc_trim(0)

    def handle_request(self, listener_name, req, sock, addr):
        """Read the request's body against the deadline, then serve it as gevent does."""
        refusal = self._read_body(req, sock, addr)
        if refusal is not None:
            self._refuse(req, sock, addr, *refusal)
            raise StopIteration()  # gunicorn's way to end the connection
        try:
            return super().handle_request(listener_name, req, sock, addr)
        except StopIteration:
            # The connection ends after this answer. A client may still be sending a body
            # the app refused unread (413): closing on unread bytes resets the connection,
            # which can destroy the answer before the client reads it.
            util.close_graceful(sock, timeout=LINGER_SECONDS)
            raise

    def _read_body(self, req, sock, addr) -> tuple[int, str, str, str] | None:
        """Replace the body with the bytes it had by the deadline; say why not, if not."""
        reader = req.body.reader
        if isinstance(reader, LengthReader):
            if reader.length == 0:
                return None
            if reader.length > self.max_body:
                # The app refuses it (413) from Content-Length alone; nothing of it is read.
                req.force_close()
                return None
            limit = reader.length
        else:  # chunked: one byte more than allowed tells the app it is too large
            limit = self.max_body + 1
        if req._expected_100_continue:
            # gunicorn would send this when the app starts; the body is read before that, and
            # a client that waits for it would otherwise wait out the deadline.
            sock.sendall(CONTINUE)
            req._expected_100_continue = False
        # One timer for the whole body: a timeout per recv() would let a client that trickles
        # a byte at a time hold the connection for the timeout once per byte.
        try:
            with gevent.Timeout(self.body_timeout, _BodyTimedOut):
                data = req.body.read(limit)
        except _BodyTimedOut:
            self.log.info("Request body timed out from ip=%s", (addr or ("",))[0])
            return (
                408,
                "Request Timeout",
                "request_timeout",
                f"The request body did not arrive within {self.body_timeout:g} seconds",
            )
        except http_errors.ParseException as error:
            # A malformed chunk or trailer: where the next request starts is unknown.
            self.log.warning("Invalid request body from ip=%s: %s", (addr or ("",))[0], error)
            return refusal_for(error) or REFUSAL_OF_A_BODY
        if len(data) > self.max_body:
            req.force_close()  # the rest of it is never read
        req.body = Body(io.BytesIO(data))
        return None

    def _refuse(self, req, sock, addr, status: int, reason: str, code: str, message: str):
        addr = addr or ("", -1)  # unix socket
        if req is not None:
            self._log_access(req, sock, addr, f"{status} {reason}")
        try:
            util.write_nonblock(sock, error_bytes(status, reason, code, message))
        except OSError:
            self.log.debug("Failed to send error message.")
            return
        util.close_graceful(sock, timeout=LINGER_SECONDS)

    def handle_error(self, req, client, addr, exc):
        """Answer a request gunicorn refused, or failed, with the contract's JSON error shape."""
        if isinstance(exc, ssl.SSLError):
            # No HTTP to answer on: gunicorn's own handling.
            super().handle_error(req, client, addr, exc)
            return
        refusal = refusal_for(exc)
        if refusal is None:
            self.log.exception("Error handling request %s", getattr(req, "uri", "(no URI read)"))
            refusal = INTERNAL_ERROR
        else:
            self.log.warning("Invalid request from ip=%s: %s", (addr or ("",))[0], exc)
        if req is None and isinstance(getattr(exc, "req", None), Request):
            req = exc.req  # a bad header names its request (a bad request line, only the line)
        self._refuse(req, client, addr, *refusal)

    def _log_access(self, req, client, addr, status: str) -> None:
        environ = default_environ(req, client, self.cfg)
        environ["REMOTE_ADDR"] = addr[0]
        environ["REMOTE_PORT"] = str(addr[1])
        response = Response(req, client, self.cfg)
        response.status = status
        self.log.access(response, req, environ, timedelta(0))
