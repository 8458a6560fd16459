"""The deploy recipes work as written: Redis ACL user and TLS, honcho's Procfile.dev, nginx."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service import create_app
from service.config import from_env
from service.store import build_store
from tests.conftest import steps
from tests.support import (
    REDIS_SERVER,
    ROOT,
    VENV_BIN,
    Gunicorn,
    RedisServer,
    SSEClient,
    free_port,
    http,
    wait_until,
)
from tests.support.routes import STATE
from tests.support.runs import run_path_steps

pytestmark = pytest.mark.slow
needs_redis_server = pytest.mark.skipif(
    REDIS_SERVER is None, reason="needs the redis-server binary (ACL, TLS, honcho's redis)"
)
PASSWORD = "s3cret-acl-password-for-tests"


def acl_command(password: str) -> list[str]:
    """Return the ACL SETUSER command exactly as deploy/redis.md prints it."""
    text = (ROOT / "deploy" / "redis.md").read_text()
    [line] = [line for line in text.splitlines() if line.startswith("ACL SETUSER")]
    return shlex.split(line.replace("CHANGE-ME-TO-A-LONG-RANDOM-PASSWORD", password))


def run_a_workflow(client) -> None:
    """Exercise every state route once, as the page and an operator would."""
    assert client.get("/readyz").status_code == 200
    assert client.post(STATE, json={"workflow_id": "acl", "steps": steps(2)}).status_code == 200
    assert client.patch(f"{STATE}/steps/0", json={"status": "completed"}).status_code == 200
    assert client.patch(STATE, json={"status": "completed"}).status_code == 200
    assert client.get(STATE).get_json()["state"]["status"] == "completed"
    assert client.get(f"{STATE}/summary").status_code == 200
    assert [w["workflow_id"] for w in client.get("/workflow/history").get_json()["workflows"]] == [
        "acl"
    ]
    assert client.delete(STATE).status_code == 200


@needs_redis_server
def test_the_acl_user_in_redis_md_can_run_the_service_and_nothing_more(own_redis: RedisServer):
    import redis

    admin = own_redis.client()
    admin.execute_command(*acl_command(PASSWORD))
    db3 = redis.Redis(port=own_redis.port, db=3)
    db3.set("workflow:state:seq", 5)  # left by a single-workflow version: migrated on start
    url = f"redis://workflow-state:{PASSWORD}@127.0.0.1:{own_redis.port}/3"
    client = create_app({"STATE_URL": url}).test_client()
    run_a_workflow(client)
    assert not db3.exists("workflow:state:seq")

    # A value that is not a state is moved aside (TYPE, RENAME, PEXPIRE in the script).
    assert client.post(STATE, json={"workflow_id": "bad", "steps": []}).status_code == 200
    db3.set("workflow:{public}:state:bad", "garbage")
    assert client.get(STATE).get_json()["state"] is None
    assert list(db3.scan_iter("workflow:{public}:corrupt:*"))

    # Live updates (PSUBSCRIBE) and the CLI, as the same user.
    store = build_store(from_env({"WORKFLOW_STATE_URL": url}))
    stop = threading.Event()
    feed = store.events(stop)
    next(feed)  # subscribed
    store.save("public", {"workflow_id": "evt", "steps": []})
    assert store.list("public").entries[0]["workflow_id"] == "evt"
    assert store.owners() == ["public"]
    assert json.loads(next(feed).json)["workflow_id"] == "evt"
    stop.set()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WORKFLOW_STATE_URL": url}
    # watch ends at once with the workflow cancel just cancelled: exit 4 says so.
    for args, code in (
        (["status"], 0),
        (["history"], 0),
        (["cancel"], 0),
        (["watch", "--timeout", "0.5"], 4),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "service", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == code, (args, result.stderr)

    # ... and nothing beyond its own keys.
    limited = redis.Redis(port=own_redis.port, db=3, username="workflow-state", password=PASSWORD)
    for command in (("GET", "someone-else"), ("FLUSHDB",), ("KEYS", "*"), ("CONFIG", "GET", "*")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            limited.execute_command(*command)


def make_certificates(directory: Path) -> dict[str, Path]:
    """Write a CA, a server certificate for localhost signed by it, and an unrelated CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def build(subject: str, issuer_key, issuer: str | None, *, ca: bool, key=None):
        key = key or ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        issuer_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return key, builder.sign(issuer_key or key, hashes.SHA256())

    ca_key, ca_cert = build("test-ca", None, None, ca=True)
    server_key, server_cert = build("localhost", ca_key, "test-ca", ca=False)
    _, other_ca = build("other-ca", None, None, ca=True)
    paths = {name: directory / f"{name}.pem" for name in ("ca", "other_ca", "cert", "key")}
    for name, cert in (("ca", ca_cert), ("other_ca", other_ca), ("cert", server_cert)):
        paths[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, dict[str, Path]]]:
    """A redis-server that speaks TLS only, as deploy/redis.md describes."""
    paths = make_certificates(tmp_path)
    port = free_port()
    process = subprocess.Popen(
        [
            str(REDIS_SERVER),
            *("--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
            *("--tls-cert-file", str(paths["cert"]), "--tls-key-file", str(paths["key"])),
            *("--tls-ca-cert-file", str(paths["ca"]), "--tls-auth-clients", "no"),
            *("--save", "", "--appendonly", "no", "--dir", str(tmp_path)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port, paths
    finally:
        process.kill()
        process.wait(timeout=10)


@needs_redis_server
def test_rediss_urls_as_redis_md_writes_them(tls_redis):
    port, paths = tls_redis
    url = f"rediss://localhost:{port}/3?ssl_cert_reqs=required&ssl_ca_certs={paths['ca']}"
    client = create_app({"STATE_URL": url}).test_client()
    wait_until(lambda: client.get("/readyz").status_code == 200)
    run_a_workflow(client)
    # A server whose certificate the configured CA did not sign is refused, not trusted.
    untrusted = url.replace(str(paths["ca"]), str(paths["other_ca"]))
    response = create_app({"STATE_URL": untrusted}).test_client().get(STATE)
    assert response.status_code == 503
    assert response.get_json()["error"] == "backend_unavailable"


@needs_redis_server
def test_procfile_dev_runs_redis_two_instances_sharing_one_state_and_a_worker():
    honcho = VENV_BIN / "honcho"
    if not honcho.exists():
        pytest.skip("honcho is not installed (requirements-dev.txt)")
    procfile = str(ROOT / "deploy" / "Procfile.dev")
    check = subprocess.run(
        [str(honcho), "-f", procfile, "-d", str(ROOT), "check"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stderr
    ports = {
        "DEV_REDIS_PORT": free_port(),
        "DEV_WEB1_PORT": free_port(),
        "DEV_WEB2_PORT": free_port(),
    }
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WORKFLOW_")},
        **{k: str(v) for k, v in ports.items()},
        "WORKFLOW_DEMO_STEP_SECONDS": "0.1",
    }
    process = subprocess.Popen(
        [str(honcho), "-f", procfile, "-d", str(ROOT), "start"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    web1 = f"http://127.0.0.1:{ports['DEV_WEB1_PORT']}"
    web2 = f"http://127.0.0.1:{ports['DEV_WEB2_PORT']}"
    try:
        for url in (web1, web2):
            wait_until(lambda u=url: http("GET", u + "/readyz", timeout=2)[0] == 200, timeout=30)
        saved = http("POST", web1 + STATE, {"workflow_id": "dev", "steps": steps(2)})[2]["state"]
        assert http("GET", web2 + STATE)[2]["state"] == saved
        # The worker calls step endpoints that are paths on the service (not honcho's PORT).
        ran = run_path_steps(web2, "paths")
        assert [s["status"] for s in ran["steps"]] == ["completed", "completed"], ran
        assert ran["status"] == "completed"
        process.send_signal(signal.SIGINT)  # what Ctrl-C does
        assert process.wait(timeout=20) is not None
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


NGINX = shutil.which("nginx")


@pytest.fixture
def nginx_in_front(redis_server: RedisServer) -> Iterator[str]:
    """deploy/nginx.conf in front of two instances on one Redis; yields its base URL."""
    redis_server.flush()
    env = {"WORKFLOW_STATE_URL": redis_server.url}
    instances = [Gunicorn(env, workers=1).start(), Gunicorn(env, workers=1).start()]
    directory = Path(tempfile.mkdtemp(prefix="wss-nginx-"))
    port = free_port()
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    upstreams = "\n".join(f"    server 127.0.0.1:{g.port};" for g in instances)
    site = re.sub(r"(?m)^    server 10\.0\.0\.\d+:8000[^\n]*\n", "", site)
    site = site.replace("    keepalive 32;", upstreams + "\n    keepalive 32;")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    (directory / "site.conf").write_text(site)
    temp = {name: directory / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    (directory / "nginx.conf").write_text(
        f"""
        daemon off;
        pid {directory}/nginx.pid;
        error_log {directory}/error.log;
        events {{}}
        http {{
            access_log {directory}/access.log;
            client_body_temp_path {temp["body"]};
            proxy_temp_path {temp["proxy"]};
            fastcgi_temp_path {temp["fastcgi"]};
            uwsgi_temp_path {temp["uwsgi"]};
            scgi_temp_path {temp["scgi"]};
            include {directory}/site.conf;
        }}
        """
    )
    process = subprocess.Popen(
        [NGINX, "-c", str(directory / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http("GET", base + "/healthz", timeout=2)[0] == 200)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)
        for instance in instances:
            instance.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx-light)")
def test_nginx_site_passes_request_ids_and_streams_unbuffered(nginx_in_front):
    base = nginx_in_front
    assert http("GET", base + STATE, headers={"X-Request-ID": "via-nginx-1"})[1][
        "X-Request-ID"
    ] == ("via-nginx-1")
    generated = http("GET", base + STATE)[1]["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)  # nginx's $request_id, passed through
    assert http("GET", base + "/metrics")[0] == 200  # allowed from 127.0.0.1

    stream = SSEClient(base + STATE + "/stream", timeout=10)
    try:
        assert stream.status == 200
        assert stream.next(timeout=5)["json"]["state"] is None
        for n in range(3):
            http("POST", base + STATE, {"workflow_id": f"n{n}", "steps": []})
            assert stream.next(timeout=2)["json"]["state"]["workflow_id"] == f"n{n}"
    finally:
        stream.close()
