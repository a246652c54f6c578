"""Files: upload one, download it through its short link, and refuse one that is too big."""
from __future__ import annotations

import os
from pathlib import Path

import requests
from playwright.sync_api import Browser, Page, Request, expect

from tests.browser.actions import RESULT_HEADING, error_for, upload
from tests.browser.conftest import MAX_UPLOAD_MB, new_context
from tests.servers import GunicornServer

TOO_BIG = int(MAX_UPLOAD_MB * 1024 * 1024 * 1.5)  # over the limit, within the request cap


def test_a_file_uploads_and_downloads_byte_for_byte_through_its_short_link(
        page: Page, app_server: GunicornServer) -> None:
    data = os.urandom(300 * 1024) + bytes(range(256))
    upload(page, "report 2026.bin", data, "the-report")
    expect(page.get_by_role("heading", level=1)).to_have_text(RESULT_HEADING)
    expect(page.locator("#short-url")).to_have_value(f"{app_server.url}/the-report")
    expect(page.locator(".target")).to_contain_text("the file report 2026.bin")
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Open the short link").click()
    download = download_info.value
    assert download.suggested_filename == "report 2026.bin"
    assert Path(download.path()).read_bytes() == data


def test_an_oversize_file_is_refused_in_the_page_before_it_is_sent(page: Page) -> None:
    posts: list[Request] = []
    page.on("request", lambda request: posts.append(request) if request.method == "POST" else None)
    upload(page, "big.bin", bytes(TOO_BIG), "too-big")
    assert f"larger than the {MAX_UPLOAD_MB} MB limit" in error_for(page, "file")
    assert page.evaluate("document.getElementById('file').files[0].name") == "big.bin"
    expect(page.locator("#file-code")).to_have_value("too-big")
    expect(page.locator("#file")).to_be_focused()
    assert not posts, "the oversize file was sent anyway"


def test_an_oversize_file_is_refused_by_the_server_when_script_is_off(
        browser: Browser, app_server: GunicornServer) -> None:
    context = new_context(browser, app_server, java_script_enabled=False)
    try:
        page = context.new_page()
        upload(page, "big.bin", bytes(TOO_BIG), "too-big-no-js")
        expect(page.get_by_role("heading", level=1)).to_have_text("Shorten a link")
        assert f"larger than the {MAX_UPLOAD_MB:g} MB limit" in error_for(page, "file")
        expect(page.locator("#file-code")).to_have_value("too-big-no-js")
        missing = requests.get(f"{app_server.url}/api/links/too-big-no-js", timeout=10)
        assert missing.status_code == 404
        kept = (app_server.data_dir / "uploads").iterdir()
        assert all(path.stat().st_size != TOO_BIG for path in kept), "the big file was kept"
    finally:
        context.close()
