"""ops.smoke against the real app under gunicorn, against copies of it with one route
broken, and against servers that get it wrong."""
from __future__ import annotations

import http.server
import json
import shutil
import subprocess  # nosec B404 - runs python -m ops.smoke as the pipeline does
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from ops.smoke import PROBE_PREFIX, PROBE_TARGETS
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


# --- the full synthetic check --------------------------------------------------------


def app_copy(tmp_path: Path, appended: str = "", replace: tuple[str, str] = ("", "")) -> Path:
    """The app's files in tmp_path/app, with code appended to application.py or one
    piece of it replaced: a version with one route broken, as a bad commit would."""
    app = tmp_path / "app"
    app.mkdir()
    for name in ("linkstore", "templates", "static"):
        shutil.copytree(REPO / name, app / name, ignore=shutil.ignore_patterns("__pycache__"))
    for module in REPO.glob("*.py"):  # the modules application.py imports
        shutil.copy2(module, app / module.name)
    source = (REPO / "application.py").read_text()
    old, new = replace
    assert old in source, f"application.py no longer contains {old!r}"
    (app / "application.py").write_text(source.replace(old, new) + appended)
    return app


BREAK_THE_FORM = """
@application.before_request
def _break_the_form() -> None:
    from flask import request
    if request.method == "POST" and request.path == "/your-url":
        raise RuntimeError("the form's POST is broken")
"""


def test_the_full_check_passes_against_the_real_app(server: GunicornServer) -> None:
    done = smoke(server.url, "--full")
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    assert all(line.startswith("ok    ") for line in lines[:-1])
    for expected in ("GET / 200 with a CSRF token", "POST /your-url (url form) 200",
                     "GET /api 200 lists", "POST /api/links 201", "POST /your-url (file form) 200",
                     "1024 bytes, identical, as an attachment", "404 page", "404 JSON"):
        assert any(expected in line for line in lines), expected
    assert lines[-1].startswith(f"full smoke test passed against {server.url}")


def test_the_full_check_leaves_three_tagged_links_and_one_small_file(
        server: GunicornServer) -> None:
    assert smoke(server.url, "--full").returncode == 0
    links = links_on_disk(server.urls_file)
    assert len(links) == 3
    assert all(code.startswith(PROBE_PREFIX) for code in links)
    assert sorted(code.rsplit("-", 1)[1] for code in links) == ["api", "file", "form"]
    urls = [record["url"] for record in links.values() if "url" in record]
    assert len(urls) == 2 and all(url.startswith(PROBE_TARGETS) for url in urls)
    uploads = list((server.data_dir / "uploads").iterdir())
    assert [path.stat().st_size for path in uploads] == [1024]


def test_the_full_check_fails_when_the_form_post_answers_500(tmp_path: Path) -> None:
    """Class C of docs/deploying.md: /healthz and the API work, the form does not."""
    with GunicornServer(tmp_path / "data", workers=1,
                        app_dir=app_copy(tmp_path, appended=BREAK_THE_FORM)) as broken:
        assert smoke(broken.url).returncode == 0, "the quick check does not post the form"
        done = smoke(broken.url, "--full")
    assert done.returncode == 1
    assert "FAIL  POST /your-url (url form): expected HTTP 200, got 500" in done.stdout


def test_the_full_check_fails_when_an_upload_is_served_inline(tmp_path: Path) -> None:
    """An upload shown in the browser could run script on the site's origin."""
    app = app_copy(tmp_path, replace=("as_attachment=suffix not in INLINE_IMAGE_TYPES",
                                      "as_attachment=False"))
    with GunicornServer(tmp_path / "data", workers=1, app_dir=app) as unsafe:
        done = smoke(unsafe.url, "--full")
    assert done.returncode == 1
    assert "an upload must be an attachment with nosniff" in done.stdout


def test_the_full_check_fails_without_the_form_csrf_token(tmp_path: Path) -> None:
    """A page whose form lost its CSRF field cannot be submitted by any browser."""
    app = app_copy(tmp_path)
    home = app / "templates" / "home.html"
    home.write_text(home.read_text().replace(
        '<input type="hidden" name="csrf_token" value="{{ csrf_token() }}">', ""))
    with GunicornServer(tmp_path / "data", workers=1, app_dir=app) as tokenless:
        done = smoke(tokenless.url, "--full")
    assert done.returncode == 1
    assert "FAIL  GET /: the page has no form with a CSRF token" in done.stdout


def test_the_full_check_and_the_probe_code_cannot_be_combined() -> None:
    done = smoke("http://127.0.0.1:1", "--full", "--code", "probe")
    assert done.returncode == 2
    assert "not allowed with argument" in done.stderr
