"""A person follows a short link and finds the visit on the link's statistics page and
on the home page; the statistics page passes axe at 1280 px, at 360 px and in dark mode.

Headless Chromium says "HeadlessChrome" in its User-Agent, which counts as a bot, so a
browser that must count as a person sends a real Chrome User-Agent.
"""
from __future__ import annotations

import time
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

import visits
from tests.browser.actions import FAILING_IMPACTS, axe_findings, describe_findings, shorten
from tests.browser.conftest import (PageProblems, TargetSite, VISITS_FLUSH_SECONDS, new_context,
                                    save_screenshot)
from tests.browser.test_accessibility import LAYOUTS
from tests.helpers import CHROME_UA
from tests.servers import GunicornServer


def until_counted(page: Page, path: str, selector: str, text: str) -> None:
    """Reload path until selector shows text: counts arrive with the next flush."""
    deadline = time.monotonic() + 30 * VISITS_FLUSH_SECONDS
    while True:
        page.goto(path)
        if page.locator(selector).first.inner_text().strip() == text:
            return
        assert time.monotonic() < deadline, f"{selector} on {path} never showed {text!r}"
        time.sleep(VISITS_FLUSH_SECONDS / 2)


def visited_link(browser: Browser, app_server: GunicornServer, target_site: TargetSite,
                 code: str) -> None:
    """A person (a real Chrome User-Agent) shortens a link and follows it."""
    person = new_context(browser, app_server, user_agent=CHROME_UA)
    try:
        page = person.new_page()
        shorten(page, f"{target_site.url}/{code}", code)
        page.get_by_role("link", name="Open the short link").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("You reached the target")
    finally:
        person.close()


def test_a_persons_visit_shows_on_the_stats_page_and_on_the_home_page(
        browser: Browser, app_server: GunicornServer, target_site: TargetSite) -> None:
    person = new_context(browser, app_server, user_agent=CHROME_UA)
    try:
        page = person.new_page()
        shorten(page, f"{target_site.url}/counted-visit", "counted-visit")
        page.get_by_role("link", name="Open the short link").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("You reached the target")
        until_counted(page, "/counted-visit+", ".totals dd", "1")
        today = page.locator(".chart + .visually-hidden tbody tr").last
        expect(today.locator("th")).to_have_text(visits.today())
        expect(today.locator("td").first).to_have_text("1")
        expect(page.locator(".details caption").first).to_have_text("Referrers")
        page.goto("/")
        mine = page.locator(".links li", has_text="counted-visit")
        expect(mine.locator("a.visits")).to_contain_text("1 visit")
        mine.locator("a.visits").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Visits to /counted-visit")
    finally:
        person.close()


def test_headless_chromium_as_it_comes_counts_as_a_bot(
        page: Page, app_server: GunicornServer, target_site: TargetSite) -> None:
    shorten(page, f"{target_site.url}/headless", "headless-visit")
    page.get_by_role("link", name="Open the short link").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("You reached the target")
    until_counted(page, "/headless-visit+", ".totals div:last-child dd", "1")
    expect(page.locator(".totals dd").first).to_have_text("0")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_stats_page_passes_axe_and_fits_the_screen(
        browser: Browser, app_server: GunicornServer, target_site: TargetSite,
        axe_source: str, layout: str) -> None:
    viewport, scheme, suffix = LAYOUTS[layout]
    code = f"stats-page{suffix}"
    visited_link(browser, app_server, target_site, code)
    context = new_context(browser, app_server, viewport=viewport, color_scheme=scheme)
    page = context.new_page()
    seen = PageProblems()
    page.on("console", seen.on_console)
    page.on("pageerror", seen.on_page_error)
    try:
        until_counted(page, f"/{code}+", ".totals dd", "1")
        findings: list[dict[str, Any]] = [f for f in axe_findings(page, axe_source)
                                          if f["impact"] in FAILING_IMPACTS]
        width = page.evaluate("document.documentElement.scrollWidth")
        chart = page.locator(".chart svg").bounding_box()
        save_screenshot(page, f"stats{suffix}.png")
    finally:
        context.close()
    assert not findings, f"axe found serious problems at {layout}:\n{describe_findings(findings)}"
    assert width <= viewport["width"], f"{width} px wide on a {viewport['width']} px screen"
    assert chart is not None and chart["width"] >= 250, "the chart is squeezed"
    assert not seen.problems, "\n".join(seen.problems)
