"""Logs: text or JSON lines, a request id on every line, and no secret in any line.

`init_app` gives each request an id (the caller's `X-Request-ID` when it is short and safe,
else a fresh one), returns it in the response's `X-Request-ID` header, and logs one line per
request: method, route (the URL rule, never the raw path or query string), status and duration.
Every line written through the handlers set up here passes two filters: one that adds the
request id, one that scrubs anything that looks like a secret. Bodies, headers and query
strings are never logged in the first place; the scrubbing is a second line of defence.

Each app keeps its own format (WORKFLOW_STATE_LOG_FORMAT, read by config.py) and its own secrets.
A process has one stderr, so one handler: it writes a line the way the app it was logged in asks
(a request, or the app's stream hub), and any other line the way whoever set it up asked (the
first app, gunicorn's logger class, the CLI).
"""

from __future__ import annotations

import json
import logging
import random
import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from flask import Flask, Response, current_app, g, has_app_context, has_request_context
from gunicorn import glogging
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as LibraryJsonFormatter

from . import config, hooks, model

REQUEST_ID_HEADER = "X-Request-ID"
# The same header as WSGI names it: read from the environ, not through werkzeug's header view.
REQUEST_ID_ENVIRON = "HTTP_X_REQUEST_ID"
# Where the request's id waits in the environ for the answer's headers.
ENVIRON_KEY = "workflow_state.request_id"
# What a caller-supplied id may look like: a UUID, nginx's $request_id, a trace id. Anything
# longer or stranger is replaced, so a log line never carries attacker-shaped text.
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}\Z")
# Routes that load balancers and Prometheus call every few seconds: logged only when they fail.
PROBE_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
# Reads are the hot path (the page polls; the benchmark budget is a ratio to /healthz) and a log
# line costs about as much as the rest of a cached read, so a successful read is logged only when
# the caller sent its own X-Request-ID (someone upstream will look it up); writes and errors always.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
EXTENSION = "workflow_state_logs"
# The fields of every JSON line, in order, as python-json-logger names the record attributes.
JSON_FIELDS = ("asctime", "levelname", "name", "message", "request_id", "process")
JSON_NAMES = {
    "asctime": "ts",
    "levelname": "level",
    "name": "logger",
    "process": "pid",
    "exc_info": "exc",
    "stack_info": "stack",
}
# A LogRecord's own attributes; any other is an `extra` field (the request id, and a request
# line's method, route, status, duration_ms), which the redaction filter scrubs too.
RECORD_ATTRIBUTES = frozenset(RESERVED_ATTRS) | {"taskName"}
HANDLER_MARK = "_workflow_state_handler"
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s [%(request_id)s] %(message)s"
REDACTED = "[REDACTED]"
# Configured secrets shorter than this are not scrubbed by value: replacing every "ab" in a log
# would garble it, and such a value is guessable anyway.
MIN_SECRET_LENGTH = 4

log = logging.getLogger("service.requests")

# Shapes of secrets, whatever their value: bearer credentials, SSH connection strings (as
# `ssh ... user@host`, `ssh://...`, a bare `user@1.2.3.4`, or an `ssh_connection` field),
# Fernet tokens (always start with the version byte 0x80, "gAAAAA" in base64) and URL passwords.
PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer)\s+[^\s\"',;]+"), rf"\1 {REDACTED}"),
    (re.compile(r"(?i)\bssh://[^\s\"',;]+"), REDACTED),
    (re.compile(r"(?i)\bssh\s+(?:[^\s\"'@]+\s+){0,12}[^\s\"'@]+@[^\s\"',;]+"), REDACTED),
    (re.compile(r"\b[\w.-]+@\d{1,3}(?:\.\d{1,3}){3}\b"), REDACTED),
    (
        re.compile(r"(?i)(ssh_connection\W{0,4}[:=]\s*)(\"(?:[^\"\\]|\\.)*\"|'[^']*'|[^\s,}]+)"),
        rf"\1{REDACTED}",
    ),
    (re.compile(r"\bgAAAAA[A-Za-z0-9_-]{20,}=*"), REDACTED),
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@"), rf"\1{REDACTED}@"),
)
# Text none of PATTERNS can match lacks all of these; one search spares most lines the rest.
SUSPECT = re.compile(r"(?i)bearer|ssh|@|gAAAAA")


class Redactor:
    """Scrub configured secret values and secret-shaped text out of log text."""

    def __init__(self, values: Iterable[str | None] = ()) -> None:
        self._values: frozenset[str] = frozenset()
        # Longest first, so a key that contains another secret is removed whole.
        self._ordered: tuple[str, ...] = ()
        self.add(values)

    def add(self, values: Iterable[str | None]) -> None:
        """Remember more secret values (the token, Fernet keys) to scrub wherever they appear."""
        fresh = {v for v in values if v and len(v) >= MIN_SECRET_LENGTH}
        if not fresh <= self._values:
            self._values = self._values | fresh
            self._ordered = tuple(sorted(self._values, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        """Return `text` with every secret replaced by [REDACTED]."""
        for value in self._ordered:
            if value in text:
                text = text.replace(value, REDACTED)
        if SUSPECT.search(text):
            for pattern, replacement in PATTERNS:
                text = pattern.sub(replacement, text)
        return text


def secrets_of(settings: Mapping[str, Any]) -> list[str | None]:
    """Return the configured secret values (the token, the Fernet keys) of a config dict."""
    return [settings.get("STATE_TOKEN"), *(settings.get("STATE_SECRET_KEYS") or ())]


@dataclass(frozen=True)
class AppLogs:
    """How one app's log lines look and what they must never contain."""

    redactor: Redactor
    formatter: logging.Formatter


def app_logs() -> AppLogs | None:
    """Return the logging settings of the app whose context is active, or None."""
    if not has_app_context():
        return None
    return current_app.extensions.get(EXTENSION)


class RedactingFilter(logging.Filter):
    """Scrub the message, exception text, stack and extra fields of every record a handler writes.

    With the handler's own redactor (the secrets of whoever set the handler up) and, inside an
    app's context, that app's.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place with secrets removed; never drop it."""
        own = app_logs()
        redactors = (self.redactor,)
        if own is not None and own.redactor is not self.redactor:
            redactors = (self.redactor, own.redactor)

        def scrub(text: str) -> str:
            for redactor in redactors:
                text = redactor.scrub(text)
            return text

        try:
            message = record.getMessage()
        except Exception:  # a bad format string; the handler reports it as usual
            return True
        clean = scrub(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        # Extra fields, the request id among them: a caller may send anything as its id.
        fields = vars(record)
        for name in fields.keys() - RECORD_ATTRIBUTES:
            if isinstance(fields[name], str):
                fields[name] = scrub(fields[name])
        if record.exc_info and not record.exc_text:
            record.exc_text = _EXCEPTION_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


_EXCEPTION_FORMATTER = logging.Formatter()


def current_request_id() -> str | None:
    """Return the id of the request being handled, or None outside a request."""
    if not has_request_context():
        return None
    return g.get("request_id")


class RequestIdFilter(logging.Filter):
    """Attach the current request's id (or None) to every record as `request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Set record.request_id unless the caller already did; never drop the record."""
        if getattr(record, "request_id", None) is None:
            record.request_id = current_request_id()
        return True


class JsonFormatter(LibraryJsonFormatter):
    """python-json-logger's formatter with the service's field names and time format.

    One object per line: ts, level, logger, message, request_id, pid, then any extra fields
    (a request line's method, route, status, duration_ms), exc and stack when there are some.
    """

    def __init__(self) -> None:
        super().__init__(list(JSON_FIELDS), rename_fields=JSON_NAMES)
        # One encoder for every line: json.dumps builds a new one per call when given `default`.
        self._encoder = json.JSONEncoder(default=str)

    def jsonify_log_record(self, log_data: dict[str, Any]) -> str:
        """Serialise a line's fields (anything JSON has no type for as its str())."""
        return self._encoder.encode(log_data)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """Return the record's time as the API writes times: UTC, milliseconds, `Z`."""
        return model.format_time(datetime.fromtimestamp(record.created, UTC))

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        """Add the record's fields, taking the exception text the redacting filter scrubbed.

        python-json-logger formats `exc_info` afresh, which would bring back what was removed.
        """
        if record.exc_text:
            message_dict["exc_info"] = record.exc_text
        super().add_fields(log_data, record, message_dict)


class TextFormatter(logging.Formatter):
    """The default human format; `-` stands for a missing request id."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """Format the record's local time as logging does, formatting each second only once."""
        whole = int(record.created)
        second = self._second
        if second[0] != whole:
            second = (whole, time.strftime(self.default_time_format, self.converter(whole)))
            self._second = second
        return self.default_msec_format % (second[1], record.msecs)

    def format(self, record: logging.LogRecord) -> str:
        """Format with the request id, or `-` outside a request."""
        if getattr(record, "request_id", None) is None:
            record.request_id = "-"
            try:
                return super().format(record)
            finally:
                record.request_id = None
        return super().format(record)


def make_formatter(log_format: str) -> logging.Formatter:
    """Return the formatter for WORKFLOW_STATE_LOG_FORMAT (`json` or `text`)."""
    return JsonFormatter() if log_format == "json" else TextFormatter()


class AppFormatter(logging.Formatter):
    """Format a record as the app it was logged in asks (its LOG_FORMAT), else as the default."""

    def __init__(self, default: logging.Formatter) -> None:
        super().__init__()
        self.default = default

    def format(self, record: logging.LogRecord) -> str:
        """Format with the current app's formatter, or the handler's own outside any app."""
        own = app_logs()
        return (own.formatter if own is not None else self.default).format(record)


def dress(handler: logging.Handler, log_format: str, redactor: Redactor) -> logging.Handler:
    """Give a handler the service's format and both filters (request id, then redaction)."""
    handler.setFormatter(AppFormatter(make_formatter(log_format)))
    for old in [f for f in handler.filters if isinstance(f, RequestIdFilter | RedactingFilter)]:
        handler.removeFilter(old)
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactingFilter(redactor))
    return handler


class StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever `sys.stderr` is at the moment of writing."""

    @property
    def stream(self) -> IO[str]:  # type: ignore[override]
        """Return the current sys.stderr (test runners and the CLI swap it)."""
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass  # StreamHandler.__init__ assigns it; the property always answers sys.stderr


def _service_logger() -> logging.Logger:
    return logging.getLogger("service")


def _our_handlers(logger: logging.Logger) -> list[logging.Handler]:
    return [h for h in logger.handlers if getattr(h, HANDLER_MARK, False)]


def configure(
    log_format: str,
    *,
    level: int = logging.INFO,
    stream: IO[str] | None = None,
    redactor: Redactor | None = None,
) -> None:
    """Send the `service.*` loggers to stderr (or `stream`) in `log_format`, replacing ours.

    Logging is the process's (one stderr): outside any app's context, lines have this format
    and are scrubbed of `redactor`'s secrets; inside one, of the app's (see `init_app`).
    """
    logger = _service_logger()
    for old in _our_handlers(logger):
        logger.removeHandler(old)
    base = StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler = dress(base, log_format, redactor or Redactor())
    setattr(handler, HANDLER_MARK, True)
    logger.addHandler(handler)
    logger.setLevel(level)
    # Records still propagate: under gunicorn the root logger has no handler, so nothing is
    # written twice, and test tools that listen on the root logger keep seeing them.


@contextmanager
def configured(log_format: str, *, level: int = logging.INFO) -> Iterator[None]:
    """Configure the `service.*` loggers for a block, then put back what was there (the CLI)."""
    logger = _service_logger()
    before = (_our_handlers(logger), logger.level)
    configure(log_format, level=level)
    try:
        yield
    finally:
        for handler in _our_handlers(logger):
            logger.removeHandler(handler)
        for handler in before[0]:
            logger.addHandler(handler)
        logger.setLevel(before[1])


def new_request_id() -> str:
    """Return a fresh request id: 32 hex digits, random.

    From `random` (which reseeds in every forked process), not `secrets`: an id names a request
    in the logs and guards nothing, and `secrets` costs a getrandom() call per request.
    """
    return f"{random.getrandbits(128):032x}"


def begin(req: Any, ctx: dict[str, Any]) -> None:
    """Give the request its id (a before-step)."""
    environ = req.environ
    incoming = environ.get(REQUEST_ID_ENVIRON)
    if incoming is not None and REQUEST_ID_RE.match(incoming):
        ctx["request_id"] = incoming
        ctx["request_id_given"] = True
    else:
        ctx["request_id"] = incoming = new_request_id()
    environ[ENVIRON_KEY] = incoming


def request_id_header(environ: dict[str, Any]) -> hooks.HeaderPairs:
    """Return the request id as the answer's header (a header-step)."""
    request_id = environ.get(ENVIRON_KEY)
    if request_id is None:  # Flask answered before any step ran
        request_id = environ[ENVIRON_KEY] = new_request_id()
    return ((REQUEST_ID_HEADER, request_id),)


def finish(req: Any, ctx: dict[str, Any], response: Response) -> None:
    """Log the request line (an after-step; see READ_METHODS for which requests have one)."""
    request_id = ctx.get("request_id")
    if request_id is None:  # a step before ours answered
        begin(req, ctx)
        request_id = ctx["request_id"]
    status = response.status_code
    method = req.method
    if status >= 500:
        level = logging.ERROR if status != 503 else logging.WARNING
    elif status >= 400 or method not in READ_METHODS:
        level = logging.INFO
    elif not ctx.get("request_id_given"):
        level = logging.DEBUG
    else:
        rule = req.url_rule
        level = logging.DEBUG if rule is not None and rule.rule in PROBE_ROUTES else logging.INFO
    if log.isEnabledFor(level):
        rule = req.url_rule
        route = rule.rule if rule is not None else "unmatched"
        started = ctx.get("request_started")
        duration_ms = 0.0 if started is None else round((time.perf_counter() - started) * 1000, 2)
        log.log(
            level,
            "%s %s %s %.2fms",
            method,
            route,
            status,
            duration_ms,
            extra={
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": duration_ms,
                "request_id": request_id,
            },
        )


def init_app(app: Flask) -> None:
    """Set up this app's log format and secrets, the request id and one line per request.

    The first app in a process also sets up the process's handler (stderr), unless something
    (the CLI, a test) already did; a later app changes nothing of an earlier one's.
    """
    own = AppLogs(Redactor(secrets_of(app.config)), make_formatter(app.config["LOG_FORMAT"]))
    app.extensions[EXTENSION] = own
    if not _our_handlers(_service_logger()):
        configure(app.config["LOG_FORMAT"], redactor=own.redactor)
    hooks.steps_of(app).add(before=begin, after=finish, headers=request_id_header)


class GunicornLogger(glogging.Logger):
    """Gunicorn's logger with the service's format and filters on its own lines.

    Set as `logger_class` in deploy/gunicorn.conf.py, so that with JSON logs every line on
    stderr is JSON (gunicorn's "Booting worker" as much as the app's), and every line is scrubbed.
    """

    def setup(self, cfg: Any) -> None:
        """Let gunicorn set its handlers up (also on reload), then dress them."""
        super().setup(cfg)
        # gunicorn.conf.py has already refused a configuration from_env cannot read.
        settings = config.from_env()
        redactor = Redactor(secrets_of(settings))
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                dress(handler, settings["LOG_FORMAT"], redactor)
