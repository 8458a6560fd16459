"""Run every module's per-request steps from one before-request and one after-request hook.

Metrics, request ids and logs, CORS, identity and security headers each have work to do on every
request. As eight Flask hooks they cost about 5 µs a request in Flask's dispatch alone (an
`ensure_sync` check and a blueprint-name walk per hook) and more in context-local lookups: every
`request.x` and `g.x` in a hook goes through a werkzeug proxy. Here each module adds plain steps
that get the request, the attributes of the request's `g` as a dict (`vars(g)`: a read or write
of `g.x` is a Python-level `__getattr__`/`__setattr__` call, and a missing one raises inside) and
(after) the response as arguments; one hook runs them.

Headers that depend only on the request (the security headers, CORS labels, the request id) are
added by header-steps: each returns the (name, value) pairs to add, given the WSGI environ, and
they go straight into the list handed to the server's `start_response`. Through werkzeug's
`Headers` every added header was validated and copied twice, a quarter of what the steps cost.

The order is Flask's: before-steps in the order added, the first to return a response answers
the request; after-steps in the reverse order, so the first module added (metrics) is the last
to see the response, as it was as a Flask hook. `g.request_started` is the request's clock (a
`perf_counter()` taken once, before every step), shared by the metrics and the log line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, g, request
from flask.wrappers import Request

EXTENSION = "workflow_state_hooks"

# The request, and `vars(g)`: what a step leaves there is `g.<key>` for everyone else.
Before = Callable[[Request, dict[str, Any]], Response | None]
After = Callable[[Request, dict[str, Any], Response], None]
HeaderPairs = tuple[tuple[str, str], ...]
# Given the WSGI environ; what it returns must be valid header text (no line breaks).
HeaderStep = Callable[[dict[str, Any]], HeaderPairs]


class Steps:
    """One app's per-request steps."""

    def __init__(self) -> None:
        self.before: list[Before] = []
        # Kept in the order they run: each added step goes first.
        self.after: list[After] = []
        self.headers: list[HeaderStep] = []

    def add(
        self,
        before: Before | None = None,
        after: After | None = None,
        headers: HeaderStep | None = None,
    ) -> None:
        """Add a module's steps: `before` runs after those added earlier, `after` before them."""
        if before is not None:
            self.before.append(before)
        if after is not None:
            self.after.insert(0, after)
        if headers is not None:
            self.headers.append(headers)

    def run_before(self) -> Response | None:
        """Start the request's clock, then run the before-steps until one answers."""
        req: Any = request._get_current_object()  # type: ignore[attr-defined]
        ctx = vars(g._get_current_object())  # type: ignore[attr-defined]
        ctx["request_started"] = time.perf_counter()
        for step in self.before:
            answer = step(req, ctx)
            if answer is not None:
                return answer
        return None

    def run_after(self, response: Response) -> Response:
        """Run the after-steps on the response."""
        req: Any = request._get_current_object()  # type: ignore[attr-defined]
        ctx = vars(g._get_current_object())  # type: ignore[attr-defined]
        for step in self.after:
            step(req, ctx, response)
        return response


class App(Flask):
    """Flask, deciding once per function whether it must be run as a coroutine.

    Flask asks `inspect.iscoroutinefunction` of every hook, view and error handler on every call
    (`ensure_sync`): about a microsecond each, three or more times per request, always for
    the same few functions.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._synced: dict[Callable, Callable] = {}

    def ensure_sync(self, func: Callable) -> Callable:
        """Return `func` as Flask's `ensure_sync` would, looked up after the first time."""
        try:
            return self._synced[func]
        except KeyError:
            synced = self._synced[func] = super().ensure_sync(func)
            return synced
        except TypeError:  # unhashable: not one of the app's own functions
            return super().ensure_sync(func)


def steps_of(app: Flask) -> Steps:
    """Return `app`'s per-request steps."""
    return app.extensions[EXTENSION]


def with_headers(wsgi_app: Callable, header_steps: list[HeaderStep]) -> Callable:
    """Wrap a WSGI app so every answer also carries the headers the header-steps return."""

    def app(environ: dict[str, Any], start_response: Callable) -> Any:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            for step in header_steps:
                headers.extend(step(environ))
            return start_response(status, headers, exc_info)

        return wsgi_app(environ, start)

    return app


def init_app(app: Flask) -> None:
    """Register the two hooks and the header wrapper; call it before any module adds steps."""
    steps = Steps()
    app.extensions[EXTENSION] = steps
    app.before_request(steps.run_before)
    app.after_request(steps.run_after)
    app.wsgi_app = with_headers(app.wsgi_app, steps.headers)  # type: ignore[method-assign]
