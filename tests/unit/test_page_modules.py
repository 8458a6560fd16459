"""The page's modules keep their roles: controllers touch no DOM, views build none from strings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

JS = Path(__file__).resolve().parents[2] / "service" / "static" / "js"
CONTROLLERS = sorted((JS / "controllers").glob("*.js"))
VIEWS = sorted((JS / "views").glob("*.js"))

DOM = re.compile(r"\b(document|window|HTMLElement|querySelector\w*|getElementById)\b")
BUILT_BY_HAND = re.compile(
    r"\b(createElement(NS)?|innerHTML|outerHTML|insertAdjacentHTML|DOMParser)\b|document\.write"
)


def code(path: Path) -> str:
    """The module without its comments (they may name what the code must not do)."""
    text = re.sub(r"/\*.*?\*/", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    return re.sub(r"(?m)^\s*//.*$|\s//.*$", "", text)


def test_there_are_controllers_and_views():
    assert {p.name for p in CONTROLLERS} >= {
        "workflow-controller.js",
        "page-runner.js",
        "instances-controller.js",
    }
    assert {p.name for p in VIEWS} >= {"workflow-view.js", "instances-view.js", "templates.js"}


@pytest.mark.parametrize("path", CONTROLLERS, ids=lambda p: p.name)
def test_controllers_touch_no_dom(path: Path):
    assert not DOM.findall(code(path))
    assert "/views/" not in code(path)


@pytest.mark.parametrize("path", [*VIEWS, JS / "app.js"], ids=lambda p: p.name)
def test_views_clone_templates_instead_of_building_markup(path: Path):
    assert not BUILT_BY_HAND.findall(code(path))
