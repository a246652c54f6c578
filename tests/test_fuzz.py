"""Generated bad input against the form and the JSON API (hypothesis), and abusive paths,
methods and headers.

Properties, for every input: no 5xx; every 4xx carries a message a person can read; the
links file only ever holds valid records; a stored URL redirects to exactly itself.
Runs against the Flask test client over a temporary data directory, so it stays fast;
the same app under real gunicorn is in tests/torture.
"""
from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

from application import create_app
from linkrules import checked_url
from linkstore import MAX_REPORT_DETAILS, REPORT_REASONS, new_api_key
from linkstore.jsonfile import shape_problem, states_problem
from linkstore.keys import open_keys
from linkstore.reports import open_reports
from tests.helpers import csrf_token

# FUZZ_EXAMPLES=2000 for a deeper run than make test's bounded one.
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "120")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

HTML_MESSAGES = ('role="alert"', "We can't find that link", "That request could not be handled")


# --- Strategies ------------------------------------------------------------------------

def repeated(text: str, times: int) -> str:
    return text * times


huge_text = st.builds(repeated, st.text(min_size=1, max_size=4), st.integers(600, 5000))
any_text = st.one_of(st.text(max_size=80), huge_text)
schemes = st.sampled_from(["http", "https", "HTTPS", "ftp", "javascript", "data", "", "http:"])
plausible_urls = st.builds("{}://{}/{}".format, schemes, st.text(max_size=30), any_text)
urls = st.one_of(plausible_urls, any_text)
codes = st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True), any_text)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8)
link_bodies = st.builds(lambda url, code, extra: {"url": url, "code": code, **extra},
                        urls, codes, st.dictionaries(st.text(max_size=5), json_values,
                                                     max_size=2))
expiries = st.one_of(st.datetimes(timezones=st.timezones()).map(lambda when: when.isoformat()),
                     st.datetimes().map(lambda when: when.isoformat()), any_text,
                     st.sampled_from(["2999-01-01T00:00:00Z", "2999-01-01T00:00",
                                      "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00",
                                      "2999-02-30T00:00Z"]))
option_values = st.fixed_dictionaries({}, optional={
    "expires_at": st.one_of(expiries, json_values),
    "max_visits": st.one_of(st.integers(-2, 2**64), st.sampled_from(["1", "07", "١", "1e3",
                                                                     "9" * 5000, "0" * 5000 + "1"]),
                            json_values),
    "password": st.one_of(st.text(max_size=300), json_values)})
raw_bytes = st.binary(max_size=300)
# A header's value as a server may receive it: any bytes but CR and LF, read as latin-1.
header_values = st.binary(max_size=120).map(
    lambda raw: raw.replace(b"\r", b"").replace(b"\n", b"").decode("latin-1"))
authorizations = st.one_of(header_values, header_values.map("Bearer {}".format),
                           st.sampled_from(["Bearer", "Bearer ", "bearer sk_", "Basic x",
                                            "Bearer sk_" + "0" * 64]))


# --- Checks ----------------------------------------------------------------------------

def assert_sane(response: TestResponse) -> None:
    """No 5xx, and a 4xx says what was wrong."""
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    if response.status_code < 400:
        return
    if response.is_json:
        message = response.get_json()["error"]
        assert isinstance(message, str) and message.strip()
    else:
        page = response.get_data(as_text=True)
        assert any(marker in page for marker in HTML_MESSAGES), page[:500]


def assert_store_valid(app: Flask) -> None:
    """Every record on disk is one the app could have made: shaped, checked, dated, with
    lifecycle fields in the form the app writes them."""
    path = Path(app.config["URLS_FILE"])
    if not path.exists():
        return
    links = json.loads(path.read_text(encoding="utf-8"))
    assert shape_problem(links) is None
    for code, record in links.items():
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", code), code
        assert "created_at" in record
        if "url" in record:
            assert checked_url(record["url"]) == record["url"]
        assert re.fullmatch(r"[0-9a-f]{64}", record["manage_hash"])
        assert re.fullmatch(r"[1-9][0-9]{0,9}", record.get("max_visits", "1"))
        if "password_hash" in record:
            assert re.fullmatch(r"scrypt\$16384\$8\$1\$[A-Za-z0-9+/=]{24}\$[A-Za-z0-9+/=]{44}",
                                record["password_hash"])
        if "expires_at" in record:
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00",
                                record["expires_at"])
    state_file = path.with_name(path.name + ".state")
    if state_file.exists():
        assert states_problem(json.loads(state_file.read_text(encoding="utf-8"))) is None


def assert_redirects_to_itself(client: FlaskClient, code: str, url: str) -> None:
    response = client.get(f"/{code}")
    assert response.status_code == 302
    assert response.headers["Location"] == url
    assert client.get(f"/api/links/{code}").get_json()["url"] == url


def multipart(fields: list[tuple[str, str | None, bytes]], boundary: str = "fuzzb0undary") -> bytes:
    """A multipart/form-data body from (name, filename or None, raw value) parts."""
    body = b""
    for name, filename, value in fields:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
                 + value + b"\r\n")
    return body + f"--{boundary}--\r\n".encode()


def post_multipart(client: FlaskClient, body: bytes,
                   boundary: str = "fuzzb0undary") -> TestResponse:
    return client.post("/your-url", data=body,
                       content_type=f"multipart/form-data; boundary={boundary}")


def newest_code(client: FlaskClient) -> str:
    codes: list[str] = client.get("/api").get_json()
    return codes[0]


# --- The JSON API ----------------------------------------------------------------------

@FUZZ
@given(body=link_bodies)
def test_api_link_bodies_never_fail_and_store_only_what_redirects(
        app: Flask, client: FlaskClient, body: dict[str, Any]) -> None:
    response = client.post("/api/links", json={k: v for k, v in body.items() if v is not None})
    assert_sane(response)
    if response.status_code == 201:
        created = response.get_json()
        assert created["url"] == checked_url(body["url"].strip())
        assert_redirects_to_itself(client, created["code"], created["url"])
    assert_store_valid(app)


@FUZZ
@given(options=option_values)
def test_api_lifecycle_options_never_fail_and_store_only_what_was_checked(
        app: Flask, client: FlaskClient, options: dict[str, Any]) -> None:
    response = client.post("/api/links", json={"url": "https://example.com/", **options})
    assert_sane(response)
    if response.status_code == 400:
        assert response.get_json()["field"] in ("expires_at", "max_visits", "password")
    if response.status_code == 201:
        created = response.get_json()
        assert created["max_visits"] == options.get("max_visits") or int(
            options["max_visits"].strip().lstrip("0")) == created["max_visits"]
        assert created["protected"] == bool(options.get("password"))
        assert "password" not in response.get_data(as_text=True).replace('"protected"', "")
    assert_store_valid(app)


@FUZZ
@given(code=st.one_of(codes.map(lambda code: code or "x"), st.text(max_size=80)),
       token=any_text, password=any_text)
def test_password_and_delete_routes_never_fail_whatever_is_sent(
        app: Flask, client: FlaskClient, code: str, token: str, password: str) -> None:
    if client.get("/api/links/locked").status_code == 404:
        client.post("/api/links", json={"url": "https://example.com/", "code": "locked",
                                        "password": "open sesame"})
    for target in (code, "locked"):
        quoted = quote(target, safe="")
        assert_sane(client.post(f"/{quoted}/password", data={
            "csrf_token": csrf_token(client), "password": password}))
        assert_sane(client.get(f"/manage/{quoted}/{quote(token, safe='')}"))
        headers = {"X-Manage-Token": token} if token.isascii() and token.isprintable() else {}
        assert_sane(client.delete(f"/api/links/{quoted}", headers=headers))
    assert client.get("/locked").status_code == 200, "a guessed token deleted the link"
    assert_store_valid(app)


@FUZZ
@given(value=json_values)
def test_api_any_json_value_is_answered_without_5xx(app: Flask, client: FlaskClient,
                                                    value: object) -> None:
    assert_sane(client.post("/api/links", data=json.dumps(value),
                            content_type="application/json"))
    assert_store_valid(app)


@FUZZ
@given(body=raw_bytes, content_type=st.sampled_from(
    ["application/json", "application/json; charset=latin-1", "text/plain", "",
     "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]))
def test_api_raw_bytes_are_answered_without_5xx(app: Flask, client: FlaskClient, body: bytes,
                                                content_type: str) -> None:
    assert_sane(client.post("/api/links", data=body, content_type=content_type))
    assert_store_valid(app)


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"url":' * 50_000, b"\xff\xfe{}",
                                  b'{"url": "https://example.com/\\ud800"}',
                                  b'{"url": "https://example.com/\xff"}'])
def test_api_pathological_json_is_a_400(client: FlaskClient, body: bytes) -> None:
    response = client.post("/api/links", data=body, content_type="application/json")
    assert response.status_code == 400
    assert_sane(response)


@FUZZ
@given(authorization=authorizations, limit=st.one_of(st.none(), header_values, st.sampled_from(
           ["1", "1000", "1001", "0", "9" * 5000, "0" * 5000 + "5"])),
       cursor=st.one_of(st.none(), header_values, st.binary(max_size=60).map(
           lambda raw: base64.urlsafe_b64encode(raw).decode())))
def test_api_keys_and_paging_of_any_text_never_fail(
        app: Flask, client: FlaskClient, authorization: str, limit: str | None,
        cursor: str | None) -> None:
    key = keys_of(app)
    query = {name: value for name, value in (("limit", limit), ("cursor", cursor)) if value}
    for headers in ({"Authorization": authorization}, {"Authorization": f"Bearer {key}"}):
        listed = client.get("/api/links", query_string=query, headers=headers)
        assert_sane(listed)
        assert listed.status_code in (200, 400, 401)
        if listed.status_code == 401:
            assert listed.headers["WWW-Authenticate"] == 'Bearer realm="api"'
        assert_sane(client.post("/api/links", json={"url": "https://example.com/"},
                                headers=headers))
        assert_sane(client.delete("/api/links/locked", headers=headers))
    assert_store_valid(app)


def keys_of(app: Flask) -> str:
    """A usable API key of app's store, made on first use."""
    if "fuzz_key" not in app.config:
        key, record = new_api_key("fuzz")
        open_keys(app.extensions["link_store"]).add(record)
        app.config["fuzz_key"] = key
    return str(app.config["fuzz_key"])


@pytest.mark.parametrize("digits", ["9" * 5000, "0" * 5000 + "5"])
def test_numbers_longer_than_int_reads_are_a_400_or_taken(app: Flask, client: FlaskClient,
                                                          digits: str) -> None:
    """int() refuses more than 4,300 digits with a ValueError: never a 500."""
    made = client.post("/api/links", json={"url": "https://example.com/", "max_visits": digits})
    assert made.status_code == (400 if digits.startswith("9") else 201)
    listed = client.get("/api/links", query_string={"limit": digits},
                        headers={"Authorization": f"Bearer {keys_of(app)}"})
    assert listed.status_code == (400 if digits.startswith("9") else 200)
    assert_sane(made)
    assert_sane(listed)


# --- Reports ---------------------------------------------------------------------------

@pytest.fixture
def report_app(tmp_path: Path) -> Flask:
    """The app without the report rate limit, which would answer 429 after ten."""
    return create_app({"DATA_DIR": tmp_path / "data", "TESTING": True, "SECRET_KEY": "x",
                       "CREATE_RATE_LIMIT": "off", "REPORT_RATE_LIMIT": "off"})


@FUZZ
@given(code=st.one_of(codes.map(lambda code: code or "x"), st.text(max_size=80)),
       reason=st.one_of(st.sampled_from(REPORT_REASONS).map(str.encode), raw_bytes),
       details=st.one_of(st.text(max_size=1100).map(str.encode), raw_bytes,
                         huge_text.map(str.encode)))
def test_reports_of_any_bytes_never_fail_and_store_only_what_was_checked(
        report_app: Flask, code: str, reason: bytes, details: bytes) -> None:
    client = report_app.test_client()
    client.post("/api/links", json={"url": "https://example.com/", "code": "reported"})
    for target in (quote(code, safe=""), "reported"):
        assert_sane(client.get(f"/report/{target}"))
        body = multipart([("csrf_token", None, csrf_token(client).encode()),
                          ("reason", None, reason), ("details", None, details)])
        response = client.post(f"/report/{target}", data=body,
                               content_type="multipart/form-data; boundary=fuzzb0undary")
        assert_sane(response)
        # /report/, /report/. and /report/.. are not a code's page, nor is a code with a
        # slash (/report//0): Werkzeug redirects them (308)
        assert response.status_code in (303, 400, 404) or (
            response.status_code == 308 and (target in ("", ".", "..") or "%2F" in target))
    for stored in open_reports(report_app.extensions["link_store"]).reports():
        assert stored.reason in REPORT_REASONS
        assert len(stored.details) <= MAX_REPORT_DETAILS
        assert all(char.isprintable() or char in "\n\t" for char in stored.details)


# --- The form --------------------------------------------------------------------------

@FUZZ
@given(expires_at=st.one_of(expiries.map(str.encode), raw_bytes),
       utc_offset=st.one_of(st.integers(-2000, 2000).map(lambda n: str(n).encode()), raw_bytes),
       max_visits=st.one_of(st.integers(-5, 10**12).map(lambda n: str(n).encode()), raw_bytes),
       password=st.one_of(st.text(max_size=300).map(str.encode), raw_bytes))
def test_form_more_options_of_any_bytes_never_fail(
        app: Flask, client: FlaskClient, expires_at: bytes, utc_offset: bytes,
        max_visits: bytes, password: bytes) -> None:
    body = multipart([("csrf_token", None, csrf_token(client).encode()),
                      ("url", None, b"https://example.com/"), ("expires_at", None, expires_at),
                      ("utc_offset", None, utc_offset), ("max_visits", None, max_visits),
                      ("password", None, password)])
    response = post_multipart(client, body)
    assert_sane(response)
    if response.status_code != 200:  # the form again: the password field is never filled in
        [field] = re.findall(r'<input type="password" id="url-password"[^>]*>',
                             response.get_data(as_text=True))
        assert "value=" not in field
    assert_store_valid(app)


@FUZZ
@given(url=st.one_of(urls.map(str.encode), raw_bytes), code=st.one_of(codes.map(
    lambda code: (code or "").encode()), raw_bytes))
def test_form_fields_of_any_bytes_never_fail(app: Flask, client: FlaskClient, url: bytes,
                                             code: bytes) -> None:
    body = multipart([("csrf_token", None, csrf_token(client).encode()), ("url", None, url),
                      ("code", None, code)])
    response = post_multipart(client, body)
    assert_sane(response)
    if response.status_code == 200:
        code_made = newest_code(client)
        assert f"/{code_made}" in response.get_data(as_text=True)
        stored = client.get(f"/api/links/{code_made}").get_json()["url"]
        assert stored == checked_url(url.decode().strip())
        assert_redirects_to_itself(client, code_made, stored)
    assert_store_valid(app)


@FUZZ
@given(filename=st.text(min_size=1, max_size=40), content=raw_bytes)
def test_uploads_with_any_name_never_fail_and_download_safely(
        app: Flask, client: FlaskClient, filename: str, content: bytes) -> None:
    safe_name = filename.replace('"', "'").replace("\r", " ").replace("\n", " ")
    body = multipart([("csrf_token", None, csrf_token(client).encode()),
                      ("file", safe_name, content)])
    response = post_multipart(client, body)
    assert_sane(response)
    if response.status_code == 200:
        download = client.get(f"/{newest_code(client)}")
        assert_sane(download)
        assert download.status_code == 200 and download.data == content
        assert download.headers["X-Content-Type-Options"] == "nosniff"
        assert "sandbox" in download.headers["Content-Security-Policy"]
    assert_store_valid(app)


@FUZZ
@given(body=raw_bytes, boundary=st.sampled_from(["fuzzb0undary", "x", "-" * 70]))
def test_random_multipart_bodies_never_fail(app: Flask, client: FlaskClient, body: bytes,
                                            boundary: str) -> None:
    token = csrf_token(client).encode()
    framed = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"csrf_token\"\r\n\r\n"
              .encode() + token + b"\r\n" + body)
    assert_sane(post_multipart(client, framed, boundary))
    assert_sane(post_multipart(client, body, boundary))
    assert_store_valid(app)


# --- Paths, methods and headers --------------------------------------------------------

@FUZZ
@given(path=st.one_of(st.text(max_size=200), huge_text))
def test_any_path_is_answered_without_5xx(client: FlaskClient, path: str) -> None:
    # The test client reads a target starting with "//" as a host name ("//." fails in
    # its IDNA encoder before any request is made); "%2F" covers a leading slash.
    for target in (f"/{quote(path, safe='')}", f"/{quote(path).lstrip('/')}",
                   f"/api/links/{quote(path)}"):
        assert_sane(client.get(target))


@pytest.mark.parametrize("path", ["/%2F", "/..%2F..%2Fetc%2Fpasswd", "/../../etc/passwd",
                                  "/a%00b", "/%00", "/api/links/%00", "/static/..%2Furls.json",
                                  "/static/../data/urls.json", "/urls.json", "/secret_key",
                                  "/uploads/x", "/" + "a" * 10_000, "/%C0%AE%C0%AE/"])
def test_abusive_paths_reveal_nothing(client: FlaskClient, path: str) -> None:
    """Nothing outside static/ is ever served; "/%2F" decodes to "//", the home page."""
    response = client.get(path)
    assert response.status_code in (404, 308) or (path == "/%2F" and response.status_code == 200)
    assert_sane(response)
    assert b"test-secret" not in response.data and b'"created_at"' not in response.data


@pytest.mark.parametrize("method, path", [
    ("PUT", "/"), ("DELETE", "/"), ("PATCH", "/abc"), ("DELETE", "/abc"),
    ("PUT", "/api/links"), ("DELETE", "/api/links"), ("PATCH", "/api/links"),
    ("PUT", "/report/abc"), ("DELETE", "/report/abc"), ("POST", "/report/abc/sent"),
    ("POST", "/api/links/abc"), ("PUT", "/api/links/abc"), ("POST", "/healthz"),
    ("GET", "/abc/password"), ("DELETE", "/manage/abc/token"),
    ("PUT", "/your-url"), ("POST", "/abc"), ("TRACE", "/"), ("PROPFIND", "/")])
def test_methods_other_than_the_allowed_ones_are_405(client: FlaskClient, method: str,
                                                     path: str) -> None:
    response = client.open(path, method=method)
    assert response.status_code == 405
    assert response.headers["Allow"]
    assert_sane(response)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:443", "localhost@evil.example",
                                  "a" * 300])
def test_a_spoofed_host_does_not_change_printed_short_urls(tmp_path: Path, host: str) -> None:
    app = create_app({"DATA_DIR": tmp_path / "data", "TESTING": True, "SECRET_KEY": "x",
                      "CREATE_RATE_LIMIT": "off", "PUBLIC_BASE_URL": "https://sho.rt/"})
    client = app.test_client()
    headers = {"Host": host, "X-Forwarded-Host": host, "X-Forwarded-Proto": "http"}
    response = client.post("/api/links", json={"url": "https://example.com/"}, headers=headers)
    assert_sane(response)
    if response.status_code == 400:  # werkzeug refuses a Host that is not a host name
        return
    assert response.status_code == 201
    assert response.get_json()["short_url"] == f"https://sho.rt/{response.get_json()['code']}"
    page = client.post("/your-url", headers=headers, data={
        "csrf_token": csrf_token(client), "url": "https://example.com/form"}).get_data(
            as_text=True)
    assert "https://sho.rt/" in page and "evil.example" not in page


@pytest.mark.parametrize("url", ["http://\u00a8/", "https://\u00a8.example/"])
def test_a_host_whose_idna_form_has_a_space_is_refused(client: FlaskClient, url: str) -> None:
    """Found by the fuzzer: "¨" became "xn-- -ccb", a stored URL with a space in it."""
    response = client.post("/api/links", json={"url": url})
    assert response.status_code == 400
    assert_sane(response)
