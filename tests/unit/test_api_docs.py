"""docs/api.md is generated from GET /openapi.json, and is up to date with it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from service.openapi import document_json

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "api_docs.py"


def load_script():
    """Import scripts/api_docs.py (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("api_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_api_md_is_the_served_document_rendered():
    expected = load_script().render(json.loads(document_json()))
    current = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert current == expected, (
        "docs/api.md is out of date: run .venv/bin/python scripts/api_docs.py"
    )


def test_the_reference_names_every_route_and_every_body():
    document = json.loads(document_json())
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    for path, item in document["paths"].items():
        for method in item:
            if method != "options":
                assert f"### {method.upper()} {path}\n" in text
    for name in document["components"]["schemas"]:
        assert f"### {name}\n" in text
    # A field's rule is written where the field is.
    assert (
        "| `current_step` | integer ≥ 0 ≤ 999 | no | must be an integer from 0 to 999: less than "
        "the number of steps, 0 when there are none |"
    ) in text
