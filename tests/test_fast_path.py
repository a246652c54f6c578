"""FastRedirects answers GET /<code> before Flask: its answer must be Flask's, exactly."""
from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from werkzeug.test import EnvironBuilder, run_wsgi_app

from application import FastRedirects, create_app

Answer = tuple[str, list[tuple[str, str]], bytes]

LEGACY_FILE = ('{"legacy": {"url": "https://bücher.example/straße?q=ä"}, '
               '"file": {"file": "f.txt", "name": "f.txt"}, '
               '"API": {"url": "https://upper-case.example/"}}')


def answer(wsgi: object, path: str, **options: object) -> Answer:
    environ = EnvironBuilder(path=path, **options).get_environ()  # type: ignore[arg-type]
    body, status, headers = run_wsgi_app(wsgi, environ)  # type: ignore[arg-type]
    return status, sorted(headers.items()), b"".join(body)


def fast_path(app: Flask) -> FastRedirects:
    fast = app.wsgi_app.app  # type: ignore[attr-defined]  # inside ProxyFix
    assert isinstance(fast, FastRedirects)
    return fast


@pytest.fixture
def links(app: Flask) -> Flask:
    Path(app.config["UPLOAD_DIR"], "f.txt").write_text("a file")
    Path(app.config["URLS_FILE"]).write_text(LEGACY_FILE)
    client = app.test_client()
    for code, url in [("plain", "https://example.com/"),
                      ("query", "https://example.com/a?b=c&d=%20e#frag"),
                      ("encoded", "https://example.com/%7Euser/<x>\"'")]:
        assert client.post("/api/links", json={"url": url, "code": code}).status_code == 201
    options: list[tuple[str, dict[str, object]]] = [
        ("expiring", {"expires_at": "2999-01-01T00:00:00Z"}), ("limited", {"max_visits": 9}),
        ("protected", {"password": "12345678"}), ("disabled", {})]
    for code, option in options:
        assert client.post("/api/links", json={"url": "https://example.com/", "code": code,
                                               **option}).status_code == 201
    app.extensions["link_store"].disable("disabled", "spam", by="test")
    return app


@pytest.mark.parametrize("path", ["/plain", "/query", "/encoded", "/legacy"])
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_fast_redirect_is_flask_s_redirect_byte_for_byte(links: Flask, path: str,
                                                           scheme: str) -> None:
    fast = fast_path(links)
    flask_only = fast.app
    ours = answer(fast, path, base_url=f"{scheme}://localhost")
    assert ours[0] == "302 FOUND"
    assert ours == answer(flask_only, path, base_url=f"{scheme}://localhost")


@pytest.mark.parametrize("visits", ["on", "off"])
@pytest.mark.parametrize("status", ["301", "307", "308"])
def test_a_fast_redirect_follows_redirect_status_byte_for_byte(tmp_path: Path, status: str,
                                                               visits: str) -> None:
    app = create_app({"DATA_DIR": tmp_path, "SECRET_KEY": "x", "CREATE_RATE_LIMIT": "off",
                      "REDIRECT_STATUS": status, "VISITS": visits})
    app.test_client().post("/api/links", json={"url": "https://example.com/", "code": "p"})
    ours = answer(fast_path(app), "/p")
    bound = "no-store" if visits == "on" else "max-age=60" if status in ("301", "308") else (
        "s-maxage=60")  # a counted redirect must reach the app every time
    assert ours[0].startswith(status) and ("Cache-Control", bound) in ours[1]
    assert ours == answer(fast_path(app).app, "/p")


@pytest.mark.parametrize("path, method", [
    ("/expiring", "GET"), ("/limited", "GET"), ("/protected", "GET"), ("/disabled", "GET"),
    ("/file", "GET"), ("/unknown", "GET"), ("/plain", "HEAD"), ("/plain", "POST"),
    ("/api", "GET"), ("/API", "GET"), ("/healthz", "GET"), ("/plain/x", "GET"),
])
def test_everything_else_is_left_to_flask(links: Flask, path: str, method: str) -> None:
    calls: list[str] = []
    fast = fast_path(links)
    inner = fast.app

    def flask_spy(environ: dict[str, object], start_response: object) -> object:
        calls.append(str(environ["PATH_INFO"]))
        return inner(environ, start_response)
    fast.app = flask_spy
    try:
        answer(fast, path, method=method)
    finally:
        fast.app = inner
    assert calls == [path]


def test_a_store_that_raises_is_left_to_flask_s_error_page(links: Flask,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    def broken(code: str) -> None:
        raise TypeError("the JSON object must be str, bytes or bytearray, not TextIOWrapper")
    monkeypatch.setattr(links.extensions["link_store"], "get", broken)
    status, _, body = answer(fast_path(links), "/plain")
    assert status.startswith("500")
    assert b"Something went wrong on our side" in body
