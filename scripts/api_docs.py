"""Write docs/api.md, the API reference, from the OpenAPI document the service serves.

    .venv/bin/python scripts/api_docs.py          # rewrite docs/api.md
    .venv/bin/python scripts/api_docs.py --check  # exit 1 when docs/api.md is out of date

The document (GET /openapi.json) is built from service/schema.py (every body) and
service/openapi.py (the routes), so this page, the validation and the document agree.
A test fails when docs/api.md differs from what this script writes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "api.md"
METHODS = ("get", "post", "put", "patch", "delete", "options")

Node = dict[str, Any]


def _cell(text: str) -> str:
    """Fit text into one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _name(pointer: str) -> str:
    return pointer.rsplit("/", 1)[-1]


def _link(pointer: str) -> str:
    name = _name(pointer)
    return f"[{name}](#{name.lower()})"


def describe(node: Node) -> str:
    """Return a short Markdown phrase for a JSON Schema: its type and constraints."""
    if "$ref" in node:
        return _link(node["$ref"])
    if "anyOf" in node or "oneOf" in node:
        return " or ".join(describe(option) for option in node.get("anyOf", node.get("oneOf")))
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return " \\| ".join(f"`{value}`" for value in node["enum"])
    kind = node.get("type")
    if kind == "array":
        bounds = []
        if "minItems" in node:
            bounds.append(f"at least {node['minItems']}")
        if "maxItems" in node:
            bounds.append(f"at most {node['maxItems']}")
        suffix = f" ({', '.join(bounds)})" if bounds else ""
        return f"list of {describe(node.get('items', {}))}{suffix}"
    if kind in ("integer", "number"):
        bounds = []
        if "minimum" in node:
            bounds.append(f"≥ {node['minimum']}")
        if "maximum" in node:
            bounds.append(f"≤ {node['maximum']}")
        return " ".join([kind, *bounds])
    if kind == "string":
        if "contentSchema" in node:
            return f"JSON text of {describe(node['contentSchema'])}"
        parts = ["string"]
        if "format" in node:
            parts.append(f"({node['format']})")
        if "pattern" in node:
            parts.append(f"matching `{node['pattern']}`")
        if node.get("minLength") == 1:
            parts.insert(0, "non-empty")
        return " ".join(parts)
    if kind == "null":
        return "`null`"
    return kind or "any JSON value"


class Renderer:
    """Render one OpenAPI document as Markdown."""

    def __init__(self, document: Node) -> None:
        self.document = document

    def _meaning(self, node: Node) -> str:
        """Return a property's description, or that of the plain schema it refers to."""
        if "description" in node or "$ref" not in node:
            return node.get("description", "")
        target = self.resolve(node)
        return "" if "properties" in target else target.get("description", "")

    def _properties(self, schema: Node) -> list[str]:
        required = set(schema.get("required", ()))
        lines = ["| field | type | required | rule or meaning |", "|---|---|---|---|"]
        for field, node in schema["properties"].items():
            needed = "yes" if field in required else "no"
            meaning = _cell(self._meaning(node))
            lines.append(f"| `{field}` | {_cell(describe(node))} | {needed} | {meaning} |")
        rules = []
        if schema.get("additionalProperties") is True:
            rules.append("Other fields are kept as sent.")
        elif schema.get("additionalProperties") is False:
            rules.append("No other fields.")
        if schema.get("minProperties") == 1:
            rules.append("The object must not be empty.")
        return [*lines, "", " ".join(rules)] if rules else lines

    def schema(self, name: str, schema: Node) -> list[str]:
        """Return the Markdown section of one component schema."""
        lines = [f"### {name}", ""]
        if "properties" in schema:
            if schema.get("description"):
                lines += [" ".join(schema["description"].split()), ""]
            lines += self._properties(schema)
        else:
            lines.append(describe(schema) + ".")
            if schema.get("description"):
                text = " ".join(schema["description"].split())
                lines += ["", text[:1].upper() + text[1:] + "."]
        return [*lines, ""]

    def resolve(self, node: Node) -> Node:
        """Follow local $refs."""
        while "$ref" in node:
            target = self.document
            for token in node["$ref"][2:].split("/"):
                target = target[token]
            node = target
        return node

    def _body(self, response: Node) -> str:
        content = response.get("content")
        if not content:
            return "(no body)"
        return ", ".join(
            describe(media["schema"]) + ("" if kind == "application/json" else f" ({kind})")
            for kind, media in content.items()
        )

    def operation(self, method: str, path: str, operation: Node) -> list[str]:
        """Return the Markdown section of one operation."""
        lines = [f"### {method.upper()} {path}", "", operation["summary"] + "."]
        if operation.get("description"):
            lines += ["", " ".join(operation["description"].split())]
        security = (
            "bearer token when `WORKFLOW_STATE_TOKEN` is set" if operation["security"] else "open"
        )
        lines += ["", f"Auth: {security}."]
        parameters = [self.resolve(p) for p in operation.get("parameters", ())]
        if parameters:
            lines += ["", "| parameter | in | type | meaning |", "|---|---|---|---|"]
            for p in parameters:
                lines.append(
                    f"| `{p['name']}` | {p['in']} | {_cell(describe(p['schema']))} "
                    f"| {_cell(p.get('description', ''))} |"
                )
        if "requestBody" in operation:
            body = operation["requestBody"]["content"]["application/json"]["schema"]
            lines += ["", f"Body: {describe(body)}."]
        lines += ["", "| status | body | meaning | headers |", "|---|---|---|---|"]
        for status, response in operation["responses"].items():
            # A shared answer is described once, under "Error answers".
            meaning = _link(response["$ref"]) if "$ref" in response else None
            response = self.resolve(response)
            headers = ", ".join(f"`{name}`" for name in response.get("headers", {}))
            lines.append(
                f"| {status} | {_cell(self._body(response))} | "
                f"{meaning or _cell(response['description'])} | {headers} |"
            )
        return [*lines, ""]

    def shared_responses(self) -> list[str]:
        """Return the section listing each shared answer once."""
        lines = ["## Error answers", ""]
        for name, response in self.document["components"]["responses"].items():
            headers = ", ".join(f"`{header}`" for header in response.get("headers", {}))
            lines += [
                f"### {name}",
                "",
                f"{' '.join(response['description'].split())}.",
                "",
                f"Body: {self._body(response)}." + (f" Headers: {headers}." if headers else ""),
                "",
            ]
        return lines

    def render(self) -> str:
        """Return the whole reference."""
        info = self.document["info"]
        lines = [
            f"# {info['title']} — API reference (version {info['version']})",
            "",
            "<!-- Generated by scripts/api_docs.py from GET /openapi.json; do not edit. -->",
            "",
            "Generated from the service's OpenAPI 3.1 document (`GET /openapi.json`), whose",
            "bodies come from `service/schema.py`, the same types that validate requests. Run",
            "`.venv/bin/python scripts/api_docs.py` after changing either.",
            "",
            info["description"].rstrip(),
            "",
            "## Routes",
            "",
        ]
        for path, item in self.document["paths"].items():
            for method in METHODS:
                if method in item and method != "options":
                    lines += self.operation(method, path, item[method])
        preflights = [p for p, item in self.document["paths"].items() if "options" in item]
        lines += [
            "### OPTIONS (CORS preflight)",
            "",
            "Open, `204` with the `Access-Control-Allow-*` headers, on: "
            + ", ".join(f"`{p}`" for p in preflights)
            + ".",
            "",
        ]
        lines += self.shared_responses()
        lines += ["## Bodies", ""]
        for name, schema in sorted(self.document["components"]["schemas"].items()):
            lines += self.schema(name, schema)
        return "\n".join(lines).rstrip() + "\n"


def render(document: Node) -> str:
    """Return docs/api.md's text for an OpenAPI document."""
    return Renderer(document).render()


def main() -> int:
    """Write docs/api.md (or, with --check, tell whether it is up to date)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on a change")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from service.openapi import build_document

    text = render(json.loads(json.dumps(build_document())))
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run scripts/api_docs.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
