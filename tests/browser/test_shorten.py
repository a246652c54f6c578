"""A person shortens links in Chromium, follows them, copies them, and finds them again."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import Browser, BrowserContext, Error, Page, expect

from tests.browser.actions import RESULT_HEADING, shorten
from tests.browser.conftest import TargetSite, new_context
from tests.servers import GunicornServer


def follow_open_link(page: Page, target: TargetSite, path: str) -> None:
    page.get_by_role("link", name="Open the short link").click()
    expect(page).to_have_url(f"{target.url}{path}")
    expect(page.get_by_role("heading", level=1)).to_have_text("You reached the target")
    assert path in target.hits


def test_a_chosen_name_gives_that_short_link_and_it_lands_on_the_target(
        page: Page, app_server: GunicornServer, target_site: TargetSite) -> None:
    short = shorten(page, f"{target_site.url}/chosen?from=browser", "chosen-name")
    assert short == f"{app_server.url}/chosen-name"
    qr_code = page.locator(".qr-code svg")
    expect(qr_code).to_have_attribute("viewBox", re.compile(r"0 0 \d+ \d+"))  # scales, no clip
    assert (qr_code.bounding_box() or {"width": 0})["width"] >= 120  # big enough to scan
    follow_open_link(page, target_site, "/chosen?from=browser")


def test_a_blank_name_gives_a_random_short_link_that_lands_on_the_target(
        page: Page, app_server: GunicornServer, target_site: TargetSite) -> None:
    short = shorten(page, f"{target_site.url}/random-one")
    assert re.fullmatch(re.escape(app_server.url) + r"/[A-Za-z0-9]{7}", short), short
    follow_open_link(page, target_site, "/random-one")


def test_the_copy_button_puts_the_short_url_on_the_clipboard(page: Page) -> None:
    short = shorten(page, "https://example.com/copy-me", "copy-me")
    copy = page.locator(".result button.copy")
    copy.click()
    expect(copy).to_have_text("Copied")  # visible feedback on the button
    expect(page.locator(".copied")).to_have_text("Copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == short
    expect(copy).to_have_text("Copy", timeout=5_000)  # and it resets itself


def test_this_browsers_links_are_listed_newest_first_and_survive_a_reload(
        page: Page, app_server: GunicornServer) -> None:
    shorten(page, "https://example.com/first-of-two", "listed-first")
    shorten(page, "https://example.com/second-of-two", "listed-second")
    page.goto("/")
    for _ in range(2):
        items = page.locator(".links li")
        expect(items).to_have_count(2)
        newest, oldest = items.nth(0).locator("a.short"), items.nth(1).locator("a.short")
        expect(newest).to_have_attribute("href", f"{app_server.url}/listed-second")
        expect(newest).to_have_text(f"127.0.0.1:{app_server.port}/listed-second")
        expect(items.nth(0).locator(".target")).to_have_text("https://example.com/second-of-two")
        expect(oldest).to_have_attribute("href", f"{app_server.url}/listed-first")
        page.reload()
    items.nth(1).locator("button.copy").click()
    assert page.evaluate("navigator.clipboard.readText()") == f"{app_server.url}/listed-first"


def test_a_long_target_is_shown_truncated_in_the_list(page: Page) -> None:
    long_url = "https://example.com/" + "a-very-long-path-segment/" * 8
    shorten(page, long_url, "long-target")
    page.goto("/")
    target = page.locator(".links li .target")
    assert target.get_attribute("title") == long_url  # the whole target on hover
    shown = target.inner_text()
    assert shown.endswith("...") and len(shown) <= 60


def test_the_whole_flow_works_with_the_keyboard_alone(
        page: Page, app_server: GunicornServer, target_site: TargetSite) -> None:
    page.goto("/")
    assert page.evaluate("document.activeElement.id") == "url"  # focus starts in the field
    page.keyboard.type(f"{target_site.url}/by-keyboard")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "url-code"
    page.keyboard.type("by-keyboard")
    page.keyboard.press("Enter")  # Enter submits
    expect(page.get_by_role("heading", level=1)).to_have_text(RESULT_HEADING)

    tab_to(page, ".result button.copy")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "the focused button shows no focus indicator"
    page.keyboard.press("Enter")
    expect(page.locator(".result button.copy")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == f"{app_server.url}/by-keyboard"

    tab_to(page, "a.open")
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{target_site.url}/by-keyboard")
    assert "/by-keyboard" in target_site.hits


def tab_to(page: Page, selector: str, presses: int = 15) -> None:
    """Press Tab until the element matching selector has the focus."""
    expect(page.locator(selector)).to_be_visible()  # the copy button shows once app.js ran
    for _ in range(presses):
        page.keyboard.press("Tab")
        if page.evaluate("s => document.activeElement.matches(s)", selector):
            return
    pytest.fail(f"{selector} is not reachable with {presses} presses of Tab")


def test_the_page_works_without_javascript(browser: Browser, app_server: GunicornServer,
                                           target_site: TargetSite) -> None:
    context = new_context(browser, app_server, java_script_enabled=False)
    try:
        page = context.new_page()
        short = shorten(page, f"{target_site.url}/no-script", "no-script")
        assert short == f"{app_server.url}/no-script"
        copy_buttons = page.locator("button.copy")
        expect(copy_buttons).to_have_count(2)  # the short URL's and the management link's
        for button in copy_buttons.all():
            expect(button).to_be_hidden()  # it could not work without script
        follow_open_link(page, target_site, "/no-script")
    finally:
        context.close()


def test_an_inline_script_is_refused_by_the_content_security_policy(
        context: BrowserContext) -> None:
    page = context.new_page()
    response = page.goto("/")
    assert response is not None
    assert "script-src 'self'" in response.headers["content-security-policy"]
    with pytest.raises(Error, match="Content Security Policy"):
        page.add_script_tag(content="window.injected = true")
    assert page.evaluate("window.injected") is None
