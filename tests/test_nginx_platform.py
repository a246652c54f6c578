"""The project's .platform/nginx files in front of the app, as Elastic Beanstalk lays
them out on Amazon Linux 2023, checked by the real nginx (`nginx -t`, then a redirect).

The layout (AWS Elastic Beanstalk developer guide, "Reverse proxy configuration",
platforms-linux-extend.proxy): the platform's /etc/nginx/nginx.conf includes
`conf.d/*.conf` in its http block (where .platform/nginx/conf.d/*.conf land) and
`conf.d/elasticbeanstalk/*.conf` inside its one server block (where
.platform/nginx/conf.d/elasticbeanstalk/*.conf land), beside the platform's own
`00_application.conf`, the `location /` that proxies to the app. NGINX_CONF below is
that file's shape; the project's files are copied to those paths byte for byte.

The redirect cache lives at /var/cache/nginx/redirects, an absolute path. The AL2023
nginx package does not ship /var/cache/nginx and nginx creates only the last component,
so each test runs nginx in a private mount namespace with an empty /var/cache (only
what the platform has), and the committed prebuild hook must create the parent.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess  # nosec B404 - runs the real nginx
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ops.processes import NGINX, spawn, stop
from tests.servers import GunicornServer, free_port

REPO = Path(__file__).resolve().parent.parent
PLATFORM = REPO / ".platform"
NGINX_BIN = Path("/usr/sbin/nginx")
HOOK = PLATFORM / "hooks" / "prebuild" / "00_nginx_cache_dir.sh"

# The Elastic Beanstalk AL2023 nginx.conf, with this machine's differences marked: the
# port (80 there), the worker user (nginx there), and paths under the temporary prefix.
# It sets no server_tokens (pages from instances show nginx/1.x): the project's
# conf.d/server_tokens.conf does, and a second one in the same block would be refused.
NGINX_CONF = """\
user                    nobody nogroup;
error_log               {root}/var/log/nginx/error.log warn;
pid                     {root}/run/nginx.pid;
worker_processes        1;
worker_rlimit_nofile    1024;

events {{
    worker_connections  1024;
}}

http {{
    include       mime.types;
    default_type  application/octet-stream;

    log_format  main  '$remote_addr - $remote_user [$time_local] "$request" '
                      '$status $body_bytes_sent "$http_referer" '
                      '"$http_user_agent" "$http_x_forwarded_for"';

    include       conf.d/*.conf;

    map $http_upgrade $connection_upgrade {{
        default     "upgrade";
    }}

    server {{
        listen        127.0.0.1:{port} default_server;
        access_log    {root}/var/log/nginx/access.log main;

        client_header_timeout 60;
        client_body_timeout   60;
        keepalive_timeout     60;
        gzip                  off;

        # Include the Elastic Beanstalk generated locations
        include conf.d/elasticbeanstalk/*.conf;
    }}
}}
"""
# The platform's own location block (conf.d/elasticbeanstalk/00_application.conf).
APPLICATION_CONF = """\
location / {{
    proxy_pass          http://127.0.0.1:{upstream};
    proxy_http_version  1.1;

    proxy_set_header    Connection          $connection_upgrade;
    proxy_set_header    Upgrade             $http_upgrade;
    proxy_set_header    Host                $host;
    proxy_set_header    X-Real-IP           $remote_addr;
    proxy_set_header    X-Forwarded-For     $proxy_add_x_forwarded_for;
}}
"""


def missing() -> str | None:
    """Why these tests cannot run here, if they cannot."""
    if not NGINX_BIN.exists():
        return f"{NGINX_BIN} is not installed (Debian: nginx-light)"
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "root and unshare are needed to give nginx a private, empty /var/cache"
    return None


@pytest.fixture(autouse=True)
def nginx_can_run() -> None:
    """Skip where nginx cannot run; with REQUIRE_NGINX=1 (CI), fail instead."""
    reason = missing()
    if reason and os.environ.get("REQUIRE_NGINX") == "1":
        pytest.fail(f"REQUIRE_NGINX=1 but {reason}")
    if reason:
        pytest.skip(reason)


def lay_out_instance(root: Path, port: int, upstream: int) -> Path:
    """/etc/nginx as the platform has it, with the project's files copied in."""
    etc = root / "etc" / "nginx"
    (etc / "conf.d" / "elasticbeanstalk").mkdir(parents=True)
    (root / "var" / "log" / "nginx").mkdir(parents=True)
    (root / "run").mkdir()
    shutil.copy(Path("/etc/nginx/mime.types"), etc / "mime.types")
    (etc / "nginx.conf").write_text(NGINX_CONF.format(root=root, port=port))
    (etc / "conf.d" / "elasticbeanstalk" / "00_application.conf").write_text(
        APPLICATION_CONF.format(upstream=upstream))
    for conf in sorted((PLATFORM / "nginx" / "conf.d").rglob("*.conf")):
        shutil.copyfile(conf, etc / "conf.d" / conf.relative_to(PLATFORM / "nginx" / "conf.d"))
    return etc


def in_platform_namespace(script: str) -> list[str]:
    """Run script with an empty /var/cache of its own, as on a new instance."""
    return ["unshare", "--mount", "--propagation", "private", "bash", "-c",
            "set -e; mount -t tmpfs platform-var-cache /var/cache; " + script]


def nginx_test(etc: Path, with_hook: bool) -> subprocess.CompletedProcess[str]:
    hook = f"bash {HOOK}; " if with_hook else ""
    return subprocess.run(in_platform_namespace(  # nosec B603 B607
        f"{hook}exec {NGINX_BIN} -t -p {etc}/ -c nginx.conf"),
        capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def instance(tmp_path: Path) -> Path:
    return lay_out_instance(tmp_path / "root", free_port(), free_port())


def test_nginx_cannot_start_without_the_cache_parent_the_package_lacks(instance: Path) -> None:
    done = nginx_test(instance, with_hook=False)
    assert done.returncode != 0
    assert 'mkdir() "/var/cache/nginx/redirects" failed' in done.stderr


def test_the_prebuild_hook_makes_the_configuration_valid(instance: Path) -> None:
    done = nginx_test(instance, with_hook=True)
    assert done.returncode == 0, done.stderr
    assert "syntax is ok" in done.stderr and "test is successful" in done.stderr


@pytest.fixture
def platform_nginx(tmp_path: Path) -> Iterator[tuple[str, GunicornServer]]:
    # VISITS=off: a counted redirect is never cached (tests/test_visits_nginx.py).
    with nginx_in_front(tmp_path, VISITS="off") as (url, app):
        yield url, app


@contextlib.contextmanager
def nginx_in_front(tmp_path: Path, **env: str) -> Iterator[tuple[str, GunicornServer]]:
    """The app under gunicorn behind the platform's nginx with the project's files."""
    with GunicornServer(tmp_path / "data", workers=1,
                        env={"TRUSTED_PROXY_HOPS": "2", **env}) as app:
        port = free_port()
        etc = lay_out_instance(tmp_path / "root", port, app.port)
        log = open(tmp_path / "nginx.out", "wb")
        proc = spawn(in_platform_namespace(
            f"bash {HOOK} >/dev/null; exec {NGINX_BIN} -p {etc}/ -c nginx.conf "
            "-g 'daemon off;'"), stdout=log)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_serving(url, proc)
            yield url, app
        finally:
            stop(proc, NGINX)
            log.close()


def wait_until_serving(url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        assert proc.poll() is None, "nginx exited at start"
        try:
            requests.get(url + "/healthz", timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.05)
    raise AssertionError("nginx did not answer")


def test_a_redirect_is_served_and_cached_per_scheme_the_load_balancer_reports(
        platform_nginx: tuple[str, GunicornServer]) -> None:
    url, app = platform_nginx
    created = requests.post(f"{app.url}/api/links", json={"url": "https://example.com/x"},
                            timeout=5)
    code = created.json()["code"]

    def follow(proto: str) -> requests.Response:
        return requests.get(f"{url}/{code}", headers={"X-Forwarded-Proto": proto},
                            allow_redirects=False, timeout=5)

    first, again = follow("https"), follow("https")
    assert first.status_code == again.status_code == 302
    assert first.headers["Location"] == "https://example.com/x"
    assert (first.headers["X-Cache"], again.headers["X-Cache"]) == ("MISS", "HIT")
    assert "max-age=" in again.headers["Strict-Transport-Security"]
    plain = follow("http")
    assert plain.headers["X-Cache"] == "MISS", "an http visitor got the https entry"
    assert "Strict-Transport-Security" not in plain.headers
    assert follow("http").headers["X-Cache"] == "HIT"


def test_neither_responses_nor_nginx_error_pages_name_the_nginx_version(
        platform_nginx: tuple[str, GunicornServer]) -> None:
    url, _ = platform_nginx
    assert requests.get(f"{url}/healthz", timeout=5).headers["Server"] == "nginx"
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"NOT A REQUEST\r\n\r\n")  # nginx answers this one itself
        answer = sock.recv(65536).decode("latin-1")
    assert answer.startswith("HTTP/1.1 400")
    assert "\r\nServer: nginx\r\n" in answer and "nginx/" not in answer
