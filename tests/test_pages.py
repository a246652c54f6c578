"""The page's markup and headers, checked without a browser (tests/browser drives one).

Strict CSP and offline use mean: no external assets, no inline script or style. Every
field has a label; an error sits in its field's group and is linked by aria-describedby.
"""
from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.helpers import PostForm, csrf_token
from tests.servers import REPO

Attrs = dict[str, str | None]
PAGE_FILES = sorted([*REPO.glob("templates/**/*.html"), *REPO.glob("static/**/*.*")])


class Element:
    def __init__(self, tag: str, attrs: Attrs, group: int | None) -> None:
        self.tag, self.attrs, self.group = tag, attrs, group

    def get(self, name: str) -> str:
        return self.attrs.get(name) or ""


class Page(HTMLParser):
    """Every element of a page, each with the index of the div.field it sits in."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[Element] = []
        self.inline_scripts = 0
        self._open_divs: list[int | None] = []
        self._groups = 0
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        group = next((g for g in reversed(self._open_divs) if g is not None), None)
        element = Element(tag, dict(attrs), group)
        self.elements.append(element)
        if tag == "div":
            is_field = "field" in element.get("class").split()
            self._groups += is_field
            self._open_divs.append(self._groups if is_field else None)
        if tag == "script" and not element.get("src"):
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._open_divs:
            self._open_divs.pop()

    def by_id(self, element_id: str) -> Element:
        [found] = [e for e in self.elements if e.get("id") == element_id]
        return found

    def all(self, tag: str) -> list[Element]:
        return [e for e in self.elements if e.tag == tag]


def pages(client: FlaskClient, post_form: PostForm) -> dict[str, TestResponse]:
    """The app's pages in every state a person sees."""
    post_form(url="https://example.com/listed", code="listed")
    post_form(url="https://example.com/locked", code="locked", password="open sesame")
    post_form(url="https://example.com/gone", code="gone", max_visits="1")
    client.get("/gone")
    result = post_form(url="https://example.com/result", code="result", max_visits="3",
                       expires_at="2999-01-01T00:00", password="open sesame")
    [manage_path] = re.findall(r'value="http://localhost(/manage/result/[^"]+)"', result.text)
    return {
        "home": client.get("/"),
        "home with a URL error": post_form(url="javascript:alert(1)", code="kept"),
        "home with a name error": post_form(url="https://example.com/", code="listed"),
        "home with a file error": post_form(file=(b"", ""), code="no-file"),
        "home with an expiry error": post_form(url="https://example.com/",
                                               expires_at="2001-01-01T00:00"),
        "home with a password error": post_form(url="https://example.com/", password="short"),
        "result": result,
        "password": client.get("/locked"),
        "wrong password": client.post("/locked/password", data={
            "csrf_token": csrf_token(client), "password": "not it at all"}),
        "410": client.get("/gone"),
        "manage": client.get(manage_path),
        "404": client.get("/no-such-link"),
        "405": client.delete("/"),
    }


@pytest.fixture
def every_page(client: FlaskClient, post_form: PostForm) -> dict[str, TestResponse]:
    return pages(client, post_form)


# --- Headers ---------------------------------------------------------------------------

def test_every_page_has_a_strict_content_security_policy(
        every_page: dict[str, TestResponse]) -> None:
    for name, response in every_page.items():
        csp = response.headers.get("Content-Security-Policy", "")
        directives = dict((part.strip().split(" ", 1) + [""])[:2] for part in csp.split(";"))
        assert directives.get("script-src") == "'self'", name
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, name
        assert directives.get("frame-ancestors") == "'none'", name
        assert directives.get("object-src") == "'none'", name
        assert response.headers["X-Frame-Options"] == "DENY", name
        expected = "no-referrer" if name == "manage" else "strict-origin-when-cross-origin"
        assert response.headers["Referrer-Policy"] == expected, name  # manage: URL has a secret
        assert response.headers["X-Content-Type-Options"] == "nosniff", name


def test_hsts_is_sent_over_https_only(client: FlaskClient) -> None:
    assert "Strict-Transport-Security" not in client.get("/").headers
    direct = client.get("/", base_url="https://localhost")
    assert direct.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    behind_the_load_balancer = client.get("/", headers={"X-Forwarded-Proto": "https"})
    assert "max-age=" in behind_the_load_balancer.headers["Strict-Transport-Security"]


# --- No external assets, no inline code --------------------------------------------------

EXTERNAL_REFERENCE = re.compile(
    r"""(?:\b(?:src|href|action|srcset|poster)\s*=\s*["']?\s*|url\(\s*["']?\s*|@import\s+["']?)"""
    r"""(?:[a-z][a-z0-9+.-]*:)?//""", re.IGNORECASE)


@pytest.mark.parametrize("path", PAGE_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_templates_and_static_files_load_nothing_from_elsewhere(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert not EXTERNAL_REFERENCE.search(text), EXTERNAL_REFERENCE.search(text)


@pytest.mark.parametrize("path", [p for p in PAGE_FILES if p.suffix == ".html"],
                         ids=lambda p: p.name)
def test_templates_have_no_inline_script_style_or_handlers(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), "inline <script>"
    assert not re.search(r"<style\b|\sstyle\s*=", text), "inline style"
    assert not re.search(r"\son[a-z]+\s*=", text), "inline event handler"


def test_every_rendered_page_loads_its_assets_from_static_only(
        every_page: dict[str, TestResponse]) -> None:
    for name, response in every_page.items():
        page = Page(response.text)
        assert page.inline_scripts == 0, name
        assets = ([e.get("src") for e in page.all("script") + page.all("img")]
                  + [e.get("href") for e in page.all("link")])
        assert assets and all(a.startswith("/static/") for a in assets), (name, assets)
        assert not any("style" in e.attrs for e in page.elements), name


def test_the_static_files_are_served(client: FlaskClient) -> None:
    for name, kind in [("style.css", "text/css"), ("app.js", "text/javascript"),
                       ("favicon.svg", "image/svg+xml")]:
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and response.mimetype == kind, name


# --- Labels, errors and focus ----------------------------------------------------------

def test_every_field_has_a_label_and_ids_are_unique(every_page: dict[str, TestResponse]) -> None:
    for name, response in every_page.items():
        page = Page(response.text)
        ids = [e.get("id") for e in page.elements if e.get("id")]
        assert len(ids) == len(set(ids)), (name, ids)
        labelled = {e.get("for") for e in page.all("label")}
        fields = [e for e in page.all("input") + page.all("select") + page.all("textarea")
                  if e.get("type") != "hidden"]
        unlabelled = [f.get("id") or f.get("name") for f in fields if f.get("id") not in labelled]
        assert not unlabelled, (name, unlabelled)
        for e in page.elements:
            for ref in e.get("aria-describedby").split():
                assert ref in ids, (name, e.get("id"), ref)


def test_the_forms_keep_their_field_names_ids_and_csrf_inputs(
        every_page: dict[str, TestResponse]) -> None:
    page = Page(every_page["home"].text)
    assert (page.by_id("url").get("name"), page.by_id("url-code").get("name")) == ("url", "code")
    assert page.by_id("file").get("name") == "file"
    assert page.by_id("file-code").get("name") == "code"
    tokens = [e for e in page.all("input") if e.get("name") == "csrf_token"]
    assert len(tokens) == 2 and all(t.get("type") == "hidden" and t.get("value") for t in tokens)


@pytest.mark.parametrize("state, field_id, message", [
    ("home with a URL error", "url", "Only http:// and https://"),
    ("home with a name error", "url-code", "is already taken"),
    ("home with a file error", "file", "Choose a file"),
    ("home with an expiry error", "url-expires", "is in the past"),
    ("home with a password error", "url-password", "8 to 256 characters"),
    ("wrong password", "password", "That password is not right"),
])
def test_an_error_sits_in_its_fields_group_and_the_field_gets_the_focus(
        every_page: dict[str, TestResponse], state: str, field_id: str, message: str) -> None:
    text = every_page[state].text
    page = Page(text)
    field = page.by_id(field_id)
    assert field.get("aria-invalid") == "true"
    [error] = [e for e in page.elements if "error" in e.get("class").split()]
    assert error.get("id") in field.get("aria-describedby").split()
    assert error.group is not None and error.group == field.group
    assert message in text.split(f'id="{error.get("id")}"', 1)[1].split("</p>", 1)[0]
    assert [e.get("id") for e in page.elements if "autofocus" in e.attrs] == [field_id]
    assert every_page[state].text.count("<title>Error: ") == 1


def test_the_url_field_has_the_focus_and_the_short_name_says_it_is_optional(
        every_page: dict[str, TestResponse]) -> None:
    page = Page(every_page["home"].text)
    assert [e.get("id") for e in page.elements if "autofocus" in e.attrs] == ["url"]
    for label in re.findall(r'<label for="(?:url|file)-code">(.*?)</label>',
                            every_page["home"].text, re.DOTALL):
        assert "(optional)" in label


def test_the_kept_input_is_shown_again_escaped(post_form: PostForm) -> None:
    page = post_form(url='https://example.com/"><script>alert(1)</script>', code="x y")
    assert page.status_code == 400
    assert "<script>alert(1)" not in page.text
    assert 'value="x y"' in page.text


def test_copy_buttons_are_hidden_until_the_script_can_make_them_work(
        every_page: dict[str, TestResponse]) -> None:
    for name in ("result", "home"):
        buttons = [e for e in Page(every_page[name].text).all("button")
                   if "copy" in e.get("class").split()]
        assert buttons and all("hidden" in b.attrs and b.get("data-copy") for b in buttons), name


def test_the_result_shows_the_short_url_a_way_to_open_it_and_a_scalable_qr_code(
        every_page: dict[str, TestResponse]) -> None:
    text = every_page["result"].text
    page = Page(text)
    assert page.by_id("short-url").get("value") == "http://localhost/result"
    assert [a for a in page.all("a") if a.get("href") == "http://localhost/result"]
    [qr] = [e for e in page.elements if e.get("role") == "img"]
    assert qr.get("aria-label") == "QR code of http://localhost/result"
    [svg] = page.all("svg")
    assert re.fullmatch(r"0 0 \d+ \d+", svg.get("viewbox")), "the QR code cannot scale"
