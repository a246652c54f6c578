"""Helpers the tests import (fixtures live in conftest.py)."""
from __future__ import annotations

import re
import time
from collections.abc import Callable

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

PostForm = Callable[..., TestResponse]  # the post_form fixture: POST /your-url with a token


def csrf_token(client: FlaskClient) -> str:
    """The CSRF token of the home page, as a browser would send it back."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/").text)
    assert match, "the home page has no CSRF token"
    return match.group(1)


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> float:
    """Wait until check() holds; return the seconds it took. Fails after timeout, which
    is generous: these tests run on a loaded 2-core machine."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"not within {timeout:g} s"
        time.sleep(0.02)
    return time.monotonic() - started
