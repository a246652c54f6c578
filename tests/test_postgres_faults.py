"""The app on PostgreSQL under real gunicorn, with real faults: the database killed
during creates, unreachable at start-up, a table locked; and two app servers on one
database behaving as one site."""
from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import requests

from ops.pgserver import PostgresServer
from tests.helpers import eventually
from tests.servers import GunicornServer

TIMEOUT = "2"  # DATABASE_TIMEOUT for these servers, seconds
RECONNECT_BOUND = 10.0  # the bound: back within 10 s of the database's return


def app_server(tmp_path: Path, url: str, name: str = "data", workers: int = 2,
               **env: str) -> GunicornServer:
    # Sync workers take one connection at a time, so simultaneous requests reach each
    # (gunicorn runs gthread instead of sync whenever threads > 1).
    return GunicornServer(tmp_path / name, workers=workers, env={
        "DATABASE_URL": url, "DATABASE_TIMEOUT": TIMEOUT, "GUNICORN_WORKER_CLASS": "sync",
        "GUNICORN_THREADS": "1", **env})


def create(session: requests.Session, base: str, code: str) -> int:
    return session.post(f"{base}/api/links", json={"url": f"https://example.com/{code}",
                                                   "code": code}, timeout=30).status_code


def get(base: str, path: str) -> requests.Response:
    return requests.get(f"{base}{path}", allow_redirects=False, timeout=30)


def warm(server: GunicornServer, access_log: Path, code: str) -> None:
    """Have every worker serve code (so each has it cached), as its access log shows: on
    a loaded machine one worker can take a whole round of simultaneous requests."""
    def served_by() -> set[str]:
        lines = access_log.read_text().splitlines() if access_log.exists() else []
        return {pid for pid, path, status in (line.split() for line in lines)
                if path == f"/{code}" and status == "302"}
    with ThreadPoolExecutor(max_workers=server.workers * 3) as pool:
        deadline = time.monotonic() + 30
        while len(served_by()) < server.workers and time.monotonic() < deadline:
            statuses = list(pool.map(lambda _: get(server.url, f"/{code}").status_code,
                                     range(server.workers * 3)))
            assert statuses == [302] * len(statuses)
    assert len(served_by()) == server.workers, "not every worker served the link"


def every_worker_answers(server: GunicornServer, path: str, status: int) -> bool:
    """Two rounds of simultaneous requests, more than there are workers, all got status."""
    with ThreadPoolExecutor(max_workers=server.workers * 3) as pool:
        return all(
            list(pool.map(lambda _: get(server.url, path).status_code,
                          range(server.workers * 3))) == [status] * server.workers * 3
            for _ in range(2))


def stored_codes(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {row[0] for row in conn.execute("SELECT code FROM links")}


@pytest.fixture
def restarts_postgres(postgres: PostgresServer) -> Iterator[PostgresServer]:
    """The session's server, running again after the test whatever happened."""
    yield postgres
    if postgres.process is None:
        postgres.start()


def test_postgresql_killed_during_creates_loses_no_acknowledged_link(
        tmp_path: Path, database_url: str, restarts_postgres: PostgresServer) -> None:
    postgres = restarts_postgres
    acknowledged: list[str] = []
    statuses = Counter[int]()
    done = threading.Event()

    def client(n: int) -> None:
        session = requests.Session()
        for i in range(5000):
            if done.is_set():
                return
            status = create(session, server.url, f"k{n}-{i}")
            statuses[status] += 1
            if status == 201:
                acknowledged.append(f"k{n}-{i}")
            elif status == 503:
                time.sleep(0.05)

    access_log = tmp_path / "access.log"
    with app_server(tmp_path, database_url, GUNICORN_CMD_ARGS=(
            f"--access-logfile {access_log} --access-logformat '%(p)s %(U)s %(s)s'")) as server:
        assert create(requests.Session(), server.url, "hot") == 201
        warm(server, access_log, "hot")
        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        try:
            eventually(lambda: len(acknowledged) >= 100)
            postgres.crash()  # pg_ctl stop -m immediate, mid-storm
            down_at = len(acknowledged)
            eventually(lambda: statuses[503] >= 4)
            hot = [get(server.url, "/hot") for _ in range(20)]
            assert [r.status_code for r in hot] == [302] * 20
            assert {r.headers["Location"] for r in hot} == {"https://example.com/hot"}
            health = get(server.url, "/healthz")
            assert health.status_code == 503 and "database" in health.json()["checks"]["store"]
            postgres.start()
            recovered = eventually(lambda: every_worker_answers(server, "/healthz", 200),
                                   timeout=60)
            eventually(lambda: len(acknowledged) > down_at + 20, timeout=60)
        finally:
            done.set()
            for thread in threads:
                thread.join(timeout=60)
        print(f"\n{len(acknowledged)} acknowledged, {statuses[503]} answered 503 while down; "
              f"every worker healthy {recovered:.1f} s after the database was back")
        assert recovered < RECONNECT_BOUND
        assert set(statuses) <= {201, 503}, statuses
        assert set(acknowledged) <= stored_codes(database_url)
        # A worker may still be replacing a dead connection for a moment (a 503), but
        # within the bound every acknowledged link redirects to where it should.
        for code in acknowledged[::25] + acknowledged[-3:]:
            eventually(lambda: get(server.url, f"/{code}").status_code == 302,
                       timeout=RECONNECT_BOUND)
            assert get(server.url, f"/{code}").headers["Location"] == f"https://example.com/{code}"


def test_an_unreachable_database_at_startup_is_a_503_not_a_crash_loop(tmp_path: Path) -> None:
    database = PostgresServer()  # initialised, not started: nothing listens on its port
    try:
        with app_server(tmp_path, database.url()) as server:
            workers = server.wait_for_workers()
            health = get(server.url, "/healthz")
            assert health.status_code == 503
            assert health.json()["checks"]["store"].startswith(
                f"cannot reach the database postgres at 127.0.0.1:{database.port}")
            assert database.password not in health.text
            assert get(server.url, "/anything").status_code == 503
            time.sleep(3)  # a crash loop would have replaced the workers by now
            assert sorted(server.worker_pids()) == sorted(workers)
            database.start()
            back = eventually(lambda: every_worker_answers(server, "/healthz", 200),
                              timeout=RECONNECT_BOUND + 10)
            print(f"\nevery worker healthy again {back:.1f} s after the database started")
            assert back < RECONNECT_BOUND
            assert create(requests.Session(), server.url, "late") == 201
            assert sorted(server.worker_pids()) == sorted(workers)
    finally:
        database.close()


def test_a_locked_table_makes_creates_503_after_the_timeout_and_leaves_redirects(
        tmp_path: Path, database_url: str) -> None:
    with app_server(tmp_path, database_url) as server:
        session = requests.Session()
        assert create(session, server.url, "before") == 201
        with psycopg.connect(database_url) as locker:
            locker.execute("LOCK TABLE links IN EXCLUSIVE MODE")  # writers wait, readers not
            started = time.monotonic()
            response = session.post(f"{server.url}/api/links", timeout=30,
                                    json={"url": "https://example.com/", "code": "during"})
            waited = time.monotonic() - started
            assert response.status_code == 503
            assert "statement timeout" in response.json()["error"]
            redirect = get(server.url, "/before")
            assert (redirect.status_code, redirect.headers["Location"]) == (
                302, "https://example.com/before")
        assert float(TIMEOUT) - 0.1 < waited < 30
        assert create(session, server.url, "during") == 201


def test_two_app_servers_on_one_database_are_one_site(tmp_path: Path,
                                                      database_url: str) -> None:
    with app_server(tmp_path, database_url, "one") as one, \
            app_server(tmp_path, database_url, "two") as two:
        session = requests.Session()
        for i in range(10):
            assert create(session, one.url, f"made-on-one-{i}") == 201
            response = get(two.url, f"/made-on-one-{i}")
            assert response.status_code == 302, f"link {i} not on the other server at once"

        def race(code: str) -> list[int]:
            with ThreadPoolExecutor(max_workers=2) as pool:
                barrier = threading.Barrier(2)

                def post(base: str) -> int:
                    barrier.wait()
                    return create(requests.Session(), base, code)
                return sorted(pool.map(post, [one.url, two.url]))
        outcomes = [race(f"race-{i}") for i in range(20)]
        assert outcomes == [[201, 409]] * 20
