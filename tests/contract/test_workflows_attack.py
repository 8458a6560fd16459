"""Faults found by attacking the routes of many workflows (contract sections 2, 5 and 8), each
pinned by a test that failed before its fix: streams that answered 500 or stopped,
subscriptions that outlived their request, expiries a list stream never announced, ids that
could not be read where they were created, refused run requests that still wrote, cross-site
writes through a signing-in proxy, a list that held Redis, and streams of revoked users."""

from __future__ import annotations

import queue
import time
from urllib.parse import urljoin

import pytest
from flask import Flask

from tests.conftest import steps
from tests.contract import test_workflows
from tests.contract.test_workflows import create
from tests.support import STATE, STREAM, wait_until
from tests.support.identity import identity_config, write_tokens
from tests.support.inprocess import Events
from tests.support.routes import WORKFLOWS

# In-process streams read in a thread, closed at the test's end: test_workflows.py's fixture.
events = test_workflows.events

LIST_STREAM = f"{WORKFLOWS}/stream"
HUB = "workflow_stream_hub"


def open_streams(app: Flask) -> int:
    return app.extensions[HUB].open_streams


def expiries(stream: Events, seconds: float, expected: set[str] | None = None) -> set[str]:
    """Return the ids of the workflows the list stream said are gone within `seconds` (sooner
    once every one of `expected` is)."""
    gone: set[str] = set()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and not (expected and expected <= gone):
        try:
            _, _, data = stream.next(timeout=min(left, 1.0))
        except Exception:  # queue.Empty: nothing this second
            continue
        if data.get("state", "") is None:
            gone.add(data["workflow_id"])
    return gone


# --- Hub._schedule: a heap of (when, topic, version) whose topics cannot all be compared -------
# The current workflow's topic is (owner, None) and a workflow's is (owner, "<id>"): both watch
# the same state, so they get the same expiry time, and heapq then compares None with a str.

HEAP_FAULT = (
    "Hub._schedule pushes (when, topic, version) onto a heap; an (owner, None) topic and an "
    "(owner, '<id>') topic with the same `when` raise TypeError (service/stream.py)"
)


@pytest.mark.parametrize(
    ("status", "first", "second"),
    [
        # A workflow's page and the seed page, on the same (current) workflow.
        ("running", f"{WORKFLOWS}/w/stream", STREAM),
        # The seed page on a workflow that just finished, then the Instances tab.
        ("completed", STREAM, LIST_STREAM),
    ],
)
def test_a_second_stream_on_the_same_workflow_opens(app, events, status, first, second):
    client = app.test_client()
    create(client, "w", status=status)
    events(app, first).next()
    response = client.get(second, buffered=False)
    try:
        assert response.status_code == 200, response.get_data()[:200]
    finally:
        response.close()


def test_the_list_stream_outlives_many_writes_beside_a_current_stream(app, events):
    """The page's two streams (its workflow, its Instances tab) for one owner: the hub's feed
    thread crashes on the heap, restarts, and its resync ends every list stream."""
    client = app.test_client()
    create(client, "w")
    events(app, STREAM).next()
    listing = events(app, LIST_STREAM)
    wait_until(lambda: open_streams(app) == 2, timeout=5)
    for n in range(80):
        assert client.patch(f"{WORKFLOWS}/w", json={"n": n}).status_code == 200
    # Every one of the 80 changes reaches the list stream, which is still open afterwards.
    seen = [listing.next()[2]["version"] for _ in range(80)]
    assert seen == sorted(seen)
    assert open_streams(app) == 2


# --- stream routes: a subscription that outlives its request -----------------------------------

LEAK_FAULT = (
    "stream_response / list_stream_response subscribe before returning a generator whose "
    "`finally` unsubscribes; a HEAD (or any response closed before it is iterated) never starts "
    "the generator, so the subscription and the open-streams gauge stay forever (service/stream.py)"
)


@pytest.mark.parametrize("path", [LIST_STREAM, f"{WORKFLOWS}/w/stream", STREAM])
def test_a_head_of_a_stream_leaves_no_stream_open(app, path):
    client = app.test_client()
    create(client, "w")
    response = client.head(path)
    response.close()
    # A HEAD has no body to stream: nothing stays subscribed once it is answered.
    wait_until(lambda: open_streams(app) == 0, timeout=3)


# --- list_stream_response: which expiries a list stream announces -----------------------------

EXPIRY_FAULT = (
    "list_stream_response tracks for expiry only the first page (100) of *finished* workflows: "
    "a running workflow that goes stale, and finished ones past the 100 newest (the first to "
    "expire), vanish from the list with no {workflow_id, state: null} event (service/stream.py)"
)


def test_the_list_stream_announces_a_running_workflow_going_stale(make_app, events):
    app = make_app(STATE_STALE_TTL=2)
    client = app.test_client()
    create(client, "idle")  # running, never written again
    stream = events(app, LIST_STREAM)
    wait_until(lambda: open_streams(app) == 1, timeout=5)
    assert "idle" in expiries(stream, 6, {"idle"})
    assert client.get(f"{WORKFLOWS}/idle").status_code == 404


@pytest.mark.parametrize("backend", ["fakeredis"], indirect=True)
def test_the_list_stream_announces_every_finished_workflow_expiring(make_app, events):
    app = make_app(STATE_TTL=6)
    client = app.test_client()
    names = [f"f{n:03d}" for n in range(103)]
    for name in names:
        create(client, name, status="completed")
    stream = events(app, LIST_STREAM)
    wait_until(lambda: open_streams(app) == 1, timeout=5)
    gone = expiries(stream, 9, set(names))
    assert not client.get(WORKFLOWS).get_json()["workflows"]  # every one expired meanwhile
    assert sorted(set(names) - gone) == []


# --- ids a workflow can be created with but not read back at its Location -------------------

UNREADABLE_FAULT = (
    "POST /workflows accepts ids that its own routes cannot serve at the Location it answers: "
    "'stream' is the list stream's path, and '.' / '..' are dot segments every browser removes "
    "(service/workflows.py create, or model.WORKFLOW_ID_RE)"
)


@pytest.mark.parametrize("workflow_id", ["stream", ".", ".."])
def test_a_created_workflow_is_read_back_at_its_location(client, workflow_id):
    response = client.post(WORKFLOWS, json={"workflow_id": workflow_id, "steps": steps(1)})
    if workflow_id in ("stream", ".", ".."):
        assert (response.status_code, response.get_json()["error"]) == (400, "invalid_state")
        return
    assert response.status_code == 201
    # Where a browser's fetch() (or any URL library that resolves dot segments) goes.
    where = urljoin("http://service.example/", response.headers["Location"])
    path = where.removeprefix("http://service.example")
    read = client.get(path, buffered=False)
    try:
        assert read.mimetype == "application/json", (path, read.mimetype)
        assert read.get_json()["state"]["workflow_id"] == workflow_id
    finally:
        read.close()


@pytest.mark.parametrize("workflow_id", ["stream", ".", ".."])
def test_the_legacy_save_refuses_the_ids_a_create_refuses(client, workflow_id):
    assert client.post(STATE, json={"workflow_id": "keep", "steps": steps(1)}).status_code == 200
    response = client.post(STATE, json={"workflow_id": workflow_id, "steps": steps(1)})
    assert (response.status_code, response.get_json()["error"]) == (400, "invalid_state")
    assert "'workflow_id'" in response.get_json()["message"]
    assert client.get(STATE).get_json()["state"]["workflow_id"] == "keep"
    assert [entry["workflow_id"] for entry in client.get(WORKFLOWS).get_json()["workflows"]] == [
        "keep"
    ]


# --- RunControl: a refused run request writes the lease index --------------------------------

RUN_INDEX_FAULT = (
    "RunControl.create and RunControl.start note the run in the lease index (_index_ahead) before "
    "the store validates the body or finds the workflow, so a 400/404/409/429 still writes "
    "`<prefix>:runs`: junk members (a lease monitor handles 200 a second) and a live run's "
    "deadline pushed back, which postpones its takeover (service/runner/control.py)"
)
RUNS_INDEX = "workflow:runs"


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        (WORKFLOWS, {"workflow_id": "bad", "run": True, "status": "bogus"}, 400),
        (WORKFLOWS, {"workflow_id": "bad", "run": True, "steps": "not a list"}, 400),
        (f"{WORKFLOWS}/nothing/run", None, 404),
    ],
)
def test_a_refused_run_request_changes_nothing(app, redis_server, path, body, status):
    client = app.test_client()
    before = sorted(redis_server.client().keys("*"))
    response = client.post(path, json=body)
    assert response.status_code == status
    assert sorted(redis_server.client().keys("*")) == before


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
@pytest.mark.parametrize(
    ("path", "body"),
    [(f"{WORKFLOWS}/w/run", None), (WORKFLOWS, {"workflow_id": "w", "run": True})],
)
def test_a_refused_run_request_leaves_a_live_runs_deadline(app, redis_server, path, body):
    client = app.test_client()
    created = client.post(WORKFLOWS, json={"workflow_id": "w", "run": True, "steps": steps(1)})
    assert created.status_code == 201
    deadline = redis_server.client().zscore(RUNS_INDEX, "public/w")
    assert client.post(path, json=body).status_code == 409
    assert redis_server.client().zscore(RUNS_INDEX, "public/w") == deadline


# --- a signing-in proxy's session cookie rides along with another site's form ----------------

CSRF_FAULT = (
    "with WORKFLOW_STATE_USER_HEADER the proxy signs users in with a cookie, which a browser "
    "sends with another site's <form enctype=text/plain method=POST>; no route checks Origin / "
    "Sec-Fetch-Site and a POST needs no Content-Type, so any page the user opens can cancel, "
    "create or run their workflows (service/identity.py _check; needs a contract line in §6)"
)
PROXY_CONFIG = identity_config(
    WORKFLOW_STATE_USER_HEADER="X-Forwarded-User", WORKFLOW_STATE_TRUSTED_PROXIES="10.0.0.0/8"
)
# What the proxy forwards for a cross-site form post of the signed-in alice.
CROSS_SITE = {
    "X-Forwarded-User": "alice",
    "Origin": "https://evil.example",
    "Sec-Fetch-Site": "cross-site",
    "Content-Type": "text/plain",
}


@pytest.mark.parametrize("path", [f"{STATE}/cancel", f"{WORKFLOWS}/w/cancel", WORKFLOWS])
def test_another_sites_form_cannot_write_through_the_proxy(make_app, path):
    client = make_app(**PROXY_CONFIG).test_client()
    proxy = {"REMOTE_ADDR": "10.0.0.5"}
    alice = {"X-Forwarded-User": "alice"}
    body = {"workflow_id": "w", "steps": steps(1)}
    assert client.post(WORKFLOWS, json=body, headers=alice, environ_base=proxy).status_code == 201
    # A text/plain form field named '{"workflow_id":"x","pad":"' with the value '"}'.
    form = b'{"workflow_id":"x","pad":"="}'
    response = client.post(path, data=form, headers=CROSS_SITE, environ_base=proxy)
    assert 400 <= response.status_code < 500  # 403 most likely
    listed = client.get(WORKFLOWS, headers=alice, environ_base=proxy).get_json()["workflows"]
    assert [(entry["workflow_id"], entry["status"]) for entry in listed] == [("w", "running")]


# --- the Redis LIST script: one list request holds Redis for everyone -----------------------

LIST_SCRIPT_FAULT = (
    "the LIST script GETs every indexed workflow's whole document inside Lua to test its status "
    "(and returns whole documents for list entries), so one GET /workflows?status=finished over "
    "many large running workflows blocks Redis for every owner for hundreds of ms (measured: "
    "220 ms for 400 x 250 KB); reading the status with GETRANGE, or keeping it in the index, "
    "would not (service/storage/redis_scripts.py LIST, redis.py _list)"
)
LARGE_WORKFLOWS = 150
# A script that holds Redis longer than this stalls every other owner's request with it.
SCRIPT_BOUND_MS = 50


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_a_filtered_list_does_not_hold_redis(app, redis_server):
    client = app.test_client()
    blob = "x" * 200_000
    for n in range(LARGE_WORKFLOWS):
        body = {"workflow_id": f"big{n}", "blob": blob}
        assert client.post(WORKFLOWS, json=body).status_code == 201
    server = redis_server.client()
    server.config_set("slowlog-log-slower-than", SCRIPT_BOUND_MS * 1000)
    server.slowlog_reset()
    try:
        page = client.get(f"{WORKFLOWS}?status=finished&limit=1").get_json()
        assert page["workflows"] == []
        slow = server.slowlog_get()
        assert [(entry["duration"] // 1000, entry["command"][:40]) for entry in slow] == []
    finally:
        server.config_set("slowlog-log-slower-than", 10_000)


# --- a revoked token keeps its open streams -----------------------------------------------

REVOKED_FAULT = (
    "identity is checked once, when a stream opens: a user removed from the tokens file (re-read "
    "within a second) still receives every change of their workflows on the streams they had "
    "open, for as long as they keep them (service/stream.py changes / list_changes never look "
    "again; the keepalive is a natural place)"
)


@pytest.mark.parametrize("path", [LIST_STREAM, f"{WORKFLOWS}/w/stream", STREAM])
def test_a_revoked_users_open_stream_hears_no_more(make_app, events, tmp_path, path):
    users = {"alice": ("alice-token", False), "root": ("root-token", True)}
    tokens = write_tokens(tmp_path / "tokens.json", users)
    app = make_app(**identity_config(WORKFLOW_STATE_TOKENS_FILE=str(tokens)), STREAM_KEEPALIVE=0.2)
    client = app.test_client()
    alice = {"Authorization": "Bearer alice-token"}
    root = {"Authorization": "Bearer root-token"}
    body = {"workflow_id": "w", "steps": steps(1)}
    assert client.post(WORKFLOWS, json=body, headers=alice).status_code == 201
    stream = events(app, path, alice)
    wait_until(lambda: open_streams(app) == 1, timeout=5)
    if path != LIST_STREAM:
        stream.next()  # the snapshot
    del users["alice"]
    write_tokens(tokens, users)
    wait_until(lambda: client.get(WORKFLOWS, headers=alice).status_code == 401, timeout=5)
    # An admin changes alice's workflow: what alice, no longer a user, must not be told.
    changed = client.patch(f"{WORKFLOWS}/w?owner=alice", json={"note": "after"}, headers=root)
    assert changed.status_code == 200
    with pytest.raises(queue.Empty):
        stream.next(timeout=1.5)
    wait_until(lambda: open_streams(app) == 0, timeout=3)


# An older browser sends Origin but no Sec-Fetch-Site. Host is where the form posts to.
OLD_BROWSER_CROSS_SITE = {
    key: value for key, value in CROSS_SITE.items() if key != "Sec-Fetch-Site"
} | {"Host": "ops.example"}


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "https://ops.example.evil"])
@pytest.mark.parametrize("path", [f"{STATE}/cancel", f"{WORKFLOWS}/w/cancel", WORKFLOWS])
def test_an_older_browsers_cross_site_form_is_refused_on_its_origin(make_app, path, origin):
    client = make_app(**PROXY_CONFIG).test_client()
    proxy = {"REMOTE_ADDR": "10.0.0.5"}
    alice = {"X-Forwarded-User": "alice"}
    body = {"workflow_id": "w", "steps": steps(1)}
    assert client.post(WORKFLOWS, json=body, headers=alice, environ_base=proxy).status_code == 201
    headers = {**OLD_BROWSER_CROSS_SITE, "Origin": origin}
    response = client.post(path, data=b'{"workflow_id":"x"}', headers=headers, environ_base=proxy)
    assert (response.status_code, response.get_json()["error"]) == (403, "forbidden")
    listed = client.get(WORKFLOWS, headers=alice, environ_base=proxy).get_json()["workflows"]
    assert [(entry["workflow_id"], entry["status"]) for entry in listed] == [("w", "running")]


@pytest.mark.parametrize(
    ("site", "origin", "cors", "forwarded_host"),
    [
        ("same-origin", "https://ops.example", "*", None),
        ("none", None, "*", None),
        ("cross-site", "https://ops.example", "https://ops.example", None),
        # Older browsers: no Sec-Fetch-Site, judged on Origin alone.
        (None, "https://ops.example", "*", None),  # the host the page posted to
        (None, "https://OPS.example", "*", None),
        (None, "https://app.example", "*", "app.example"),  # the proxy names the public host
        (None, "https://embedder.example", "https://embedder.example", None),
        (None, None, "*", None),  # no Origin: no browser's cross-site write
    ],
)
def test_the_proxys_own_page_and_listed_origins_still_write(
    make_app, site, origin, cors, forwarded_host
):
    config = {**PROXY_CONFIG, "CORS_ORIGINS": tuple(cors.split(","))}
    client = make_app(**config).test_client()
    headers = {"X-Forwarded-User": "alice", "Host": "ops.example"}
    for name, value in (
        ("Sec-Fetch-Site", site),
        ("Origin", origin),
        ("X-Forwarded-Host", forwarded_host),
    ):
        if value:
            headers[name] = value
    body = {"workflow_id": "w", "steps": steps(1)}
    response = client.post(
        WORKFLOWS, json=body, headers=headers, environ_base={"REMOTE_ADDR": "10.0.0.5"}
    )
    assert response.status_code == 201
