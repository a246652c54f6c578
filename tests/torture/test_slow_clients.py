"""Slow and broken clients do not starve the others.

Clients that trickle headers a byte a second, clients that promise a large upload and
hang up halfway, 200 idle keep-alive connections and 50 connections that never say
anything, while a well-behaved client keeps creating and following links: against
gunicorn's gthread workers alone (gunicorn.conf.py says why), and behind nginx as on
Elastic Beanstalk.
"""
from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import pytest
import requests

from ops import processes
from tests.servers import GunicornServer, free_port, unavailable
from tests.torture.conftest import Record, create, resolve

SLOW_HEADER_CLIENTS = 8
TRICKLE_SECONDS = 8
IDLE_KEEPALIVE = 200
SILENT = 50
ABANDONED_UPLOADS = 20
GOOD_REQUESTS = 60


def connect(server: Front) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def trickle_headers(server: Front, stop: threading.Event) -> None:
    """Send a request's headers one byte a second (slowloris), for TRICKLE_SECONDS."""
    request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Padding: " + b"a" * 100
    with connect(server) as sock:
        for byte in request[:TRICKLE_SECONDS]:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                return
            if stop.wait(1):
                return


def abandon_upload(server: Front) -> None:
    """Promise a 5 MB body, send 10 KB of it, and hang up."""
    with connect(server) as sock:
        sock.sendall(b"POST /api/links HTTP/1.1\r\nHost: localhost\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 5000000\r\n\r\n"
                     + b'{"url": "https://example.com/' + b"a" * 10_000)


@contextmanager
def idle_keepalive_connections(server: Front, count: int) -> Iterator[int]:
    """Connections that made one request, kept alive, and then went quiet."""
    with ExitStack() as stack:
        opened = 0
        for _ in range(count):
            sock = stack.enter_context(connect(server))
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            if b" 200 " in sock.recv(4096):
                opened += 1
        yield opened


@contextmanager
def silent_connections(server: Front, count: int) -> Iterator[None]:
    with ExitStack() as stack:
        for _ in range(count):
            stack.enter_context(connect(server))
        yield


class Nginx:
    """nginx in front of the server, as on Elastic Beanstalk: it reads whole requests
    (headers with client_header_timeout, bodies buffered) before gunicorn sees them."""

    CONFIG = """
daemon off;
user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_header_timeout 10s;
    client_body_timeout 10s;
    client_max_body_size 11m;
    keepalive_timeout 30s;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""

    def __init__(self, directory: Path, upstream: int) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            unavailable("nginx", "nginx is not installed (.ci/run installs nginx-light)")
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = directory / "nginx.conf"
        config.write_text(self.CONFIG.format(dir=directory, port=self.port, upstream=upstream))
        log = directory / "stderr.log"
        with log.open("ab") as stderr:
            self.process = processes.spawn([binary, "-c", str(config)], stderr=stderr)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
                return
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"nginx did not listen within 10 s: {log.read_text(errors='replace')}")

    def __enter__(self) -> Nginx:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Master and worker alike: QUIT (finish what is in flight), TERM, then KILL."""
        processes.stop(self.process, graceful=processes.NGINX)


class Front:
    """Where the clients connect: the port and base URL of gunicorn or of nginx."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"


def barrage(front: Front, tricklers: int, silent: int) -> tuple[int, list[float]]:
    """Slow, idle, silent and abandoning clients at once, while a good client creates
    and follows links; return the idle connections kept open and the good latencies."""
    stop = threading.Event()
    threads = [threading.Thread(target=trickle_headers, args=(front, stop))
               for _ in range(tricklers)]
    latencies: list[float] = []
    try:
        for thread in threads:
            thread.start()
        with idle_keepalive_connections(front, IDLE_KEEPALIVE) as kept_alive, \
                silent_connections(front, silent):
            for _ in range(ABANDONED_UPLOADS):
                abandon_upload(front)
            time.sleep(1.5)  # every trickler is now mid-request, holding what it holds
            with requests.Session() as session:
                for n in range(GOOD_REQUESTS):
                    started = time.monotonic()
                    response = create(front.url, f"https://example.com/good/{n}",
                                      session=session, timeout=10)
                    assert response.status_code == 201, response.text
                    code, url = response.json()["code"], response.json()["url"]
                    assert resolve(front.url, code, session) == url
                    latencies.append(time.monotonic() - started)
        assert all(thread.is_alive() for thread in threads), "a slow client was cut off early"
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
    return kept_alive, sorted(latencies)


def record_latencies(record_figure: Record, latencies: list[float]) -> None:
    record_figure("create_and_follow_p50_ms", round(1000 * latencies[len(latencies) // 2], 1))
    record_figure("create_and_follow_max_ms", round(1000 * latencies[-1], 1))


def test_idle_slow_and_abandoning_clients_do_not_starve_others(
        tmp_path: Path, record_figure: Record) -> None:
    """gunicorn alone (gthread): idle keep-alive connections and abandoned uploads cost no
    thread; a trickler or a silent connection holds one thread (a silent one for up to
    5 s), so fewer of them than one worker's threads cannot starve even the worker they
    all land on. More than that is nginx's job (the next test)."""
    server = GunicornServer(tmp_path / "data", workers=3, env={"GUNICORN_KEEPALIVE": "30"})
    server.start()
    try:
        kept_alive, latencies = barrage(Front(server.port), tricklers=4, silent=3)
    finally:
        server.stop()
    assert kept_alive == IDLE_KEEPALIVE
    record_latencies(record_figure, latencies)


def test_behind_nginx_silent_and_slow_clients_do_not_starve_others(
        tmp_path: Path, record_figure: Record) -> None:
    """With nginx in front, as on Elastic Beanstalk, the whole barrage at once."""
    with GunicornServer(tmp_path / "data", workers=3) as server, \
            Nginx(tmp_path / "nginx", server.port) as nginx:
        kept_alive, latencies = barrage(Front(nginx.port), tricklers=SLOW_HEADER_CLIENTS,
                                        silent=SILENT)
    assert kept_alive == IDLE_KEEPALIVE
    record_latencies(record_figure, latencies)
