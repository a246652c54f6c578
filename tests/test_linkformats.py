"""Reading links out of our own exports and the peers', and planning their import.

Each peer's fixture in tests/fixtures/import/ is in the format that peer really writes
(docs/importing.md says where each format is defined), awkward parts included.
"""
from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TextIO

import pytest
from flask import Flask
from hypothesis import given, settings, strategies as st

from linkrules import InvalidInput, checked_code, checked_url
from ops.linkformats import (DELETED, FORMATS, Candidate, InvalidLink, Link, Problem, Row,
                             app_rules, plan_import, read_links, write_csv, write_json)

FIXTURES = Path(__file__).parent / "fixtures" / "import"
UTC = timezone.utc
PEER_FILES = [("shlink-short_urls.csv", "shlink", "s.example"),
              ("shlink-short-urls-api.json", "shlink", None),
              ("yourls-url-table.csv", "yourls", None),
              ("yourls-url-table-excel.csv", "yourls", None),
              ("yourls-import-export.csv", "yourls", None),
              ("yourls-api-stats.json", "yourls", None),
              ("kutt-links.json", "kutt", None),
              ("bitly-bitlinks.json", "bitly", "acme.co"),
              ("bitly-links-export.csv", "bitly", "acme.co"),
              ("links.csv", "csv", None),
              ("links.json", "json", None)]


@pytest.fixture
def reserved(app: Flask) -> frozenset[str]:
    """The paths the app keeps for itself, from the real app."""
    return app.config["RESERVED_CODES"]  # type: ignore[no-any-return]


def read(name: str, fmt: str, reserved: frozenset[str], domain: str | None = None) -> list[Row]:
    return list(read_links((FIXTURES / name).read_bytes(), fmt, reserved=reserved, domain=domain))


def links(rows: list[Row]) -> dict[str, Link]:
    return {row.link.code: row.link for row in rows if isinstance(row, Candidate)}


def problems(rows: list[Row]) -> list[tuple[int, str, str | None]]:
    return [(row.line, row.kind, row.code) for row in rows if isinstance(row, Problem)]


def kinds(rows: list[Row]) -> list[tuple[int, str]]:
    return [(row.line, row.kind if isinstance(row, Problem) else "link") for row in rows]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def no_links(code: str) -> Link | None:
    return None


Writer = Callable[[Iterable[Link], TextIO], int]


# --- The app's rules --------------------------------------------------------------------

URLS = ["https://example.com", "HTTPS://EXAMPLE.COM/Path", "https://bücher.example/straße",
        "https://example.com/?q=[1]", "http://127.0.0.1:8000/x", "https://user@example.com:8443/",
        "", "javascript:alert(1)", "ftp://example.com/f", "example.com/page", "//example.com/p",
        "https://", "https:///path", "https://example.com/a b", "https://example.com/\ta",
        "https://example.com/\u2028", "https://example.com:99999/", "https://[::1/",
        "https://x\u00a8.example/", "https://example.com/" + "a" * 2028,
        "https://example.com/" + "a" * 2029, "https://example.com/" + "é" * 700]


def app_verdict(url: str) -> str:
    try:
        return checked_url(url)
    except InvalidInput:
        return "refused"


def our_verdict(url: str) -> str | None:
    try:
        return app_rules("code", url, frozenset())
    except InvalidLink:
        return "refused"


@pytest.mark.parametrize("url", URLS)
def test_urls_are_accepted_and_stored_exactly_as_the_app_does(url: str) -> None:
    assert our_verdict(url) == app_verdict(url)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40).map(lambda tail: "https://example.com/" + tail) | st.text(max_size=40))
def test_any_url_gets_the_same_verdict_as_from_the_app(url: str) -> None:
    assert our_verdict(url) == app_verdict(url)


@pytest.mark.parametrize("code", ["a", "my-link", "under_score", "x" * 64, "x" * 65, "café",
                                  "a/b", "a b", "api", "API", "healthz", "static", "your-url"])
def test_codes_are_accepted_and_refused_as_the_app_does(app: Flask, reserved: frozenset[str],
                                                        code: str) -> None:
    with app.app_context():
        try:
            app_accepts = checked_code(code) == code
        except InvalidInput:
            app_accepts = False
    try:
        app_rules(code, "https://example.com/", reserved)
        we_accept = True
    except InvalidLink:
        we_accept = False
    assert we_accept == app_accepts


# --- Shlink -------------------------------------------------------------------------------

def test_a_shlink_export_with_two_domains_asks_which_to_import(reserved: frozenset[str]) -> None:
    rows = read("shlink-short_urls.csv", "shlink", reserved)
    assert problems(rows) == [(1, "domain", None)]
    assert "s.example (6), go.example.org (1)" in str(rows[0])


def test_a_shlink_export_keeps_codes_targets_times_titles_and_tags(
        reserved: frozenset[str]) -> None:
    rows = read("shlink-short_urls.csv", "shlink", reserved, domain="s.example")
    launch = next(row for row in rows if isinstance(row, Candidate) and row.link.code == "launch")
    assert launch.link == Link("launch", "https://example.com/products/launch?utm_source=shlink"
                                         "&utm_medium=short",
                               created_at=at("2024-03-05T10:12:45+01:00"), visits=42)
    assert (launch.line, launch.title, launch.tags, launch.domain) == (
        2, 'Launch, 2024: "the big one"', ("campaign", "2024"), "s.example")
    assert links(rows)["menu"].url == "https://xn--bcher-kva.example/stra%C3%9Fe?q=gr%C3%BCn"
    assert links(rows)["notes"].created_at == at("2024-04-04T06:00:00+00:00")


def test_shlink_rows_that_cannot_come_over_are_reported_on_their_lines(
        reserved: frozenset[str]) -> None:
    rows = read("shlink-short_urls.csv", "shlink", reserved, domain="s.example")
    assert problems(rows) == [(3, "code", "café"), (5, "code", "blog/2024/post"),
                              (6, "domain", "launch"), (7, "url", "app")]
    assert sorted(links(rows)) == ["launch", "menu", "notes"]


def test_a_row_after_a_title_spanning_two_lines_keeps_its_own_line_number(
        reserved: frozenset[str]) -> None:
    text = (FIXTURES / "shlink-short_urls.csv").read_text() + '\n"2024-04-05T08:00:00+02:00",' \
        '"s.example","after","https://s.example/after","https://example.com/after","","",0'
    rows = list(read_links(text.encode(), "shlink", reserved=reserved, domain="s.example"))
    assert [row.line for row in rows][-2:] == [8, 10]


def test_shlink_api_pages_bring_expiry_and_visit_limits(reserved: frozenset[str]) -> None:
    rows = read("shlink-short-urls-api.json", "shlink", reserved)
    assert links(rows) == {
        "abc123": Link("abc123", "https://shlink.io/?a=1&b='x'",
                       created_at=at("2018-05-01T00:00:00+00:00"), max_visits=2, visits=3),
        "ghi789": Link("ghi789", "https://shlink.io/documentation/",
                       created_at=at("2018-05-01T00:00:00+00:00"),
                       expires_at=at("2020-05-01T00:00:00+00:00"), visits=2)}
    assert isinstance(rows[0], Candidate) and rows[0].title == "Résumé <draft>"


def test_shlink_api_links_on_custom_domains_or_not_yet_valid_are_reported(
        reserved: frozenset[str]) -> None:
    rows = read("shlink-short-urls-api.json", "shlink", reserved)
    assert problems(rows) == [(2, "domain", "custom-with-domain"), (2, "unsupported", "later")]


OZH = Link("ozh", "http://ozh.org/", created_at=datetime(2009, 11, 4, 20, 25, 9, tzinfo=UTC))


# --- YOURLS -------------------------------------------------------------------------------

def test_the_yourls_table_exported_by_phpmyadmin_reads_with_utc_times(
        reserved: frozenset[str]) -> None:
    rows = read("yourls-url-table.csv", "yourls", reserved)
    assert links(rows) == {
        "ozh": OZH,
        "yourls": Link("yourls", "http://yourls.org/",
                       created_at=datetime(2009, 11, 4, 20, 25, 9, tzinfo=UTC)),
        "1f": Link("1f", "https://example.com/search?q=a,b&lang=fr",
                   created_at=datetime(2024, 1, 31, 14, 5, 9, tzinfo=UTC)),
        "Promo2024": Link("Promo2024", "https://example.com/promo",
                          created_at=datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC))}
    assert [row.title for row in rows if isinstance(row, Candidate)][-2:] == ["Recherche « a, b »",
                                                                              None]


def test_yourls_keywords_the_app_cannot_have_and_zero_dates_are_reported(
        reserved: frozenset[str]) -> None:
    rows = read("yourls-url-table.csv", "yourls", reserved)
    assert problems(rows) == [(6, "code", "v1.2"), (7, "date", "dates")]


def test_the_yourls_table_exported_for_excel_reads_with_semicolons_and_crlf(
        reserved: frozenset[str]) -> None:
    rows = read("yourls-url-table-excel.csv", "yourls", reserved)
    assert kinds(rows) == [(2, "link"), (3, "link")]
    assert [(row.link.url, row.title) for row in rows if isinstance(row, Candidate)] == [
        ("http://ozh.org/", "Ozh RICHARD // ozh.org"),
        ("https://xn--bcher-kva.example/stra%C3%9Fe", "Bücher; Straße")]


def test_the_yourls_import_export_plugin_csv_reads_without_dates(
        reserved: frozenset[str]) -> None:
    rows = read("yourls-import-export.csv", "yourls", reserved)
    assert links(rows) == {"ozh": Link("ozh", "http://ozh.org/"),
                           "1f": Link("1f", "https://example.com/search?q=a,b&lang=fr")}
    assert problems(rows) == [(4, "reserved", "api")]


def test_the_yourls_stats_api_reads_with_escaped_slashes_and_unicode(
        reserved: frozenset[str]) -> None:
    rows = read("yourls-api-stats.json", "yourls", reserved)
    assert links(rows) == {
        "menu": Link("menu", "https://xn--bcher-kva.example/stra%C3%9Fe",
                     created_at=datetime(2024, 1, 31, 14, 5, 9, tzinfo=UTC)),
        "ozh": OZH}
    assert {row.domain for row in rows if isinstance(row, Candidate)} == {"sho.rt"}
    assert problems(rows) == [(1, "url", "gone")]


# --- Kutt --------------------------------------------------------------------------------

def test_kutt_api_pages_appended_to_one_file_read_page_by_page(reserved: frozenset[str]) -> None:
    rows = read("kutt-links.json", "kutt", reserved)
    assert links(rows) == {
        "docs": Link("docs", "https://github.com/thedevs-network/kutt#readme",
                     created_at=datetime(2024, 12, 23, 10, 30, 44, 123000, tzinfo=UTC), visits=10),
        "sale": Link("sale", "https://shop.example/sale?from=kutt&x=1",
                     created_at=datetime(2025, 1, 6, 7, 4, 44, tzinfo=UTC),
                     expires_at=datetime(2025, 2, 1, tzinfo=UTC), visits=3),
        "sqlite": Link("sqlite", "https://example.com/sqlite",  # expire_in as SQLite keeps it
                       created_at=datetime(2025, 1, 10, 11, tzinfo=UTC),
                       expires_at=datetime(2026, 1, 10, 11, tzinfo=UTC), visits=0)}
    assert [row.line for row in rows] == [1, 1, 1, 2, 2, 2]


def test_kutt_links_with_a_password_banned_or_on_a_custom_domain_are_left_out(
        reserved: frozenset[str]) -> None:
    rows = read("kutt-links.json", "kutt", reserved)
    assert problems(rows) == [(1, "unsupported", "secret"), (2, "domain", "brand"),
                              (2, "unsupported", "phish")]


# --- Bitly -------------------------------------------------------------------------------

def test_bitlinks_on_two_domains_ask_which_to_import(reserved: frozenset[str]) -> None:
    assert problems(read("bitly-bitlinks.json", "bitly", reserved)) == [(1, "domain", None)]


def test_every_short_link_of_a_bitlink_on_the_domain_comes_over(
        reserved: frozenset[str]) -> None:
    rows = read("bitly-bitlinks.json", "bitly", reserved, domain="acme.co")
    spring = "https://acme.example/spring-sale?utm_source=bitly"
    assert links(rows) == {
        "3usiGLP": Link("3usiGLP", spring, created_at=datetime(2021, 5, 6, 15, 20, 52, tzinfo=UTC)),
        "spring": Link("spring", spring, created_at=datetime(2021, 5, 6, 15, 20, 52, tzinfo=UTC)),
        "2Diay99": Link("2Diay99", "https://acme.example/%C3%BCn%C3%AFcode",
                        created_at=datetime(2019, 8, 31, 3, 13, 46, tzinfo=UTC))}
    assert [row.line for row in rows if isinstance(row, Candidate)] == [3, 3, 24]


def test_bitlinks_on_bitly_s_own_domain_and_non_web_targets_are_reported(
        reserved: frozenset[str]) -> None:
    rows = read("bitly-bitlinks.json", "bitly", reserved, domain="acme.co")
    assert problems(rows) == [(40, "domain", "3xYzAbC"), (40, "domain", "acme-old"),
                              (58, "url", "bad")]


def test_the_bitly_dashboard_export_gives_the_same_links_as_the_api(
        reserved: frozenset[str]) -> None:
    from_csv = read("bitly-links-export.csv", "bitly", reserved, domain="acme.co")
    from_api = read("bitly-bitlinks.json", "bitly", reserved, domain="acme.co")
    assert links(from_csv) == links(from_api)
    assert problems(from_csv) == [(4, "domain", "3xYzAbC")]


# --- Our own files -------------------------------------------------------------------------

OURS = {"docs": Link("docs", "https://docs.python.org/3/",
                     created_at=at("2026-11-27T05:00:00+00:00")),
        "cv": Link("cv", file="3f2a9c0d8e7b6a5f4e3d2c1b0a998877.pdf", name="CV – Müller, 2024.pdf",
                   created_at=at("2026-11-27T05:01:00+00:00")),
        "launch": Link("launch", "https://example.com/launch?a=1&b=2",
                       created_at=at("2026-11-27T10:30:00.250000+05:30"),
                       expires_at=at("2026-12-31T23:59:59+01:00"), max_visits=100, visits=12),
        "old": Link("old", "https://example.com/old", created_at=at("2020-01-01T00:00:00+00:00"),
                    state="disabled", reason="other")}


@pytest.mark.parametrize("name, fmt", [("links.csv", "csv"), ("links.json", "json")])
def test_our_exports_read_back_every_field(reserved: frozenset[str], name: str, fmt: str) -> None:
    rows = read(name, fmt, reserved)
    assert links(rows) == OURS
    assert [row.line for row in rows] == [2, 3, 4, 5]


@pytest.mark.parametrize("write, fmt", [(write_csv, "csv"), (write_json, "json")])
def test_an_export_reads_back_as_the_same_links(reserved: frozenset[str], write: Writer,
                                                fmt: str) -> None:
    out = io.StringIO(newline="")
    assert write(OURS.values(), out) == 4
    rows = list(read_links(out.getvalue().encode(), fmt, reserved=reserved))
    assert list(links(rows).values()) == list(OURS.values())
    assert [(link.created_at, link.created_at and link.created_at.utcoffset())
            for link in links(rows).values()] == [
        (link.created_at, link.created_at and link.created_at.utcoffset())
        for link in OURS.values()]  # the same instant, and written with the same offset


@pytest.mark.parametrize("write, fmt", [(write_csv, "csv"), (write_json, "json")])
def test_an_empty_export_reads_back_as_nothing(reserved: frozenset[str], write: Writer,
                                               fmt: str) -> None:
    out = io.StringIO(newline="")
    assert write([], out) == 0
    assert list(read_links(out.getvalue().encode(), fmt, reserved=reserved)) == []


def test_an_older_export_without_the_newer_columns_still_reads(reserved: frozenset[str]) -> None:
    rows = list(read_links(b"code,url\r\ndocs,https://docs.python.org/3/\r\n", "csv",
                           reserved=reserved))
    assert links(rows) == {"docs": Link("docs", "https://docs.python.org/3/")}


@pytest.mark.parametrize("data, fmt", [
    (b"code,url,password_hash\ndocs,https://docs.python.org/3/,scrypt$x\n", "csv"),
    (b'[{"code": "docs", "url": "https://docs.python.org/3/", "colour": "x"}]', "json")])
def test_a_field_this_version_does_not_know_stops_the_import(reserved: frozenset[str], data: bytes,
                                                             fmt: str) -> None:
    rows = list(read_links(data, fmt, reserved=reserved))
    assert problems(rows) == [(1 if fmt == "json" else 2, "file", None)]
    assert ("colour" if fmt == "json" else "password_hash") in str(rows[0])


@pytest.mark.parametrize("row, kind", [
    ("docs,https://docs.python.org/3/,x.pdf,,,,,,", "field"),
    ("docs,,,,,,,,", "missing"),
    (",https://docs.python.org/3/,,,,,,,", "missing"),
    ("docs,https://docs.python.org/3/,,,2026-11-27T05:00:00,,,,", "date"),
    ("docs,https://docs.python.org/3/,,,yesterday,,,,", "date"),
    ("docs,https://docs.python.org/3/,,,,,0,,", "field"),
    ("docs,https://docs.python.org/3/,,,,,,-1,", "field"),
    ("docs,https://docs.python.org/3/,,,,,,,Disabled!", "field"),
    ("cv,,../etc/passwd,,,,,,", "field"),
    ("docs,https://docs.python.org/3/,,", "file"),
])
def test_each_kind_of_bad_row_is_a_problem_on_its_line(reserved: frozenset[str], row: str,
                                                       kind: str) -> None:
    data = f"code,url,file,name,created_at,expires_at,max_visits,visits,state\n{row}\n".encode()
    assert kinds(list(read_links(data, "csv", reserved=reserved))) == [(2, kind)]


# --- Files that are not what they should be ----------------------------------------------

@pytest.mark.parametrize("data, fmt, line", [
    (b"code,url\ndocs,https://example.com/caf\xe9\n", "csv", 2),
    (b'{"data": [\n{"address": "a",\n "target": }]}', "kutt", 3),
    (b"code,url\n\"docs,https://example.com/\n", "csv", 2),
    (b'code,url\ndocs,"https://example.com/' + b"a" * 200_000 + b'"\n', "csv", 2),
    ((FIXTURES / "kutt-links.json").read_bytes(), "bitly", 1),
    ((FIXTURES / "kutt-links.json").read_bytes(), "shlink", 1),
    ((FIXTURES / "yourls-url-table.csv").read_bytes(), "shlink", 1),
    ((FIXTURES / "shlink-short_urls.csv").read_bytes(), "yourls", 1),
    (b"[" * 100_000, "json", 1),
])
def test_a_file_that_cannot_be_read_is_one_problem_not_a_crash(reserved: frozenset[str],
                                                               data: bytes, fmt: str,
                                                               line: int) -> None:
    assert kinds(list(read_links(data, fmt, reserved=reserved)))[-1:] == [(line, "file")]


def test_a_row_with_too_many_fields_is_reported_and_the_rest_still_reads(
        reserved: frozenset[str]) -> None:
    data = b"code,url\na,https://example.com/a,b,c\nb,https://example.com/b\n"
    rows = list(read_links(data, "csv", reserved=reserved))
    assert problems(rows) == [(2, "file", None)]
    assert list(links(rows)) == ["b"]


def assert_rows_are_reportable(rows: Iterable[Row]) -> None:
    for row in rows:
        assert isinstance(row, (Candidate, Problem)) and row.line >= 1
        printed = [str(row), row.code or ""] if isinstance(row, Problem) else [
            row.title or "", *row.tags]
        "".join(printed).encode("utf-8")  # a report can print them


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode),
       fmt=st.sampled_from(FORMATS))
def test_no_bytes_make_the_reader_raise(data: bytes, fmt: str) -> None:
    assert_rows_are_reportable(read_links(data, fmt, reserved=frozenset({"api"})))


ANY_TEXT = st.text(st.characters() | st.sampled_from(["\ud800", "\udcff", "\n", "\x00"]),
                   max_size=12)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=8)
LINK_OBJECTS = st.dictionaries(st.sampled_from([
    "code", "url", "file", "name", "created_at", "max_visits", "address", "target", "domain",
    "link", "password", "expire_in", "shortCode", "longUrl", "shortUrl", "dateCreated", "meta",
    "long_url", "custom_bitlinks", "title", "tags", "shorturl", "timestamp"]), JSON_VALUES)


@settings(max_examples=300, deadline=None)
@given(objects=st.lists(LINK_OBJECTS, max_size=3), fmt=st.sampled_from(FORMATS),
       shape=st.sampled_from([lambda found: found, lambda found: {"data": found},
                              lambda found: {"links": found},
                              lambda found: {"shortUrls": {"data": found}},
                              lambda found: {"links": dict(enumerate(found)), "statusCode": 200}]))
def test_no_json_of_the_right_shape_makes_the_reader_raise(
        objects: list[dict[str, object]], fmt: str, shape: Callable[[object], object]) -> None:
    data = json.dumps(shape(objects)).encode()
    assert_rows_are_reportable(read_links(data, fmt, reserved=frozenset({"api"})))


def test_an_unknown_format_or_domain_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        read_links(b"", "dub", reserved=frozenset())
    with pytest.raises(ValueError, match="not a domain"):
        read_links(b"", "kutt", reserved=frozenset(), domain="a b")


def test_lone_surrogates_in_a_json_file_are_escaped_in_every_report(
        reserved: frozenset[str]) -> None:
    data = json.dumps({"data": [
        {"address": "a\ud800", "target": "https://example.com/", "link": "https://k.example/a"},
        {"address": "ok", "target": "https://example.com/", "description": "\udcff",
         "created_at": "2024\ud800", "link": "https://k.example/ok"},
        {"address": "ok2", "target": "https://example.com/", "description": "\udcff",
         "link": "https://k.example/ok2"}]}).encode()
    rows = list(read_links(data, "kutt", reserved=reserved))
    assert kinds(rows) == [(1, "code"), (1, "date"), (1, "link")]
    assert_rows_are_reportable(rows)
    assert isinstance(rows[0], Problem) and rows[0].code == "a\\ud800"


# --- Planning -------------------------------------------------------------------------------

def row(line: int, code: str, url: str, created_at: datetime | None = None) -> Candidate:
    return Candidate(line, Link(code, url, created_at=created_at))


def test_a_plan_sorts_rows_into_new_identical_conflicting_and_invalid() -> None:
    here = {"same": Link("same", "https://example.com/same"),
            "taken": Link("taken", "https://example.com/mine")}
    bad = Problem(5, "url", "bad", "fix it", "bad")
    plan = plan_import([row(2, "new", "https://example.com/new"),
                        row(3, "same", "https://example.com/same"),
                        row(4, "taken", "https://example.com/theirs"), bad], here.get)
    assert [c.line for c in plan.add] == [2]
    assert [c.line for c in plan.identical] == [3]
    assert [(p.line, p.kind, p.code) for p in plan.conflicts] == [(4, "conflict", "taken")]
    assert "https://example.com/mine" in str(plan.conflicts[0])
    assert plan.invalid == [bad]


def test_a_code_given_twice_in_a_file_is_planned_once() -> None:
    plan = plan_import([row(2, "a", "https://example.com/1"), row(3, "a", "https://example.com/1"),
                        row(4, "a", "https://example.com/2")], no_links)
    assert [c.line for c in plan.add] == [2]
    assert [c.line for c in plan.identical] == [3]
    assert [p.line for p in plan.conflicts] == [4]
    assert "line 2 of this file" in str(plan.conflicts[0])


def test_a_deleted_code_is_never_planned_again_even_for_the_same_url() -> None:
    here = {"gone": Link("gone", "https://example.com/", state=DELETED)}
    plan = plan_import([row(2, "gone", "https://example.com/")], here.get)
    assert plan.add == [] and plan.identical == []
    assert "deleted" in str(plan.conflicts[0])


def test_a_url_row_for_a_code_that_holds_an_upload_is_a_conflict() -> None:
    here = {"cv": Link("cv", file="3f2a.pdf", name="cv.pdf")}
    plan = plan_import([row(2, "cv", "https://example.com/cv.pdf")], here.get)
    assert "the uploaded file cv.pdf" in str(plan.conflicts[0])


def test_a_plan_keeps_each_link_s_creation_time() -> None:
    created = datetime(2019, 8, 28, 10, 18, 44, tzinfo=timezone(timedelta(hours=2)))
    plan = plan_import([row(2, "a", "https://example.com/", created_at=created)], no_links)
    assert plan.add[0].link.created_at == created


@pytest.mark.parametrize("name, fmt, domain", PEER_FILES)
def test_importing_the_same_file_twice_plans_nothing_the_second_time(
        reserved: frozenset[str], name: str, fmt: str, domain: str | None) -> None:
    site: dict[str, Link] = {}
    first = plan_import(read(name, fmt, reserved, domain), site.get)
    site.update((c.link.code, c.link) for c in first.add)
    second = plan_import(read(name, fmt, reserved, domain), site.get)
    assert first.add and not first.conflicts
    assert second.add == [] and second.conflicts == []
    assert len(second.identical) == len(first.add) + len(first.identical)
    assert second.invalid == first.invalid


def test_an_export_imported_into_an_empty_site_recreates_it(reserved: frozenset[str]) -> None:
    out = io.StringIO(newline="")
    write_csv(OURS.values(), out)
    plan = plan_import(read_links(out.getvalue().encode(), "csv", reserved=reserved), no_links)
    assert {c.link.code: c.link for c in plan.add} == OURS


# --- Our JSON carries every field -----------------------------------------------------------

EVERYTHING = Link("full", "https://example.com/full", created_at=at("2026-01-02T03:04:05+00:00"),
                  expires_at=at("2030-01-01T00:00:00+00:00"), max_visits=3, visits=1,
                  state="disabled", reason="legal", note="court order 9", changed_by="dana",
                  changed_at="2026-02-03T04:05:06+00:00",
                  password_hash="scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 43 + "=",
                  manage_hash="ab" * 32, owner="key-1")


def test_our_json_reads_back_every_field_and_our_csv_no_hash(reserved: frozenset[str]) -> None:
    as_json, as_csv = io.StringIO(newline=""), io.StringIO(newline="")
    write_json([EVERYTHING], as_json)
    write_csv([EVERYTHING], as_csv)
    assert links(list(read_links(as_json.getvalue().encode(), "json", reserved=reserved))) == {
        "full": EVERYTHING}
    assert as_csv.getvalue().splitlines()[1] == (
        "full,https://example.com/full,,,2026-01-02T03:04:05+00:00,2030-01-01T00:00:00+00:00,"
        "3,1,disabled,legal")


@pytest.mark.parametrize("fields", [
    {"state": "disabled", "reason": "boring"},
    {"state": "deleted", "reason": "phishing"},
    {"state": "paused"},
    {"password_hash": "plaintext-password"},
    {"manage_hash": "not-a-sha256"},
])
def test_a_state_or_hash_the_store_could_not_use_is_a_problem(reserved: frozenset[str],
                                                              fields: dict[str, str]) -> None:
    data = json.dumps([{"code": "x", "url": "https://example.com/"} | fields]).encode()
    assert kinds(list(read_links(data, "json", reserved=reserved))) == [(1, "field")]


@pytest.mark.parametrize("state, expected", [("disabled", ("disabled", "other")),
                                             ("deleted", ("deleted", "operator")),
                                             ("expired", (None, None)), ("active", (None, None))])
def test_a_stopped_state_without_a_reason_gets_the_general_one(
        reserved: frozenset[str], state: str, expected: tuple[str | None, str | None]) -> None:
    data = f"code,url,state\nx,https://example.com/,{state}\n".encode()
    link = links(list(read_links(data, "csv", reserved=reserved)))["x"]
    assert (link.state, link.reason) == expected


def test_a_deleted_link_imported_again_as_deleted_is_already_there() -> None:
    here = {"gone": Link("gone", "https://example.com/", state=DELETED)}
    plan = plan_import([Candidate(2, Link("gone", "https://example.com/", state=DELETED,
                                          reason="operator"))], here.get)
    assert [c.line for c in plan.identical] == [2] and plan.conflicts == []
