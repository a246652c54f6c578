"""Browser fixtures: Debian's Chromium driven by Playwright, against the app under real
gunicorn on loopback, and a small target site on loopback that records its visitors.

Without a browser the tests skip and say why; with REQUIRE_BROWSER=1 (CI) they fail.
Playwright cannot download its own browser here, so it launches CHROMIUM_PATH. Chromium
is stopped like every other server (ops.processes.stop), so none of its processes
outlives the run.
"""
from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ops import processes
from tests.servers import REPO, GunicornServer, unavailable

CHROMIUM_PATH = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
AXE_PATH = REPO / "node_modules" / "axe-core" / "axe.min.js"
OUTPUT_DIR = REPO / "test-output"
MAX_UPLOAD_MB = 1
VISITS_FLUSH_SECONDS = 1  # a visit shows on the statistics within a second or two
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 360, "height": 740}

try:
    from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Playwright
    from playwright.sync_api import sync_playwright
except ImportError as exc:  # pragma: no cover - depends on the machine
    PLAYWRIGHT_MISSING: str | None = f"Playwright for Python is not installed ({exc})"
else:
    PLAYWRIGHT_MISSING = None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.browser)


def browser_missing() -> str | None:
    if PLAYWRIGHT_MISSING:
        return PLAYWRIGHT_MISSING
    found = shutil.which(CHROMIUM_PATH)
    if not found:
        return (f"no Chromium at {CHROMIUM_PATH} (install it with `apt-get install chromium` "
                "or set CHROMIUM_PATH)")
    return None


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    reason = browser_missing()
    if reason:
        unavailable("browser", reason)
    manager = sync_playwright().start()
    try:
        yield manager
    finally:
        manager.stop()


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Chromium, which Playwright starts as the leader of a process group of its own
    (with its zygotes, renderers and GPU process in it). Closed at the end, then stopped:
    whatever close() left behind is killed."""
    before = set(processes.group_leaders_below(os.getpid()))
    chromium = playwright.chromium.launch(executable_path=CHROMIUM_PATH, headless=True,
                                          args=CHROMIUM_ARGS)
    started = set(processes.group_leaders_below(os.getpid())) - before
    if len(started) != 1:
        chromium.close()
        pytest.fail(f"expected Chromium to lead one new process group, found {started}")
    [leader] = started
    try:
        yield chromium
    finally:
        processes.stop(leader, graceful=(processes.Graceful(chromium.close, 15.0),))


@pytest.fixture(scope="session")
def axe_source() -> str:
    """axe-core from node_modules (`npm ci`), pinned in package-lock.json."""
    if not AXE_PATH.exists():
        unavailable("browser", f"{AXE_PATH.relative_to(REPO)} is missing; run `npm ci` at the "
                    "repo root")
    return AXE_PATH.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    """One gunicorn for the whole browser suite, with a 1 MB upload limit, counting
    visits every second.

    Tests share it and use short names of their own; each gets a fresh browser context,
    so "this browser's links" start empty for every test.
    """
    with GunicornServer(tmp_path_factory.mktemp("browser") / "data", workers=2,
                        env={"MAX_UPLOAD_MB": str(MAX_UPLOAD_MB),
                             "VISITS_FLUSH_SECONDS": str(VISITS_FLUSH_SECONDS)}) as server:
        yield server


class TargetSite:
    """A site on loopback that short links point to; it records every path it serves."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                hits.append(self.path)
                body = (b"<!doctype html><html lang='en'><title>Target page</title>"
                        b"<h1>You reached the target</h1></html>")
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output clean; hits are recorded above

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture(scope="session")
def target_site() -> Iterator[TargetSite]:
    site = TargetSite()
    site.thread.start()
    yield site
    site.httpd.shutdown()
    site.httpd.server_close()


class PageProblems:
    """Script errors and CSP violations seen by a page; a test fails if any appear."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            self.problems.append(f"CSP violation: {message.text}")

    def on_page_error(self, error: Exception) -> None:
        self.problems.append(f"uncaught script error: {error}")


def new_context(browser: Browser, server: GunicornServer, **options: Any) -> BrowserContext:
    context = browser.new_context(base_url=server.url, viewport=options.pop("viewport", DESKTOP),
                                  **options)
    context.set_default_timeout(10_000)
    return context


@pytest.fixture
def context(browser: Browser, app_server: GunicornServer) -> Iterator[BrowserContext]:
    """A fresh browser profile (no cookies) that may use the clipboard on the app's origin."""
    ctx = new_context(browser, app_server)
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=app_server.url)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    """A page of the app; the test fails if it logs a CSP violation or a script error."""
    tab = context.new_page()
    seen = PageProblems()
    tab.on("console", seen.on_console)
    tab.on("pageerror", seen.on_page_error)
    yield tab
    assert not seen.problems, "\n".join(seen.problems)


def save_screenshot(page: Page, name: str) -> Path:
    """A full-page PNG under test-output/ (CI uploads the folder as an artifact)."""
    OUTPUT_DIR.mkdir(exist_ok=True)
    path = OUTPUT_DIR / name
    page.screenshot(path=str(path), full_page=True, animations="disabled")
    return path
