"""A visitor reports a link from its 410 page in Chromium, at desktop and phone widths,
with axe clean on the report form, its error and the thank-you page."""
from __future__ import annotations

from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, expect

from linkstore import open_url
from linkstore.reports import open_reports
from tests.browser.actions import axe_findings, serious_findings
from tests.browser.conftest import DESKTOP, PHONE, PageProblems, new_context
from tests.servers import GunicornServer

WIDTHS = {"desktop": DESKTOP, "phone-360px": PHONE}


def deleted_link(server: GunicornServer, code: str) -> None:
    """A link its creator deleted: it answers 410."""
    made = requests.post(f"{server.url}/api/links", timeout=30,
                         json={"url": "https://example.com/was-here", "code": code})
    assert made.status_code == 201, made.text
    gone = requests.delete(f"{server.url}/api/links/{code}", timeout=30,
                           headers={"X-Manage-Token": made.json()["manage_token"]})
    assert gone.status_code == 200


@pytest.mark.parametrize("width", WIDTHS)
def test_a_visitor_reports_a_link_from_its_410_page(browser: Browser, app_server: GunicornServer,
                                                    axe_source: str, width: str) -> None:
    code = f"reported-{width}"
    deleted_link(app_server, code)
    viewport = WIDTHS[width]
    context = new_context(browser, app_server, viewport=viewport)
    page = context.new_page()
    seen = PageProblems()
    page.on("console", seen.on_console)
    page.on("pageerror", seen.on_page_error)
    findings: dict[str, list[dict[str, Any]]] = {}
    try:
        page.goto(f"/{code}")
        expect(page.get_by_role("heading", level=1)).to_have_text("This link no longer works")
        page.get_by_role("link", name="Report this link").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Report a link")
        findings["form"] = axe_findings(page, axe_source)

        page.get_by_role("button", name="Send the report").click()  # no reason chosen
        expect(page.get_by_role("alert")).to_contain_text("Choose why you are reporting")
        expect(page.get_by_role("radio").first).to_be_focused()
        findings["form, error"] = axe_findings(page, axe_source)

        page.get_by_role("radio", name="Spam: unwanted advertising, sent in bulk").check()
        page.get_by_role("textbox", name="Details").fill("Arrived in 30 emails today.")
        page.get_by_role("button", name="Send the report").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Thank you for your report")
        findings["thanks"] = axe_findings(page, axe_source)
        width_used = page.evaluate("document.documentElement.scrollWidth")
    finally:
        context.close()

    report = serious_findings(findings)
    assert not report, f"axe found serious problems at {width}:\n{report}"
    assert width_used <= viewport["width"]
    assert not seen.problems, "\n".join(seen.problems)
    links = open_url(app_server.urls_file.as_uri())
    [stored] = open_reports(links).reports(code)
    assert (stored.reason, stored.details) == ("spam", "Arrived in 30 emails today.")
