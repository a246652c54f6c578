"""The link lifecycle under real gunicorn with several workers, over real HTTP, on both
backends (a real PostgreSQL from conftest.postgres): visit limits that hold across
workers and servers, takedowns that reach every worker within the stated bound, and the
password flow as a browser without script would go through it."""
from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from linkstore import open_url
from tests.helpers import CHROME_UA
from tests.servers import GunicornServer

PASSWORD = "a password nobody logs"


@pytest.fixture(params=["file", "postgresql"])
def backend_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment that puts the app on each backend."""
    if request.param == "file":
        return {}
    return {"DATABASE_URL": str(request.getfixturevalue("database_url"))}


# Sync workers take one connection at a time, so concurrent clients reach every worker
# (gunicorn runs gthread instead of sync whenever threads > 1).
SYNC_WORKERS = {"GUNICORN_WORKER_CLASS": "sync", "GUNICORN_THREADS": "1"}


@pytest.fixture
def app_server(tmp_path: Path, backend_env: dict[str, str]) -> Iterator[GunicornServer]:
    with GunicornServer(tmp_path / "data", workers=3, env=SYNC_WORKERS | backend_env) as server:
        yield server


def store_url(server: GunicornServer, backend_env: dict[str, str]) -> str:
    return backend_env.get("DATABASE_URL") or server.urls_file.as_uri()


def create(server: GunicornServer, **body: str | int) -> dict[str, object]:
    json_body: dict[str, str | int] = {"url": "https://example.com/", **body}
    response = requests.post(f"{server.url}/api/links", timeout=30, json=json_body)
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    return created


def visits(base: str, code: str, count: int, clients: int = 12) -> Counter[int]:
    def visit(_: int) -> int:
        return requests.get(f"{base}/{code}", allow_redirects=False, timeout=30,
                            headers={"User-Agent": CHROME_UA}).status_code  # a person
    with ThreadPoolExecutor(max_workers=clients) as pool:
        return Counter(pool.map(visit, range(count)))


def test_concurrent_visitors_across_workers_get_exactly_max_visits_redirects(
        app_server: GunicornServer) -> None:
    create(app_server, code="ten", max_visits=10)
    assert visits(app_server.url, "ten", 60) == Counter({302: 10, 410: 50})
    details = requests.get(f"{app_server.url}/api/links/ten", timeout=10).json()
    assert (details["visits"], details["state"]) == (10, "limit_reached")


def test_two_servers_on_one_database_serve_exactly_max_visits_between_them(
        tmp_path: Path, database_url: str) -> None:
    env = SYNC_WORKERS | {"DATABASE_URL": database_url}
    with GunicornServer(tmp_path / "a", workers=2, env=env) as one, \
            GunicornServer(tmp_path / "b", workers=2, env=env) as two:
        create(one, code="shared", max_visits=15)
        with ThreadPoolExecutor(max_workers=2) as pool:
            first, second = pool.map(lambda server: visits(server.url, "shared", 30),
                                     [one, two])
    assert first[302] + second[302] == 15
    assert first[410] + second[410] == 45


def every_worker_answers(server: GunicornServer, code: str, status: int,
                         requests_each: int = 30) -> bool:
    """Whether a burst of concurrent requests, which reaches every worker, all get status."""
    return visits(server.url, code, requests_each, clients=6) == Counter({status: requests_each})


def test_a_takedown_reaches_every_worker_within_the_stated_bound(
        app_server: GunicornServer, backend_env: dict[str, str]) -> None:
    """The bound: the next request on the file; 2 s and one poll on PostgreSQL
    (docs/database.md). Every worker has served (and, on PostgreSQL, cached) the link."""
    create(app_server, code="reported")
    assert every_worker_answers(app_server, "reported", 302, requests_each=60)
    operator = open_url(store_url(app_server, backend_env), timeout=10)
    try:
        operator.disable("reported", "phishing", by="test")
        disabled_at = time.monotonic()
    finally:
        operator.close()
    if not backend_env:  # the file: every worker follows it on its next request
        assert every_worker_answers(app_server, "reported", 410)
        return
    while not every_worker_answers(app_server, "reported", 410):
        assert time.monotonic() - disabled_at < 2.0 + 8.0, "not within 2 s and a poll"
        time.sleep(0.1)
    gone = requests.get(f"{app_server.url}/reported", timeout=10,
                        headers={"Accept": "application/json"}).json()
    assert (gone["state"], gone["reason"]) == ("disabled", "phishing")


def test_the_password_flow_over_http_and_the_password_is_in_no_log(tmp_path: Path) -> None:
    access_log = tmp_path / "access.log"
    env = {"GUNICORN_CMD_ARGS": f"--access-logfile {access_log}"}
    with GunicornServer(tmp_path / "data", workers=2, env=env) as server:
        create(server, code="locked", password=PASSWORD, url="https://example.com/secret")
        browser = requests.Session()
        page = browser.get(f"{server.url}/locked", timeout=10)
        assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token is not None
        form = {"csrf_token": token.group(1)}
        wrong = browser.post(f"{server.url}/locked/password", timeout=10, allow_redirects=False,
                             data=form | {"password": "wrong " + PASSWORD})
        assert wrong.status_code == 403 and "not right" in wrong.text
        right = browser.post(f"{server.url}/locked/password", timeout=10,
                             allow_redirects=False, data=form | {"password": PASSWORD})
        assert right.status_code == 302  # never 307/308: they would re-post the password
        assert right.headers["Location"] == "https://example.com/secret"
    logs = server.log() + access_log.read_text()
    assert "POST /locked/password" in logs
    assert PASSWORD not in logs


def test_a_link_deleted_by_its_creator_is_gone_on_every_worker(
        app_server: GunicornServer) -> None:
    token = str(create(app_server, code="mine")["manage_token"])
    deleted = requests.delete(f"{app_server.url}/api/links/mine", timeout=10,
                              headers={"X-Manage-Token": token})
    assert deleted.status_code == 200
    deleted_at = time.monotonic()
    while not every_worker_answers(app_server, "mine", 410):
        assert time.monotonic() - deleted_at < 10.0
        time.sleep(0.1)
    taken = requests.post(f"{app_server.url}/api/links", timeout=10,
                          json={"url": "https://other.example/", "code": "mine"})
    assert taken.status_code == 409
