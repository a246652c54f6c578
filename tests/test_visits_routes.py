"""The statistics people see: GET /api/links/<code>/stats, the page /<code>+, the visit
counts on the home page, and the VISITS settings (Flask's test client, the JSON file)."""
from __future__ import annotations

import re
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

import visits
from application import ConfigError, create_app
from tests.helpers import CHROME_UA, PostForm
from visits import DayCount, Stats

IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_6 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/18.6 Mobile/15E148 Safari/604.1")


def create(client: FlaskClient, code: str) -> None:
    assert client.post("/api/links", json={"url": f"https://example.com/{code}",
                                           "code": code}).status_code == 201


def follow(client: FlaskClient, code: str, **headers: str) -> None:
    """Follow a short link with these headers (underscores in their names become dashes)."""
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    response = client.get(f"/{code}", headers=named)
    assert response.status_code in (200, 302)


def stats_of(client: FlaskClient, code: str) -> dict[str, Any]:
    document = client.get(f"/api/links/{code}/stats").json
    assert isinstance(document, dict)
    return document


def flushed(app: Flask) -> None:
    app.extensions["visits"].flush()


def test_the_stats_of_a_link_never_visited_are_zeros(client: FlaskClient) -> None:
    create(client, "quiet")
    assert client.get("/api/links/quiet/stats").json == {
        "code": "quiet", "visits": 0, "bots": 0, "private_visits": 0, "days": [],
        "referrers": {}, "browsers": {}, "systems": {}, "devices": {}, "counting": True,
        "delay_seconds": 10.0, "max_visits": None, "visits_used": None}


def test_the_stats_count_people_bots_and_the_details_per_day(app: Flask,
                                                             client: FlaskClient) -> None:
    create(client, "doc")
    follow(client, "doc", User_Agent=CHROME_UA, Referer="https://t.co/x")
    follow(client, "doc", User_Agent=IPHONE)
    follow(client, "doc", User_Agent="curl/8.11.1")
    follow(client, "doc", User_Agent=CHROME_UA, DNT="1")
    flushed(app)
    stats = stats_of(client, "doc")
    assert (stats["visits"], stats["bots"], stats["private_visits"]) == (3, 1, 1)
    assert stats["days"] == [{"date": visits.today(), "visits": 3, "bots": 1, "unique_visitors": 2}]
    assert stats["referrers"] == {"t.co": 1, "direct": 1}
    assert stats["browsers"] == {"Chrome": 1, "Mobile Safari": 1}
    assert stats["systems"] == {"Windows": 1, "iOS": 1}
    assert stats["devices"] == {"desktop": 1, "mobile": 1}


def test_an_uploaded_file_is_counted_on_the_flask_path(
        app: Flask, post_form: PostForm, client: FlaskClient) -> None:
    assert post_form(file=(BytesIO(b"hello"), "hello.txt"), code="hello").status_code == 200
    follow(client, "hello", User_Agent=CHROME_UA)
    flushed(app)
    assert stats_of(client, "hello")["visits"] == 1
    page = client.get("/hello+")
    assert page.status_code == 200 and "the file hello.txt" in page.text


def test_visits_to_links_that_expire_are_limited_or_ask_for_a_password_are_counted(
        app: Flask, client: FlaskClient) -> None:
    """Flask's path counts every link it redirects: until this test, a link that could
    stop or asked for a password was served and never counted (its stats said 0)."""
    for code, fields in (("ends", {"expires_at": "2999-01-01T00:00:00+00:00"}),
                         ("limited", {"max_visits": 5}), ("locked", {"password": "open sesame"})):
        assert client.post("/api/links", json={"url": "https://example.com/", "code": code,
                                               **fields}).status_code == 201
    follow(client, "ends", User_Agent=CHROME_UA)
    follow(client, "limited", User_Agent=IPHONE)
    page = client.get("/locked")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token and client.post("/locked/password", data={
        "csrf_token": token.group(1), "password": "open sesame"}).status_code == 302
    flushed(app)
    assert [(stats_of(client, code)["visits"], stats_of(client, code)["browsers"])
            for code in ("ends", "limited", "locked")] == [
        (1, {"Chrome": 1}), (1, {"Mobile Safari": 1}), (1, {"Chrome": 1})]


def test_bots_on_a_link_with_a_visit_limit_are_counted_as_bots_and_use_up_nothing(
        app: Flask, client: FlaskClient) -> None:
    """A limited link shows bots and previews a page, not its target; the statistics still
    count them as bots, as on any link (until this test they counted nothing there). A HEAD
    request is not counted, as anywhere."""
    assert client.post("/api/links", json={"url": "https://example.com/", "code": "few",
                                           "max_visits": 3}).status_code == 201
    follow(client, "few", User_Agent="curl/8.11.1")
    follow(client, "few", User_Agent="Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)")
    assert client.head("/few", headers={"User-Agent": CHROME_UA}).status_code == 200
    follow(client, "few", User_Agent=IPHONE)
    flushed(app)
    stats = stats_of(client, "few")
    assert (stats["visits"], stats["bots"], stats["visits_used"]) == (1, 2, 1)
    assert stats["days"] == [{"date": visits.today(), "visits": 1, "bots": 2,
                              "unique_visitors": 1}]


@pytest.mark.parametrize("fields", [{}, {"expires_at": "2999-01-01T00:00:00+00:00"}],
                         ids=["plain link, the fast path", "link that expires, Flask's path"])
def test_a_due_hand_off_is_made_once_the_answer_has_gone(
        app: Flask, client: FlaskClient, fields: dict[str, str]) -> None:
    """A busy worker hands its queue to the writer in the request thread, after the
    answer (the WSGI response's close), once a hand-off interval has passed: on both
    paths a redirect takes."""
    assert client.post("/api/links", json={"url": "https://example.com/", "code": "due",
                                           **fields}).status_code == 201
    counter = app.extensions["visits"]
    counter._next_hand_off = time.monotonic() + 3600  # not due (nor the thread's)
    assert client.get("/due").status_code == 302 and counter.flush(), "a writer is running"
    with client.get("/due") as answer:
        assert answer.status_code == 302 and len(counter._hits) == 1, "not due: queued"
    counter._next_hand_off = 0.0  # a hand-off interval has passed
    answer = client.get("/due")
    assert answer.status_code == 302 and len(counter._hits) == 2, "the answer first"
    answer.close()
    assert not counter._hits and counter._handed == 3 and not counter.due()
    flushed(app)
    assert stats_of(client, "due")["visits"] == 3


@pytest.mark.parametrize("path", ["/api/links/nothing/stats", "/nothing+"])
def test_the_stats_of_an_unknown_code_are_a_404(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    if path.startswith("/api"):
        assert response.json == {"error": "No link has the code 'nothing'."}
    else:
        assert "We can't find that link" in response.text


def test_the_page_draws_30_days_as_svg_bars_with_the_same_numbers_in_a_table(
        app: Flask, client: FlaskClient) -> None:
    create(client, "chart")
    for _ in range(3):
        follow(client, "chart", User_Agent=CHROME_UA)
    flushed(app)
    page = client.get("/chart+").text
    assert "<dd>3</dd>" in page
    svg = page.split("<svg", 1)[1].split("</svg>", 1)[0]
    assert 'aria-hidden="true"' in svg and 'viewBox="0 0 600 200"' in svg
    assert svg.count("<rect ") == 30 and f"<title>{visits.today()}: 3 visits</title>" in svg
    rows = re.findall(r"<tr><th scope=\"row\">([-0-9]+)</th><td>(\d+)</td>", page)
    assert len(rows) == 30 and rows[-1] == (visits.today(), "3") and rows[0][1] == "0"
    assert " style=" not in page, "an inline style: the CSP forbids it"
    assert 'href="/api/links/chart/stats"' in page


def test_the_chart_has_a_bar_per_day_and_a_round_scale() -> None:
    stats = Stats(days={"2026-11-29": DayCount(37), "2026-11-10": DayCount(5)})
    chart = visits.chart(stats, "2026-11-29")
    assert [bar.day for bar in chart.bars][::29] == ["2026-10-31", "2026-11-29"]
    assert [bar.visits for bar in chart.bars if bar.visits] == [5, 37]
    assert chart.top == 50
    tallest = chart.bars[-1]
    assert tallest.y + tallest.height == chart.PLOT_TOP + chart.PLOT_HEIGHT
    assert [visits.nice_top(n) for n in (0, 1, 2, 3, 6, 11, 21, 51, 999)] == [
        1, 1, 2, 5, 10, 20, 50, 100, 1000]


def test_the_home_page_shows_each_links_visits_with_a_link_to_its_stats(
        app: Flask, client: FlaskClient) -> None:
    create(client, "mine")
    create(client, "other")
    for _ in range(2):
        follow(client, "mine", User_Agent=CHROME_UA)
    flushed(app)
    home = client.get("/").text
    assert '<a class="visits" href="http://localhost/mine+">2 visits' in home
    assert '<a class="visits" href="http://localhost/other+">0 visits' in home


def visits_off(data_dir: Path, **more: Any) -> Flask:
    return create_app({"DATA_DIR": data_dir, "TESTING": True, "SECRET_KEY": "s",
                       "CREATE_RATE_LIMIT": "off", "VISITS": "off", **more})


def test_with_visits_off_nothing_is_counted_shown_or_forbidden_to_cache(data_dir: Path) -> None:
    app = visits_off(data_dir)
    client = app.test_client()
    create(client, "off")
    assert app.extensions["visits"] is None
    redirect = client.get("/off", headers={"User-Agent": CHROME_UA})
    assert redirect.headers["Cache-Control"] == "s-maxage=60"  # the nginx cache may keep it
    assert 'class="visits"' not in client.get("/").text
    assert stats_of(client, "off")["counting"] is False
    assert "not being counted" in client.get("/off+").text
    assert not (data_dir / "visits").exists()


@pytest.mark.parametrize("setting, value, message", [
    ("VISITS", "yes", "VISITS must be on or off, not 'yes'"),
    ("VISITS_FLUSH_SECONDS", "0", "VISITS_FLUSH_SECONDS must be more than 0"),
    ("VISITS_FLUSH_SECONDS", "soon", "VISITS_FLUSH_SECONDS must be a number"),
])
def test_a_visits_setting_that_cannot_be_used_stops_the_app_saying_why(
        data_dir: Path, setting: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_app({"DATA_DIR": data_dir, "SECRET_KEY": "s", setting: value})
