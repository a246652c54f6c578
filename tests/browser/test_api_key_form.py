"""With ANONYMOUS_CREATE=off the form asks for an API key: a person without one is told
where to get one, a person with one makes a link; axe clean at desktop and 360 px."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from linkstore import new_api_key, open_url
from linkstore.keys import open_keys
from tests.browser.actions import RESULT_HEADING, axe_findings, error_for, serious_findings
from tests.browser.conftest import DESKTOP, PHONE, new_context
from tests.servers import GunicornServer

WIDTHS = {"desktop": DESKTOP, "phone-360px": PHONE}


@pytest.fixture(scope="module")
def members_only(tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[GunicornServer, str]]:
    """A site where only key holders make links, and a key of it."""
    with GunicornServer(tmp_path_factory.mktemp("members") / "data", workers=1,
                        env={"ANONYMOUS_CREATE": "off"}) as server:
        links = open_url(server.urls_file.as_uri())
        key, record = new_api_key("browser")
        open_keys(links).add(record)
        yield server, key


@pytest.mark.parametrize("width", WIDTHS)
def test_the_form_asks_for_an_api_key_and_takes_a_good_one(
        browser: Browser, members_only: tuple[GunicornServer, str], axe_source: str,
        width: str) -> None:
    server, key = members_only
    context = new_context(browser, server, viewport=WIDTHS[width])
    page = context.new_page()
    findings: dict[str, list[dict[str, Any]]] = {}
    try:
        page.goto("/")
        expect(page.locator(".lede")).to_contain_text("You need an API key")
        findings["home"] = axe_findings(page, axe_source)
        page.fill("#url", "https://example.com/members")
        page.click("#url-form button[type=submit]")
        assert "Its operator gives them out" in error_for(page, "url-api-key")
        expect(page.locator("#url-api-key")).to_be_focused()
        findings["home, no key"] = axe_findings(page, axe_source)
        page.fill("#url-api-key", key)
        page.click("#url-form button[type=submit]")
        expect(page.get_by_role("heading", level=1)).to_have_text(RESULT_HEADING)
        width_used = page.evaluate("document.documentElement.scrollWidth")
    finally:
        context.close()
    report = serious_findings(findings)
    assert not report, f"axe found serious problems at {width}:\n{report}"
    assert width_used <= WIDTHS[width]["width"]
