"""PostgreSQL for the benchmark: one throwaway server (ops/pgserver.py), one database per
link count, loaded with COPY.

The schema is the app's own (its migrations). Loading drops the primary key and adds it
back afterwards, so 10,000,000 links cost one sorted index build rather than ten
million random index inserts; the table the app then serves is the same. A checkpoint
ends the load, so what is measured next is the site, not the load's write-back.
"""
from __future__ import annotations

import time

import psycopg

from bench.data import CREATED_AT, code_for, url_for
from linkstore.postgres import migrate
from ops.pgserver import PostgresServer, bindir

# Room for a 10,000,000-link load; fsync stays on, so a create's commit costs what it
# costs on a real server (this machine's disk, not RDS's).
SETTINGS = {"shared_buffers": "256MB", "max_wal_size": "8GB", "checkpoint_timeout": "30min",
            "maintenance_work_mem": "512MB"}


def available() -> bool:
    return bindir() is not None


def start() -> PostgresServer:
    server = PostgresServer(SETTINGS)
    server.start()
    return server


def load(server: PostgresServer, count: int) -> tuple[str, float]:
    """A new database holding links 0..count-1; return its URL and the seconds it took."""
    started = time.monotonic()
    url = server.create_database(f"links_{count}")
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        with conn.transaction():
            conn.execute("ALTER TABLE links DROP CONSTRAINT links_pkey")
            with conn.cursor().copy("COPY links (code, url, created_at) FROM STDIN") as copy:
                for index in range(count):
                    copy.write_row((code_for(index), url_for(index), CREATED_AT))
            conn.execute("ALTER TABLE links ADD PRIMARY KEY (code)")
        conn.execute("VACUUM ANALYZE links")
        # Write the load out now, so that the creates measured next do not wait behind
        # gigabytes of it on their way to the disk.
        conn.execute("CHECKPOINT")
    return url, time.monotonic() - started
