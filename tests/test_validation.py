"""What may be shortened, and under which short names."""
from __future__ import annotations

import pytest
from flask import Flask

from linkrules import checked_code, checked_url, InvalidInput


@pytest.mark.parametrize("url", [
    "https://example.com",
    "http://example.com/a/b?c=d&e=f#g",
    "https://user@example.com:8443/path",
    "http://127.0.0.1:8000/x",
    "https://example.com/" + "a" * (2048 - len("https://example.com/")),
])
def test_web_urls_are_stored_as_given(url: str) -> None:
    assert checked_url(url) == url


@pytest.mark.parametrize("url, stored", [
    ("https://bücher.example/straße", "https://xn--bcher-kva.example/stra%C3%9Fe"),
    ("HTTPS://EXAMPLE.COM/Path", "https://example.com/Path"),
    ("https://example.com/?q=[1]", "https://example.com/?q=%5B1%5D"),
])
def test_urls_are_stored_in_the_form_the_location_header_carries(url: str, stored: str) -> None:
    assert checked_url(url) == stored


@pytest.mark.parametrize("url, message", [
    ("", "Enter the URL"),
    ("javascript:alert(1)", "Only http:// and https://"),
    ("data:text/html,<script>alert(1)</script>", "Only http:// and https://"),
    ("ftp://example.com/file", "Only http:// and https://"),
    ("example.com/page", "Only http:// and https://"),
    ("//example.com/page", "Only http:// and https://"),
    ("https://", "no host name"),
    ("https:///path", "no host name"),
    ("https://example.com/a b", "spaces or control characters"),
    ("https://example.com/\ta", "spaces or control characters"),
    ("https://example.com/\r\nSet-Cookie: x=1", "spaces or control characters"),
    ("https://example.com/\x00", "spaces or control characters"),
    ("https://example.com/\u2028", "spaces or control characters"),
    ("https://example.com:99999/", "not a valid URL"),
    ("https://[::1/", "not a valid URL"),
    ("https://example.com/" + "a" * 2048, "the limit is 2,048"),
])
def test_bad_urls_are_refused_with_a_reason(url: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as refused:
        checked_url(url)
    assert refused.value.field == "url"
    assert refused.value.status == 400


@pytest.mark.parametrize("code", ["a", "my-link", "under_score", "A1b2C3", "x" * 64])
def test_good_short_names_are_accepted(app: Flask, code: str) -> None:
    with app.app_context():
        assert checked_code(code) == code


def test_a_blank_short_name_means_a_random_one(app: Flask) -> None:
    with app.app_context():
        assert checked_code("") is None


@pytest.mark.parametrize("code", ["a/b", "..", "../etc", "with space", "café", "x" * 65,
                                  "dot.ted", "new\nline", "tab\t", "%2F", "ü"])
def test_malformed_short_names_are_refused(app: Flask, code: str) -> None:
    with app.app_context(), pytest.raises(InvalidInput, match="1 to 64 letters, digits"):
        checked_code(code)


@pytest.mark.parametrize("code", ["api", "your-url", "static", "healthz", "API", "Healthz"])
def test_route_prefixes_are_reserved(app: Flask, code: str) -> None:
    with app.app_context(), pytest.raises(InvalidInput, match="used by the site itself"):
        checked_code(code)


def test_every_route_prefix_is_reserved(app: Flask) -> None:
    prefixes = {rule.rule.split("/")[1] for rule in app.url_map.iter_rules()
                if not rule.rule.startswith("/<")} - {""}
    assert prefixes == {"api", "your-url", "static", "healthz", "manage", "report"}
    assert prefixes <= app.config["RESERVED_CODES"]
