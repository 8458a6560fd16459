"""Security headers: the page's Content-Security-Policy, and nosniff on every answer."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from service.headers import PAGE_CSP
from tests.conftest import steps
from tests.support import Gunicorn, http
from tests.support.routes import STATE

STATIC = Path(__file__).resolve().parents[2] / "service" / "static"
EVERYWHERE = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def directives(policy: str) -> dict[str, list[str]]:
    """Split a CSP into {directive: [sources]}."""
    parsed = {}
    for part in policy.split(";"):
        name, *sources = part.split()
        parsed[name] = sources
    return parsed


def test_the_policy_is_strict():
    policy = directives(PAGE_CSP)
    assert policy["default-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    assert policy["form-action"] == ["'self'"]
    # Nothing re-allows inline script, eval or other hosts.
    for sources in policy.values():
        assert not {"'unsafe-inline'", "'unsafe-eval'", "*", "data:", "http:", "https:"} & set(
            sources
        )


@pytest.mark.parametrize("path", ["/", "/static/js/app.js", "/static/css/app.css", "/static/nope"])
def test_the_page_and_its_assets_carry_the_policy(client, path):
    response = client.get(path)
    assert response.headers["Content-Security-Policy"] == PAGE_CSP
    for name, value in EVERYWHERE.items():
        assert response.headers[name] == value


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", STATE, None),
        ("POST", STATE, {"steps": steps(1)}),
        ("POST", STATE, None),  # 400
        ("PATCH", f"{STATE}/steps/9", {"status": "completed"}),  # 404
        ("PUT", STATE, None),  # 405
        ("OPTIONS", STATE, None),  # 204
        ("GET", "/nowhere", None),  # 404
        ("GET", f"{STATE}/summary", None),
        ("GET", "/workflow/history", None),
        ("GET", "/workflow/config", None),
        ("GET", "/healthz", None),
        ("GET", "/readyz", None),
        ("GET", "/metrics", None),
        ("GET", "/openapi.json", None),
    ],
)
def test_every_answer_says_nosniff(client, method, path, body):
    response = client.open(path, method=method, json=body)
    for name, value in EVERYWHERE.items():
        assert response.headers[name] == value, (name, response.status_code)


def test_a_304_and_a_401_say_nosniff_too(make_app):
    client = make_app(STATE_TOKEN="t").test_client()
    assert client.get(STATE).headers["X-Content-Type-Options"] == "nosniff"
    auth = {"Authorization": "Bearer t"}
    etag = client.post(STATE, json={"steps": steps(1)}, headers=auth).headers["ETag"]
    not_modified = client.get(STATE, headers={**auth, "If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.headers["X-Content-Type-Options"] == "nosniff"


class _Page(HTMLParser):
    """Collect what in the page the policy would block."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline_code: list[str] = []
        self.urls: list[str] = []
        self.handlers: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Note scripts, inline styles, handlers and the URLs a tag loads."""
        attributes = dict(attrs)
        if tag == "script":
            self.scripts.append(attributes)
            self._in_script = True
        if tag == "style":
            self.inline_code.append("<style>")
        for name, value in attrs:
            if name.startswith("on") or name == "style":
                self.handlers.append(f"<{tag} {name}>")
            if name in ("src", "href", "action") and value:
                self.urls.append(value)

    def handle_endtag(self, tag: str) -> None:
        """Note the end of a script element."""
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        """Note code written inside a script element."""
        if self._in_script and data.strip():
            self.inline_code.append(data.strip()[:80])


def test_the_page_needs_nothing_the_policy_blocks():
    page = _Page()
    page.feed((STATIC / "index.html").read_text(encoding="utf-8"))
    assert page.scripts, "the page loads its script"
    assert all(script.get("src") for script in page.scripts)
    assert page.inline_code == [], "inline script or style"
    assert page.handlers == [], "inline event handlers or style attributes"
    for url in page.urls:
        # Same origin only: relative or rooted paths, no other host, no javascript: URLs.
        assert re.match(r"(/(?!/)|\.{0,2}/|#|[\w.-]+(\.\w+)?$)", url), url
    for script in STATIC.rglob("*.js"):
        code = script.read_text(encoding="utf-8")
        assert not re.search(r"\beval\s*\(|new\s+Function\s*\(", code), script.name
        assert ".setAttribute('style'" not in code and '.setAttribute("style"' not in code


@pytest.mark.slow
def test_the_real_server_sends_them(tmp_path):
    server = Gunicorn({"WORKFLOW_STATE_URL": f"file://{tmp_path}/s.json"}, workers=1).start()
    try:
        _, page, _ = http("GET", server.url + "/")
        assert page["Content-Security-Policy"] == PAGE_CSP
        _, api, _ = http("GET", server.url + STATE)
        assert api["X-Content-Type-Options"] == "nosniff"
    finally:
        server.stop()
