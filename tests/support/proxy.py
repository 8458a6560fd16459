"""A TCP proxy in front of a redis-server that can hold back Redis's answers.

`stall(seconds)` models the fault CLIENT PAUSE cannot show reliably: Redis receives and runs
each command at once, but its answers reach the client only after the stall (or never, when the
client gave up and closed the connection meanwhile). That is "the call ran, its answer was lost,
and the client sent it again".
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from tests.support.processes import free_port


class StallingProxy:
    """Forward 127.0.0.1:<port> to a Redis port; answers can be held back for a while."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._held_until = 0.0
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._guard = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self, seconds: float) -> float:
        """Hold every answer from now for `seconds`; return when (monotonic) they flow again."""
        self._held_until = time.monotonic() + seconds
        return self._held_until

    def close(self) -> None:
        """Stop listening and drop every connection."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._guard:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            _shut(sock)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                continue
            with self._guard:
                self._sockets.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, answers: bool) -> None:
        try:
            while data := source.recv(65536):
                if answers:
                    while (left := self._held_until - time.monotonic()) > 0:
                        time.sleep(min(left, 0.01))
                target.sendall(data)
        except OSError:
            pass  # either side went away: the connection is over
        finally:
            for sock in (source, target):
                _shut(sock)
                with self._guard:
                    self._sockets.discard(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
