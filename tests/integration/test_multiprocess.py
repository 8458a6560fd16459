"""The real gunicorn, several workers, two instances on one Redis: no acknowledged write is lost."""

from __future__ import annotations

import http.client as httpclient
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import steps
from tests.support import Gunicorn, RedisServer, http, wait_until

pytestmark = pytest.mark.slow

CLIENTS = 16
WRITES_PER_CLIENT = 25


class Connection:
    """A keep-alive HTTP connection to one server."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.conn = httpclient.HTTPConnection(parts.hostname, parts.port, timeout=10)

    def request(self, method: str, path: str, body=None) -> tuple[int, dict]:
        payload = None if body is None else json.dumps(body)
        self.conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        response = self.conn.getresponse()
        return response.status, json.loads(response.read())


def hammer(urls: list[str]) -> tuple[dict[int, int], list[int], list[tuple[int, dict]]]:
    """16 clients PATCH their own step repeatedly, spread over `urls`; return what was acked."""
    acked: dict[int, int] = {}
    versions: list[int] = []
    failures: list[tuple[int, dict]] = []
    guard = threading.Lock()

    def client(index: int) -> None:
        connections = [Connection(url) for url in urls]
        for n in range(1, WRITES_PER_CLIENT + 1):
            conn = connections[(index + n) % len(connections)]
            status, body = conn.request(
                "PATCH",
                f"/workflow/state/steps/{index}",
                {"status": "in_progress", "data": {"n": n, "by": index}, "workflow_id": "load"},
            )
            with guard:
                if status == 200:
                    acked[index] = n
                    versions.append(body["state"]["version"])
                else:
                    failures.append((status, body))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return acked, versions, failures


def check_nothing_lost(urls: list[str]) -> None:
    status, _, _ = http(
        "POST", urls[0] + "/workflow/state", {"workflow_id": "load", "steps": steps(CLIENTS)}
    )
    assert status == 200
    acked, versions, failures = hammer(urls)
    assert not failures, failures[:3]
    assert len(versions) == CLIENTS * WRITES_PER_CLIENT
    assert len(set(versions)) == len(versions), "two writes got the same version"
    finals = [http("GET", url + "/workflow/state")[2]["state"] for url in urls]
    assert all(final == finals[0] for final in finals), "instances disagree"
    final = finals[0]
    for index in range(CLIENTS):
        assert final["steps"][index]["data"] == {"n": acked[index], "by": index}, index
    assert final["version"] == max(versions)


@pytest.fixture
def two_instances_on_redis(redis_server: RedisServer, tmp_path: Path) -> Iterator[list[Gunicorn]]:
    redis_server.flush()
    env = {"WORKFLOW_STATE_URL": redis_server.url}
    servers = [Gunicorn(env, workers=3).start(), Gunicorn(env, workers=3).start()]
    yield servers
    for server in servers:
        server.stop()


def test_two_instances_three_workers_each_on_one_redis(two_instances_on_redis):
    servers = two_instances_on_redis
    for server in servers:
        wait_until(lambda s=server: len(s.worker_pids()) == 3)
    check_nothing_lost([server.url for server in servers])


def test_three_workers_on_the_file_backend(tmp_path: Path):
    server = Gunicorn({"WORKFLOW_STATE_URL": f"file://{tmp_path}/state.json"}, workers=3).start()
    try:
        check_nothing_lost([server.url])
        served = http("GET", server.url + "/workflow/state")[2]["state"]
        on_disk = tmp_path / "workflows" / "public" / f"{served['workflow_id']}.json"
        assert json.loads(on_disk.read_text()) == served
    finally:
        server.stop()


def test_a_second_instance_sees_a_write_at_once(two_instances_on_redis):
    a, b = two_instances_on_redis
    saved = http("POST", a.url + "/workflow/state", {"steps": steps(3)})[2]["state"]
    assert http("GET", b.url + "/workflow/state")[2]["state"] == saved
    http("PATCH", b.url + "/workflow/state/steps/2", {"status": "failed"})
    assert http("GET", a.url + "/workflow/state")[2]["state"]["steps"][2]["status"] == "failed"


def test_a_chunked_body_over_the_limit_is_413_on_the_real_server(tmp_path: Path):
    server = Gunicorn(
        {"WORKFLOW_STATE_URL": f"file://{tmp_path}/s.json", "WORKFLOW_STATE_MAX_BODY": "4096"},
        workers=1,
    ).start()
    try:
        parts = urlsplit(server.url)
        conn = httpclient.HTTPConnection(parts.hostname, parts.port, timeout=10)
        chunks = [b'{"pad": "'] + [b"x" * 1000] * 10 + [b'"}']
        conn.request("POST", "/workflow/state", body=iter(chunks), encode_chunked=True)
        response = conn.getresponse()
        body = json.loads(response.read())
        assert response.status == 413, body
        assert body["error"] == "payload_too_large"
        assert http("GET", server.url + "/workflow/state")[2]["state"] is None
    finally:
        server.stop()
