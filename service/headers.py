"""Security headers: a strict Content-Security-Policy for the page, and nosniff everywhere."""

from __future__ import annotations

from flask import Flask, Response, request

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


def is_page(path: str) -> bool:
    """Tell whether a path is the web page or one of its assets."""
    return path == "/" or path.startswith("/static/")


def _secure(response: Response) -> Response:
    for name, value in ALWAYS.items():
        response.headers.setdefault(name, value)
    if is_page(request.path):
        response.headers["Content-Security-Policy"] = PAGE_CSP
    return response


def init_app(app: Flask) -> None:
    """Register the header stamp on every response."""
    app.after_request(_secure)
