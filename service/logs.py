"""Logs: text or JSON lines, a request id on every line, and no secret in any line.

`init_app` gives each request an id (the caller's `X-Request-ID` when it is short and safe,
else a fresh one), returns it in the response's `X-Request-ID` header, and logs one line per
request: method, route (the URL rule, never the raw path or query string), status and duration.
Every line written through the handlers set up here passes two filters: one that adds the
request id, one that scrubs anything that looks like a secret. Bodies, headers and query
strings are never logged in the first place; the scrubbing is a second line of defence.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any

from flask import Flask, Response, g, has_request_context, request
from gunicorn import glogging

from . import model

REQUEST_ID_HEADER = "X-Request-ID"
# What a caller-supplied id may look like: a UUID, nginx's $request_id, a trace id. Anything
# longer or stranger is replaced, so a log line never carries attacker-shaped text.
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}\Z")
# Routes that load balancers and Prometheus call every few seconds: logged only when they fail.
PROBE_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
# Reads are the hot path (the page polls; the benchmark budget is a ratio to /healthz) and a log
# line costs about as much as the rest of a cached read, so a successful read is logged only when
# the caller sent its own X-Request-ID (someone upstream will look it up); writes and errors always.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The fields a request line adds to a JSON log line.
REQUEST_FIELDS = ("method", "route", "status", "duration_ms")
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

    def __init__(self) -> None:
        self._values: frozenset[str] = frozenset()
        # Longest first, so a key that contains another secret is removed whole.
        self._ordered: tuple[str, ...] = ()

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


REDACTOR = Redactor()


def _secrets_from_environ() -> list[str]:
    keys = os.environ.get("WORKFLOW_STATE_SECRET_KEY", "").split(",")
    return [os.environ.get("WORKFLOW_STATE_TOKEN", "").strip(), *(k.strip() for k in keys)]


# Known before any app exists, so gunicorn's own lines (master and workers) are scrubbed too.
REDACTOR.add(_secrets_from_environ())


class RedactingFilter(logging.Filter):
    """Scrub the message, exception text and stack of every record a handler writes."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place with secrets removed; never drop it."""
        try:
            message = record.getMessage()
        except Exception:  # a bad format string; the handler reports it as usual
            return True
        clean = REDACTOR.scrub(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        request_id = getattr(record, "request_id", None)
        if request_id:  # a caller may send anything as its id, a token included
            record.request_id = REDACTOR.scrub(request_id)
        if record.exc_info and not record.exc_text:
            record.exc_text = _EXCEPTION_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = REDACTOR.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = REDACTOR.scrub(record.stack_info)
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


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """Return ts, level, logger, message, request_id, pid (and request fields, exc)."""
        entry: dict[str, Any] = {
            "ts": model.format_time(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "pid": record.process,
        }
        for field in REQUEST_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str)


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


def dress(handler: logging.Handler, log_format: str) -> logging.Handler:
    """Give a handler the service's format and both filters (request id, then redaction)."""
    handler.setFormatter(make_formatter(log_format))
    for kind in (RequestIdFilter, RedactingFilter):
        if not any(isinstance(f, kind) for f in handler.filters):
            handler.addFilter(kind())
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


def configure(log_format: str, *, level: int = logging.INFO, stream: IO[str] | None = None) -> None:
    """Send the `service.*` loggers to stderr (or `stream`) in `log_format`, replacing ours."""
    logger = logging.getLogger("service")
    for old in [h for h in logger.handlers if getattr(h, HANDLER_MARK, False)]:
        logger.removeHandler(old)
    base = StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler = dress(base, log_format)
    setattr(handler, HANDLER_MARK, True)
    logger.addHandler(handler)
    logger.setLevel(level)
    # Records still propagate: under gunicorn the root logger has no handler, so nothing is
    # written twice, and test tools that listen on the root logger keep seeing them.


def _begin() -> None:
    """Give the request its id and start its clock."""
    incoming = request.headers.get(REQUEST_ID_HEADER)
    if incoming is not None and REQUEST_ID_RE.match(incoming):
        g.request_id = incoming
        g.request_id_given = True
    else:
        g.request_id = secrets.token_hex(16)
    g.log_started = time.perf_counter()


def _finish(response: Response) -> Response:
    """Return the id in the response and log the request line (see READ_METHODS for which)."""
    request_id = g.get("request_id")
    if request_id is None:  # a hook before ours answered; still label the response
        _begin()
        request_id = g.request_id
    response.headers[REQUEST_ID_HEADER] = request_id
    status = response.status_code
    rule = request.url_rule
    route = rule.rule if rule is not None else "unmatched"
    method = request.method
    if status >= 500:
        level = logging.ERROR if status != 503 else logging.WARNING
    elif status >= 400 or method not in READ_METHODS:
        level = logging.INFO
    elif route in PROBE_ROUTES or not g.get("request_id_given"):
        level = logging.DEBUG
    else:
        level = logging.INFO
    if log.isEnabledFor(level):
        duration_ms = round((time.perf_counter() - g.log_started) * 1000, 2)
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
    return response


def init_app(app: Flask) -> None:
    """Set up the log format, the request id and one log line per request."""
    REDACTOR.add([app.config.get("STATE_TOKEN"), *(app.config.get("STATE_SECRET_KEYS") or ())])
    configure(app.config.get("LOG_FORMAT", "text"))
    app.before_request(_begin)
    app.after_request(_finish)


def _gunicorn_format() -> str:
    raw = os.environ.get("WORKFLOW_STATE_LOG_FORMAT", "").strip().lower()
    return "json" if raw == "json" else "text"


class GunicornLogger(glogging.Logger):
    """Gunicorn's logger with the service's format and filters on its own lines.

    Set as `logger_class` in deploy/gunicorn.conf.py, so that with JSON logs every line on
    stderr is JSON (gunicorn's "Booting worker" as much as the app's), and every line is scrubbed.
    """

    def setup(self, cfg: Any) -> None:
        """Let gunicorn set its handlers up (also on reload), then dress them."""
        super().setup(cfg)
        log_format = _gunicorn_format()
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                dress(handler, log_format)
