"""deploy/nginx.conf run by a real nginx the tests own: its own port, directory and upstreams."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.processes import ROOT, free_port, http, wait_until

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


class Nginx:
    """nginx with deploy/nginx.conf as its site, in front of the given instance ports."""

    def __init__(self, upstream_ports: list[int], replace: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.directory = Path(tempfile.mkdtemp(prefix="wss-nginx-"))
        site = (ROOT / "deploy" / "nginx.conf").read_text()
        upstreams = "\n".join(f"    server 127.0.0.1:{port};" for port in upstream_ports)
        site = re.sub(r"(?m)^    server 10\.0\.0\.\d+:8000[^\n]*\n", "", site)
        site = site.replace("    keepalive 32;", upstreams + "\n    keepalive 32;")
        site = site.replace("listen 80;", f"listen 127.0.0.1:{self.port};")
        for old, new in (replace or {}).items():
            assert old in site, f"deploy/nginx.conf no longer has {old!r}"
            site = site.replace(old, new)
        (self.directory / "site.conf").write_text(site)
        temp = {
            name: self.directory / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")
        }
        (self.directory / "nginx.conf").write_text(
            f"""
            daemon off;
            pid {self.directory}/nginx.pid;
            error_log {self.directory}/error.log;
            events {{}}
            http {{
                access_log {self.directory}/access.log;
                client_body_temp_path {temp["body"]};
                proxy_temp_path {temp["proxy"]};
                fastcgi_temp_path {temp["fastcgi"]};
                uwsgi_temp_path {temp["uwsgi"]};
                scgi_temp_path {temp["scgi"]};
                include {self.directory}/site.conf;
            }}
            """
        )
        self.process: subprocess.Popen | None = None

    def check(self) -> subprocess.CompletedProcess:
        """Run `nginx -t` on the rendered configuration."""
        return subprocess.run(
            [NGINX, "-t", "-c", str(self.directory / "nginx.conf")],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def start(self) -> Nginx:
        """Start nginx and wait until it answers."""
        self.process = subprocess.Popen(
            [NGINX, "-c", str(self.directory / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: http("GET", self.url + "/healthz", timeout=2)[0] in (200, 502))
        return self

    def stop(self) -> None:
        """Stop nginx and remove its directory."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)
