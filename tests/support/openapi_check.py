"""Check a real HTTP answer against the service's OpenAPI 3.1 document (JSON Schema 2020-12).

Used by the OpenAPI tests (every route and status on every backend) and by the fault tests
(the real gunicorn's answers while storage is broken).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOC_URI = "urn:workflow-state:openapi"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def parse_events(text: str) -> list[dict[str, Any]]:
    """Split a text/event-stream body into events (dicts of event, id, retry, data)."""
    events = []
    for block in re.split(r"\r?\n\r?\n", text):
        event: dict[str, Any] = {}
        data: list[str] = []
        for line in block.splitlines():
            if not line or line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "data":
                data.append(value)
            elif field == "retry" and value.isdigit():
                event["retry"] = int(value)
            elif field in ("event", "id"):
                event[field] = value
        if data:
            event.setdefault("event", "message")
            event["data"] = "\n".join(data)
            events.append(event)
    return events


class OpenAPIDocument:
    """One OpenAPI document, able to say whether an answer is one it describes."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(DOC_URI, resource)
        # Literal paths first, so /workflow/state/summary never matches a template.
        ordered = sorted(document["paths"], key=lambda p: ("{" in p, p))
        self.routes = [(template, self._compile(template)) for template in ordered]

    @staticmethod
    def _compile(template: str) -> re.Pattern[str]:
        pattern = ""
        for literal, name in re.findall(r"([^{]*)(?:\{(\w+)\})?", template):
            pattern += re.escape(literal)
            if name:
                # Only /static/{path} may span several segments (Flask's path converter).
                pattern += f"(?P<{name}>.+)" if name == "path" else f"(?P<{name}>[^/]+)"
        return re.compile(pattern + r"\Z")

    def template(self, path: str) -> str | None:
        """Return the documented path template a request path falls under, or None."""
        path = path.split("?", 1)[0]
        return next((t for t, rx in self.routes if rx.match(path)), None)

    def resolve(self, node: Any, pointer: str) -> tuple[Any, str]:
        """Follow local $refs from `node` (at `pointer`); return the target and its pointer."""
        while isinstance(node, dict) and "$ref" in node:
            target = node["$ref"]
            assert target.startswith("#/"), target
            pointer = target[1:]
            node = self.document
            for token in pointer[1:].split("/"):
                node = node[token.replace("~1", "/").replace("~0", "~")]
        return node, pointer

    def response_spec(self, method: str, path: str, status: int) -> tuple[dict[str, Any], str]:
        """Return the documented response (and where it is) for an answer, or fail."""
        template = self.template(path)
        if template is None:
            assert status == 404, f"{method} {path}: undocumented path answered {status}"
            return self.resolve(self.document["x-unknown-path"], "/x-unknown-path")
        item = self.document["paths"][template]
        operation = item.get(method.lower())
        if operation is None:
            assert status == 405, f"{method} {template}: unlisted method answered {status}"
            return self.resolve(self.document["x-unlisted-method"], "/x-unlisted-method")
        responses = operation["responses"]
        key = str(status) if str(status) in responses else "default"
        assert key in responses, f"{method} {template}: status {status} is not documented"
        base = f"/paths/{_escape(template)}/{method.lower()}/responses/{key}"
        return self.resolve(responses[key], base)

    def validate(self, instance: Any, pointer: str, what: str) -> None:
        """Validate `instance` against the schema at `pointer` in the document."""
        validator = Draft202012Validator({"$ref": f"{DOC_URI}#{pointer}"}, registry=self.registry)
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
        assert not errors, f"{what}: {errors[0].message} at {list(errors[0].path)}"

    def check(
        self,
        method: str,
        path: str,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
    ) -> dict[str, Any]:
        """Fail unless the answer is one the document describes; return its response object."""
        what = f"{method} {path} -> {status}"
        spec, pointer = self.response_spec(method, path, status)
        lower = {name.lower(): value for name, value in headers.items()}
        for name, header in spec.get("headers", {}).items():
            header, header_pointer = self.resolve(header, f"{pointer}/headers/{_escape(name)}")
            value = lower.get(name.lower())
            if value is None:
                assert not header.get("required"), f"{what}: required header {name} is missing"
                continue
            schema, _ = self.resolve(header["schema"], f"{header_pointer}/schema")
            if schema.get("type") == "integer":
                assert value.isdigit(), f"{what}: header {name}={value!r} is not an integer"
                value = int(value)
            self.validate(value, f"{header_pointer}/schema", f"{what}: header {name}")
        content = spec.get("content")
        if content is None:
            assert not body, f"{what}: the document describes no body, got {body[:100]!r}"
            return spec
        media = lower.get("content-type", "").split(";")[0].strip().lower()
        key = next(
            (
                k
                for k in content
                if k == media or k == "*/*" or (k.endswith("/*") and media.startswith(k[:-1]))
            ),
            None,
        )
        assert key is not None, f"{what}: content type {media!r} is not one of {list(content)}"
        schema_pointer = f"{pointer}/content/{_escape(key)}/schema"
        if key == "application/json":
            try:
                instance = json.loads(body)
            except ValueError as error:
                raise AssertionError(
                    f"{what}: body is not JSON ({error}): {body[:200]!r}"
                ) from None
            self.validate(instance, schema_pointer, what)
        elif key == "text/event-stream":
            events = parse_events(body.decode("utf-8"))
            assert events, f"{what}: no event in {body[:200]!r}"
            event_schema, event_pointer = self.resolve(content[key]["schema"], schema_pointer)
            for event in events:
                self.validate(event, event_pointer, f"{what}: event")
                inner = event_schema["properties"]["data"].get("contentSchema")
                if inner is not None:
                    _, inner_pointer = self.resolve(inner, f"{event_pointer}/properties/data")
                    self.validate(json.loads(event["data"]), inner_pointer, f"{what}: event data")
        return spec

    def check_flask(self, method: str, path: str, response: Any, body: bytes | None = None) -> None:
        """Check a Flask test-client response (pass `body` for a streamed one)."""
        data = response.get_data() if body is None else body
        self.check(method, path, response.status_code, dict(response.headers), data)
