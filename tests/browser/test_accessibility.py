"""axe-core on every page and state, at desktop and phone widths and in the dark scheme;
the screenshots for the README and the CI artifact are taken on the way."""
from __future__ import annotations

from typing import Any, Literal

import pytest
from playwright.sync_api import Browser, expect

from tests.browser.actions import axe_findings, error_for, serious_findings, shorten
from tests.browser.conftest import (DESKTOP, PHONE, PageProblems, TargetSite, new_context,
                                    save_screenshot)
from tests.helpers import CHROME_UA
from tests.servers import GunicornServer

Scheme = Literal["light", "dark"]
LAYOUTS: dict[str, tuple[dict[str, int], Scheme, str]] = {
    "desktop": (DESKTOP, "light", ""),
    "phone-360px": (PHONE, "light", "-360"),
    "desktop-dark": (DESKTOP, "dark", "-dark"),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_page_passes_axe_and_fits_the_screen(browser: Browser, app_server: GunicornServer,
                                                   target_site: TargetSite, axe_source: str,
                                                   layout: str) -> None:
    viewport, scheme, suffix = LAYOUTS[layout]
    # A person's User-Agent: headless Chromium's counts as a bot, which a limited link
    # does not serve (it gets the "open this link in a browser" page instead).
    context = new_context(browser, app_server, viewport=viewport, color_scheme=scheme,
                          user_agent=CHROME_UA)
    page = context.new_page()
    seen = PageProblems()
    page.on("console", seen.on_console)
    page.on("pageerror", seen.on_page_error)
    findings: dict[str, list[dict[str, Any]]] = {}
    overflow: dict[str, int] = {}

    def check(state: str) -> None:
        page.wait_for_load_state()  # a click that submits does not wait for the new page
        findings[state] = axe_findings(page, axe_source)
        width = page.evaluate("document.documentElement.scrollWidth")
        if width > viewport["width"]:
            overflow[state] = width

    try:
        page.goto("/")
        check("home, empty")
        page.fill("#url", "ftp://example.com/file")
        page.click("#url-form button[type=submit]")
        assert "Only http:// and https://" in error_for(page, "url")
        check("home, URL error")
        page.goto("/")
        page.click("#file-form button[type=submit]")  # no file chosen
        assert "Choose a file" in error_for(page, "file")
        check("home, file error")
        shorten(page, "https://example.com/2026/11/27/post-incident-report-what-we-changed",
                f"incident-report{suffix}")
        check("result")
        save_screenshot(page, f"result{suffix}.png")
        shorten(page, "https://example.com/docs/getting-started/installation#linux",
                f"install-guide{suffix}")
        page.goto("/")
        check("home, with this browser's links")
        save_screenshot(page, f"home{suffix}.png")
        page.goto("/no-such-link-here")
        check("404")
        page.goto("/")
        page.fill("#url", f"{target_site.url}/a/protected/page")
        page.fill("#url-code", f"protected{suffix}")
        page.locator("#url-form summary").click()
        page.fill("#url-max-visits", "0")
        page.fill("#url-password", "a good password")
        page.click("#url-form button[type=submit]")
        assert "whole number from 1" in error_for(page, "url-max-visits")
        check("home, more options with an error")
        page.fill("#url-max-visits", "1")
        page.fill("#url-password", "a good password")
        page.click("#url-form button[type=submit]")
        check("result with conditions")
        manage_url = page.input_value("#manage-url")
        page.goto(f"/protected{suffix}")
        check("password page")
        page.fill("#password", "a wrong password")
        page.click("#password-form button[type=submit]")
        assert "not right" in error_for(page, "password")
        check("wrong password")
        page.fill("#password", "a good password")
        page.click("#password-form button[type=submit]")
        expect(page).to_have_url(f"{target_site.url}/a/protected/page")
        page.goto(f"/protected{suffix}")
        check("410")
        save_screenshot(page, f"gone{suffix}.png")
        page.goto(manage_url)
        check("management page")
        page.get_by_role("button", name="Delete this link").click()
        check("management page, deleted")
    finally:
        context.close()

    report = serious_findings(findings)
    assert not report, f"axe found serious problems at {layout}:\n{report}"
    assert not overflow, f"pages wider than the {viewport['width']} px screen: {overflow}"
    assert not seen.problems, "\n".join(seen.problems)
