"""Helpers the tests import (fixtures live in conftest.py)."""
from __future__ import annotations

import re
import subprocess  # nosec B404: pg_dump
import time
from collections.abc import Callable
from pathlib import Path

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from ops.pgserver import bindir

PostForm = Callable[..., TestResponse]  # the post_form fixture: POST /your-url with a token
# A person's browsers, as the visit statistics must count them (tests/fixtures/visitors).
CHROME_UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
             "Chrome/142.0.0.0 Safari/537.36")
FIREFOX_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:145.0) Gecko/20100101 Firefox/145.0"


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


def everything_stored(data_dir: Path | None = None, database_url: str | None = None) -> bytes:
    """Every byte the app keeps: each file under data_dir, and a dump of every row of
    the database (pg_dump, the real client). What a privacy check searches."""
    found = b""
    if data_dir is not None:
        found += b"".join(path.read_bytes() for path in sorted(data_dir.rglob("*"))
                          if path.is_file())
    if database_url is not None:
        pg_bin = bindir()
        assert pg_bin is not None, "PostgreSQL's binaries are needed to dump the database"
        found += subprocess.run(  # nosec B603: the installed pg_dump, an argument list
            [str(pg_bin / "pg_dump"), "--data-only", "--inserts", f"--dbname={database_url}"],
            capture_output=True, check=True, timeout=60).stdout
    return found
