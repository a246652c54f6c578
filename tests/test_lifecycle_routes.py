"""Links that end, links with a password, links their creator deletes and the operator
takes down: every route of ARCHITECTURE.md's "Link lifecycle" table, through the Flask
test client (real gunicorn, PostgreSQL and nginx: test_lifecycle_server.py and
test_nginx_lifecycle.py)."""
from __future__ import annotations

import hashlib
import html
import io
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from application import ConfigError, create_app
from linkstore import Link, LinkStore
from tests.helpers import CHROME_UA, PostForm, csrf_token

FUTURE = "2999-01-01T00:00:00+00:00"
PASSWORD = "correct horse battery"


def api(client: FlaskClient, **body: Any) -> TestResponse:
    return client.post("/api/links", json={"url": "https://example.com/target", **body})


def links_of(app: Flask) -> LinkStore:
    return app.extensions["link_store"]  # type: ignore[no-any-return]


def unlock(client: FlaskClient, code: str, password: str, **headers: str) -> TestResponse:
    page = client.get(f"/{code}", headers=headers)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token, page.text[:300]
    return client.post(f"/{code}/password", headers=headers,
                       data={"csrf_token": token.group(1), "password": password})


@pytest.fixture
def app_with(tmp_path: Path) -> Callable[..., Flask]:
    def make(**config: Any) -> Flask:
        return create_app({"DATA_DIR": tmp_path / "data", "TESTING": True,
                           "SECRET_KEY": "test-secret", "CREATE_RATE_LIMIT": "off", **config})
    return make


# --- creating ---------------------------------------------------------------------------

def test_the_api_creates_a_link_that_ends_and_gives_its_creator_a_management_token(
        client: FlaskClient) -> None:
    created = api(client, code="ends", expires_at="2999-01-01T01:00:00+01:00", max_visits=3)
    assert created.status_code == 201
    body = created.json
    assert body is not None
    assert body["expires_at"] == FUTURE  # kept in UTC
    assert (body["max_visits"], body["visits"], body["protected"], body["state"]) == (
        3, 0, False, "active")
    assert body["manage_url"] == f"http://localhost/manage/ends/{body['manage_token']}"
    assert len(body["manage_token"]) >= 43


def test_link_details_show_the_state_and_never_a_hash_or_a_protected_target(
        client: FlaskClient) -> None:
    api(client, code="locked", password=PASSWORD, max_visits=2)
    details = client.get("/api/links/locked").json
    assert details is not None
    assert "url" not in details and "file" not in details
    assert (details["protected"], details["max_visits"], details["visits"],
            details["state"]) == (True, 2, 0, "active")
    text = client.get("/api/links/locked").text
    assert "scrypt" not in text and "hash" not in text and PASSWORD not in text


def test_a_link_that_only_expires_still_shows_where_it_goes(client: FlaskClient) -> None:
    api(client, code="dated", expires_at=FUTURE)
    details = client.get("/api/links/dated").json
    assert details is not None and details["url"] == "https://example.com/target"


@pytest.mark.parametrize("field, value, message", [
    ("expires_at", "2001-01-01T00:00:00+00:00", "in the past"),
    ("expires_at", "2999-01-01T00:00:00", "needs its offset from UTC"),
    ("expires_at", "next tuesday", "ISO 8601"),
    ("expires_at", "2999-13-01T00:00:00Z", "ISO 8601"),
    ("expires_at", 20991231, "must be a string"),
    ("max_visits", 0, "whole number from 1"),
    ("max_visits", -5, "whole number from 1"),
    ("max_visits", 1.5, "whole number from 1"),
    ("max_visits", True, "whole number from 1"),
    ("max_visits", "three", "whole number from 1"),
    ("max_visits", 10**12, "whole number from 1"),
    ("password", "short", "8 to 256 characters"),
    ("password", "x" * 257, "8 to 256 characters"),
    ("password", "tab\there1", "no control characters"),
    ("password", ["a list"], "must be a string"),
])
def test_a_bad_option_is_a_400_naming_its_field_and_stores_nothing(
        app: Flask, client: FlaskClient, field: str, value: object, message: str) -> None:
    response = api(client, code="refused", **{field: value})
    assert response.status_code == 400
    assert response.json is not None
    assert response.json["field"] == field and message in response.json["error"]
    assert links_of(app).count() == 0
    assert not Path(app.config["URLS_FILE"]).exists()


def test_the_form_creates_a_link_with_more_options_and_shows_the_management_link(
        app: Flask, post_form: PostForm) -> None:
    page = post_form(url="https://example.com/f", code="opts", expires_at="2999-06-01T12:30",
                     max_visits="2", password=PASSWORD)
    assert page.status_code == 200
    assert page.headers["Cache-Control"] == "no-store"
    assert "Stops after 2 visits" in page.text and "Asks visitors for the password" in page.text
    assert re.search(r'id="manage-url" value="http://localhost/manage/opts/[\w-]{43}"',
                     page.text)
    assert PASSWORD not in page.text
    link = links_of(app).get("opts")
    assert link is not None
    assert (link.expires_at, link.max_visits) == ("2999-06-01T12:30:00+00:00", 2)
    assert link.accepts_password(PASSWORD)


def test_the_form_reads_a_time_in_the_browser_s_zone_when_its_script_sends_the_offset(
        app: Flask, post_form: PostForm) -> None:
    post_form(url="https://example.com/f", code="tz", expires_at="2999-06-01T12:30",
              utc_offset="120")
    assert links_of(app).get("tz").expires_at == "2999-06-01T10:30:00+00:00"  # type: ignore


def test_a_form_refusal_keeps_more_options_open_never_echoes_the_password_and_stores_nothing(
        app: Flask, post_form: PostForm) -> None:
    page = post_form(url="https://example.com/f", code="nope", max_visits="0",
                     password=PASSWORD)
    assert page.status_code == 400
    assert re.search(r'<details class="more-options" open>', page.text)
    assert "whole number from 1" in page.text
    assert PASSWORD not in page.text
    assert links_of(app).count() == 0


def test_a_password_is_never_logged(app: Flask, client: FlaskClient, post_form: PostForm,
                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        post_form(url="https://example.com/f", code="secret", password=PASSWORD)
        api(client, code="secret2", password=PASSWORD)
        unlock(client, "secret", PASSWORD)
        unlock(client, "secret", PASSWORD + "x")
    assert PASSWORD not in caplog.text  # under gunicorn too: test_lifecycle_server.py


# --- blocked domains ----------------------------------------------------------------------

def test_creates_pointing_at_a_blocked_domain_or_its_subdomains_are_refused(
        tmp_path: Path, app_with: Callable[..., Flask]) -> None:
    blocked = tmp_path / "blocked.txt"
    blocked.write_text("# phishing seen in November\nevil.example\nBücher.example.\n")
    client = app_with(BLOCKED_DOMAINS=str(blocked)).test_client()
    for url in ["https://evil.example/x", "http://login.EVIL.example./", "https://bücher.example/"]:
        response = client.post("/api/links", json={"url": url})
        assert response.status_code == 400, url
        assert response.json is not None and "has blocked that domain" in response.json["error"]
    assert client.post("/api/links", json={"url": "https://notevil.example/"}).status_code == 201
    assert client.post("/api/links", json={"url": "https://evil.example.org/"}).status_code == 201


def test_a_blocked_domain_added_while_running_applies_to_the_next_create(
        tmp_path: Path, app_with: Callable[..., Flask]) -> None:
    blocked = tmp_path / "blocked.txt"
    blocked.write_text("")
    app = app_with(BLOCKED_DOMAINS=str(blocked))
    client = app.test_client()
    assert client.post("/api/links", json={"url": "https://spam.example/1"}).status_code == 201
    blocked.write_text("spam.example\n")
    assert client.post("/api/links", json={"url": "https://spam.example/2"}).status_code == 400
    assert links_of(app).count() == 1


def test_a_blocked_domains_file_that_is_missing_stops_the_app_at_start(
        tmp_path: Path, app_with: Callable[..., Flask]) -> None:
    with pytest.raises(ConfigError, match="BLOCKED_DOMAINS"):
        app_with(BLOCKED_DOMAINS=str(tmp_path / "missing.txt"))


# --- visiting ---------------------------------------------------------------------------

def test_a_limited_link_redirects_exactly_max_visits_times_then_says_why(
        client: FlaskClient) -> None:
    api(client, code="twice", max_visits=2)
    visits = [client.get("/twice") for _ in range(3)]
    assert [v.status_code for v in visits] == [302, 302, 410]
    assert all(v.headers["Cache-Control"] == "no-store" for v in visits)
    assert "used as many times as its creator allowed (2 visits)" in visits[2].text
    assert client.get("/api/links/twice").json["visits"] == 2  # type: ignore[index]


@pytest.mark.parametrize("method, agent", [
    ("HEAD", CHROME_UA),
    ("GET", "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"),
    ("GET", "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)"),
    ("GET", "curl/8.5.0"), ("GET", "shortener-probe/1 (+ops.smoke)")])
def test_previews_bots_and_head_requests_use_up_no_visit_and_never_see_the_target(
        client: FlaskClient, method: str, agent: str) -> None:
    api(client, code="once", max_visits=1)
    for _ in range(3):
        answer = client.open("/once", method=method, headers={"User-Agent": agent})
        assert answer.status_code == 200 and "Location" not in answer.headers
        assert answer.headers["Cache-Control"] == "no-store"
        assert "example.com" not in answer.text
        assert method == "HEAD" or "can be opened 1 more time, by people only" in answer.text
    assert client.get("/api/links/once").json["visits"] == 0  # type: ignore[index]
    assert client.get("/once").status_code == 302  # the person still gets it
    assert client.get("/api/links/once/stats").json["visits_used"] == 1  # type: ignore[index]


def test_the_stats_page_shows_no_target_a_visit_would_have_to_earn(client: FlaskClient) -> None:
    api(client, code="locked", password="open sesame")
    api(client, code="limited", max_visits=3)
    api(client, code="open")
    for code in ("locked", "limited"):
        page = client.get(f"/{code}+")
        assert page.status_code == 200 and "example.com" not in page.text
    assert "0 of 3\n  visits used" in client.get("/limited+").text
    assert "https://example.com/target" in client.get("/open+").text


def test_a_stopped_link_answers_json_to_a_client_that_asks_for_it(client: FlaskClient) -> None:
    api(client, code="once", max_visits=1)
    client.get("/once")
    gone = client.get("/once", headers={"Accept": "application/json"})
    assert gone.status_code == 410 and gone.json is not None
    assert (gone.json["state"], gone.json["code"]) == ("limit_reached", "once")
    assert "used as many times" in gone.json["error"]


def test_an_expired_link_answers_410_saying_when(app: Flask, client: FlaskClient) -> None:
    links_of(app).add(Link("old", url="https://old.example/",
                           expires_at="2020-02-02T10:00:00+00:00"))
    page = client.get("/old")
    assert page.status_code == 410
    assert "This link expired on 2020-02-02 10:00:00 UTC." in page.text
    assert client.get("/api/links/old").json["state"] == "expired"  # type: ignore[index]


@pytest.mark.parametrize("reason, says", [("phishing", "reported as phishing"),
                                          ("malware", "reported as malware"),
                                          ("spam", "reported as spam"),
                                          ("legal", "the subject of a legal request"),
                                          ("other", "breaking the site's rules")])
def test_a_disabled_link_answers_410_with_the_reason_category(
        app: Flask, client: FlaskClient, reason: str, says: str) -> None:
    api(client, code="bad")
    links_of(app).disable("bad", reason, by="ops", note="internal note")
    page = client.get("/bad")
    assert page.status_code == 410 and says in html.unescape(page.text)
    assert "internal note" not in page.text
    details = client.get("/api/links/bad").json
    assert details is not None
    assert (details["state"], details["reason"]) == ("disabled", reason)
    assert "url" not in details


def test_a_link_the_operator_deleted_says_so(app: Flask, client: FlaskClient) -> None:
    api(client, code="removed")
    links_of(app).delete("removed", by="ops", reason="operator")
    assert "removed by the site's operator" in html.unescape(client.get("/removed").text)


@pytest.mark.parametrize("status, plain, cache_control, other", [
    (302, 302, "s-maxage=60", 302), (301, 301, "max-age=60", 302),
    (307, 307, "s-maxage=60", 307), (308, 308, "max-age=60", 307)])
def test_redirect_status_is_never_permanent_or_cacheable_for_a_link_that_can_stop(
        app_with: Callable[..., Flask], status: int, plain: int, cache_control: str,
        other: int) -> None:
    # VISITS=off: a counted redirect is never cached (tests/test_visits_routes.py)
    client = app_with(REDIRECT_STATUS=str(status), VISITS="off").test_client()
    client.environ_base["HTTP_USER_AGENT"] = CHROME_UA
    api(client, code="plain")
    api(client, code="expiring", expires_at=FUTURE)
    api(client, code="limited", max_visits=5)
    answer = client.get("/plain")
    assert (answer.status_code, answer.headers["Cache-Control"]) == (plain, cache_control)
    for code in ("expiring", "limited"):
        answer = client.get(f"/{code}")
        assert (answer.status_code, answer.headers["Cache-Control"]) == (other, "no-store")
        assert answer.headers["Location"] == "https://example.com/target"


def test_a_redirect_status_other_than_the_four_stops_the_app(
        app_with: Callable[..., Flask]) -> None:
    with pytest.raises(ConfigError, match="REDIRECT_STATUS must be one of 301, 302, 307, 308"):
        app_with(REDIRECT_STATUS="303")


# --- passwords --------------------------------------------------------------------------

def test_a_protected_link_asks_for_its_password_and_is_never_cached(client: FlaskClient) -> None:
    api(client, code="locked", password=PASSWORD)
    page = client.get("/locked")
    assert page.status_code == 200 and "Location" not in page.headers
    assert page.headers["Cache-Control"] == "no-store"
    assert 'type="password"' in page.text and 'name="csrf_token"' in page.text


def test_only_the_password_page_lets_its_form_s_redirect_leave_the_site(
        client: FlaskClient) -> None:
    """Chromium applies form-action to the redirect after the form's POST."""
    api(client, code="locked", password=PASSWORD)
    assert "form-action 'self' http: https:;" in client.get("/locked").headers[
        "Content-Security-Policy"]
    assert "form-action 'self';" in client.get("/").headers["Content-Security-Policy"]


def test_the_right_password_redirects_and_a_wrong_one_says_so(client: FlaskClient) -> None:
    api(client, code="locked", password=PASSWORD)
    wrong = unlock(client, "locked", "not the password")
    assert wrong.status_code == 403 and "That password is not right" in wrong.text
    assert wrong.headers["Cache-Control"] == "no-store"
    assert "not the password" not in wrong.text
    right = unlock(client, "locked", PASSWORD)
    # 302 (ARCHITECTURE.md): after a POST the target gets a GET; a 307 or 308 would post
    # the password to it
    assert right.status_code == 302
    assert right.headers["Location"] == "https://example.com/target"
    assert right.headers["Cache-Control"] == "no-store"


def test_a_protected_file_is_sent_after_the_right_password(app: Flask, post_form: PostForm,
                                                           client: FlaskClient) -> None:
    post_form(file=(io.BytesIO(b"the secret file"), "plan.txt"), code="plan", password=PASSWORD)
    assert client.get("/plan").status_code == 200 and b"secret file" not in client.get(
        "/plan").data
    sent = unlock(client, "plan", PASSWORD)
    assert sent.status_code == 200 and sent.data == b"the secret file"
    assert sent.headers["Cache-Control"] == "no-store"


def test_a_wrong_password_uses_no_visit_and_the_right_one_uses_one(client: FlaskClient) -> None:
    api(client, code="both", password=PASSWORD, max_visits=1)
    assert unlock(client, "both", "wrong password").status_code == 403
    assert unlock(client, "both", PASSWORD).status_code == 302
    assert client.get("/both").status_code == 410


def test_every_password_answer_costs_one_scrypt_known_code_or_not(
        client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """No timing difference between a right and a wrong password, an unknown code, or a
    link without a password: each runs exactly one scrypt of the same cost."""
    api(client, code="locked", password=PASSWORD)
    api(client, code="open")
    real, costs = hashlib.scrypt, []

    def counted(*args: Any, **kwargs: Any) -> bytes:
        costs.append((kwargs["n"], kwargs["r"], kwargs["p"]))
        return real(*args, **kwargs)
    monkeypatch.setattr(hashlib, "scrypt", counted)
    token = csrf_token(client)
    answers = [client.post(f"/{code}/password", data={"csrf_token": token, "password": pw})
               for code, pw in [("locked", PASSWORD), ("locked", "wrong guess"),
                                ("unknown", PASSWORD), ("open", PASSWORD)]]
    assert [a.status_code for a in answers] == [302, 403, 404, 303]  # open: to its page
    assert costs == [(16384, 8, 1)] * 4


def test_wrong_passwords_are_limited_per_link_and_client(app_with: Callable[..., Flask]) -> None:
    client = app_with(PASSWORD_RATE_LIMIT="3/minute").test_client()
    api(client, code="locked", password=PASSWORD)
    api(client, code="other", password=PASSWORD)
    assert [unlock(client, "locked", "guess number").status_code for _ in range(4)] == [
        403, 403, 403, 429]
    limited = unlock(client, "locked", PASSWORD)
    assert limited.status_code == 429 and "Too many wrong passwords" in limited.text
    assert int(limited.headers["Retry-After"]) > 0
    assert unlock(client, "other", PASSWORD).status_code == 302  # another link
    elsewhere = {"X-Forwarded-For": "192.0.2.7"}
    assert unlock(client, "locked", PASSWORD, **elsewhere).status_code == 302  # another client


def test_right_passwords_are_not_counted_against_the_limit(
        app_with: Callable[..., Flask]) -> None:
    client = app_with(PASSWORD_RATE_LIMIT="2/minute").test_client()
    api(client, code="locked", password=PASSWORD)
    assert [unlock(client, "locked", PASSWORD).status_code for _ in range(5)] == [302] * 5


# --- deleting -----------------------------------------------------------------------------

def test_the_creator_deletes_a_link_with_its_token_and_it_answers_410_for_good(
        app: Flask, client: FlaskClient) -> None:
    token = api(client, code="mine").json["manage_token"]  # type: ignore[index]
    deleted = client.delete("/api/links/mine", headers={"X-Manage-Token": token})
    assert deleted.status_code == 200
    assert deleted.json is not None
    assert (deleted.json["state"], deleted.json["reason"]) == ("deleted", "creator")
    gone = client.get("/mine")
    assert gone.status_code == 410 and "deleted by its creator" in gone.text
    again = client.delete("/api/links/mine", headers={"X-Manage-Token": token})
    assert again.status_code == 410
    assert api(client, code="mine").status_code == 409  # never reused
    assert [c.action for c in links_of(app).history("mine")] == ["delete"]


@pytest.mark.parametrize("headers", [{"X-Manage-Token": ""}, {"X-Manage-Token": "guess"}])
def test_deleting_with_the_wrong_token_is_refused(client: FlaskClient,
                                                  headers: dict[str, str]) -> None:
    api(client, code="mine")
    refused = client.delete("/api/links/mine", headers=headers)
    assert refused.status_code == 403
    assert refused.json is not None and "X-Manage-Token" in refused.json["error"]
    assert client.get("/mine").status_code == 302


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer guess"},
                                     {"Authorization": "Basic dXNlcjpwYXNz"}])
def test_deleting_without_credentials_or_with_a_bad_key_asks_for_them(
        client: FlaskClient, headers: dict[str, str]) -> None:
    api(client, code="mine")
    refused = client.delete("/api/links/mine", headers=headers)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert refused.json is not None and refused.json["error"]
    assert client.get("/mine").status_code == 302


def test_deleting_an_unknown_code_is_a_404(client: FlaskClient) -> None:
    assert client.delete("/api/links/nothing", headers={"X-Manage-Token": "x"}).status_code == 404


def test_the_management_page_deletes_the_link(client: FlaskClient) -> None:
    manage_url = api(client, code="page").json["manage_url"]  # type: ignore[index]
    path = manage_url.removeprefix("http://localhost")
    page = client.get(path)
    assert page.status_code == 200 and "Delete this link" in page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    done = client.post(path, data={"csrf_token": csrf_token(client)})
    assert done.status_code == 303 and done.headers["Location"].endswith(path)
    assert "This link was deleted" in client.get(path).text
    assert client.get("/page").status_code == 410


def test_a_management_page_with_a_wrong_token_is_not_found(client: FlaskClient) -> None:
    api(client, code="page")
    assert client.get("/manage/page/" + "A" * 43).status_code == 404
    assert client.post("/manage/page/" + "A" * 43,
                       data={"csrf_token": csrf_token(client)}).status_code == 404
    assert client.get("/page").status_code == 302
