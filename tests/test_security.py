"""Security properties a public shortener must keep (SECURITY.md has the threat model):
CSRF on every form POST, a session cookie that scripts and other sites cannot use and
that cannot outgrow its size limit, uploads that never run on the app's origin, a
per-client create limit, and no link to a scheme that runs script. Chromium opens the
same scripted uploads in tests/browser/test_upload_safety.py.
"""
from __future__ import annotations

import os
from io import BytesIO
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from application import SESSION_CODES_KEPT, create_app
from linkstore.reports import open_reports
from tests.helpers import PostForm, csrf_token

SCRIPTED_UPLOADS = {
    "page.html": b"<!doctype html><script>location='/pwned-html'</script>",
    "page.htm": b"<script>location='/pwned-htm'</script>",
    "drawing.svg": b"<svg xmlns='http://www.w3.org/2000/svg'><script>location='/pwned-svg'"
                   b"</script></svg>",
    "code.js": b"location='/pwned-js'",
    "page.xhtml": b"<html xmlns='http://www.w3.org/1999/xhtml'><script>location='/pwned-x'"
                  b"</script></html>",
    "svg-in-disguise.png": b"<svg xmlns='http://www.w3.org/2000/svg' onload=\"location="
                           b"'/pwned-png'\"/>",
}


def upload(post_form: PostForm, name: str, content: bytes) -> None:
    response = post_form(file=(BytesIO(content), name))
    assert response.status_code == 200, response.get_data(as_text=True)[:300]


def newest_code(client: FlaskClient) -> str:
    codes: list[str] = client.get("/api").get_json()
    return codes[0]


# --- CSRF ------------------------------------------------------------------------------

def form_post_routes(app: Flask) -> list[str]:
    return sorted(rule.rule for rule in app.url_map.iter_rules()
                  if "POST" in (rule.methods or set()) and rule.rule != "/api/links")


def test_every_form_post_needs_the_csrf_token(app: Flask, client: FlaskClient) -> None:
    routes = form_post_routes(app)
    assert routes == ["/<code>/password", "/manage/<code>/<token>", "/report/<code>",
                      "/your-url"], "a new POST route: give it a CSRF test"
    created = client.post("/api/links", json={"url": "https://example.com/", "code": "c",
                                              "password": "open sesame"}).json
    assert created is not None
    token = created["manage_token"]
    before = Path(app.config["URLS_FILE"]).read_bytes()
    for route in ["/c/password", f"/manage/c/{token}", "/report/c", "/your-url"]:
        client.get("/")
        response = client.post(route, data={"url": "https://example.com/",
                                            "password": "open sesame", "reason": "spam"})
        assert response.status_code == 400
        assert "reload the page" in response.get_data(as_text=True)
    assert Path(app.config["URLS_FILE"]).read_bytes() == before, "a token-less POST stored"
    assert client.get("/c").status_code == 200, "a token-less POST deleted the link"
    assert open_reports(app.extensions["link_store"]).reports() == [], "a token-less report"


def test_a_token_from_another_session_is_refused(app: Flask, client: FlaskClient) -> None:
    other = app.test_client()
    stolen = csrf_token(other)
    client.get("/")
    response = client.post("/your-url", data={"csrf_token": stolen, "url": "https://e.com/"})
    assert response.status_code == 400


def test_the_json_api_refuses_what_a_cross_site_form_can_send(client: FlaskClient) -> None:
    """/api/links skips CSRF because a form on another site cannot send application/json."""
    for content_type in ("application/x-www-form-urlencoded", "multipart/form-data",
                         "text/plain"):
        response = client.post("/api/links", data='{"url": "https://example.com/"}',
                               content_type=content_type)
        assert response.status_code == 415


# --- The session cookie ----------------------------------------------------------------

def session_cookie_header(client: FlaskClient, **headers: str) -> str:
    response = client.post("/api/links", json={"url": "https://example.com/"}, headers=headers)
    assert response.status_code == 201
    cookies = [value for value in response.headers.getlist("Set-Cookie")
               if value.startswith("session=")]
    assert cookies, "creating a link did not set the session cookie"
    return cookies[0]


def test_the_session_cookie_is_httponly_and_samesite_lax(client: FlaskClient) -> None:
    cookie = session_cookie_header(client)
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain http (make run): a Secure cookie would be dropped


def test_the_session_cookie_is_secure_behind_https(client: FlaskClient) -> None:
    cookie = session_cookie_header(client, **{"X-Forwarded-Proto": "https"})
    assert "Secure" in cookie and "HttpOnly" in cookie


def test_the_session_list_of_codes_cannot_outgrow_the_cookie(client: FlaskClient) -> None:
    for n in range(SESSION_CODES_KEPT + 15):
        code = f"{n:03d}" + "x" * 61  # the longest codes there are
        response = client.post("/api/links", json={"url": "https://example.com/", "code": code})
        assert response.status_code == 201
        cookie = response.headers["Set-Cookie"].split(";")[0]
        assert len(cookie) < 4000, f"session cookie of {len(cookie)} bytes after {n + 1} links"
    codes = client.get("/api").get_json()
    assert len(codes) == SESSION_CODES_KEPT
    assert codes[0].startswith(f"{SESSION_CODES_KEPT + 14:03d}"), "newest first"


def test_a_forged_session_cookie_is_ignored(client: FlaskClient) -> None:
    client.set_cookie("session", "eyJjb2RlcyI6WyJldmlsIl19.forged.signature")
    assert client.get("/api").get_json() == []


# --- Uploads never run on the app's origin ---------------------------------------------

@pytest.mark.parametrize("name", sorted(SCRIPTED_UPLOADS))
def test_an_uploaded_script_is_a_download_that_cannot_run(
        client: FlaskClient, post_form: PostForm, name: str) -> None:
    upload(post_form, name, SCRIPTED_UPLOADS[name])
    response = client.get(f"/{newest_code(client)}")
    assert response.status_code == 200
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    if name.endswith(".png"):  # inline, but as an image that nosniff keeps an image
        assert response.mimetype == "image/png"
    else:
        assert response.headers["Content-Disposition"].startswith("attachment")
        assert response.mimetype == "application/octet-stream"


def test_uploads_are_not_reachable_under_static(client: FlaskClient, post_form: PostForm,
                                                app: Flask) -> None:
    upload(post_form, "page.html", SCRIPTED_UPLOADS["page.html"])
    stored = next(Path(app.config["UPLOAD_DIR"]).iterdir()).name
    for path in (f"/static/{stored}", f"/uploads/{stored}", f"/static/../data/uploads/{stored}"):
        assert client.get(path).status_code == 404


# --- Abuse control ---------------------------------------------------------------------

@pytest.fixture
def limited_client(tmp_path: Path) -> FlaskClient:
    app = create_app({"DATA_DIR": tmp_path / "data", "TESTING": True, "SECRET_KEY": "x",
                      "CREATE_RATE_LIMIT": "3/minute"})
    return app.test_client()


def test_creates_beyond_the_limit_get_429_with_retry_after(limited_client: FlaskClient) -> None:
    statuses = [limited_client.post("/api/links", json={"url": f"https://e.com/{n}"}).status_code
                for n in range(3)]
    assert statuses == [201, 201, 201]
    refused = limited_client.post("/api/links", json={"url": "https://e.com/4"})
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    assert "too many new links" in refused.get_json()["error"].lower()


def test_the_form_shares_the_limit_and_says_so(limited_client: FlaskClient) -> None:
    for n in range(3):
        limited_client.post("/api/links", json={"url": f"https://e.com/{n}"})
    response = limited_client.post("/your-url", data={
        "csrf_token": csrf_token(limited_client), "url": "https://example.com/"})
    assert response.status_code == 429
    assert response.headers["Retry-After"]
    assert "too fast" in response.get_data(as_text=True)


def test_redirects_are_never_limited(limited_client: FlaskClient) -> None:
    code = limited_client.post("/api/links", json={"url": "https://e.com/"}).get_json()["code"]
    for n in range(3):
        limited_client.post("/api/links", json={"url": f"https://e.com/{n}"})
    assert {limited_client.get(f"/{code}").status_code for _ in range(100)} == {302}


def test_off_disables_the_limit(client: FlaskClient) -> None:
    statuses = {client.post("/api/links", json={"url": f"https://e.com/{n}"}).status_code
                for n in range(80)}
    assert statuses == {201}


# --- What a link may point to, and what pages carry ------------------------------------

@pytest.mark.parametrize("url", ["javascript:alert(1)", "JaVaScRiPt:alert(1)",
                                 "data:text/html,<script>alert(1)</script>",
                                 "vbscript:msgbox(1)", "file:///etc/passwd",
                                 "//evil.example/", "https:///nohost", " javascript:alert(1)",
                                 "java\tscript:alert(1)", "https://e.com/\r\nSet-Cookie: a=b"])
def test_links_that_could_run_script_or_split_headers_are_refused(client: FlaskClient,
                                                                  url: str) -> None:
    response = client.post("/api/links", json={"url": url})
    assert response.status_code == 400
    assert response.get_json()["error"]


def test_pages_carry_the_security_headers(client: FlaskClient) -> None:
    for path in ("/", "/nope", "/healthz"):
        headers = client.get(path, headers={"X-Forwarded-Proto": "https"}).headers
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Strict-Transport-Security"].startswith("max-age=")


def test_the_generated_secret_key_is_private(tmp_path: Path) -> None:
    saved = os.environ.pop("SECRET_KEY", None)
    try:
        create_app({"DATA_DIR": tmp_path / "data", "CREATE_RATE_LIMIT": "off"})
    finally:
        if saved is not None:
            os.environ["SECRET_KEY"] = saved
    assert (tmp_path / "data" / "secret_key").stat().st_mode & 0o777 == 0o600
