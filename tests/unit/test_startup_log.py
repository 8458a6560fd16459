"""At start the server logs one line naming its storage backend and where it is, no secret."""

from __future__ import annotations

import logging

import pytest

from service import create_app
from service.store import log_backend


@pytest.mark.parametrize(
    ("url", "line"),
    [
        ("file:///srv/state/s.json", "storage: file at /srv/state/s.json"),
        ("redis://127.0.0.1:6379/0", "storage: redis at redis://127.0.0.1:6379/0"),
        (
            "rediss://svc:s3cret-pass@redis.example:6380/3?ssl_ca_certs=/etc/ca.pem",
            "storage: redis at rediss://redis.example:6380/3",
        ),
        ("fakeredis://", "storage: fakeredis at fakeredis://"),
    ],
)
def test_the_line_names_the_backend_and_where_without_credentials(caplog, url, line):
    app = create_app({"STATE_URL": url})
    caplog.set_level(logging.INFO, logger="service.store")
    log_backend(app)
    assert [r.getMessage() for r in caplog.records if r.name == "service.store"] == [line]
    assert "s3cret" not in caplog.text


def test_building_an_app_logs_nothing_until_the_server_asks(caplog):
    caplog.set_level(logging.INFO, logger="service.store")
    create_app({"STATE_URL": "fakeredis://"})
    assert not [r for r in caplog.records if r.name == "service.store"]
