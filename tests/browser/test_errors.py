"""Input the app refuses: the message appears next to its field and the input is kept."""
from __future__ import annotations

import requests
from playwright.sync_api import Dialog, Page, expect

from tests.browser.actions import error_for
from tests.servers import GunicornServer


def submit_url_form(page: Page, url: str, code: str) -> None:
    page.goto("/")
    page.fill("#url", url)
    page.fill("#url-code", code)
    page.click("#url-form button[type=submit]")


def test_a_taken_name_is_refused_next_to_the_name_field_with_the_input_kept(
        page: Page, app_server: GunicornServer) -> None:
    created = requests.post(f"{app_server.url}/api/links", timeout=10,
                            json={"url": "https://example.com/first", "code": "taken"})
    assert created.status_code == 201
    submit_url_form(page, "https://example.com/second", "taken")
    assert "'taken' is already taken" in error_for(page, "url-code")
    expect(page.locator("#url")).to_have_value("https://example.com/second")
    expect(page.locator("#url-code")).to_have_value("taken")
    expect(page.locator("#url-code")).to_be_focused()
    expect(page).to_have_title("Error: Shorten a link · Short links")
    assert requests.get(f"{app_server.url}/api/links/taken", timeout=10).json()["url"] == (
        "https://example.com/first")


def test_a_javascript_url_is_refused_next_to_the_url_field_with_the_input_kept(
        page: Page) -> None:
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    submit_url_form(page, "javascript:alert(document.domain)", "script-link")
    assert "Only http:// and https:// links" in error_for(page, "url")
    expect(page.locator("#url")).to_have_value("javascript:alert(document.domain)")
    expect(page.locator("#url-code")).to_have_value("script-link")
    expect(page.locator("#url")).to_be_focused()
    assert page.locator("#url-code").get_attribute("aria-invalid") is None
    assert not dialogs
