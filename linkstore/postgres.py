"""Links in PostgreSQL (Amazon RDS in production), for a site that has outgrown one file.

Connections: each worker has a small pool (psycopg_pool) that connects in the
background, so a database that cannot be reached at start-up makes ``/healthz`` and
creates answer 503 while the worker keeps running, and the worker connects by itself
once the database is back. Every statement has a timeout (``statement_timeout``) and
so does every wait for a connection. After the database could not be reached, calls
fail at once for ``FAIL_FAST_SECONDS`` instead of each waiting the whole timeout again.

Writes: ``INSERT ... ON CONFLICT DO NOTHING``, so a taken code is reported, never
overwritten, however many servers create at once; imports go through ``COPY``.

Reads: links never change where they point, so each worker caches the links it has
served (at most ``cache_size``) and a hot link costs no query. Any update or delete of
a link row, by the app or by hand, is logged by a trigger in ``link_changes``; a thread
in each worker reads that log every ``poll_seconds`` and evicts those codes. A change
therefore reaches every worker within ``poll_seconds`` plus one poll (docs/database.md).
What is never read from the cache: a visit of a limited link (``consume_visit``: one
``UPDATE ... WHERE visits < max_visits RETURNING``, atomic however many servers race
for the last visit) and ``current``. A visit only counts and changes nothing a cache
holds, so the change log leaves it out.

State changes (``disable``, ``enable``, ``delete``) update the row and add a row to
``link_events`` in one transaction: no change without its record.

Schema: the numbered SQL files in ``migrations/``, each applied once, in order, in its
own transaction, under an advisory lock so that workers starting together on several
servers apply it exactly once (``python -m ops.store migrate`` does it ahead of a deploy).
"""
from __future__ import annotations

import contextlib
import logging
import math
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from linkstore import (CodeTaken, Link, NoSuchLink, StateChange, StateChanges, StoreUnavailable,
                       changed_link)

log = logging.getLogger("shortener.store")

T = TypeVar("T")
Connection = psycopg.Connection[tuple[Any, ...]]

MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_LOCK = 0x6C696E6B73  # any constant: one advisory lock for every migrating process
# Every column of a link, in Link's order; DEFINITION: those set when it is made.
COLUMNS = ("code, url, file, name, created_at, extra, expires_at, max_visits, password_hash, "
           "manage_hash, owner, visits, state, reason, note, changed_by, changed_at")
DEFINITION = ("url, file, name, created_at, extra, expires_at, max_visits, password_hash, "
              "manage_hash, owner")
# B608: these statements put column names together; every value is a parameter.
SELECT_ONE = f"SELECT {COLUMNS} FROM links WHERE code = %s"  # nosec B608
SELECT_ALL = f"SELECT {COLUMNS} FROM links ORDER BY code"  # nosec B608
INSERT_ONE = (f"INSERT INTO links ({COLUMNS}) VALUES ({', '.join(['%s'] * 17)})"  # nosec B608
              " ON CONFLICT (code) DO NOTHING")
COPY_IN = f"COPY incoming ({COLUMNS}) FROM STDIN"
VISIT_ALLOWED = ("code = %s AND visits < max_visits AND state = 'active'"
                 " AND (expires_at IS NULL OR expires_at > now())")
COUNT_VISIT = "UPDATE links SET visits = visits + 1"
CONSUME_VISIT = f"{COUNT_VISIT} WHERE {VISIT_ALLOWED} RETURNING {COLUMNS}"  # nosec B608
NEW_STATE = "state = %s, reason = %s, note = %s, changed_by = %s, changed_at = %s"
CHANGE_STATE = f"UPDATE links SET {NEW_STATE} WHERE code = %s RETURNING {COLUMNS}"  # nosec B608
RECORD_CHANGE = ("INSERT INTO link_events (code, action, changed_by, changed_at, reason, note)"
                 " VALUES (%s, %s, %s, %s, %s, %s)")
SELECT_OWNED = (f"SELECT {COLUMNS} FROM links WHERE owner = %s"  # nosec B608
                " AND (%s::text IS NULL OR (created_at COLLATE \"C\", code) < (%s, %s))"
                " ORDER BY created_at COLLATE \"C\" DESC, code DESC LIMIT %s")
SELECT_HISTORY = ("SELECT code, action, changed_by, changed_at, reason, note FROM link_events"
                  " WHERE code = %s ORDER BY id")
FAIL_FAST_SECONDS = 1.0
IMPORT_BATCH = 10_000
CHANGES_KEPT = "1 day"
PRUNE_EVERY_SECONDS = 3600.0


class PostgresStore(StateChanges):
    """The PostgreSQL backend of ``linkstore.LinkStore``."""

    def __init__(self, url: str, timeout: float = 3.0, cache_size: int = 20_000,
                 poll_seconds: float = 2.0, pool_size: int = 4) -> None:
        self.url = url
        self.where = describe(url)
        self.timeout = timeout
        self.cache_size = cache_size
        self.poll_seconds = poll_seconds
        self._cache: dict[str, Link] = {}
        self._cache_lock = threading.Lock()
        self._polls = 0  # completed polls of the change log; see _remember()
        self._poll_lock = threading.Lock()  # one poll at a time: each starts where the last did
        self._since: int | None = None  # the change log is read from this transaction id
        self._schema_lock = threading.Lock()
        self._schema_ready = False
        self._down_until = 0.0
        self._down_reason = ""
        self._closing = threading.Event()
        self.pool: ConnectionPool[Connection] = ConnectionPool(
            url, min_size=1, max_size=pool_size, open=False, timeout=timeout,
            name="links", configure=self._configure,
            # A short reconnect window keeps retries close together while the database
            # is down; a request starts a new window, so workers reconnect soon after
            # it is back (tests/test_postgres_faults.py).
            reconnect_timeout=5.0,
            kwargs={"autocommit": True, "application_name": "shortener",
                    "connect_timeout": max(2, math.ceil(timeout)),
                    # A server that vanished (failover, network) must not hold a request
                    # past the timeouts: TCP gives up on it after about 10 s.
                    "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                    "keepalives_count": 3, "tcp_user_timeout": 10_000})
        self.pool.open(wait=False)
        self._follower = threading.Thread(target=self._follow_changes, daemon=True,
                                          name="link-changes")
        self._follower.start()

    # --- the interface -----------------------------------------------------------------

    def get(self, code: str) -> Link | None:
        link = self._cache.get(code)
        if link is not None:
            return link
        if not storable(code):
            return None  # PostgreSQL text cannot hold it, so no link has it
        if self._since is None:
            self._poll_changes()  # where the change log starts, before any link is cached
        polls = self._polls
        row = self._call(lambda conn: conn.execute(SELECT_ONE, (code,)).fetchone(), retry=True)
        if row is None:
            return None
        link = to_link(row)
        self._remember(link, polls)
        return link

    def add(self, link: Link) -> None:
        def insert(conn: Connection) -> int:
            return conn.execute(INSERT_ONE, to_row(link)).rowcount
        # Not retried: a connection lost during the INSERT may have committed it.
        if self._call(insert, retry=False) == 0:
            raise CodeTaken(link.code)

    def add_many(self, links: Iterable[Link]) -> int:
        added = 0
        iterator = iter(links)
        while batch := list(islice(iterator, IMPORT_BATCH)):
            added += self._call(lambda conn: import_batch(conn, batch), retry=False)
        return added

    def current(self, code: str) -> Link | None:
        if not storable(code):
            return None
        row = self._call(lambda conn: conn.execute(SELECT_ONE, (code,)).fetchone(), retry=True)
        return None if row is None else to_link(row)

    def consume_visit(self, code: str) -> Link | None:
        if not storable(code):
            return None
        # Not retried: a connection lost during the UPDATE may have counted the visit.
        row = self._call(lambda conn: conn.execute(CONSUME_VISIT, (code,)).fetchone(),
                         retry=False)
        return None if row is None else to_link(row)

    def change(self, change: StateChange) -> Link:
        """Change the row and record the change in one transaction; this worker forgets
        its cached copy at once, the others at their next poll of the change log."""
        def apply(conn: Connection) -> Link:
            with conn.transaction():
                row = conn.execute(SELECT_ONE + " FOR UPDATE", (change.code,)).fetchone()
                if row is None:
                    raise NoSuchLink(change.code)
                link = to_link(row)
                changed = changed_link(link, change)
                if changed == link:
                    return link
                row = conn.execute(CHANGE_STATE, (
                    changed.state, changed.reason, changed.note, changed.changed_by,
                    change.at, change.code)).fetchone()
                conn.execute(RECORD_CHANGE, (change.code, change.action, change.by, change.at,
                                             change.reason, change.note))
                if row is None:  # cannot happen: the row is locked
                    raise NoSuchLink(change.code)
                return to_link(row)
        if not storable(change.code):
            raise NoSuchLink(change.code)
        changed = self._call(apply, retry=False)
        with self._cache_lock:
            self._cache.pop(change.code, None)
        return changed

    def history(self, code: str) -> list[StateChange]:
        rows = self._call(lambda conn: conn.execute(SELECT_HISTORY, (code,)).fetchall(),
                          retry=True) if storable(code) else []
        return [StateChange(code, action, by, iso(at) or "", reason, note)
                for code, action, by, at, reason, note in rows]

    def owned(self, owner: str, limit: int, after: tuple[str, str] | None = None
              ) -> list[Link]:
        created_at, code = after or (None, None)
        rows = self._call(lambda conn: conn.execute(
            SELECT_OWNED, (owner, created_at, created_at, code, limit)).fetchall(), retry=True)
        return [to_link(row) for row in rows]

    def count(self) -> int:
        row = self._call(lambda conn: conn.execute(
            "SELECT coalesce(sum(n), 0)::bigint FROM link_counts").fetchone(), retry=True)
        return int(row[0]) if row else 0

    def problem(self) -> str | None:
        try:
            self.count()
        except StoreUnavailable as exc:
            return str(exc)
        return None

    def links(self) -> Iterator[Link]:
        self._ensure_schema()
        try:
            with self._connection() as conn, conn.transaction(), \
                    conn.cursor(name="links_in_code_order") as cursor:
                cursor.itersize = 5_000
                cursor.execute(SELECT_ALL)
                yield from (to_link(row) for row in cursor)
        except psycopg.Error as exc:
            raise self._unavailable(exc) from exc

    def close(self) -> None:
        self._closing.set()
        self._follower.join(timeout=self.timeout + 5)
        self.pool.close()

    # --- the cache and the change log ----------------------------------------------------

    def _remember(self, link: Link, polls_before_read: int) -> None:
        """Cache a link read from the database, unless a poll of the change log finished
        after the read began: that poll may have evicted the code before this insert,
        and the next poll would not see the change again."""
        with self._cache_lock:
            if self._since is None or self._polls != polls_before_read:
                return
            if len(self._cache) >= self.cache_size:
                del self._cache[next(iter(self._cache))]  # the oldest entry
            self._cache[link.code] = link

    def _follow_changes(self) -> None:
        pruned_at = time.monotonic()
        while True:
            with contextlib.suppress(StoreUnavailable):  # _call logged it
                self._poll_changes()
                if time.monotonic() - pruned_at > PRUNE_EVERY_SECONDS:
                    self._call(lambda conn: conn.execute(
                        "DELETE FROM link_changes WHERE changed_at < now() - %s::interval",
                        (CHANGES_KEPT,)), retry=False)
                    pruned_at = time.monotonic()
            if self._closing.wait(self.poll_seconds):
                return

    def _poll_changes(self) -> None:
        """Evict every code changed since the previous poll.

        Transaction ids are not committed in order, so each poll reads from the oldest
        transaction still running at the previous poll (the snapshot's xmin): a change
        that commits late is read by a later poll. A change may be read twice; an
        eviction of a code that is not cached costs nothing.
        """
        with self._poll_lock:
            since = self._since
            horizon, codes = self._call(lambda conn: read_changes(conn, since,
                                                                  self.cache_size), retry=True)
            with self._cache_lock:
                if len(codes) > self.cache_size:
                    self._cache.clear()
                for code in codes:
                    self._cache.pop(code, None)
                self._since = horizon
                self._polls += 1

    # --- connections, errors, schema -----------------------------------------------------

    def _configure(self, conn: Connection) -> None:
        """Every connection: statements time out; a forgotten transaction is ended."""
        conn.execute("SELECT set_config('statement_timeout', %s, false), "
                     "set_config('idle_in_transaction_session_timeout', '60s', false)",
                     (f"{round(self.timeout * 1000)}ms",))

    def _call(self, work: Callable[[Connection], T], retry: bool) -> T:
        """Run work on a pooled connection, with the database's errors as StoreUnavailable.

        retry: run it once more on a fresh connection if the connection was lost (a
        read; a write may have committed before the loss, so it is never repeated).
        """
        self._fail_fast()
        self._ensure_schema()
        for attempt in (1, 2):
            try:
                with self._connection() as conn:
                    result = work(conn)
            except psycopg.Error as exc:
                if retry and attempt == 1 and connection_lost(exc):
                    continue
                raise self._unavailable(exc) from exc
            if self._down_reason:
                log.warning("%s answers again", self.where)
                self._down_reason = ""
            return result
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Connection]:
        """A pooled connection that the server has not closed while it sat in the pool.

        After a restart of the database every pooled connection is dead; the server's
        goodbye makes its socket readable, which costs a poll to see instead of a failed
        statement (and, for a create, a 503) per dead connection.
        """
        for _ in range(self.pool.max_size):
            conn = self.pool.getconn()
            if not closed_by_server(conn):
                break
            conn.close()
            self.pool.putconn(conn)  # the pool discards it and connects a new one
        else:
            conn = self.pool.getconn()  # every pooled one was dead: this one is new
        try:
            yield conn
        finally:
            self.pool.putconn(conn)

    def _fail_fast(self) -> None:
        if time.monotonic() < self._down_until:
            raise StoreUnavailable(self._down_reason)

    def _unavailable(self, exc: psycopg.Error) -> StoreUnavailable:
        """What to tell the caller about a database error; after a lost connection,
        remember that the database is down, and why, for FAIL_FAST_SECONDS."""
        if isinstance(exc, psycopg.errors.QueryCanceled):
            return StoreUnavailable(
                f"{self.where} did not answer within {self.timeout:g} s (statement timeout: "
                "a locked table or a slow query); try again shortly")
        if not connection_lost(exc):
            return StoreUnavailable(f"{self.where} refused the query: {one_line(exc)}")
        cause = self._connect_error() if isinstance(exc, PoolTimeout) else one_line(exc)
        reason = f"cannot reach {self.where}: {cause}"
        if not self._down_reason:
            log.error("%s; creates answer 503 and cached links keep redirecting until it "
                      "is back. Check the database and DATABASE_URL.", reason)
        self._down_reason = reason
        self._down_until = time.monotonic() + FAIL_FAST_SECONDS
        return StoreUnavailable(reason)

    def _connect_error(self) -> str:
        """Why the pool has no connection to give: what a connection attempt says now."""
        try:
            psycopg.connect(self.url, connect_timeout=2).close()
        except psycopg.Error as exc:
            return one_line(exc)
        return f"no connection came free within {self.timeout:g} s"

    def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        with self._schema_lock:
            if not self._schema_ready:
                self._fail_fast()
                try:
                    with self._connection() as conn:
                        applied = migrate(conn)
                except psycopg.Error as exc:
                    raise self._unavailable(exc) from exc
                if applied:
                    log.info("%s: applied %s", self.where, ", ".join(applied))
                self._schema_ready = True


def migrate(conn: Connection) -> list[str]:
    """Apply the migrations the database lacks, in order; return their file names."""
    applied = []
    for path in sorted(MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                         " version int PRIMARY KEY, name text NOT NULL,"
                         " applied_at timestamptz NOT NULL DEFAULT now())")
            version = int(path.name[:4])
            if conn.execute("SELECT FROM schema_migrations WHERE version = %s",
                            (version,)).fetchone() is not None:
                continue
            conn.execute("SET LOCAL statement_timeout = 0")  # a migration may take a while
            conn.execute(path.read_text(encoding="utf-8").encode())
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                         (version, path.name))
        applied.append(path.name)
    return applied


def read_changes(conn: Connection, since: int | None, limit: int) -> tuple[int, list[str]]:
    """The horizon the next read starts from, and the codes changed since `since` (none
    on the first read: nothing is cached before it)."""
    [(horizon, codes)] = conn.execute(
        "SELECT pg_snapshot_xmin(pg_current_snapshot())::text, ARRAY("
        " SELECT DISTINCT code FROM link_changes WHERE xid >= %s::text::xid8 LIMIT %s)",
        (str(since or 0), limit + 1)).fetchall()
    return int(horizon), ([] if since is None else list(codes))


def import_batch(conn: Connection, batch: list[Link]) -> int:
    """Add a batch of links in one transaction; see LinkStore.add_many."""
    with conn.transaction():
        conn.execute("CREATE TEMP TABLE incoming (LIKE links INCLUDING DEFAULTS) "
                     "ON COMMIT DROP")
        with conn.cursor().copy(COPY_IN) as copy:
            for link in batch:
                copy.write_row(to_row(link))
        mine, theirs = (", ".join(f"{table}.{column}" for column in DEFINITION.split(", "))
                        for table in ("i", "l"))
        differing = conn.execute(
            "SELECT code FROM incoming GROUP BY code"  # nosec B608: column names, no input
            f" HAVING count(DISTINCT ({DEFINITION})) > 1"
            " UNION ALL"
            " SELECT code FROM incoming i JOIN links l USING (code)"
            f" WHERE ({mine}) IS DISTINCT FROM ({theirs})"
            " LIMIT 1").fetchone()
        if differing:
            raise CodeTaken(differing[0])
        return conn.execute("INSERT INTO links SELECT DISTINCT ON (code) * FROM incoming "
                            "ON CONFLICT (code) DO NOTHING").rowcount


def to_row(link: Link) -> tuple[Any, ...]:
    return (link.code, link.url, link.file, link.name, link.created_at,
            Jsonb(dict(link.extra or {})), instant(link.expires_at), link.max_visits,
            link.password_hash, link.manage_hash, link.owner, link.visits, link.state,
            link.reason, link.note, link.changed_by, instant(link.changed_at))


def to_link(row: tuple[Any, ...]) -> Link:
    (code, url, file, name, created_at, extra, expires_at, max_visits, password_hash,
     manage_hash, owner, visits, state, reason, note, changed_by, changed_at) = row
    return Link(code, url, file, name, created_at, extra or None, iso(expires_at), max_visits,
                password_hash, manage_hash, owner, visits, state, reason, note, changed_by,
                iso(changed_at))


def instant(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def iso(when: datetime | None) -> str | None:
    """A timestamptz as the store writes times: ISO 8601 in UTC, to the second."""
    return None if when is None else when.astimezone(timezone.utc).isoformat(
        timespec="seconds")


def storable(code: str) -> bool:
    """Whether PostgreSQL text can hold code (no NUL, valid UTF-8)."""
    try:
        code.encode()
    except UnicodeEncodeError:
        return False
    return "\0" not in code


def closed_by_server(conn: Connection) -> bool:
    """An idle connection whose socket has something to read was closed by the server
    (a shutdown or a restart sends a message, then closes it)."""
    if conn.closed:
        return True
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    return bool(readable)


def describe(url: str) -> str:
    """'the database NAME at HOST:PORT', never the password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "the database (DATABASE_URL cannot be parsed)"
    name = params.get("dbname") or params.get("user") or "postgres"
    host, port = params.get("host") or "localhost", params.get("port") or 5432
    return f"the database {name} at {host}:{port}"


def connection_lost(exc: psycopg.Error) -> bool:
    """The connection failed or the server is going away, rather than a query failing:
    no SQLSTATE (a client-side failure), class 08 (connection), or 57P01-57P03 (the
    server is shutting down, crashed, or cannot take connections yet)."""
    return (exc.sqlstate is None or exc.sqlstate.startswith("08")
            or exc.sqlstate in ("57P01", "57P02", "57P03"))


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
