"""What only the PostgreSQL backend does: migrations, the cache and the change log it
follows, timeouts, an unreachable database. Against a real server (conftest.postgres)."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from flask.testing import FlaskClient

from application import create_app
from linkstore import Link, StoreUnavailable
from linkstore.postgres import MIGRATIONS, PostgresStore
from ops.pgserver import PostgresServer, free_port
from tests.helpers import eventually

POLL = 0.2  # seconds between polls of the change log in these tests
StoreMaker = Callable[..., PostgresStore]


@pytest.fixture
def make_store(database_url: str) -> Iterator[StoreMaker]:
    opened: list[PostgresStore] = []

    def make(url: str = database_url, timeout: float = 2.0,
             cache_size: int = 20_000) -> PostgresStore:
        opened.append(PostgresStore(url, timeout=timeout, cache_size=cache_size,
                                    poll_seconds=POLL))
        return opened[-1]
    yield make
    for store in opened:
        store.close()


def sql(url: str, statement: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement.encode())


def following(store: PostgresStore) -> None:
    """Wait until the store follows the change log (links read before are not cached)."""
    eventually(lambda: store._since is not None)  # noqa: SLF001


# --- schema ------------------------------------------------------------------------------

def test_workers_starting_together_apply_each_migration_once(make_store: StoreMaker,
                                                             database_url: str) -> None:
    stores = [make_store() for _ in range(5)]
    threads = [threading.Thread(target=store.count) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT version, name FROM schema_migrations").fetchall()
    files = sorted(MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    assert [name for _, name in sorted(rows)] == [path.name for path in files]
    assert (2, "0002_lifecycle.sql") in rows
    assert all(store.problem() is None for store in stores)


def test_the_lifecycle_migration_keeps_old_links_and_the_old_release_s_writes_work(
        database_url: str, make_store: StoreMaker) -> None:
    """0002 is additive: links stored under 0001 come through as active, and the INSERT
    of the release before it (0001's columns only), which a rollback brings back, works."""
    first = Path(__file__).parent.parent / "linkstore" / "migrations" / "0001_links.sql"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(first.read_text().encode())
        conn.execute("CREATE TABLE schema_migrations (version int PRIMARY KEY, name text NOT "
                     "NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (1, '0001_links.sql')")
        conn.execute("INSERT INTO links (code, url, created_at) VALUES ('old', 'https://o/', 't')")
    store = make_store()
    assert store.get("old") == Link("old", url="https://o/", created_at="t")
    sql(database_url, "INSERT INTO links (code, url, file, name, created_at, extra) "
                      "VALUES ('older', 'https://p/', NULL, NULL, 't', '{}')")
    assert store.get("older") == Link("older", url="https://p/", created_at="t")


def test_a_visit_is_not_logged_for_the_caches_but_a_state_change_is(
        make_store: StoreMaker, database_url: str) -> None:
    store = make_store()
    store.add(Link("counted", url="https://c.example/", max_visits=10))
    for _ in range(5):
        assert store.consume_visit("counted") is not None
    store.disable("counted", "spam", by="ops")
    with psycopg.connect(database_url) as conn:
        logged = conn.execute("SELECT code FROM link_changes").fetchall()
        events = conn.execute("SELECT code, action, changed_by, reason FROM link_events"
                              ).fetchall()
    assert logged == [("counted",)]
    assert events == [("counted", "disable", "ops", "spam")]


def test_the_database_refuses_more_visits_than_the_limit_even_by_hand(
        make_store: StoreMaker, database_url: str) -> None:
    store = make_store()
    store.add(Link("two", url="https://two.example/", max_visits=2))
    with pytest.raises(psycopg.errors.CheckViolation):
        sql(database_url, "UPDATE links SET visits = 3 WHERE code = 'two'")


# --- the cache and the change log --------------------------------------------------------

def test_a_served_link_keeps_redirecting_while_the_database_is_down(
        postgres: PostgresServer, make_store: StoreMaker) -> None:
    store = make_store()
    following(store)
    store.add(Link("hot", url="https://hot.example/"))
    assert store.get("hot") is not None  # served once: now cached
    postgres.crash()
    try:
        assert store.get("hot") == Link("hot", url="https://hot.example/")
        with pytest.raises(StoreUnavailable, match="cannot reach the database"):
            store.get("cold")
    finally:
        postgres.start()


def test_a_link_deleted_by_hand_stops_redirecting_on_every_worker_within_the_bound(
        make_store: StoreMaker, database_url: str) -> None:
    workers = [make_store() for _ in range(3)]
    workers[0].add(Link("gone", url="https://gone.example/"))
    for worker in workers:
        following(worker)
        assert worker.get("gone") is not None
    sql(database_url, "DELETE FROM links WHERE code = 'gone'")
    deleted_at = time.monotonic()
    for worker in workers:
        eventually(lambda: worker.get("gone") is None)
    assert time.monotonic() - deleted_at < 10 * POLL + 5  # generous on a loaded machine
    assert workers[0].count() == 0


def test_a_change_committed_late_by_an_older_transaction_is_not_missed(
        make_store: StoreMaker, database_url: str) -> None:
    """Transaction ids are not committed in order: a poll must not skip past a change
    whose transaction began before the previous poll and commits after it.

    The slow change is an update: an uncommitted delete holds its connection's shard of
    link_counts (pg_backend_pid() % 16), and the fast delete waited on it forever
    whenever the two backends' pids fell on the same shard (1 run in 16)."""
    store = make_store()
    following(store)
    store.add_many([Link("slow", url="https://slow.example/"),
                    Link("fast", url="https://fast.example/")])
    assert store.get("slow") is not None and store.get("fast") is not None
    with psycopg.connect(database_url) as slow:
        slow.execute("UPDATE links SET url = 'https://moved.example/' WHERE code = 'slow'")
        sql(database_url, "DELETE FROM links WHERE code = 'fast'")
        eventually(lambda: store.get("fast") is None)
        polls = store._polls  # noqa: SLF001
        eventually(lambda: store._polls > polls + 2)  # noqa: SLF001
        assert store.get("slow") == Link("slow", url="https://slow.example/")  # uncommitted
        slow.commit()
    eventually(lambda: store.get("slow") == Link("slow", url="https://moved.example/"))


def test_the_cache_holds_at_most_cache_size_links(make_store: StoreMaker) -> None:
    store = make_store(cache_size=10)
    following(store)
    store.add_many(Link(f"n{i}", url=f"https://n{i}.example/") for i in range(50))
    assert all(store.get(f"n{i}") == Link(f"n{i}", url=f"https://n{i}.example/")
               for i in range(50))
    assert len(store._cache) == 10  # noqa: SLF001


# --- failures ----------------------------------------------------------------------------

def test_an_unreachable_database_is_named_in_problem_and_nothing_crashes(
        make_store: StoreMaker, postgres: PostgresServer) -> None:
    url = postgres.url("links").replace(f":{postgres.port}/", f":{free_port()}/")
    store = make_store(url)  # no exception: the pool connects in the background
    problem = store.problem()
    assert problem is not None and problem.startswith("cannot reach the database links at "
                                                      "127.0.0.1:")
    assert "Connection refused" in problem
    assert postgres.password not in problem
    with pytest.raises(StoreUnavailable, match="cannot reach"):
        store.add(Link("a", url="https://a.example/"))


def test_a_locked_table_makes_a_create_fail_after_the_statement_timeout(
        make_store: StoreMaker, database_url: str) -> None:
    store = make_store(timeout=1.0)
    following(store)
    store.add(Link("hot", url="https://hot.example/"))
    assert store.get("hot") is not None
    with psycopg.connect(database_url) as locker:
        locker.execute("LOCK TABLE links IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="statement timeout"):
            store.add(Link("new", url="https://new.example/"))
        waited = time.monotonic() - started
        assert store.get("hot") == Link("hot", url="https://hot.example/")  # from the cache
    assert 0.9 < waited < 30
    store.add(Link("new", url="https://new.example/"))  # the lock is gone: it works again


def test_the_app_names_the_database_in_healthz_and_answers_503_for_creates(
        tmp_path: Path, postgres: PostgresServer) -> None:
    url = postgres.url("nowhere").replace(f":{postgres.port}/", f":{free_port()}/")
    app = create_app({"DATA_DIR": tmp_path, "SECRET_KEY": "t", "DATABASE_URL": url,
                      "DATABASE_TIMEOUT": "1", "CREATE_RATE_LIMIT": "off"})
    client: FlaskClient = app.test_client()
    try:
        health = client.get("/healthz")
        assert health.status_code == 503
        assert "the database nowhere at 127.0.0.1" in health.json["checks"]["store"]  # type: ignore
        create = client.post("/api/links", json={"url": "https://example.com/"})
        assert create.status_code == 503
        assert "cannot be saved right now" in create.json["error"]  # type: ignore[index]
        lookup = client.get("/some-code")
        assert lookup.status_code == 503
        assert postgres.password not in health.text + create.text + lookup.text
    finally:
        app.extensions["link_store"].close()


def test_the_app_serves_the_http_contract_from_postgresql(tmp_path: Path,
                                                          database_url: str) -> None:
    app = create_app({"DATA_DIR": tmp_path, "SECRET_KEY": "t", "DATABASE_URL": database_url,
                      "CREATE_RATE_LIMIT": "off"})
    client = app.test_client()
    try:
        created = client.post("/api/links", json={"url": "https://example.com/pg", "code": "pg"})
        assert created.status_code == 201
        taken = client.post("/api/links", json={"url": "https://other.example/", "code": "pg"})
        assert taken.status_code == 409
        assert client.get("/pg").headers["Location"] == "https://example.com/pg"
        details = client.get("/api/links/pg").json
        assert details is not None and details["url"] == "https://example.com/pg"
        health = client.get("/healthz").json
        assert health is not None and health["status"] == "ok" and health["links"] == 1
        assert not (tmp_path / "urls.json").exists()
    finally:
        app.extensions["link_store"].close()
