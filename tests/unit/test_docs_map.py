"""docs/architecture.md opens with "Where is X": every module of service/ is in it, and every
path it names exists, so a newcomer finds any behaviour in one guess."""

from __future__ import annotations

import re

from tests.support import ROOT

ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()


def where_is_x_paths() -> set[str]:
    """Return the paths named in the first column of the "Where is X" table."""
    section = ARCHITECTURE.split("## Where is X", 1)[1].split("\n## ", 1)[0]
    paths = set()
    for row in section.splitlines():
        if row.startswith("| `"):
            first_cell = row.split("|")[1]
            paths.update(re.findall(r"`([^`]+)`", first_cell))
    return paths


def test_every_module_of_service_has_a_row():
    named = where_is_x_paths()
    for module in sorted((ROOT / "service").glob("*.py")):
        assert f"service/{module.name}" in named, module.name
    for package in sorted(p for p in (ROOT / "service").iterdir() if (p / "__init__.py").exists()):
        assert f"service/{package.name}/" in named, package.name


def test_every_path_in_the_table_exists():
    for path in where_is_x_paths():
        assert (ROOT / path).exists(), path
