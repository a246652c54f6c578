"""Classifying one visit: ignored, bot or person, and what a person's visit may keep.

tests/fixtures/visitors/user_agents.json holds real User-Agent strings (browsers at
current versions, in-app browsers, link-preview fetchers, crawlers, HTTP libraries),
each with the visit it must count as; docs/visits.md says where they come from.
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st
from werkzeug.datastructures import Headers

import visitors
from visitors import BOT, DIRECT, IGNORED, MAX_USER_AGENT, PRIVATE, Hit, Visit, classify, hit

FIXTURE = Path(__file__).parent / "fixtures" / "visitors" / "user_agents.json"
AGENTS: list[dict[str, Any]] = json.loads(FIXTURE.read_text())
CHROME = AGENTS[0]["user_agent"]  # Chrome on Windows
PROBE = "shortener-probe/1 (+ops.smoke)"


def visit(method: str = "GET", **headers: str) -> Visit:
    """The visit a request with these headers counts as (underscores become dashes)."""
    return classify(hit(method, {name.replace("_", "-"): value
                                 for name, value in headers.items()}))


def expected(row: dict[str, Any]) -> Visit:
    if row["kind"] == "bot":
        return BOT
    return Visit("person", row["browser"], row["os"], row["device"], DIRECT)


@pytest.mark.parametrize("row", AGENTS, ids=[row["name"] for row in AGENTS])
def test_each_real_user_agent_counts_as_the_fixture_says(row: dict[str, Any]) -> None:
    assert visit(User_Agent=row["user_agent"]) == expected(row)


@pytest.mark.parametrize("who", ["Slack", "Discord", "Facebook", "Twitter", "LinkedIn",
                                 "Telegram", "WhatsApp", "Googlebot", "Bingbot", "curl",
                                 "Wget", "python-requests", "Go net/http", "Headless Chrome"])
def test_the_fixture_has_every_fetcher_the_issue_names_as_a_bot(who: str) -> None:
    assert any(row["kind"] == "bot" for row in AGENTS if who in row["name"])


PEOPLE_THE_ISSUE_NAMES = [("Chrome on", "desktop"), ("Firefox on", "desktop"),
                          ("Safari on", "desktop"), ("Edge on", "desktop"),
                          ("on iPhone", "mobile"), ("on an Android phone", "mobile"),
                          ("iPad", "tablet"), ("Galaxy Tab", "tablet"),
                          ("Samsung Internet", "mobile")]


@pytest.mark.parametrize("who, device", PEOPLE_THE_ISSUE_NAMES)
def test_the_fixture_has_the_browsers_and_devices_people_use(who: str, device: str) -> None:
    assert any(row["kind"] == "person" and row["device"] == device
               for row in AGENTS if who in row["name"])


def test_a_requests_own_headers_work_whatever_case_the_client_sent() -> None:
    """The app passes Werkzeug's headers, which look names up in any case."""
    headers = Headers([("user-agent", CHROME), ("REFERER", "https://news.example/"),
                       ("dnt", "1")])
    assert hit("GET", headers) == Hit("GET", CHROME, "news.example", True)


def test_a_head_request_is_not_counted() -> None:
    assert visit("HEAD", User_Agent=CHROME) == IGNORED


def test_the_apps_own_probe_is_not_counted() -> None:
    assert visit(User_Agent=PROBE) == IGNORED


def test_the_probe_marker_counts_only_at_the_start_of_the_user_agent() -> None:
    assert visit(User_Agent=f"{CHROME} {PROBE}").kind == "person"


def test_a_post_that_ends_in_a_redirect_counts() -> None:
    """A password-protected link redirects after a POST: that is a visit."""
    assert visit("POST", User_Agent=CHROME).kind == "person"


@pytest.mark.parametrize("headers", [{}, {"User-Agent": ""}, {"User-Agent": "   "}],
                         ids=["no header", "empty", "blank"])
def test_a_request_without_a_user_agent_is_a_bot(headers: dict[str, str]) -> None:
    assert classify(hit("GET", headers)) == BOT


# --- Privacy -----------------------------------------------------------------------------

@pytest.mark.parametrize("headers, private", [
    ({"DNT": "1"}, True),
    ({"Sec-GPC": "1"}, True),
    ({"DNT": "1", "Sec-GPC": "1"}, True),
    ({"DNT": " 1 "}, True),
    ({"DNT": "1xyz"}, True),  # the Tracking Preference Expression allows extensions
    ({"DNT": "0", "Sec-GPC": "1"}, True),
    ({"DNT": "0"}, False),
    ({"Sec-GPC": "0"}, False),
    ({"Sec-GPC": "1; extra"}, False),  # GPC's only value is "1"
    ({"DNT": ""}, False),
    ({"DNT": "yes"}, False),
    ({}, False),
])
def test_dnt_and_sec_gpc_ask_for_privacy(headers: dict[str, str], private: bool) -> None:
    assert hit("GET", {"User-Agent": CHROME, **headers}).private is private


def test_a_private_visit_counts_only_in_the_total() -> None:
    private = visit(User_Agent=CHROME, Referer="https://news.example/a?id=7", DNT="1")
    assert private == PRIVATE == Visit("person")


def test_a_bot_that_asks_for_privacy_is_still_a_bot() -> None:
    assert visit(User_Agent="curl/8.14.1", Sec_GPC="1") == BOT


def test_a_head_request_that_asks_for_privacy_is_still_not_counted() -> None:
    assert visit("HEAD", User_Agent=CHROME, DNT="1") == IGNORED


def test_a_person_who_does_not_ask_for_privacy_gets_every_detail() -> None:
    assert visit(User_Agent=CHROME, Referer="https://news.example/a?id=7", DNT="0") == \
        Visit("person", "Chrome", "Windows", "desktop", "news.example")


# --- Referrers ---------------------------------------------------------------------------

@pytest.mark.parametrize("referer, host", [
    ("https://news.example/2026/11/story?utm_source=x&id=42#comments", "news.example"),
    ("https://NEWS.Example.COM/Path", "news.example.com"),
    ("https://news.example:8443/", "news.example"),
    ("http://user:secret@news.example/", "news.example"),
    ("https://news.example./", "news.example"),
    ("https://bücher.example/katalog", "xn--bcher-kva.example"),
    ("https://BÜCHER.example/", "xn--bcher-kva.example"),
    ("https://xn--bcher-kva.example/", "xn--bcher-kva.example"),
    ("android-app://com.google.android.gm/", "com.google.android.gm"),
    ("https://t.co/AbCdEf", "t.co"),
    ("https://☃.net/", "xn--n3h.net"),
    ("  https://news.example/  ", "news.example"),
])
def test_a_referrer_is_reduced_to_its_host(referer: str, host: str) -> None:
    assert hit("GET", {"Referer": referer}).referrer == host


@pytest.mark.parametrize("referer", [
    "", "   ", "not a url", "news.example/path", "/relative/path", "about:blank",
    "javascript:alert(1)", "file:///home/someone/notes.html", "ftp://news.example/",
    "data:text/html,<p>hi</p>", "http://", "https://:443/", "http://[::1", "http://[::1]/",
    "http://192.0.2.10/", "http://192.0.2.10:8080/page", "http://1234/", "http://0x7f.1/",
    "https://news..example/", "https://.example/", "https://" + "a" * 64 + ".example/",
    "https://" + "a." * 130 + "example/", "https://news example/", "https://exa%6dple.com/",
    "https://a\x00b.example/", "https://news.\u2028.example/",
], ids=repr)
def test_a_missing_or_unusable_referrer_is_direct(referer: str) -> None:
    assert hit("GET", {"Referer": referer}).referrer == DIRECT


def test_no_referer_header_is_direct() -> None:
    assert hit("GET", {"User-Agent": CHROME}).referrer == DIRECT
    assert visit(User_Agent=CHROME).referrer == DIRECT


def test_a_bots_referrer_is_not_kept() -> None:
    assert visit(User_Agent="Twitterbot/1.0", Referer="https://news.example/").referrer is None


# --- Bounded work, bounded memory, nothing identifying -----------------------------------

def test_an_absurdly_long_user_agent_is_cut_before_anything_reads_it() -> None:
    huge = CHROME + " " + "x" * 1_000_000
    assert len(hit("GET", {"User-Agent": huge}).user_agent) == MAX_USER_AGENT
    assert visit(User_Agent=huge) == visit(User_Agent=CHROME)


def test_nothing_past_the_limit_is_read_even_a_bot_name() -> None:
    late_bot = CHROME + " " * MAX_USER_AGENT + "Googlebot/2.1"
    assert visit(User_Agent=late_bot).kind == "person"


def test_a_hit_built_by_hand_is_cut_too() -> None:
    huge = CHROME + " " + "x" * 100_000
    assert classify(Hit("GET", huge, DIRECT, False)) == visit(User_Agent=CHROME)


def test_recording_a_hit_parses_nothing() -> None:
    before = visitors.cache_info()
    hit("GET", {"User-Agent": f"{CHROME} never-seen-before/{id(before)}"})
    assert visitors.cache_info() == before


def test_each_user_agent_is_parsed_once_and_the_cache_is_bounded() -> None:
    agent = f"{CHROME} cached/{id(object())}"
    classify(hit("GET", {"User-Agent": agent}))
    before = visitors.cache_info()
    classify(hit("GET", {"User-Agent": agent, "Referer": "https://other.example/"}))
    after = visitors.cache_info()
    assert (after.hits, after.misses) == (before.hits + 1, before.misses)
    assert after.maxsize == visitors.CACHE_SIZE


def test_a_visit_has_no_field_for_a_user_agent_an_address_or_a_cookie() -> None:
    assert [field.name for field in dataclasses.fields(Visit)] == \
        ["kind", "browser", "os", "device", "referrer"]


@pytest.mark.parametrize("row", AGENTS, ids=[row["name"] for row in AGENTS])
def test_a_visit_never_contains_the_user_agent(row: dict[str, Any]) -> None:
    result = visit(User_Agent=row["user_agent"], Referer="https://news.example/")
    assert all(row["user_agent"] not in str(value) for value in dataclasses.astuple(result))
    assert row["user_agent"] not in repr(result)


BROWSERS = [row["user_agent"] for row in AGENTS if row["kind"] == "person"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(BROWSERS), st.data(),
       st.from_regex(r"[A-Za-z][A-Za-z0-9]{2,10}[0-9][A-Za-z0-9]{2,10}", fullmatch=True),
       st.sampled_from(["{m}", "{m}/1.0", "({m})", "{m} Build/AB12", "{m}Browser/2.3"]))
def test_nothing_a_visitor_adds_to_a_user_agent_reaches_the_visit(
        agent: str, data: st.DataObject, marker: str, shape: str) -> None:
    """A token anywhere in a real User-Agent (a name, a serial, a user id an app adds)
    never becomes part of what is stored."""
    cut = data.draw(st.sampled_from([i for i, c in enumerate(agent) if c in " ;("] +
                                    [len(agent)]))
    tagged = f"{agent[:cut]} {shape.format(m=marker)} {agent[cut:]}"
    result = visit(User_Agent=tagged, Referer="https://news.example/")
    assert all(marker.lower() not in str(value).lower()
               for value in dataclasses.astuple(result))


def test_visits_are_small_hashable_values_that_count_in_a_counter() -> None:
    visits = [visit(User_Agent=row["user_agent"]) for row in AGENTS]
    counts = Counter(visits)
    assert counts[BOT] == sum(row["kind"] == "bot" for row in AGENTS)
    assert sum(counts.values()) == len(AGENTS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        visits[0].kind = "bot"  # type: ignore[misc]
