"""Two reference apps for `make bench`, served by the same gunicorn config as the service.

- `hello_app`: a bare Flask app with no middleware at all, answering `/healthz` with the service's
  body. The service's `/healthz` divided by this one is the per-request tax: request ids, logs,
  metrics, CORS, identity and security headers.
- `naive_app(path)`: the state GET anyone would write first: open the JSON file and parse it on
  every GET, answer it with `jsonify`. No lock, no fsync, no cache, no validation; wrong under
  concurrent writers (it has none here). The service's GET must beat it, or a user would pick it.

Both are written for the benchmark only; gunicorn loads them as `bench.references:hello_app` and
`bench.references:naive_app('<state file>')`.
"""

from __future__ import annotations

import json

from flask import Flask, Response, jsonify

HEALTHZ_BODY = '{"status":"ok"}'


def _healthz() -> Response:
    return Response(HEALTHZ_BODY, mimetype="application/json")


def create_hello_app() -> Flask:
    """Return a Flask app with one route and nothing else."""
    app = Flask(__name__)
    app.add_url_rule("/healthz", view_func=_healthz)
    return app


def naive_app(path: str) -> Flask:
    """Return a Flask app whose GET /workflow/state reads and parses `path` on every request."""
    app = Flask(__name__)
    app.add_url_rule("/healthz", view_func=_healthz)

    @app.get("/workflow/state")
    def get_state() -> Response:
        with open(path, encoding="utf-8") as file:
            state = json.load(file)
        return jsonify(success=True, active=state.get("status") == "running", state=state)

    return app


hello_app = create_hello_app()
