"""Perform one step of a server run: call its endpoint, or the built-in simulator.

`perform_step` never raises and never hangs: whatever happens (an answer, a timeout, a refused
connection, a body that is not JSON, a cancel) becomes a `StepResult` the engine stores as the
step's status and data. It knows nothing of Flask, storage or the page.

A step with an `endpoint` is `POST <endpoint>` with JSON {"workflow_id", "action", "index",
"attempt", "ssh_connection"}: an absolute http(s) URL, or a path on this service, resolved
against WORKFLOW_SELF_URL (workers may run on other hosts than the web server). A step without
one runs the simulator in-process (no HTTP round trip); the route
POST /workflow/actions/<action> serves the same `simulate`.

Interrupting a call: the request runs in a helper thread while the caller waits, looking at the
`cancel` event every POLL_SECONDS. On cancel or on the overall deadline the caller shuts the
socket down and closes it: on Linux that wakes a thread blocked in connect, in the TLS handshake
or in recv; under gevent it wakes the waiting greenlet. The caller returns at once either way,
so not even a DNS lookup that cannot be interrupted holds the step up. The standard library's
http.client does the HTTP, with the socket made by `_Connector` so the caller can reach it;
urllib hides its socket, and redirects and proxies are things a step call should not follow.

Secrets: ssh_connection travels in the request body, as the contract says, and nowhere else.
Log lines name the step and an outcome phrase made here (`reason`), never a body, the
endpoint's own message or an exception's text.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import re
import socket
import ssl
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from .. import schema
from ..config import origin

log = logging.getLogger("service.runner")

# How often a waiting caller looks at the cancel event: cancel takes effect within this.
POLL_SECONDS = 0.05
# The most of an answer read: a step's answer is a small JSON object.
MAX_ANSWER_BYTES = 1 << 20
# An answer's `data` larger than this (as JSON) fails the step rather than being stored: every
# later read, write and stream event of the workflow would carry it.
MAX_DATA_BYTES = 64 << 10
# Messages stored in steps[i].data.message are for people; a page of text is enough.
MAX_MESSAGE_CHARS = 1000
USER_AGENT = "workflow-state-runner"

COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
# The step asked the person (a `blocked` answer): `StepResult.blocked` holds the question.
BLOCKED = "blocked"
# How many progress reports the simulator sends over one step (the demo shows them).
SIMULATED_REPORTS = 4


@dataclass(frozen=True)
class StepSettings:
    """What performing a step needs from the configuration."""

    self_url: str
    timeout: float
    demo_seconds: float
    demo_fail: str | None = None
    # Sent only with calls to paths on this service (e.g. the shared bearer token); never to
    # an absolute URL, which may be anyone's.
    self_headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], self_headers: Mapping[str, str] | None = None
    ) -> StepSettings:
        """Take the step settings from an app config (or `config.from_env()`)."""
        return cls(
            self_url=config["SELF_URL"],
            timeout=config["STEP_TIMEOUT"],
            demo_seconds=config["DEMO_STEP_SECONDS"],
            demo_fail=config["DEMO_FAIL"],
            self_headers=dict(self_headers or {}),
        )


@dataclass(frozen=True)
class StepCall:
    """One step to perform: what the endpoint is told, and where it is."""

    workflow_id: str
    action: str
    index: int
    attempt: int
    ssh_connection: str | None = None
    endpoint: str | None = None
    # The step's own count of calls (1 for the first), whatever caused each.
    step_attempt: int = 1
    # The person's answer to this step's question (a resume), sent on every call of this run.
    input: Mapping[str, Any] | None = None
    progress_url: str | None = None
    progress_token: str | None = None
    # The same for every call of this step of this workflow incarnation.
    idempotency_key: str | None = None
    # The step's own timeout_seconds (None: the setting's).
    timeout: float | None = None

    def __repr__(self) -> str:
        # Keep secrets (the SSH target, the answer, the progress token) out of any traceback
        # or debug print that shows a call.
        secret = "None" if self.ssh_connection is None else "'[REDACTED]'"
        given = "None" if self.input is None else "'[REDACTED]'"
        return (
            f"StepCall(workflow_id={self.workflow_id!r}, action={self.action!r}, "
            f"index={self.index}, attempt={self.attempt}, step_attempt={self.step_attempt}, "
            f"ssh_connection={secret}, input={given}, endpoint={self.endpoint!r})"
        )

    def body(self) -> bytes:
        """Return the JSON the endpoint receives."""
        fields: dict[str, Any] = {
            "workflow_id": self.workflow_id,
            "action": self.action,
            "index": self.index,
            "attempt": self.attempt,
            "step_attempt": self.step_attempt,
            "ssh_connection": self.ssh_connection,
        }
        if self.input is not None:
            fields["input"] = dict(self.input)
        if self.progress_url is not None:
            fields["progress_url"] = self.progress_url
            fields["progress_token"] = self.progress_token
        if self.idempotency_key is not None:
            fields["idempotency_key"] = self.idempotency_key
        return json.dumps(fields).encode()


@dataclass(frozen=True)
class StepResult:
    """What became of a step: `completed`, `failed` or `cancelled`.

    `data` is what to store in steps[i].data (None: nothing); a failure always carries a
    `message` a person can read. `reason` is a short phrase made here, safe to log.
    """

    status: str
    data: dict[str, Any] | None
    reason: str
    seconds: float = 0.0
    blocked: dict[str, Any] | None = None

    @property
    def message(self) -> str | None:
        """Return data.message, if any."""
        return (self.data or {}).get("message")


# --- the simulator ----------------------------------------------------------


def simulate(
    action: str,
    *,
    seconds: float,
    fail_action: str | None,
    cancel: threading.Event | None = None,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any] | None:
    """Take `seconds`, then answer as a step endpoint would: fail `fail_action`, pass the rest.

    With `report`, tell it how far along it is a few times on the way, as a step endpoint
    reports to its progress_url. Returns the answer's JSON body, or None when `cancel` was set
    while it waited.
    """
    cancel = cancel or threading.Event()
    parts = SIMULATED_REPORTS if report is not None and seconds > 0 else 1
    for part in range(parts):
        if part and report is not None:
            tasks = [
                {"name": f"Part {n + 1} of {parts}", "status": _task_status(n, part)}
                for n in range(parts)
            ]
            report(
                {
                    "percent": round(part / parts * 100),
                    "message": f"{action}: part {part + 1} of {parts}",
                    "tasks": tasks,
                }
            )
        if cancel.wait(seconds / parts):
            return None
    if action == fail_action:
        return {
            "success": False,
            "message": f"Simulated failure of {action} (WORKFLOW_DEMO_FAIL)",
            "error": "action_failed",
        }
    return {"success": True, "message": f"{action} done"}


def _task_status(task: int, running: int) -> str:
    return "completed" if task < running else "in_progress" if task == running else "pending"


# --- answers -------------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        text = value.strip()
        return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"
    return None


def _unusable(data: Mapping[str, Any], where: str, status: int) -> StepResult | None:
    """Fail the step when the answer's data breaks a rule a client's body keeps; None: keep it.

    Stored, it would be read back on every later read, write and stream event of the workflow:
    too deep, and the workflow could no longer be read at all; too large, and each of those
    would carry it.
    """
    try:
        schema.check_step_data(data)
        size = len(json.dumps(data, allow_nan=False))
    except schema.FieldError as error:
        return _failed(
            f"{where} answered {status} with data that cannot be kept: it {error.rule}",
            "data too deep",
        )
    except (TypeError, ValueError):  # not parsed from JSON: NaN, or a value JSON lacks
        return _failed(f"{where} answered {status} with data that is not JSON", "data not JSON")
    if size > MAX_DATA_BYTES:
        return _failed(
            f"{where} answered {status} with data too large to keep ({size} bytes, the most "
            f"is {MAX_DATA_BYTES})",
            "data too large",
        )
    return None


def _failed(message: str, reason: str, **extra: Any) -> StepResult:
    return StepResult(FAILED, {**extra, "message": message}, reason)


def interpret(status: int, answer: Any, where: str) -> StepResult:
    """Map an answer (HTTP status and parsed JSON body) to the step's outcome.

    2xx with `success` not false → completed, keeping `data` (an object) and the answer's
    `message`; anything else → failed with the answer's message, or a sentence saying what
    came back. `data` a client could not store (too deep, too large) fails the step whatever
    the answer said. `answer` is a _NotJson (NOT_JSON) for a body that did not parse as strict
    JSON, None for an empty one.
    """
    ok = 200 <= status < 300
    if isinstance(answer, _NotJson):
        return _failed(
            f"{where} answered {status} with a body that is not JSON{answer.why}", "not JSON"
        )
    if answer is not None and not isinstance(answer, dict):
        return _failed(
            f"{where} answered {status} with JSON that is not an object", "JSON not an object"
        )
    answer = answer or {}
    data = answer.get("data")
    kept: dict[str, Any] = {}
    if isinstance(data, dict):
        refused = _unusable(data, where, status)
        if refused is not None:
            return refused
        kept = dict(data)
    message = _text(answer.get("message")) or _text(answer.get("error"))
    if ok and answer.get("success") is False and "blocked" in answer:
        return _asked(answer["blocked"], where, status)
    if ok and answer.get("success") is not False:
        if message and "message" not in kept:
            kept["message"] = message
        return StepResult(COMPLETED, kept or None, f"answered {status}")
    if ok:
        said = message or f"{where} answered success: false"
        return _failed(said, f"answered {status}, success false", **kept)
    extra = {**kept, "http_status": status}
    if message:
        return _failed(message, f"answered {status}", **extra)
    said = "with no body" if not answer else "without a message"
    return _failed(f"{where} answered {status} {said}", f"answered {status}", **extra)


def _asked(question: Any, where: str, status: int) -> StepResult:
    """Return a `blocked` answer's outcome: the step asks the person, or fails when the
    question is not one the page can show."""
    try:
        schema.check_blocked(question)
    except schema.FieldError as error:
        return _failed(
            f"{where} answered {status} with a blocked question that cannot be asked: "
            f"{error.field} {error.rule}",
            "bad blocked question",
        )
    return StepResult(BLOCKED, None, f"answered {status}, blocked", blocked=dict(question))


class _NotJson:
    """An answer that did not parse; `why` ends the sentence that says so ("" or ": <why>")."""

    def __init__(self, why: str = "") -> None:
        self.why = why

    def __repr__(self) -> str:
        return f"NOT_JSON{self.why}"


NOT_JSON: Any = _NotJson()


def _parse(body: bytes) -> Any:
    """Parse an answer as a client's body is parsed (strict JSON); None for an empty one."""
    if not body.strip():
        return None
    try:
        return schema.loads(body)
    except schema.NumberNotJson as error:
        return _NotJson(f": {error}")
    except ValueError:  # UnicodeDecodeError is a ValueError
        return NOT_JSON


# --- calling an endpoint -------------------------------------------------------------------------


def resolve_endpoint(endpoint: str, self_url: str) -> str:
    """Return the URL to call: `endpoint` itself, or a path on this service under `self_url`.

    Raises ValueError for anything else (another scheme, no host, spaces or control characters).
    """
    if not isinstance(endpoint, str) or not endpoint or any(c.isspace() for c in endpoint):
        raise ValueError("not an http(s) URL or a path")
    url = self_url.rstrip("/") + endpoint if endpoint.startswith("/") else endpoint
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL or a path")
    parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    return url


def describe_url(url: str) -> str:
    """Name an endpoint for people and logs: scheme, host, port and path, no userinfo or query."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"Step endpoint {parts.scheme}://{host}{port}{parts.path or '/'}"


def check_origin(endpoint: Any, origins: frozenset[str]) -> StepResult | None:
    """Refuse an endpoint the server must not call; None: it may be called.

    An absolute endpoint's origin must be in `origins`; a path must not be the state API.

    A step's endpoint is written by whoever writes the workflow, and the call carries the
    ssh_connection: the server must not send it to any address a user names (SSRF). Anything
    that is not an http(s) URL or a path is left for `perform_step` to fail.
    """
    if isinstance(endpoint, str) and endpoint.startswith("/"):
        return _check_own_path(endpoint)
    if not isinstance(endpoint, str):
        return None
    try:
        found = origin(endpoint)
    except ValueError:
        return None
    if found in origins:
        return None
    return _failed(
        f"{describe_url(endpoint)} is not an allowed step endpoint: its origin {found} is "
        "neither in WORKFLOW_STEP_ORIGINS nor in WORKFLOW_STEPS_FILE",
        "origin not allowed",
    )


# The only paths of this service's own API a step may call: the built-in simulator.
SIMULATOR_PATH = "/workflow/actions/"
STATE_API_RE = re.compile(r"/workflows?(/|\Z)")
DOT_SEGMENTS = frozenset({".", ".."})
# A path still changing after this many rounds of percent-decoding is refused as it is.
MAX_DECODINGS = 3


def _check_own_path(endpoint: str) -> StepResult | None:
    """Refuse a path endpoint into this service's state API (but the simulator); None: allowed.

    A runner calls paths with the service's own credentials, whoever owns the workflow: a step
    must not act on anybody's workflows through them. The router sees the path percent-decoded
    (the WSGI server decodes it) with its dot segments and repeated slashes as sent, while a
    proxy on the way may resolve or merge them. So a path with a `.` or `..` segment (as sent
    or decoded) is refused wherever it points, and every reading of it (as sent, decoded once
    or more, repeated slashes merged or not) must stay out of the state API.
    """
    # Not urlsplit: "//workflows/x" would read as a host, but the runner calls it as a path.
    readings = [re.split(r"[?#]", endpoint, maxsplit=1)[0]]
    while (decoded := unquote(readings[-1])) != readings[-1]:
        if len(readings) > MAX_DECODINGS:
            return _refused_path(endpoint, "is percent-encoded over and over")
        readings.append(decoded)
    if any(DOT_SEGMENTS.intersection(reading.split("/")) for reading in readings):
        return _refused_path(endpoint, "has a . or .. segment")
    for reading in readings:
        for path in (reading, re.sub(r"/+", "/", reading)):
            if STATE_API_RE.match(path) and not path.startswith(SIMULATOR_PATH):
                return _refused_path(endpoint, "is a route of the workflow state API")
    return None


def _refused_path(endpoint: str, why: str) -> StepResult:
    return _failed(
        f"Step endpoint {endpoint[:200]!r} {why}; a step may call the host application's own "
        "paths as written, not act on workflows through the state API",
        "endpoint not allowed",
    )


class _Connector:
    """Make an HTTP call's socket, keeping hold of it so another thread can abort the call."""

    def __init__(self, tls: ssl.SSLContext | None, server_hostname: str) -> None:
        self.tls = tls
        self.server_hostname = server_hostname
        self.sockets: list[socket.socket] = []
        self.aborted = False
        self.lock = threading.Lock()

    def _keep(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.append(sock)
            aborted = self.aborted
        if aborted:
            self.abort()
            raise ConnectionAbortedError("the call was abandoned")

    def connect(
        self, address: tuple[str, int], timeout: float, source: Any = None
    ) -> socket.socket:
        """Connect to `address` (each address it resolves to, in turn), then TLS when asked."""
        host, port = address
        error: OSError | None = None
        for family, kind, proto, _, where in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            self._keep(sock)
            try:
                sock.settimeout(timeout)
                sock.connect(where)
                break
            except OSError as failure:
                error = failure
                sock.close()
        else:
            raise error or OSError(f"{host} resolves to no address")
        if self.tls is None:
            return sock
        secure = self.tls.wrap_socket(
            sock, server_hostname=self.server_hostname, do_handshake_on_connect=False
        )
        self._keep(secure)
        secure.do_handshake()
        return secure

    def abort(self) -> None:
        """Shut down and close every socket of the call (from any thread)."""
        with self.lock:
            self.aborted = True
            sockets = list(self.sockets)
        for sock in reversed(sockets):
            # Shut down first: that wakes a thread blocked on the socket, close alone may not.
            with contextlib.suppress(OSError):  # not connected yet, or already closed
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class _HTTPSConnection(http.client.HTTPConnection):
    # TLS is done by _Connector; this only makes Host leave out the default port 443.
    default_port = http.client.HTTPS_PORT


def _classify(error: BaseException, where: str, timeout: float) -> StepResult:
    """Turn a failed call into a sentence a person can read."""
    if isinstance(error, ConnectionRefusedError):
        return _failed(f"{where} refused the connection", "connection refused")
    if isinstance(error, TimeoutError):
        return _timed_out(where, timeout)
    if isinstance(error, socket.gaierror):
        return _failed(f"{where} could not be reached: its host name does not resolve", "no DNS")
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = error.verify_message or "the certificate is not trusted"
        return _failed(f"{where} failed the TLS check: {detail}", "TLS certificate")
    if isinstance(error, ssl.SSLError):
        return _failed(f"{where} failed the TLS handshake", "TLS")
    if isinstance(error, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError):
        return _failed(f"{where} closed the connection without an answer", "disconnected")
    if isinstance(error, http.client.IncompleteRead):
        return _failed(f"{where} closed the connection in the middle of its answer", "cut off")
    if isinstance(error, http.client.HTTPException):
        return _failed(f"{where} answered something that is not HTTP", "not HTTP")
    if isinstance(error, OSError):
        return _failed(f"{where} could not be reached ({type(error).__name__})", "unreachable")
    return _failed(f"{where} could not be called ({type(error).__name__})", "call error")


def _timed_out(where: str, timeout: float) -> StepResult:
    return _failed(f"{where} timed out after {timeout:g} s", "timed out")


def _call(
    url: str, body: bytes, headers: Mapping[str, str], timeout: float, cancel: threading.Event
) -> StepResult:
    """POST `body` to `url`; answer within `timeout`, or as soon as `cancel` is set."""
    where = describe_url(url)
    parts = urlsplit(url)
    tls = ssl.create_default_context() if parts.scheme == "https" else None
    connector = _Connector(tls, parts.hostname or "")
    kind = _HTTPSConnection if tls else http.client.HTTPConnection
    connection = kind(parts.hostname, parts.port, timeout=timeout)
    connection._create_connection = connector.connect  # type: ignore[attr-defined]
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    outcome: dict[str, Any] = {}
    finished = threading.Event()

    def work() -> None:
        try:
            connection.request("POST", target, body=body, headers=dict(headers))
            response = connection.getresponse()
            try:
                raw = response.read(MAX_ANSWER_BYTES + 1)
                # read(n) returns what came before the peer closed; `length` is what is missing.
                if response.length and len(raw) <= MAX_ANSWER_BYTES:
                    raise http.client.IncompleteRead(raw, response.length)
            finally:
                response.close()
            outcome["answer"] = (response.status, raw)
        except BaseException as error:  # gevent's cancel_wait_ex included
            outcome["error"] = error
        finally:
            connection.close()
            finished.set()

    deadline = time.monotonic() + timeout
    threading.Thread(target=work, name="step-call", daemon=True).start()
    while not finished.wait(max(0.0, min(POLL_SECONDS, deadline - time.monotonic()))):
        if cancel.is_set():
            connector.abort()
            return StepResult(CANCELLED, None, "cancelled")
        if time.monotonic() >= deadline:
            connector.abort()
            return _timed_out(where, timeout)
    if "error" in outcome:
        if cancel.is_set():
            return StepResult(CANCELLED, None, "cancelled")
        return _classify(outcome["error"], where, timeout)
    status, raw = outcome["answer"]
    if len(raw) > MAX_ANSWER_BYTES:
        return _failed(
            f"{where} answered {status} with more than {MAX_ANSWER_BYTES} bytes",
            "answer too large",
        )
    return interpret(status, _parse(raw), where)


# --- one step ------------------------------------------------------------------------------------


def perform_step(
    call: StepCall,
    settings: StepSettings,
    cancel: threading.Event | None = None,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> StepResult:
    """Perform `call`; return completed, failed, blocked or cancelled. Never raises, never
    hangs. `report` takes the simulator's progress reports."""
    cancel = cancel or threading.Event()
    started = time.monotonic()
    try:
        if cancel.is_set():
            result = StepResult(CANCELLED, None, "cancelled")
        elif call.endpoint is None:
            answer = simulate(
                call.action,
                seconds=settings.demo_seconds,
                fail_action=settings.demo_fail,
                cancel=cancel,
                report=report,
            )
            if answer is None:
                result = StepResult(CANCELLED, None, "cancelled")
            else:
                result = interpret(200, answer, "The step simulator")
        else:
            result = _perform_call(call, settings, cancel)
    except Exception as error:  # a bug here must fail the step, not strand it in_progress
        # Where, but not the exception's text or locals: they may hold the body and its secret.
        frame = traceback.extract_tb(error.__traceback__)[-1]
        log.error(
            "step %s of workflow %s: unexpected %s at %s:%s",
            call.index + 1,  # counted from 1, as the CLI and the page count steps
            call.workflow_id,
            type(error).__name__,
            frame.filename,
            frame.lineno,
        )
        result = _failed(f"The step could not be performed ({type(error).__name__})", "bug")
    seconds = time.monotonic() - started
    log.log(
        logging.WARNING if result.status == FAILED else logging.INFO,
        "step %s (%s) of workflow %s, attempt %s: %s (%s) in %.3f s",
        call.index + 1,
        call.action,
        call.workflow_id,
        call.attempt,
        result.status,
        result.reason,
        seconds,
    )
    return StepResult(result.status, result.data, result.reason, seconds, result.blocked)


def _perform_call(call: StepCall, settings: StepSettings, cancel: threading.Event) -> StepResult:
    assert call.endpoint is not None
    try:
        url = resolve_endpoint(call.endpoint, settings.self_url)
    except ValueError:
        shown = call.endpoint if isinstance(call.endpoint, str) else repr(call.endpoint)
        return _failed(
            f"Step endpoint {shown[:200]!r} is not an http(s) URL or a path on this service",
            "bad endpoint",
        )
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
        "Connection": "close",
    }
    if call.idempotency_key is not None:
        headers["Idempotency-Key"] = call.idempotency_key
    if call.endpoint.startswith("/"):
        headers.update(settings.self_headers)
    timeout = call.timeout if call.timeout is not None else settings.timeout
    return _call(url, call.body(), headers, timeout, cancel)
