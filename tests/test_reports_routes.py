"""Where a visitor finds "Report this link": every page that shows a link it can report
(the result, 410, password and people-only pages), and the report form itself."""
from __future__ import annotations

from flask.testing import FlaskClient

from tests.helpers import PostForm

REPORT_LINK = 'href="/report/{}">Report this link</a>'


def api(client: FlaskClient, **body: object) -> None:
    made = client.post("/api/links", json={"url": "https://example.com/", **body})
    assert made.status_code == 201, made.text


def test_the_result_page_offers_to_report_the_link(post_form: PostForm) -> None:
    page = post_form(url="https://example.com/made", code="made")
    assert page.status_code == 200
    assert REPORT_LINK.format("made") in page.text


def test_every_410_page_offers_to_report_the_link(client: FlaskClient) -> None:
    api(client, code="once", max_visits=1)
    assert client.get("/once").status_code == 302
    gone = client.get("/once")
    assert gone.status_code == 410 and REPORT_LINK.format("once") in gone.text


def test_the_password_and_people_only_pages_offer_to_report_the_link(
        client: FlaskClient) -> None:
    api(client, code="locked", password="a long password")
    api(client, code="limited", max_visits=3)
    assert REPORT_LINK.format("locked") in client.get("/locked").text
    preview = client.get("/limited", headers={"User-Agent": "Slackbot-LinkExpanding 1.0"})
    assert "by people only" in preview.text and REPORT_LINK.format("limited") in preview.text


def test_the_report_form_names_every_reason_and_keeps_no_one_s_identity(
        client: FlaskClient) -> None:
    api(client, code="odd")
    page = client.get("/report/odd")
    assert page.status_code == 200
    for reason in ("phishing", "malware", "spam", "legal", "other"):
        assert f'name="reason" value="{reason}"' in page.text
    assert 'maxlength="1000"' in page.text and 'name="csrf_token"' in page.text
    assert "does not include who you are" in page.text
