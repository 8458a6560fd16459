"""Live updates: GET /workflow/state/stream as Server-Sent Events.

Each process runs one `Hub`: a thread that follows the store's change feed of every owner
(Redis pub/sub, or the file journal) and hands each change, rendered once as an SSE frame, to
the queue of every open stream of its *topic*: one workflow of one owner, or whichever workflow
is an owner's current one (what `/workflow/state/stream` follows; a new current workflow
replaces the old in it), or an owner's list (`/workflows/stream`: every change of any of the
owner's workflows, as a list entry). A second thread notices when a watched state expires and
sends `state: null` (to a list: `{"workflow_id": ..., "state": null}`). A stream subscribes
first, then reads its snapshot, and drops queued changes the snapshot already covers, so
nothing is skipped or sent twice.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request

from . import model
from .api import state_body
from .errors import RETRY_AFTER_SECONDS, error_response
from .identity import current_identity, still_identified
from .storage import (
    RESYNC,
    Event,
    Snapshot,
    StateStore,
    StorageUnavailable,
    dumps,
    list_entry,
)
from .storage.listing import LIMIT_MAX
from .store import store_of

log = logging.getLogger(__name__)

bp = Blueprint("stream", __name__, url_prefix="/workflow")

EXTENSION = "workflow_stream_hub"
RETRY_MS = 2000
# How long a new stream waits for the hub's first subscription before reading its snapshot.
READY_WAIT_SECONDS = 2.0
# After a state's expected expiry, how often the expiry watcher looks whether it is gone.
EXPIRY_POLL_SECONDS = 0.2
# Connections (gevent) or threads (gthread) a worker keeps for ordinary requests, whatever the
# number of open streams.
RESERVED_CAPACITY = 32
# Frames one stream may have waiting (a few states of the largest size) before it is dropped.
BACKLOG_BYTES = 4 << 20
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}


# What a stream follows: (owner, workflow id), where None is the owner's current workflow and
# LIST every workflow of the owner (no workflow id contains "*").
Topic = tuple[str, str | None]
LIST = "*"


@dataclass(frozen=True, slots=True)
class Frame:
    """One change rendered once for every stream: its id, its counter value and its text."""

    id: str
    seq: int | None
    text: str
    is_null: bool


def _seq_of(event_id: str) -> int | None:
    head = event_id.split(":", 1)[0]
    return int(head) if head.isdigit() else None


def render(event_id: str, state_json: str, state: dict[str, Any] | None) -> str:
    """Render an `event: state` frame whose data is the GET /workflow/state body."""
    return f"id: {event_id}\nevent: state\ndata: {state_body(state, state_json)}\n\n"


def frame_of_snapshot(snapshot: Snapshot) -> Frame:
    """Render a snapshot (its event id must be set)."""
    event_id = snapshot.event_id or "0"
    text = render(event_id, snapshot.json, snapshot.state)
    return Frame(event_id, _seq_of(event_id), text, snapshot.state is None)


def frame_of_event(event: Event) -> tuple[Frame, dict[str, Any] | None]:
    """Render a change from the feed; also return its state for expiry tracking."""
    state = json.loads(event.json) if event.json != "null" else None
    frame = Frame(
        event.id,
        _seq_of(event.id),
        render(event.id, event.json, state),
        state is None,
    )
    return frame, state


def list_frame(event_id: str, workflow_id: str, state: dict[str, Any] | None) -> Frame:
    """Render an `event: workflow` frame of a list stream: the list entry, or the workflow gone."""
    data = list_entry(state) if state is not None else {"workflow_id": workflow_id, "state": None}
    text = f"id: {event_id}\nevent: workflow\ndata: {dumps(data)}\n\n"
    return Frame(event_id, _seq_of(event_id), text, state is None)


RESYNC_FRAME = Frame("", None, "", False)
CLOSE_FRAME = Frame("", None, "", True)


class Subscription:
    """One open stream's inbox, and the topic it follows.

    The inbox holds at most BACKLOG_BYTES of frames: a client that stops reading (its socket
    full) would otherwise make the worker keep every later change. Past that the stream is
    `behind` and ends; its client reconnects and gets a fresh snapshot.
    """

    def __init__(self, topic: Topic) -> None:
        self.topic = topic
        self.inbox: queue.SimpleQueue[Frame] = queue.SimpleQueue()
        self.queued = 0  # bytes of frames in the inbox (approximate: only a bound)
        self.behind = False

    def put(self, frame: Frame) -> None:
        """Queue a frame for the stream, unless it has fallen too far behind."""
        if frame.text:
            if self.behind or self.queued + len(frame.text) > BACKLOG_BYTES:
                self.behind = True
                return
            self.queued += len(frame.text)
        self.inbox.put(frame)

    def get(self, timeout: float) -> Frame:
        """Return the next frame (queue.Empty after `timeout`); CLOSE once it fell behind."""
        if self.behind:
            return CLOSE_FRAME
        frame = self.inbox.get(timeout=timeout)
        self.queued -= len(frame.text)
        return frame


class Hub:
    """Fan one change feed out to every open stream of this process, by topic."""

    def __init__(
        self, store: StateStore, context: Callable[[], AbstractContextManager] = nullcontext
    ) -> None:
        self.store = store
        # Entered by the hub's threads: the app's context, so their log lines are the app's.
        self.context = context
        self._subscriptions: dict[Topic, set[Subscription]] = {}
        self._count = 0
        self._guard = threading.Lock()
        self._pid: int | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._expiry = threading.Condition()
        # Per watched topic, (version, unix time it expires) of the newest state seen; and a
        # heap of (expires, version, repr(topic), topic) to wake up for, whose stale entries
        # are skipped.
        self._tracked: dict[Topic, tuple[int, float]] = {}
        self._due: list[tuple[float, int, str, Topic]] = []
        self.on_change: list = []  # callables(open_count) for the open-streams gauge

    # --- lifecycle -------------------------------------------------------------------------

    def _ensure_running(self) -> None:
        """Start the feed threads in this process (gunicorn forks after the app is built)."""
        pid = os.getpid()
        if self._pid == pid:
            return
        with self._guard:
            if self._pid == pid:
                return
            self._subscriptions = {}
            self._count = 0
            self._stop = threading.Event()
            self._ready = threading.Event()
            self._tracked = {}
            self._due = []
            for target, name in ((self._follow, "feed"), (self._watch_expiry, "expiry")):
                HubThread(self, target, f"stream-hub-{name}").start()
            self._pid = pid

    def close(self) -> None:
        """Stop the feed threads and end every open stream."""
        self._stop.set()
        with self._expiry:
            self._expiry.notify_all()
        self._broadcast(CLOSE_FRAME)

    @property
    def open_streams(self) -> int:
        """Return how many streams are open in this process."""
        return self._count

    def subscribe(self, topic: Topic) -> Subscription:
        """Register a new stream of `topic`; its inbox gets every change from now on.

        Raise StorageUnavailable when the hub has yet to subscribe and storage does not answer.
        """
        self._ensure_running()
        if not self._ready.is_set():
            # This worker's first stream. In an outage the hub cannot subscribe, and waiting
            # for it, then for the snapshot, would take the 503 past the 2 s bound.
            self.store.ping()
            self._ready.wait(READY_WAIT_SECONDS)
        subscription = Subscription(topic)
        with self._guard:
            self._subscriptions.setdefault(topic, set()).add(subscription)
            self._count += 1
            count = self._count
        self._changed(count)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget a stream that ended (and the topic's expiry watch, if it was the last)."""
        topic = subscription.topic
        with self._guard:
            streams = self._subscriptions.get(topic)
            if streams is None or subscription not in streams:
                return
            streams.discard(subscription)
            if not streams:
                del self._subscriptions[topic]
            self._count -= 1
            count = self._count
            watched = topic in self._subscriptions
        if not watched:
            with self._expiry:
                self._tracked.pop(topic, None)
        self._changed(count)

    def _changed(self, count: int) -> None:
        for callback in self.on_change:
            callback(count)

    def _watched(self, topic: Topic) -> bool:
        # A workflow is watched also by its owner's list, which hears when it expires.
        return topic in self._subscriptions or (
            topic[1] not in (None, LIST) and (topic[0], LIST) in self._subscriptions
        )

    def _broadcast(self, frame: Frame) -> None:
        """Hand a frame to every open stream (a resync, or the end)."""
        with self._guard:
            targets = [s for streams in self._subscriptions.values() for s in streams]
        for subscription in targets:
            subscription.put(frame)

    def _deliver(self, topic: Topic, frame: Frame) -> None:
        with self._guard:
            targets = list(self._subscriptions.get(topic, ()))
        for subscription in targets:
            subscription.put(frame)

    # --- the change feed -------------------------------------------------------------------

    def _follow(self) -> None:
        stop = self._stop
        while not stop.is_set():
            try:
                for event in self.store.events(stop):
                    if event is RESYNC:
                        # Streams that subscribed before it resynchronise; those waiting for
                        # the hub to be ready subscribe after it and need not.
                        self._broadcast(RESYNC_FRAME)
                        self._ready.set()
                        continue
                    self._dispatch(event)
            except Exception:  # the feed must outlive any single bad event or backend hiccup
                log.exception("stream hub feed failed; restarting it")
                stop.wait(0.5)

    def _dispatch(self, event: Event) -> None:
        """Hand a change to the streams of its workflow and, if current, of its owner's current."""
        topics = [(event.owner, event.workflow_id)]
        if event.current:
            topics.append((event.owner, None))
        topics = [topic for topic in topics if self._watched(topic)]
        if not topics:
            return  # nobody here follows it: not even parsed
        frame, state = frame_of_event(event)
        for topic in topics:
            self.track(topic, state, frame.seq)
            self._deliver(topic, frame)
        listing = (event.owner, LIST)
        if event.workflow_id and listing in self._subscriptions:
            self._deliver(listing, list_frame(event.id, event.workflow_id, state))

    # --- expiry ----------------------------------------------------------------------------

    def track(self, topic: Topic, state: dict[str, Any] | None, seq: int | None) -> None:
        """Remember the newest state a topic showed (or none since `seq`), to announce expiry."""
        with self._expiry:
            tracked = self._tracked.get(topic)
            if tracked is not None and seq is not None and seq < tracked[0]:
                return  # an older observation than the one already tracked
            if state is None or not self._watched(topic):
                self._tracked.pop(topic, None)
                return
            expires = model.expires_at(
                state, self.store.ttl, self.store.stale_ttl, self.store.failed_ttl
            )
            self._tracked[topic] = (state["version"], expires)
            self._schedule(expires, topic, state["version"])

    def _schedule(self, when: float, topic: Topic, version: int) -> None:
        """Wake the expiry watcher at `when` for `topic` (call with `_expiry` held)."""
        if len(self._due) > 2 * len(self._tracked) + 64:
            # Mostly superseded entries: keep only the live ones.
            self._due = [(t[1], t[0], repr(key), key) for key, t in self._tracked.items()]
            heapq.heapify(self._due)
        # Ties are broken by the topic's text: an owner's current workflow and that workflow
        # share time and version, and their topics (None, an id) do not compare.
        heapq.heappush(self._due, (when, version, repr(topic), topic))
        self._expiry.notify_all()

    def _watch_expiry(self) -> None:
        stop = self._stop
        while not stop.is_set():
            with self._expiry:
                if not self._due:
                    self._expiry.wait(timeout=5)
                    continue
                when, version, _, topic = self._due[0]
                delay = when - time.time()
                if delay > 0:
                    self._expiry.wait(timeout=min(delay, 60))
                    continue
                heapq.heappop(self._due)
                tracked = self._tracked.get(topic)
                if tracked is None or tracked[0] != version:
                    continue  # superseded, or nobody watches it any more
            self._confirm_expiry(topic, tracked)

    def _confirm_expiry(self, topic: Topic, tracked: tuple[int, float]) -> None:
        """Look whether the tracked state is gone (then announce it), replaced, or not yet gone."""
        version, expected = tracked
        try:
            snapshot = self.store.get(*topic)
        except StorageUnavailable:
            with self._expiry:
                self._schedule(time.time() + 1.0, topic, version)
            return
        with self._expiry:
            if self._tracked.get(topic) != tracked:
                return  # a newer state arrived meanwhile
            if snapshot.state is not None and snapshot.version == version:
                # Not gone yet (clock differences, or an operator changed the TTL): look again,
                # more slowly once well past the expected time.
                late = time.time() - expected > 10
                self._schedule(time.time() + (1.0 if late else EXPIRY_POLL_SECONDS), topic, version)
                return
            del self._tracked[topic]
        if snapshot.state is None:
            event_id = f"{version}:expired"
            frame = Frame(event_id, version, render(event_id, "null", None), True)
            self._deliver(topic, frame)
            owner, workflow_id = topic
            if workflow_id is not None:
                self._deliver((owner, LIST), list_frame(event_id, workflow_id, None))


class HubThread(threading.Thread):
    """One of a hub's threads; it names its hub, so a stopping worker finds every hub it runs."""

    def __init__(self, hub: Hub, target: Callable[[], None], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.hub = hub
        self._target_in_context = target

    def run(self) -> None:
        """Run the hub's loop inside the hub's context."""
        with self.hub.context():
            self._target_in_context()


def close_all_hubs() -> None:
    """End every open stream in this process (a gunicorn worker shutting down, a test's end).

    Only a hub with running threads can have open streams, so the process's threads (no
    registry of this module's own) are where to look.
    """
    for thread in threading.enumerate():
        if isinstance(thread, HubThread):
            thread.hub.close()


def hub_of(app: Flask) -> Hub:
    """Return `app`'s hub."""
    return app.extensions[EXTENSION]


def get_hub() -> Hub:
    """Return the current app's hub."""
    return hub_of(current_app)


def _stream_limit() -> int:
    # WORKFLOW_WORKER_CAPACITY, set by deploy/gunicorn.conf.py in each worker; 0 means no cap.
    capacity = current_app.config["WORKER_CAPACITY"]
    return max(capacity - RESERVED_CAPACITY, 1) if capacity else 1 << 30


def is_news(frame: Frame, sent: Frame) -> bool:
    """Tell whether a change still has to be sent after `sent` (the last frame sent)."""
    if frame.id.endswith(":expired"):
        return sent.id == str(frame.seq)  # only the state the client holds can expire
    # Anything at or below the last sent counter value is already covered by it.
    return frame.seq is None or sent.seq is None or frame.seq > sent.seq


def _resnapshot(hub: Hub, topic: Topic) -> Frame | None:
    try:
        snapshot = hub.store.get_for_stream(*topic)
    except StorageUnavailable:
        return None
    frame = frame_of_snapshot(snapshot)
    hub.track(topic, snapshot.state, frame.seq)
    return frame


def changes(
    hub: Hub,
    subscription: Subscription,
    sent: Frame,
    keepalive: float,
    allowed: Callable[[], bool] = lambda: True,
) -> Iterator[str]:
    """Yield each change after `sent`, a fresh snapshot after a resync, and keepalives.

    End when the hub closes, the stream fell behind, or `allowed()` says the caller no longer
    may hear (asked before each change and each keepalive).
    """
    resync = False
    quiet = 0.0
    while True:
        if resync and (fresh := _resnapshot(hub, subscription.topic)) is not None:
            resync = False
            # After a resync the counter is the baseline again, even if it went back
            # (a Redis that lost its data).
            if fresh.text != sent.text:
                if not allowed():
                    return
                quiet = 0.0
                yield fresh.text
            sent = fresh
        wait = 0.5 if resync else keepalive
        try:
            frame = subscription.get(timeout=wait)
        except queue.Empty:
            quiet += wait
            if quiet >= keepalive:
                if not allowed():
                    return
                quiet = 0.0
                yield ": keepalive\n\n"
            continue
        if frame is CLOSE_FRAME:
            return
        if frame is RESYNC_FRAME:
            resync = True
        elif is_news(frame, sent):
            if not allowed():
                return
            quiet = 0.0
            yield frame.text
            sent = frame


def follow(
    hub: Hub,
    subscription: Subscription,
    first: Snapshot,
    last_event_id: str | None,
    keepalive: float,
    allowed: Callable[[], bool] = lambda: True,
) -> Iterator[str]:
    """Yield the stream's text: retry, the snapshot, then every change, with keepalives."""
    try:
        yield f"retry: {RETRY_MS}\n\n"
        sent = frame_of_snapshot(first)
        if first.event_id != last_event_id:
            yield sent.text
        yield from changes(hub, subscription, sent, keepalive, allowed)
    finally:
        hub.unsubscribe(subscription)


def _event_stream(hub: Hub, subscription: Subscription, body: Iterator[str]) -> Response:
    """Answer an event stream whose subscription ends with the response.

    The body's own `finally` unsubscribes once it runs; a response closed before its body is
    read (a HEAD, a client gone at once) unsubscribes when the server closes it.
    """
    response = Response(body, mimetype="text/event-stream", headers=HEADERS)
    response.call_on_close(lambda: hub.unsubscribe(subscription))
    return response


def _too_many_streams() -> Response:
    return error_response(
        503,
        "too_many_streams",
        "This worker has no connection to spare for another stream; retry, or poll GET",
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def stream_response(topic: Topic, *, must_exist: bool = False) -> Response:
    """Answer a stream of `topic`: a snapshot, then every accepted write or delete, as SSE.

    `must_exist`: a workflow absent at connect is NoWorkflow (404), not a stream of nothing.
    """
    hub = get_hub()
    if hub.open_streams >= _stream_limit():
        return _too_many_streams()
    subscription = hub.subscribe(topic)
    try:
        first = hub.store.get_for_stream(*topic)
        if must_exist and first.state is None:
            raise model.NoWorkflow.named(topic[1])
        hub.track(topic, first.state, _seq_of(first.event_id or ""))
        body = follow(
            hub,
            subscription,
            first,
            request.headers.get("Last-Event-ID"),
            current_app.config["STREAM_KEEPALIVE"],
            still_identified(),
        )
    except BaseException:
        hub.unsubscribe(subscription)
        raise
    return _event_stream(hub, subscription, body)


def list_stream_response(owner: str) -> Response:
    """Answer a stream of an owner's list: every change of any of its workflows, as SSE."""
    hub = get_hub()
    if hub.open_streams >= _stream_limit():
        return _too_many_streams()
    subscription = hub.subscribe((owner, LIST))
    try:
        # Workflows that change no more still expire (finished ones, and running ones that go
        # stale): watch every one the owner has now.
        cursor = None
        while True:
            page = hub.store.list(owner, limit=LIMIT_MAX, cursor=cursor)
            for entry in page.entries:
                hub.track((owner, entry["workflow_id"]), entry, entry["version"])
            if (cursor := page.next_cursor) is None:
                break
        body = list_changes(
            hub, subscription, current_app.config["STREAM_KEEPALIVE"], still_identified()
        )
    except BaseException:
        hub.unsubscribe(subscription)
        raise
    return _event_stream(hub, subscription, body)


def list_changes(
    hub: Hub,
    subscription: Subscription,
    keepalive: float,
    allowed: Callable[[], bool] = lambda: True,
) -> Iterator[str]:
    """Yield retry, then every change of an owner's list as it comes, with keepalives.

    No snapshot: a client reads GET /workflows once the stream is open (its first line). When
    the feed was interrupted (a resync) or the stream fell behind, it ends, so the client
    reconnects and reads the list again rather than miss a change.
    """
    try:
        yield f"retry: {RETRY_MS}\n\n"
        while True:
            try:
                frame = subscription.get(timeout=keepalive)
            except queue.Empty:
                frame = None
            if frame is CLOSE_FRAME or frame is RESYNC_FRAME or not allowed():
                return
            yield ": keepalive\n\n" if frame is None else frame.text
    finally:
        hub.unsubscribe(subscription)


@bp.get("/state/stream")
def stream() -> Response:
    """Stream the owner's current workflow: a snapshot, then every change, as SSE."""
    return stream_response((current_identity().owner, None))


def init_app(app: Flask) -> None:
    """Create this app's hub (its threads start in each process on first use)."""
    app.extensions[EXTENSION] = Hub(store_of(app), app.app_context)
    app.register_blueprint(bp)
