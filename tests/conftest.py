"""Fixtures in the style of Flask's tutorial: an app over a temporary data directory,
its test client, and the same app under real gunicorn."""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from application import create_app
from tests.servers import GunicornServer

pytest_plugins = ["tests.leakcheck"]  # the run fails if it leaves a process running
PostForm = Callable[..., TestResponse]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def app(data_dir: Path) -> Flask:
    return create_app({"DATA_DIR": data_dir, "TESTING": True, "SECRET_KEY": "test-secret",
                       "CREATE_RATE_LIMIT": "off"})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def csrf_token(client: FlaskClient) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/").text)
    assert match, "the home page has no CSRF token"
    return match.group(1)


@pytest.fixture
def post_form(client: FlaskClient) -> PostForm:
    """POST /your-url as a browser would: with the page's CSRF token."""
    def post(**fields: Any) -> TestResponse:
        data = {"csrf_token": csrf_token(client), **fields}
        return client.post("/your-url", data=data, content_type="multipart/form-data")
    return post


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GunicornServer]:
    """The app under real gunicorn with 3 workers on a free loopback port."""
    with GunicornServer(tmp_path / "data", workers=3) as srv:
        yield srv
