"""Reports under real gunicorn on both backends: a visitor reports a link from its page
(with the form's CSRF token, as a browser without script would), the report is stored
with nothing that says who sent it, refused with a message when it is wrong, limited
per client, and listed by `python -m ops.links reports` with the link's state."""
from __future__ import annotations

import json
import re

import pytest
import requests

from tests.servers import GunicornServer, Site, create_link
from tests.opslinks import links_command

DETAILS = "It asks for my bank password.\nSeen in a text message."


def report(server: GunicornServer, code: str, browser: requests.Session | None = None,
           **fields: str) -> requests.Response:
    """Open the report page of code and send its form with fields."""
    browser = browser or requests.Session()
    page = browser.get(f"{server.url}/report/{code}", timeout=30)
    assert page.status_code == 200, page.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    return browser.post(f"{server.url}/report/{code}", data={"csrf_token": token.group(1),
                                                             **fields},
                        timeout=30, allow_redirects=False)


def test_a_report_is_stored_and_listed_with_the_link_s_state(site: Site) -> None:
    with site.server() as server:
        create_link(server, "phishy")
        sent = report(server, "phishy", reason="phishing", details=DETAILS)
        assert sent.status_code == 303
        thanks = requests.get(server.url + sent.headers["Location"], timeout=30)
        assert thanks.status_code == 200 and "Thank you for your report" in thanks.text
        assert report(server, "phishy", reason="spam").status_code == 303
    listed = links_command("reports", "--json", env=site.environment())
    assert listed.returncode == 0, listed.stderr
    found = json.loads(listed.stdout)
    assert [(r["code"], r["reason"], r["details"], r["state"]) for r in found] == [
        ("phishy", "spam", "", "active"), ("phishy", "phishing", DETAILS, "active")]

    links = site.links()
    try:
        links.disable("phishy", "phishing", by="test")
    finally:
        links.close()
    lines = links_command("reports", "--code", "phishy", env=site.environment()).stdout
    assert lines.splitlines()[0].endswith("/phishy  spam  [link disabled: phishing]")
    assert "    It asks for my bank password. Seen in a text message." in lines.splitlines()


def test_nothing_that_identifies_the_reporter_is_stored(site: Site) -> None:
    agent = "ReporterBrowser/9.9 (unique-agent-7f3a)"
    with site.server() as server:
        create_link(server, "reported")
        browser = requests.Session()
        browser.headers.update({"User-Agent": agent, "X-Forwarded-For": "203.0.113.77"})
        assert report(server, "reported", browser, reason="malware").status_code == 303
    stored = site.stored()
    assert b"malware" in stored
    assert agent.encode() not in stored and b"unique-agent-7f3a" not in stored
    assert b"203.0.113.77" not in stored


@pytest.mark.parametrize("fields, message", [
    ({}, "Choose why you are reporting this link"),
    ({"reason": "boring"}, "Choose why you are reporting this link"),
    ({"reason": "spam", "details": "x" * 1001}, "the limit is 1,000"),
    ({"reason": "spam", "details": "bad \x00 byte"}, "control characters"),
])
def test_a_wrong_report_is_a_400_saying_what_to_change_and_stores_nothing(
        site: Site, fields: dict[str, str], message: str) -> None:
    with site.server() as server:
        create_link(server, "fine")
        refused = report(server, "fine", None, **fields)
        assert refused.status_code == 400
        assert message in refused.text and 'role="alert"' in refused.text
        if "details" in fields and "\x00" not in fields["details"]:
            assert fields["details"] in refused.text  # kept, to shorten
    assert links_command("reports", env=site.environment()).stdout.strip() == "no reports"


def test_a_report_needs_the_form_s_csrf_token(site: Site) -> None:
    with site.server() as server:
        create_link(server, "forged")
        forged = requests.post(f"{server.url}/report/forged", data={"reason": "spam"},
                               timeout=30)
        assert forged.status_code == 400 and "reload the page" in forged.text
    assert links_command("reports", env=site.environment()).stdout.strip() == "no reports"


def test_an_unknown_code_has_nothing_to_report(site: Site) -> None:
    with site.server() as server:
        page = requests.get(f"{server.url}/report/no-such-link", timeout=30)
        assert page.status_code == 404 and "We can't find that link" in page.text
        sent = requests.post(f"{server.url}/report/no-such-link", data={"reason": "spam"},
                             timeout=30)
        assert sent.status_code in (400, 404)  # the CSRF check may come first


def test_reports_are_limited_per_client(site: Site) -> None:
    with GunicornServer(site.data_dir, workers=1,
                        env=site.environment() | {"REPORT_RATE_LIMIT": "2/minute"}) as server:
        create_link(server, "flooded")
        browser = requests.Session()
        answers = [report(server, "flooded", browser, reason="spam") for _ in range(3)]
        assert [a.status_code for a in answers] == [303, 303, 429]
        assert "sent many reports" in answers[2].text and answers[2].headers["Retry-After"]
    listed = links_command("reports", "--json", env=site.environment())
    assert len(json.loads(listed.stdout)) == 2
