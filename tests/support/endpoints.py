"""Step endpoints the tests own: a real local HTTP server with one behaviour per path.

`StepEndpoints().start()` listens on a free port and records every call (path, headers and JSON
body), so a test can count how often a step was called and see what it was sent. Paths:

    /ok             200 {"success": true, "message": "done", "data": {"host": "gpu-7"}}
    /ok-empty       204, no body
    /fail           200 {"success": false, "message": "disk full", "data": {"free": 0}}
    /boom           500 {"success": false, "message": "boom"}
    /500            500 {"detail": "x"} (JSON, no message)
    /html           502 an HTML page
    /text           200 plain text
    /list           200 [1, 2]
    /huge           200 more than a MiB
    /bigdata        200 success with 100 KiB of data
    /deep           200 success with data nested 200 objects deep
    /nan            200 success with data {"x": NaN, "y": 1e999} (Python's json writes it)
    /hangup         closes the connection without answering
    /cutoff         announces 100 bytes, sends 10, closes
    /redirect       302 to /ok
    /echo-secret    500 whose message repeats the request's ssh_connection
    /hold           answers nothing; notes when the caller hangs up (`hangups`)
    /slow           waits (until released, or `seconds` of the query), then 200 success
    /echo           waits `seconds` of the query, then 200 success with data {"action"}: the
                    action it was called for, so a test can tell which call an answer came from
    /drip           sends its headers, then a byte every 0.2 s for `seconds`
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode())

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw
        self.server.record(parts.path, dict(self.headers), body)
        path = parts.path
        if path == "/ok":
            self._json(200, {"success": True, "message": "done", "data": {"host": "gpu-7"}})
        elif path == "/ok-empty":
            self.send_response(204)
            self.end_headers()
        elif path == "/fail":
            self._json(200, {"success": False, "message": "disk full", "data": {"free": 0}})
        elif path == "/boom":
            self._json(500, {"success": False, "message": "boom"})
        elif path == "/500":
            self._json(500, {"detail": "x"})
        elif path == "/html":
            self._send(502, b"<html><body>Bad Gateway</body></html>", "text/html")
        elif path == "/text":
            self._send(200, b"all good", "text/plain")
        elif path == "/list":
            self._json(200, [1, 2])
        elif path == "/huge":
            self._send(200, b'{"success": true, "pad": "' + b"x" * (1 << 20) + b'"}')
        elif path == "/bigdata":
            self._json(200, {"success": True, "data": {"blob": "y" * 100_000}})
        elif path == "/deep":
            self._send(200, b'{"success": true, "data": ' + b'{"d": ' * 199 + b"{}" + b"}" * 200)
        elif path == "/nan":
            self._send(200, b'{"success": true, "data": {"x": NaN, "y": 1e999}}')
        elif path == "/hangup":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif path == "/cutoff":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b'{"success": ')
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/ok")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/echo-secret":
            secret = body.get("ssh_connection") if isinstance(body, dict) else None
            self._json(500, {"success": False, "message": f"cannot log in as {secret}"})
        elif path == "/hold":
            self.connection.settimeout(60)
            with contextlib.suppress(OSError):
                self.connection.recv(1)  # b"" once the caller closes its end
            self.server.hangups.append(time.monotonic())
            self.close_connection = True
        elif path == "/slow":
            self.server.release.wait(float(query.get("seconds", 30)))
            self._json(200, {"success": True})
        elif path == "/echo":
            time.sleep(float(query.get("seconds", 0)))
            action = body.get("action") if isinstance(body, dict) else None
            self._json(200, {"success": True, "data": {"action": action}})
        elif path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            deadline = time.monotonic() + float(query.get("seconds", 30))
            while time.monotonic() < deadline and not self.server.release.is_set():
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.2)
        else:
            self._json(404, {"success": False, "message": f"no test endpoint {path}"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.hangups: list[float] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when a client hangs up mid-answer: the tests do that on purpose."""

    def record(self, path: str, headers: dict[str, str], body: Any) -> None:
        with self.lock:
            self.calls.append({"path": path, "headers": headers, "body": body})


class StepEndpoints:
    """A local HTTP server of step endpoints, recording each call; HTTPS with `certificate`."""

    def __init__(self, certificate: tuple[str, str] | None = None) -> None:
        self.server = _Server()
        self.port = self.server.server_address[1]
        scheme = "http"
        if certificate:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*certificate)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> StepEndpoints:
        """Serve in a background thread."""
        self.thread.start()
        return self

    def calls(self, path: str | None = None) -> list[dict[str, Any]]:
        """Return the calls received so far (to `path` only, when given)."""
        with self.server.lock:
            return [c for c in self.server.calls if path is None or c["path"] == path]

    def hangups(self) -> list[float]:
        """Return when (time.monotonic) callers of /hold closed their connection."""
        return list(self.server.hangups)

    def close(self) -> None:
        """Let waiting handlers go, and stop serving."""
        self.server.release.set()
        self.server.shutdown()
        self.server.server_close()


def _listen(backlog: int) -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    return sock, sock.getsockname()[1]


class MuteServer:
    """Accepts every connection and never sends a byte (a TLS handshake waits for ever)."""

    def __init__(self) -> None:
        self.sock, self.port = _listen(16)
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(connection)

    def close(self) -> None:
        """Stop accepting and drop every held connection."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for connection in self.held:
            connection.close()


def make_certificate(directory: Path) -> tuple[str, str]:
    """Write a self-signed certificate for 127.0.0.1 and localhost; return (cert, key) paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


class SilentListener:
    """A port that accepts no connection: its backlog is full, so a connect waits for ever."""

    def __init__(self) -> None:
        self.sock, self.port = _listen(0)
        self.url = f"http://127.0.0.1:{self.port}"
        self.fillers: list[socket.socket] = []
        # Linux queues backlog + 1 connections; a few more make sure the next SYN is dropped.
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", self.port))
            self.fillers.append(filler)

    def close(self) -> None:
        """Close the listener and its filler connections."""
        for filler in self.fillers:
            filler.close()
        self.sock.close()
