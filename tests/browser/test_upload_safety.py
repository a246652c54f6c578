"""Uploaded HTML, SVG and JavaScript never run on the app's origin, in a real Chromium.

Each scripted upload (tests/test_security.py has the list and the header checks) tries
to navigate to /pwned-...; the browser opens every short link and no such request is
ever made: the files download, or render as the image type nosniff pins them to.
"""
from __future__ import annotations

import re

import requests
from playwright.sync_api import BrowserContext, Error

from tests.servers import GunicornServer
from tests.test_security import SCRIPTED_UPLOADS


def upload_all(server: GunicornServer) -> dict[str, str]:
    """Upload every scripted file through the form; return each one's short code."""
    codes = {}
    with requests.Session() as session:
        token = re.search(r'name="csrf_token" value="([^"]+)"',
                          session.get(server.url + "/", timeout=10).text)
        assert token
        for name, content in SCRIPTED_UPLOADS.items():
            response = session.post(f"{server.url}/your-url", timeout=10,
                                    data={"csrf_token": token.group(1)},
                                    files={"file": (name, content)})
            assert response.status_code == 200, response.text[:300]
            codes[name] = session.get(f"{server.url}/api", timeout=10).json()[0]
    return codes


def test_a_browser_never_runs_an_uploaded_script(context: BrowserContext,
                                                 app_server: GunicornServer) -> None:
    """A plain page, not the `page` fixture: Chromium's own image viewer styles itself
    inline, which the uploads' "default-src 'none'" policy blocks (and logs) as it should."""
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    for name, code in upload_all(app_server).items():
        try:
            page.goto(f"/{code}", wait_until="load")
        except Error as exc:  # an attachment: Chromium downloads it instead of showing it
            assert "Download is starting" in str(exc), (name, exc)
        page.wait_for_timeout(300)
    assert [url for url in requested if "/pwned" in url] == []
