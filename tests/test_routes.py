"""Every row of the HTTP contract in ARCHITECTURE.md, and every error path."""
from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from application import create_app
from linkstore import StoreUnavailable
from tests.helpers import PostForm, csrf_token
from tests.servers import links_on_disk


def error_on_page(response: TestResponse) -> list[str]:
    """The error messages the home page shows beside its fields."""
    found = re.findall(r'<p class="error"[^>]*>(.*?)</p>', response.text, re.DOTALL)
    return [html.unescape(re.sub(r"<[^>]+>", "", message)).removeprefix("Error: ").strip()
            for message in found]


def urls_file(app: Flask) -> Path:
    return Path(app.config["URLS_FILE"])


def create(client: FlaskClient, url: str = "https://example.com/", code: str | None = None
           ) -> TestResponse:
    body = {"url": url} if code is None else {"url": url, "code": code}
    return client.post("/api/links", json=body)


# --- GET / ---------------------------------------------------------------------------------

def test_home_has_the_url_form_and_the_file_form(client: FlaskClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert 'name="url"' in page.text and 'name="file"' in page.text
    assert page.text.count('name="code"') == 2
    assert page.text.count('name="csrf_token"') == 2
    assert 'enctype="multipart/form-data"' in page.text


def test_home_lists_the_links_this_browser_created_newest_first(client: FlaskClient) -> None:
    create(client, "https://first.example/", "first")
    create(client, "https://second.example/", "second")
    page = client.get("/").text
    assert 'href="http://localhost/second"' in page
    assert page.index("http://localhost/second") < page.index("http://localhost/first")
    assert "https://first.example/" in page
    assert "http://localhost/first" not in FlaskClient(client.application).get("/").text


# --- POST /your-url ------------------------------------------------------------------------

def test_the_form_shortens_a_url_under_a_chosen_name(app: Flask, post_form: PostForm) -> None:
    page = post_form(url="https://example.com/long/path", code="mine")
    assert page.status_code == 200
    assert "http://localhost/mine" in page.text
    assert links_on_disk(urls_file(app))["mine"]["url"] == "https://example.com/long/path"


def test_the_form_gives_a_random_code_when_the_name_is_blank(app: Flask,
                                                             post_form: PostForm) -> None:
    page = post_form(url="https://example.com/", code="")
    assert page.status_code == 200
    [code] = links_on_disk(urls_file(app))
    assert len(code) == 7 and code.isalnum()
    assert f"http://localhost/{code}" in page.text


def test_the_result_page_has_a_copy_button_and_a_qr_code(post_form: PostForm) -> None:
    page = post_form(url="https://example.com/", code="qr")
    assert 'data-copy="http://localhost/qr"' in page.text
    assert "<svg" in page.text


def test_the_form_trims_a_pasted_url(app: Flask, post_form: PostForm) -> None:
    assert post_form(url="  https://example.com/x \n", code="trim").status_code == 200
    assert links_on_disk(urls_file(app))["trim"]["url"] == "https://example.com/x"


@pytest.mark.parametrize("url, code, status, field_message", [
    ("javascript:alert(1)", "", 400, "Only http:// and https://"),
    ("data:text/html,hi", "", 400, "Only http:// and https://"),
    ("ftp://example.com/", "", 400, "Only http:// and https://"),
    ("example.com", "", 400, "Only http:// and https://"),
    ("https://example.com/" + "a" * 2048, "", 400, "the limit is 2,048"),
    ("https://example.com/a b", "", 400, "spaces or control characters"),
    ("https://example.com/\x07", "", 400, "spaces or control characters"),
    ("", "", 400, "Enter the URL"),
    ("https://example.com/", "a/b", 400, "1 to 64 letters"),
    ("https://example.com/", "..", 400, "1 to 64 letters"),
    ("https://example.com/", "two words", 400, "1 to 64 letters"),
    ("https://example.com/", "naïve", 400, "1 to 64 letters"),
    ("https://example.com/", "x" * 65, 400, "1 to 64 letters"),
    ("https://example.com/", "api", 400, "used by the site itself"),
    ("https://example.com/", "your-url", 400, "used by the site itself"),
    ("https://example.com/", "static", 400, "used by the site itself"),
    ("https://example.com/", "healthz", 400, "used by the site itself"),
])
def test_bad_form_input_is_shown_with_the_input_kept(app: Flask, post_form: PostForm, url: str,
                                                     code: str, status: int,
                                                     field_message: str) -> None:
    post_form(url="https://kept.example/", code="kept")
    before = urls_file(app).read_bytes()
    page = post_form(url=url, code=code)
    assert page.status_code == status
    [message] = error_on_page(page)
    assert field_message in message
    assert 'name="url"' in page.text
    if url and len(url) < 100 and url.isprintable():
        assert f'value="{url}"'.replace("&", "&amp;") in page.text
    assert urls_file(app).read_bytes() == before


def test_a_taken_name_is_409_and_the_link_is_not_overwritten(app: Flask,
                                                             post_form: PostForm) -> None:
    post_form(url="https://first.example/", code="taken")
    page = post_form(url="https://second.example/", code="taken")
    assert page.status_code == 409
    assert "'taken' is already taken" in error_on_page(page)[0]
    assert 'value="https://second.example/"' in page.text
    assert links_on_disk(urls_file(app))["taken"]["url"] == "https://first.example/"


def test_a_form_post_without_a_csrf_token_is_refused(app: Flask, client: FlaskClient) -> None:
    page = client.post("/your-url", data={"url": "https://example.com/", "code": "nocsrf"})
    assert page.status_code == 400
    assert "reload the page" in error_on_page(page)[0]
    assert 'value="https://example.com/"' in page.text
    assert not urls_file(app).exists()


def test_a_form_post_with_a_forged_csrf_token_is_refused(app: Flask, client: FlaskClient) -> None:
    page = client.post("/your-url", data={"url": "https://example.com/", "csrf_token": "forged"})
    assert page.status_code == 400
    assert not urls_file(app).exists()


def test_a_missing_url_field_is_400(app: Flask, post_form: PostForm) -> None:
    page = post_form(code="nourl")
    assert page.status_code == 400
    assert "Enter the URL" in error_on_page(page)[0]
    assert not urls_file(app).exists()


def test_get_your_url_redirects_home(client: FlaskClient) -> None:
    response = client.get("/your-url")
    assert response.status_code == 302
    assert response.headers["Location"] == "/"


# --- uploads -------------------------------------------------------------------------------

def test_an_uploaded_file_gets_a_short_link_that_downloads_it(app: Flask,
                                                              post_form: PostForm,
                                                              client: FlaskClient) -> None:
    content = b"%PDF-1.4 not really\x00\xff"
    page = post_form(file=(io.BytesIO(content), "report.pdf"), code="quarterly")
    assert page.status_code == 200
    record = links_on_disk(urls_file(app))["quarterly"]
    assert record["name"] == "report.pdf"
    stored = Path(app.config["UPLOAD_DIR"]) / record["file"]
    assert stored.read_bytes() == content
    assert not stored.is_relative_to(Path(app.root_path) / "static")
    download = client.get("/quarterly")
    assert download.status_code == 200
    assert download.data == content
    assert download.headers["Content-Disposition"] == "attachment; filename=report.pdf"
    assert download.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("name", ["page.html", "image.svg", "script.js", "x.xhtml"])
def test_an_uploaded_file_that_could_run_script_is_only_ever_a_download(
        post_form: PostForm, client: FlaskClient, name: str) -> None:
    post_form(file=(io.BytesIO(b"<script>alert(document.cookie)</script>"), name), code="evil")
    response = client.get("/evil")
    assert response.headers["Content-Disposition"].startswith("attachment")
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response.headers["Content-Security-Policy"]


def test_an_uploaded_png_is_shown_inline(post_form: PostForm, client: FlaskClient) -> None:
    post_form(file=(io.BytesIO(b"\x89PNG\r\n\x1a\n"), "pic.png"), code="pic")
    response = client.get("/pic")
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Content-Disposition"].startswith("inline")


def test_an_original_app_file_record_is_served_from_the_upload_dir(app: Flask,
                                                                   client: FlaskClient) -> None:
    Path(app.config["UPLOAD_DIR"], "cv.pdf").write_bytes(b"old upload")
    urls_file(app).write_text('{"cv": {"file": "cv.pdf"}}')
    response = client.get("/cv")
    assert response.status_code == 200 and response.data == b"old upload"


def test_an_upload_over_the_limit_is_413_and_nothing_is_kept(tmp_path: Path) -> None:
    app = create_app({"DATA_DIR": tmp_path, "TESTING": True, "SECRET_KEY": "t",
                      "MAX_UPLOAD_MB": "1", "CREATE_RATE_LIMIT": "off"})
    client = app.test_client()
    for size in (1024 * 1024 + 1, 3 * 1024 * 1024):  # parsed and refused; refused unread
        page = client.post("/your-url", content_type="multipart/form-data", data={
            "csrf_token": csrf_token(client), "code": "big",
            "file": (io.BytesIO(b"x" * size), "big.bin")})
        assert page.status_code == 413
        assert error_on_page(page) == ["That file is larger than the 1 MB limit; "
                                       "choose a smaller file."]
    assert not urls_file(app).exists()
    assert list(Path(app.config["UPLOAD_DIR"]).iterdir()) == []


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "dir/file.txt",
                                  ".."])
def test_an_upload_with_a_path_in_its_name_is_refused(app: Flask, post_form: PostForm,
                                                      name: str) -> None:
    page = post_form(file=(io.BytesIO(b"data"), name), code="path")
    assert page.status_code == 400
    assert "cannot contain a folder path" in error_on_page(page)[0]
    assert 'value="path"' in page.text
    assert not urls_file(app).exists()
    assert list(Path(app.config["UPLOAD_DIR"]).iterdir()) == []


def test_an_upload_without_a_file_is_400(app: Flask, post_form: PostForm) -> None:
    page = post_form(file=(io.BytesIO(b""), ""), code="nofile")
    assert page.status_code == 400
    assert "Choose a file" in error_on_page(page)[0]
    assert not urls_file(app).exists()


def test_an_empty_upload_is_400(app: Flask, post_form: PostForm) -> None:
    page = post_form(file=(io.BytesIO(b""), "empty.txt"), code="empty")
    assert page.status_code == 400
    assert error_on_page(page) == ["'empty.txt' is empty; choose a file with something in it."]
    assert not urls_file(app).exists()
    assert list(Path(app.config["UPLOAD_DIR"]).iterdir()) == []


def test_an_upload_under_a_taken_name_keeps_neither_link_nor_file(app: Flask,
                                                                  post_form: PostForm) -> None:
    post_form(url="https://example.com/", code="taken")
    page = post_form(file=(io.BytesIO(b"data"), "a.txt"), code="taken")
    assert page.status_code == 409
    assert list(Path(app.config["UPLOAD_DIR"]).iterdir()) == []


# --- GET /<code> ---------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["https://example.com/a?b=c&d=%20e#frag",
                                 "http://example.com", "https://example.com/%7Euser/"])
def test_a_short_link_redirects_to_the_stored_url_exactly(client: FlaskClient, url: str) -> None:
    code = create(client, url).json["code"]  # type: ignore[index]
    response = client.get(f"/{code}")
    assert response.status_code == 302
    assert response.headers["Location"] == url


def test_an_unknown_code_is_a_friendly_404(client: FlaskClient) -> None:
    response = client.get("/no-such-code")
    assert response.status_code == 404
    assert "We can't find that link" in response.text
    assert "Traceback" not in response.text


# --- GET /api ------------------------------------------------------------------------------

def test_api_lists_the_codes_this_browser_created(client: FlaskClient) -> None:
    assert client.get("/api").json == []
    create(client, code="one")
    create(client, code="two")
    assert client.get("/api").json == ["two", "one"]


def test_the_list_of_codes_stays_small_enough_for_a_cookie(client: FlaskClient) -> None:
    for i in range(40):
        create(client, code=f"{i:02d}" + "x" * 62)
    codes = client.get("/api").json
    assert isinstance(codes, list) and len(codes) == 25
    assert codes[0] == "39" + "x" * 62
    cookie = client.get_cookie("session")
    assert cookie is not None and len(cookie.value) < 4000


# --- POST /api/links -----------------------------------------------------------------------

def test_the_api_creates_a_link(app: Flask, client: FlaskClient) -> None:
    response = create(client, "https://example.com/api", "via-api")
    assert response.status_code == 201
    assert response.json is not None
    assert {key: response.json[key] for key in ("code", "short_url", "url")} == {
        "code": "via-api", "short_url": "http://localhost/via-api",
        "url": "https://example.com/api"}
    assert links_on_disk(urls_file(app))["via-api"]["url"] == "https://example.com/api"


def test_the_api_gives_a_random_code_when_none_is_given(client: FlaskClient) -> None:
    for body in ({"url": "https://example.com/"}, {"url": "https://example.com/", "code": None},
                 {"url": "https://example.com/", "code": ""}):
        response = client.post("/api/links", json=body)
        assert response.status_code == 201
        assert len(response.json["code"]) == 7  # type: ignore[index]


def test_the_api_needs_no_csrf_token_but_does_need_json(client: FlaskClient) -> None:
    assert client.post("/api/links", json={"url": "https://example.com/"}).status_code == 201


@pytest.mark.parametrize("body, content_type, status, message", [
    ('{"url": "https://example.com/"}', "text/plain", 415, "Content-Type: application/json"),
    ("url=https://example.com/", "application/x-www-form-urlencoded", 415, "application/json"),
    ("{", "application/json", 400, "must be a JSON object"),
    ("[]", "application/json", 400, "must be a JSON object"),
    ('"https://example.com/"', "application/json", 400, "must be a JSON object"),
    ("{}", "application/json", 400, "'url' is required"),
    ('{"url": 5}', "application/json", 400, "'url' is required"),
    ('{"url": "https://example.com/", "code": 5}', "application/json", 400, "'code' must be"),
    ('{"url": "javascript:alert(1)"}', "application/json", 400, "Only http:// and https://"),
    ('{"url": "https://example.com/", "code": "a/b"}', "application/json", 400, "1 to 64"),
    ('{"url": "https://example.com/", "code": "api"}', "application/json", 400, "used by the"),
    (b'{"url": "\xff"}', "application/json", 400, "must be a JSON object"),
])
def test_the_api_refuses_bad_input_with_a_json_message(app: Flask, client: FlaskClient,
                                                       body: str | bytes, content_type: str,
                                                       status: int, message: str) -> None:
    create(client, code="kept")
    before = urls_file(app).read_bytes()
    response = client.post("/api/links", data=body, content_type=content_type)
    assert response.status_code == status
    assert message in response.json["error"]  # type: ignore[index]
    assert urls_file(app).read_bytes() == before


def test_the_api_refuses_a_taken_code_with_409(app: Flask, client: FlaskClient) -> None:
    create(client, "https://first.example/", "taken")
    response = create(client, "https://second.example/", "taken")
    assert response.status_code == 409
    assert "already taken" in response.json["error"]  # type: ignore[index]
    assert links_on_disk(urls_file(app))["taken"]["url"] == "https://first.example/"


# --- GET /api/links/<code> -----------------------------------------------------------------

def test_link_details_show_the_url_and_creation_time(client: FlaskClient) -> None:
    create(client, "https://example.com/d", "details")
    details = client.get("/api/links/details").json
    assert details is not None
    assert details["code"] == "details" and details["url"] == "https://example.com/d"
    assert details["created_at"].endswith("+00:00")


def test_link_details_of_a_file_name_the_file(post_form: PostForm, client: FlaskClient) -> None:
    post_form(file=(io.BytesIO(b"x"), "a.txt"), code="afile")
    details = client.get("/api/links/afile").json
    assert details is not None and details["file"].endswith(".txt") and "url" not in details


def test_link_details_of_an_unknown_code_are_a_json_404(client: FlaskClient) -> None:
    response = client.get("/api/links/nothing")
    assert response.status_code == 404
    assert response.json == {"error": "No link has the code 'nothing'."}


# --- GET /healthz --------------------------------------------------------------------------

def test_healthz_reports_ok_version_and_link_count(tmp_path: Path) -> None:
    app = create_app({"DATA_DIR": tmp_path, "APP_VERSION": "abc123", "SECRET_KEY": "t"})
    client = app.test_client()
    client.post("/api/links", json={"url": "https://example.com/"})
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["status"] == "ok"
    assert response.json["version"] == "abc123"
    assert response.json["links"] == 1


def test_healthz_fails_when_the_store_is_unreadable(app: Flask, client: FlaskClient) -> None:
    create(client, code="a")
    urls_file(app).write_text("{broken")
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json is not None and response.json["status"] == "fail"
    assert "not valid JSON" in response.json["checks"]["store"]
    assert response.json["checks"]["data_dir"] == "ok"


def test_healthz_fails_when_the_data_dir_is_not_writable(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("a file where the data directory should be")
    app = create_app({"DATA_DIR": tmp_path / "not-a-dir", "URLS_FILE": tmp_path / "urls.json",
                      "UPLOAD_DIR": tmp_path / "uploads", "SECRET_KEY": "t"})
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.json is not None
    assert response.json["checks"]["data_dir"].startswith("not writable")


# --- the store failing under the routes ----------------------------------------------------

def test_a_corrupt_store_keeps_redirects_and_refuses_creates(app: Flask, client: FlaskClient,
                                                             post_form: PostForm) -> None:
    create(client, "https://kept.example/", "kept")
    client.get("/kept")  # loaded into memory
    urls_file(app).write_text('{"half": ')
    assert client.get("/kept").headers["Location"] == "https://kept.example/"
    api = create(client, code="new")
    assert api.status_code == 503
    assert "not valid JSON" in api.json["error"]  # type: ignore[index]
    page = post_form(url="https://new.example/", code="new")
    assert page.status_code == 503
    assert "cannot be saved right now" in error_on_page(page)[0]
    assert 'value="https://new.example/"' in page.text
    assert urls_file(app).read_text() == '{"half": '


# --- errors in general ---------------------------------------------------------------------

@pytest.mark.parametrize("method, path, allowed", [
    ("DELETE", "/api/links", "POST"), ("PUT", "/", "GET"), ("POST", "/healthz", "GET"),
    ("PATCH", "/some-code", "GET"),
])
def test_other_methods_are_405_with_allow(client: FlaskClient, method: str, path: str,
                                          allowed: str) -> None:
    response = client.open(path, method=method)
    assert response.status_code == 405
    assert allowed in response.headers["Allow"]


def test_an_unexpected_error_is_a_friendly_page_and_a_log_line(
        app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("the JSON object must be str, bytes or bytearray, not TextIOWrapper")
    monkeypatch.setattr(app.extensions["link_store"], "get", broken)
    page = client.get("/anything")
    assert page.status_code == 500
    assert "Something went wrong on our side" in page.text
    assert "TextIOWrapper" not in page.text
    assert "TextIOWrapper" in caplog.text
    api = client.get("/api/links/anything")
    assert api.status_code == 500 and json.loads(api.text)["error"]


@pytest.mark.parametrize("failure", [RuntimeError("a bug in the store"),
                                     StoreUnavailable("the disk is full")])
def test_an_upload_whose_link_cannot_be_stored_leaves_no_file(
        app: Flask, post_form: PostForm, monkeypatch: pytest.MonkeyPatch,
        failure: Exception) -> None:
    def failing_add(link: object) -> None:
        raise failure
    monkeypatch.setattr(app.extensions["link_store"], "add", failing_add)
    page = post_form(file=(io.BytesIO(b"data"), "a.txt"), code="lost")
    assert page.status_code == (500 if isinstance(failure, RuntimeError) else 503)
    assert list(Path(app.config["UPLOAD_DIR"]).iterdir()) == []
