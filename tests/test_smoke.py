"""ops.smoke against the real app under gunicorn, and against servers that get it wrong."""
from __future__ import annotations

import http.server
import json
import subprocess  # nosec B404 - runs python -m ops.smoke as the pipeline does
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.servers import GunicornServer, free_port, links_on_disk

REPO = Path(__file__).resolve().parent.parent


def smoke(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # nosec B603
        [sys.executable, "-m", "ops.smoke", url, "--timeout", "5", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False)


class QueryDroppingProxy(http.server.BaseHTTPRequestHandler):
    """A misconfigured front end: everything works except that redirects lose the query
    string - the kind of fault only an end-to-end check with an exact Location sees."""

    created: dict[str, Any] = {}

    def reply(self, status: int, body: dict[str, Any], **headers: str) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/healthz":
            self.reply(200, {"status": "ok", "version": "x", "links": 1})
        else:
            url = self.created.get(self.path.lstrip("/"), "")
            self.reply(302, {}, Location=url.split("?")[0])

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.created[body["code"]] = body["url"]
        self.reply(201, {"code": body["code"], "url": body["url"], "short_url": "x"})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def query_dropping_server() -> Iterator[str]:
    httpd = http.server.HTTPServer(("127.0.0.1", 0), QueryDroppingProxy)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_smoke_passes_against_the_real_app_and_leaves_its_link_on_disk(
        server: GunicornServer) -> None:
    done = smoke(server.url)
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    assert [line.split()[:3] for line in lines[:2]] == [
        ["ok", "GET", "/healthz"], ["ok", "POST", "/api/links"]]
    assert "302 Location=https://example.com/smoke/" in lines[2]
    assert lines[-1].startswith(f"smoke test passed against {server.url}")
    codes = [code for code in links_on_disk(server.urls_file) if code.startswith("smoke-")]
    assert len(codes) == 1


def test_the_probe_mode_creates_its_fixed_link_once_and_then_rechecks_it(
        server: GunicornServer) -> None:
    first, second = smoke(server.url, "--code", "probe"), smoke(server.url, "--code", "probe")
    assert first.returncode == 0 and second.returncode == 0, second.stdout
    assert "POST /api/links 201" in first.stdout
    assert "409: probe exists already" in second.stdout
    assert "GET /probe 302 Location=https://example.com/smoke/probe?q=1" in second.stdout
    assert list(links_on_disk(server.urls_file)) == ["probe"]


def test_the_probe_mode_fails_when_its_code_points_elsewhere(server: GunicornServer) -> None:
    requests.post(f"{server.url}/api/links", timeout=5,
                  json={"url": "https://example.com/other", "code": "probe"})
    done = smoke(server.url, "--code", "probe")
    assert done.returncode == 1
    assert "Location is 'https://example.com/other'" in done.stdout


def test_smoke_fails_when_the_store_cannot_be_read(server: GunicornServer) -> None:
    server.urls_file.write_text("{not json")
    done = smoke(server.url)
    assert done.returncode == 1
    assert "FAIL  GET /healthz: expected HTTP 200, got 503" in done.stdout


def test_smoke_fails_when_the_redirect_location_is_not_exact(query_dropping_server: str) -> None:
    done = smoke(query_dropping_server)
    assert done.returncode == 1
    assert "Location is 'https://example.com/smoke/" in done.stdout
    assert "expected 'https://example.com/smoke/" in done.stdout and "?q=1'" in done.stdout


def test_smoke_fails_clearly_when_nothing_listens() -> None:
    done = smoke(f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert done.stdout.startswith("FAIL  GET http://127.0.0.1:")
    assert "Connection refused" in done.stdout


def test_smoke_refuses_a_url_that_is_not_http() -> None:
    done = smoke("file:///etc/passwd")
    assert done.returncode == 1
    assert "refusing non-HTTP URL" in done.stdout
