"""A person makes links that end or ask for a password through "More options" (with and
without script), visits them, and deletes one from its management page."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import requests
from playwright.sync_api import Browser, Page, expect

from tests.browser.actions import RESULT_HEADING
from tests.browser.conftest import TargetSite, new_context
from tests.servers import GunicornServer

PASSWORD = "correct horse battery"
JUNE = f"{datetime.now(timezone.utc).year + 2}-06-01"  # summer time in Paris: UTC+2


def shorten_with_options(page: Page, url: str, code: str, expires_at: str = "",
                         max_visits: str = "", password: str = "") -> None:
    page.goto("/")
    page.fill("#url", url)
    page.fill("#url-code", code)
    page.locator("#url-form summary").click()  # "More options" opens in place
    expect(page.locator("#url-expires")).to_be_visible()
    page.fill("#url-expires", expires_at)
    page.fill("#url-max-visits", max_visits)
    page.fill("#url-password", password)
    page.click("#url-form button[type=submit]")
    expect(page.get_by_role("heading", level=1)).to_have_text(RESULT_HEADING)


def test_an_expiry_is_read_in_the_browser_s_time_zone(browser: Browser,
                                                      app_server: GunicornServer) -> None:
    context = new_context(browser, app_server, timezone_id="Europe/Paris")
    try:
        page = context.new_page()
        shorten_with_options(page, "https://example.com/summer", "paris-time",
                             expires_at=f"{JUNE}T12:30", max_visits="5")
        conditions = page.locator(".conditions")
        expect(conditions).to_contain_text(f"Stops working at {JUNE} 10:30:00 UTC.")
        expect(conditions).to_contain_text("Stops after 5 visits.")
    finally:
        context.close()


def test_more_options_work_without_javascript_and_read_the_time_as_utc(
        browser: Browser, app_server: GunicornServer) -> None:
    context = new_context(browser, app_server, java_script_enabled=False,
                          timezone_id="Europe/Paris")
    try:
        page = context.new_page()
        shorten_with_options(page, "https://example.com/no-script-expiry", "utc-time",
                             expires_at=f"{JUNE}T12:30", password=PASSWORD)
        conditions = page.locator(".conditions")
        expect(conditions).to_contain_text(f"Stops working at {JUNE} 12:30:00 UTC.")
        expect(conditions).to_contain_text("Asks visitors for the password")
    finally:
        context.close()


def test_a_refused_option_opens_more_options_at_the_field_in_error(page: Page) -> None:
    page.goto("/")
    page.fill("#url", "https://example.com/too-short")
    page.locator("#url-form summary").click()
    page.fill("#url-password", "short")
    page.click("#url-form button[type=submit]")
    expect(page.locator("#url-form details")).to_have_attribute("open", "")
    expect(page.locator("#url-password-error")).to_contain_text("8 to 256 characters")
    expect(page.locator("#url-password")).to_be_focused()
    expect(page.locator("#url-password")).to_have_value("")  # never shown again


def test_a_protected_link_asks_a_wrong_then_the_right_password(
        page: Page, target_site: TargetSite) -> None:
    shorten_with_options(page, f"{target_site.url}/behind-a-password", "locked-link",
                         password=PASSWORD)
    short = page.input_value("#short-url")
    page.goto(short)
    expect(page.get_by_role("heading", level=1)).to_have_text("This link asks for a password")
    expect(page.locator("#password")).to_be_focused()
    page.fill("#password", "not the password")
    page.click("#password-form button[type=submit]")
    expect(page.locator("#password-error")).to_contain_text("That password is not right")
    expect(page.locator("#password")).to_have_attribute("aria-invalid", "true")
    assert "/behind-a-password" not in target_site.hits
    page.fill("#password", PASSWORD)
    page.click("#password-form button[type=submit]")
    expect(page.get_by_role("heading", level=1)).to_have_text("You reached the target")
    assert "/behind-a-password" in target_site.hits


def test_an_expired_link_shows_its_410_page(page: Page, app_server: GunicornServer) -> None:
    soon = (datetime.now(timezone.utc) + timedelta(seconds=2)).isoformat(timespec="seconds")
    created = requests.post(f"{app_server.url}/api/links", timeout=10, json={
        "url": "https://example.com/over", "code": "expires-soon", "expires_at": soon})
    assert created.status_code == 201
    time.sleep(3)
    response = page.goto("/expires-soon")
    assert response is not None and response.status == 410
    expect(page.get_by_role("heading", level=1)).to_have_text("This link no longer works")
    expect(page.locator(".gone-reason")).to_contain_text("This link expired on")


def test_the_creator_deletes_a_link_from_its_management_page(page: Page) -> None:
    shorten_with_options(page, "https://example.com/regret", "delete-me")
    short = page.input_value("#short-url")
    page.goto(page.input_value("#manage-url"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Manage your short link")
    expect(page.locator("#link-state")).to_have_text("Active")
    page.get_by_role("button", name="Delete this link").click()
    expect(page.get_by_role("status").filter(has_text="This link was deleted")).to_be_visible()
    expect(page.locator("#link-state")).to_have_text("Deleted")
    response = page.goto(short)
    assert response is not None and response.status == 410
    expect(page.locator(".gone-reason")).to_have_text("This link was deleted by its creator.")
