"""Fixtures in the style of Flask's tutorial: an app over a temporary data directory,
its test client, the same app under real gunicorn, and the link store on each backend
(the JSON file, and a real PostgreSQL server the tests start themselves)."""
from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

import visits
from application import create_app
from linkstore import LinkStore, open_url
from ops.pgserver import PostgresServer, ServerUnavailable
from tests.helpers import CHROME_UA, PostForm, csrf_token
from tests.servers import GunicornServer, Site
from visits import VisitStore

pytest_plugins = ["tests.leakcheck"]  # the run fails if it leaves a process running

# bash starts a background command (`pytest &` in a script) with SIGINT ignored, and an
# ignored signal stays ignored in every child: the tests that stop a release or a bench
# with SIGINT (as Ctrl-C does) then saw it run on. A handler of our own is reset to the
# default in each child, so they get SIGINT as from a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

BACKENDS = ["file", "postgresql"]
_databases = itertools.count()


# Every visit recorder a test makes (each app has one) is closed after it: a recorder
# that counted something has a writer process, which stores what it has and exits only
# when its recorder closes the pipe. Apps made inside a test are closed when the test
# ends; apps of module-scoped fixtures when the module ends.
_recorders: list[visits.Recorder] = []
_recorder_init = visits.Recorder.__init__


def _tracked_init(self: visits.Recorder, store: VisitStore, flush_seconds: float) -> None:
    _recorder_init(self, store, flush_seconds)
    _recorders.append(self)


setattr(visits.Recorder, "__init__", _tracked_init)  # noqa: B010: no type allows assigning it


def _close_recorders_since(start: int) -> None:
    for recorder in _recorders[start:]:
        recorder.close()
    del _recorders[start:]


@pytest.fixture(autouse=True, scope="module")
def _module_recorders_closed() -> Iterator[None]:
    start = len(_recorders)
    yield
    _close_recorders_since(start)


@pytest.fixture(autouse=True)
def _recorders_closed() -> Iterator[None]:
    start = len(_recorders)
    yield
    _close_recorders_since(start)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def app(data_dir: Path) -> Iterator[Flask]:
    app = create_app({"DATA_DIR": data_dir, "TESTING": True, "SECRET_KEY": "test-secret",
                      "CREATE_RATE_LIMIT": "off"})
    yield app  # its visit recorder is closed by _recorders_closed


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A client that says it is a person's browser, as the pages' visitors are: a limited
    link serves people only, and the statistics count people (a test that is a bot or a
    link preview says so with its own User-Agent)."""
    client = app.test_client()
    client.environ_base["HTTP_USER_AGENT"] = CHROME_UA
    return client


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


# --- PostgreSQL ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole run (ops/pgserver.py).

    Skipped where PostgreSQL is not installed, except with REQUIRE_POSTGRES=1 (CI),
    where a missing server fails the tests that need it.
    """
    try:
        server = PostgresServer()
    except ServerUnavailable as exc:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"REQUIRE_POSTGRES=1, but {exc}")
        pytest.skip(str(exc))
    with server:
        yield server


@pytest.fixture
def database_url(postgres: PostgresServer) -> Iterator[str]:
    """A new, empty database for one test; dropped afterwards."""
    name = f"test_{os.getpid()}_{next(_databases)}"
    yield postgres.create_database(name)
    postgres.drop_database(name)


@pytest.fixture(params=BACKENDS)
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store keeps its links: a links file, or a new PostgreSQL database."""
    if request.param == "file":
        return (tmp_path / "urls.json").as_uri()
    return str(request.getfixturevalue("database_url"))


@pytest.fixture
def open_store(location: str) -> Iterator[Callable[[], LinkStore]]:
    """Open another store on the same links, as another worker or server would."""
    opened: list[LinkStore] = []

    def another() -> LinkStore:
        opened.append(open_url(location, timeout=5.0))
        return opened[-1]
    yield another
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[[], LinkStore]) -> LinkStore:
    """The link store on each backend in turn: the contract suite runs on both."""
    return open_store()


@pytest.fixture(params=BACKENDS)
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    """The app under gunicorn on each backend in turn, and what it stores."""
    if request.param == "file":
        return Site(tmp_path, None)
    return Site(tmp_path, str(request.getfixturevalue("database_url")))


@pytest.fixture
def visit_store(store: LinkStore) -> VisitStore:
    """The visit counts beside the link store, on each backend in turn."""
    return visits.open_store(store)
