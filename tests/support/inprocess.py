"""Streams read in-process: an app's SSE answer read in a thread, so a test waits with a timeout."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask

from service.stream import close_all_hubs


class Events:
    """The events of one in-process stream (only those with an `id:`; comments are skipped)."""

    def __init__(self, app: Flask, path: str, headers: dict[str, str] | None = None) -> None:
        self.response = app.test_client().get(path, headers=headers, buffered=False)
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for chunk in self.response.response:
            text = chunk.decode()
            if text.startswith("id:"):
                self.lines.put(text)

    def next(self, timeout: float = 5.0) -> tuple[str, str, Any]:
        """Return the next event's (id, event name, data)."""
        text = self.lines.get(timeout=timeout)
        fields = dict(line.split(": ", 1) for line in text.strip().splitlines())
        return fields["id"], fields["event"], json.loads(fields["data"])

    def quiet(self, seconds: float = 0.3) -> bool:
        """Tell whether no event comes for `seconds`."""
        try:
            self.lines.get(timeout=seconds)
        except queue.Empty:
            return True
        return False


@contextmanager
def opened_streams() -> Iterator[Callable[..., Events]]:
    """Give an opener of in-process streams; on leaving, end every stream and its reader."""
    opened: list[Events] = []

    def open_stream(app: Flask, path: str, headers: dict[str, str] | None = None) -> Events:
        opened.append(Events(app, path, headers))
        return opened[-1]

    yield open_stream
    close_all_hubs()  # every stream ends, and with it its reader
    for stream in opened:
        stream.reader.join(timeout=5)
        stream.response.close()
