"""Processes the tests own (redis-server, gunicorn) and small polling helpers."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent.parent
VENV_BIN = Path(sys.executable).parent
# Debian's Chromium (never a downloaded browser), with what this closed network needs: no
# background connections, no component updates, no QUIC.
CHROMIUM = "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else shutil.which("chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# WSS_FAKE_REDIS=1 runs the suite as on a machine without the binary (fakeredis's TCP server).
REDIS_SERVER = None if os.environ.get("WSS_FAKE_REDIS") == "1" else shutil.which("redis-server")


def free_port() -> int:
    """Return a TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception as error:  # the condition may raise while a process starts
            last_error = error
        else:
            if value:
                return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last error: {last_error!r})")


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], Any]:
    """Send one request; return (status, headers, parsed JSON body or raw text)."""
    data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, header_map, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, header_map, raw = error.code, dict(error.headers), error.read()
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode("utf-8", "replace")
    return status, header_map, parsed


class RedisServer:
    """A redis-server the tests own: its own port and directory, stoppable and restartable.

    Where no redis-server binary exists, fakeredis's TCP server stands in, so multi-process
    tests still run.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = tempfile.mkdtemp(prefix="wss-redis-")
        self.process: subprocess.Popen | None = None
        self.fake: Any = None
        self.fake_thread: threading.Thread | None = None
        self.real = REDIS_SERVER is not None

    def start(self) -> RedisServer:
        """Start (or restart) the server on the same port and wait until it answers."""
        if self.real:
            self.process = subprocess.Popen(
                [
                    REDIS_SERVER,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    self.directory,
                    "--maxclients",
                    "10000",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        else:
            from fakeredis import TcpFakeServer

            self.fake = TcpFakeServer(("127.0.0.1", self.port), server_type="redis")
            self.fake_thread = threading.Thread(target=self.fake.serve_forever, daemon=True)
            self.fake_thread.start()
        wait_until(lambda: self.client().ping(), timeout=10)
        return self

    def stop(self) -> None:
        """Stop the server (SIGKILL for a real one: an outage, not a shutdown)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None
        if self.fake is not None:
            self.fake.shutdown()
            self.fake.server_close()
            self.fake = None

    def pause(self, seconds: float) -> None:
        """Make the server stop answering clients for `seconds` (CLIENT PAUSE ALL)."""
        self.client().execute_command("CLIENT", "PAUSE", int(seconds * 1000), "ALL")

    def client(self):
        """Return a plain redis-py client for this server."""
        import redis

        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def flush(self) -> None:
        """Empty this (test-owned, never the shared) server."""
        self.client().flushall()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class Gunicorn:
    """The real server: `gunicorn -c deploy/gunicorn.conf.py service.wsgi:app` on a free port.

    `app` names another WSGI app to serve with the same config (bench/'s reference apps).
    """

    def __init__(
        self,
        env: dict[str, str],
        workers: int = 3,
        log_path: Path | None = None,
        app: str = "service.wsgi:app",
    ):
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "WEB_CONCURRENCY": str(workers),
            "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{self.port}",
            **env,
        }
        self.env.pop("PORT", None)
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="wss-gunicorn-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20) -> Gunicorn:
        """Start the server and wait until /healthz answers."""
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                str(VENV_BIN / "gunicorn"),
                "-c",
                str(ROOT / "deploy/gunicorn.conf.py"),
                self.app,
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log_path.read_text()[-2000:]}")
            return http("GET", self.url + "/healthz", timeout=2)[0] == 200

        wait_until(ready, timeout=timeout, interval=0.05)
        return self

    def worker_pids(self) -> list[int]:
        """Return the pids of the current workers."""
        assert self.process is not None
        out = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True, check=False
        ).stdout
        return [int(pid) for pid in out.split()]

    def stop(self) -> None:
        """Stop the master and its workers."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self.process = None
        if getattr(self, "log", None):
            self.log.close()

    def output(self) -> str:
        """Return what the server has logged so far."""
        return self.log_path.read_text(errors="replace")


class Tmpfs:
    """A small tmpfs mounted at a directory (needs root; `available()` says whether it works)."""

    def __init__(self, path: Path, size: str = "1m") -> None:
        self.path = path
        self.size = size

    @staticmethod
    def available() -> bool:
        """Tell whether this process may mount filesystems."""
        return os.geteuid() == 0 and shutil.which("mount") is not None

    def mount(self) -> Tmpfs:
        """Mount it (mode 0700) and return self."""
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0700", "tmpfs", str(self.path)],
            check=True,
        )
        return self

    def remount(self, options: str) -> None:
        """Change mount options, e.g. "ro" or "rw"."""
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True)

    def unmount(self) -> None:
        """Unmount it."""
        subprocess.run(["umount", "-l", str(self.path)], check=False)


class SSEClient:
    """Read a Server-Sent Events stream in a background thread; events land in a queue."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout: float = 30):
        parts = urlsplit(url)
        self.conn = HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        self.conn.request(
            "GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers or {}
        )
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = dict(self.response.headers)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.lines: list[str] = []
        self.closed = threading.Event()
        if self.status == 200:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        event: dict[str, Any] = {}
        try:
            while not self.closed.is_set():
                raw = self.response.readline()
                if not raw:
                    break
                line = raw.decode().rstrip("\n")
                self.lines.append(line)
                if line == "":
                    if "data" in event:
                        event["json"] = json.loads(event["data"])
                        self.events.put(event)
                    event = {}
                elif line.startswith(":"):
                    continue
                else:
                    field, _, value = line.partition(": ")
                    event[field] = value
        except Exception:  # the connection was closed under the reader: the stream is over
            pass
        finally:
            self.closed.set()

    def next(self, timeout: float = 10) -> dict[str, Any]:
        """Return the next event, or fail after `timeout` seconds."""
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout}s") from None

    def assert_quiet(self, seconds: float) -> None:
        """Fail if an event arrives within `seconds`."""
        try:
            event = self.events.get(timeout=seconds)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected event {event}")

    def close(self) -> None:
        """Drop the connection."""
        self.closed.set()
        with contextlib.suppress(OSError):
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()
