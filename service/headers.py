"""Security headers: a strict Content-Security-Policy for the page, and nosniff everywhere."""

from __future__ import annotations

from typing import Any

from flask import Flask

from . import hooks

# The page loads its module script, stylesheet and icons from this origin only: no inline
# script, no eval, no third-party hosts. Nothing may frame it (clickjacking), a planted <base>
# cannot redirect its relative URLs, and forms can only post back here.
PAGE_CSP = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

# Sent on every response: browsers must not guess a type other than the one declared (a JSON
# body that happens to look like HTML is never rendered as a page), no URL leaks to other sites
# in the Referer header, and no response is shown inside a frame.
ALWAYS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# Added as they are: no route sets any of them (a `setdefault` per name cost 6 µs a request,
# werkzeug raising and catching an exception for each name that is absent).
ALWAYS_HEADERS = tuple(ALWAYS.items())
PAGE_HEADERS = (*ALWAYS_HEADERS, ("Content-Security-Policy", PAGE_CSP))


def is_page(path: str) -> bool:
    """Tell whether a path is the web page or one of its assets."""
    return path == "/" or path.startswith("/static/")


def security_headers(environ: dict[str, Any]) -> hooks.HeaderPairs:
    """Return the security headers of an answer (a header-step)."""
    # As werkzeug makes request.path of it.
    path = "/" + environ.get("PATH_INFO", "").lstrip("/")
    return PAGE_HEADERS if is_page(path) else ALWAYS_HEADERS


def init_app(app: Flask) -> None:
    """Add the security headers to every answer."""
    hooks.steps_of(app).add(headers=security_headers)
