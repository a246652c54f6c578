"""Visit counts in PostgreSQL, beside the links (tables: migrations/0003_visits.sql).

- **Writing** (every flush, in parts of PART_ROWS rows): one statement per part, so
  one round trip and one transaction. Its batch id goes into ``visit_batches`` first,
  so a part sent again after a lost connection (it may have committed) adds nothing.
  Then ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO UPDATE`` adds every (link,
  day) of the part to the counters of this worker's shard: visits, bots, details
  (arrays of keys and counts) and the visitors (a sketch of their hashes, ORed into the
  row's, migration 0005; and the hashes themselves while the row has no more than 64,
  migration 0006). Writers take row locks only on their own shard's rows, so however
  hot a link is, no worker waits for another's flush; rows go in sorted order, so two
  workers that share a shard (16 shards, picked by host and process) wait briefly,
  never deadlock.
- **Reading**: sums over the shards; a day's unique visitors are its distinct hashes
  if every shard's row still lists them, else its sketches ORed together: a visitor two
  workers saw counts once either way, and a few are counted exactly. What the release
  before migration 0005 wrote (``details`` as JSON, ``visit_visitors``) is added in.
- **Forgetting** (hourly, by any worker): the sketches and hashes of closed days
  (``visits.closed_before``) are replaced by their number, and batch ids older than a
  day go.

Statements go through a link store's connections (``PostgresStore._call``: its pool,
timeouts, fail-fast and schema migrations), so the same errors read the same way. Reads
use the worker's own pool; writes come from the worker's visit writer (``visits.main``),
whose link store keeps one connection: counting adds one connection per worker to the
database's ``max_connections``.
"""
from __future__ import annotations

import math
import os
import secrets
import socket
import time
import zlib
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from linkstore.postgres import Connection, PostgresStore
from visits import DETAILS, Batch, Day, DayCount, Stats, Tally, add_days, closed_before

SHARDS = 16
MAINTAIN_SECONDS = 3600.0
# A part of a flush is one statement: a (link, day) row costs the database about 30 µs,
# the statement itself about 0.25 ms (docs/visits.md, "Cost"); a visitor hash adds to a
# row's list of at most 64 and to its sketch, about a 64th of a row. A flush of more
# than MOST_PARTS parts goes in larger ones: each costs a round trip and a pause.
PART_ROWS = 16
VISITOR_ROWS = 1 / 64
MOST_PARTS = 100

# %b: the arrays go in binary, which halves the Python work of a flush (psycopg quotes
# every element of a text-format array; docs/visits.md, "Cost"). A row's details come as
# one string each, "kind:value" lines and comma-separated counts, split by the database;
# its visitors as a sketch in hex and, while they are few, as comma-separated hashes. A
# conflict adds the details by key, ORs the sketches and joins the lists (migrations
# 0005 and 0006). The first parameter is the batch's id: a batch taken before (its
# answer lost with the connection) adds no row.
ADD_COUNTS = """
WITH taken AS (
    INSERT INTO visit_batches (id) VALUES (%s) ON CONFLICT (id) DO NOTHING RETURNING id)
INSERT INTO visit_counts AS c (code, day, shard, visits, bots, private, detail_keys,
                               detail_counts, visitor_sketch, visitor_hashes)
SELECT code, day, %s, visits, bots, private, string_to_array(keys, E'\\n'),
       string_to_array(counts, ',')::bigint[], sketch::bit(4096),
       string_to_array(hashes, ',')::bigint[]
  FROM unnest(%b::text[], %b::text[]::date[], %b::bigint[], %b::bigint[], %b::bigint[],
              %b::text[], %b::text[], %b::text[], %b::text[])
       AS t(code, day, visits, bots, private, keys, counts, sketch, hashes)
 WHERE EXISTS (SELECT FROM taken)
    ON CONFLICT (code, day, shard) DO UPDATE
   SET visits = c.visits + excluded.visits, bots = c.bots + excluded.bots,
       private = c.private + excluded.private,
       (detail_keys, detail_counts) = (
           SELECT coalesce(array_agg(key ORDER BY key), '{}'),
                  coalesce(array_agg(n ORDER BY key), '{}')
             FROM (SELECT key, sum(n)::bigint AS n
                     FROM unnest(c.detail_keys || excluded.detail_keys,
                                 c.detail_counts || excluded.detail_counts) AS d(key, n)
                    GROUP BY key) AS added),
       visitor_sketch = coalesce(c.visitor_sketch | excluded.visitor_sketch,
                                 c.visitor_sketch, excluded.visitor_sketch),
       visitor_hashes = CASE  -- NULL if either is not known, or together they are over 64
           WHEN visit_hashes(c.visitor_sketch, c.visitor_hashes) IS NULL
                OR excluded.visitor_hashes IS NULL THEN NULL
           WHEN NOT visit_hashes(c.visitor_sketch, c.visitor_hashes) && excluded.visitor_hashes
           THEN CASE WHEN cardinality(visit_hashes(c.visitor_sketch, c.visitor_hashes))
                          + cardinality(excluded.visitor_hashes) <= 64
                     THEN visit_hashes(c.visitor_sketch, c.visitor_hashes)
                          || excluded.visitor_hashes END
           ELSE (SELECT CASE WHEN count(*) <= 64 THEN array_agg(hash) END
                   FROM (SELECT DISTINCT hash FROM unnest(c.visitor_hashes
                         || excluded.visitor_hashes) AS hash) AS joined) END"""
# The statements of the release before migration 0005, which a rollback brings back: it
# adds details to `details` and writes a row per visitor. Kept to show that both
# releases' counts add up (tests/test_visits.py) and what 0005 saved (bench/pg_details.py).
ADD_COUNTS_0004 = """
INSERT INTO visit_counts AS c (code, day, shard, visits, bots, private, details)
SELECT code, day, %s, visits, bots, private, details
  FROM unnest(%b::text[], %b::text[]::date[], %b::bigint[], %b::bigint[], %b::bigint[],
              %b::jsonb[]) AS t(code, day, visits, bots, private, details)
    ON CONFLICT (code, day, shard) DO UPDATE
   SET visits = c.visits + excluded.visits, bots = c.bots + excluded.bots,
       private = c.private + excluded.private,
       details = visit_details_add(c.details, excluded.details)"""
ADD_VISITORS_0004 = """
INSERT INTO visit_visitors (code, day, visitor)
SELECT * FROM unnest(%b::text[], %b::text[]::date[], %b::bigint[])
    ON CONFLICT DO NOTHING"""
# The statement of the release before migration 0006: it ORs its visitors into the
# sketch and leaves the lists alone (tests/test_visits.py shows the counts still add up).
ADD_COUNTS_0005 = """
INSERT INTO visit_counts AS c (code, day, shard, visits, bots, private, detail_keys,
                               detail_counts, visitor_sketch)
SELECT code, day, %s, visits, bots, private, string_to_array(keys, E'\\n'),
       string_to_array(counts, ',')::bigint[], sketch::bit(4096)
  FROM unnest(%b::text[], %b::text[]::date[], %b::bigint[], %b::bigint[], %b::bigint[],
              %b::text[], %b::text[], %b::text[])
       AS t(code, day, visits, bots, private, keys, counts, sketch)
    ON CONFLICT (code, day, shard) DO UPDATE
   SET visits = c.visits + excluded.visits, bots = c.bots + excluded.bots,
       private = c.private + excluded.private,
       (detail_keys, detail_counts) = (
           SELECT coalesce(array_agg(key ORDER BY key), '{}'),
                  coalesce(array_agg(n ORDER BY key), '{}')
             FROM (SELECT key, sum(n)::bigint AS n
                     FROM unnest(c.detail_keys || excluded.detail_keys,
                                 c.detail_counts || excluded.detail_counts) AS d(key, n)
                    GROUP BY key) AS added),
       visitor_sketch = coalesce(c.visitor_sketch | excluded.visitor_sketch,
                                 c.visitor_sketch, excluded.visitor_sketch)"""
DAYS = """
SELECT day::text, sum(visits)::bigint, sum(bots)::bigint, sum(private)::bigint
  FROM visit_counts WHERE code = %s GROUP BY day"""
DETAIL_COUNTS = """
SELECT kind, value, sum(n)::bigint FROM (
    SELECT split_part(key, ':', 1) AS kind, substr(key, strpos(key, ':') + 1) AS value, n
      FROM visit_counts, unnest(detail_keys, detail_counts) AS d(key, n) WHERE code = %s
    UNION ALL  -- what the release before migration 0005 wrote
    SELECT kind.key, value.key, value.value::bigint
      FROM visit_counts, jsonb_each(details) AS kind, jsonb_each_text(kind.value) AS value
     WHERE code = %s) AS counted
 GROUP BY 1, 2"""
# A (link, day)'s visitors from its counts rows, ORed across the shards: their hashes,
# if every row's list is known (migration 0006), else their sketches'.
VISITORS_OF_ROWS = """
CASE WHEN bool_and(hashes IS NOT NULL) THEN count(DISTINCT hash)
     ELSE visit_sketch_count(bit_or(visitor_sketch)) END"""
ROWS_HASHES = """
CROSS JOIN LATERAL visit_hashes(visitor_sketch, visitor_hashes) AS hashes
 LEFT JOIN LATERAL unnest(hashes) AS hash ON true"""
# B608: the f-strings below put this module's SQL together; every value is a parameter.
UNIQUE_VISITORS = f"""
SELECT day::text, sum(n)::bigint FROM (
    SELECT day, visitors AS n FROM visit_unique_days WHERE code = %(code)s
    UNION ALL
    SELECT day, {VISITORS_OF_ROWS} FROM visit_counts {ROWS_HASHES}
     WHERE code = %(code)s AND visitor_sketch IS NOT NULL GROUP BY day
    UNION ALL  -- what the release before migration 0005 wrote
    SELECT day, count(*) FROM visit_visitors WHERE code = %(code)s GROUP BY day) AS counted
 GROUP BY day"""  # nosec B608
# A closed day's visitors become a number: its counts rows' (as above), and the rows the
# release before migration 0005 wrote. A flush that comes later still adds its own at
# the next close.
CLOSE_COUNTED_DAYS = f"""
WITH closed AS (  -- locked in a flush's order, so the two never deadlock
    SELECT code, day, shard, visitor_sketch, visitor_hashes FROM visit_counts
     WHERE day < %(day)s::date AND visitor_sketch IS NOT NULL
     ORDER BY code, day, shard FOR UPDATE),
cleared AS (
    UPDATE visit_counts AS c SET visitor_sketch = NULL, visitor_hashes = NULL FROM closed
     WHERE (c.code, c.day, c.shard) = (closed.code, closed.day, closed.shard))
INSERT INTO visit_unique_days AS u (code, day, visitors)
SELECT code, day, {VISITORS_OF_ROWS} FROM closed {ROWS_HASHES} GROUP BY code, day
    ON CONFLICT (code, day) DO UPDATE SET visitors = u.visitors + excluded.visitors"""  # nosec B608
CLOSE_VISITOR_ROWS = """
WITH moved AS (DELETE FROM visit_visitors WHERE day < %(day)s::date RETURNING code, day)
INSERT INTO visit_unique_days AS u (code, day, visitors)
SELECT code, day, count(*) FROM moved GROUP BY code, day
    ON CONFLICT (code, day) DO UPDATE SET visitors = u.visitors + excluded.visitors"""
CLOSE_DAYS = [CLOSE_COUNTED_DAYS, CLOSE_VISITOR_ROWS]


class PostgresVisits:
    """The PostgreSQL backend of ``visits.VisitStore``."""

    def __init__(self, links: PostgresStore, shard: int | None = None) -> None:
        self.links = links
        self._shard = shard  # None: by host and process (tests pin one)
        self._next_maintenance = time.monotonic() + MAINTAIN_SECONDS

    def address(self) -> dict[str, Any]:
        return {"url": self.links.url, "timeout": self.links.timeout}

    def salts(self, day: Day) -> dict[Day, bytes]:
        wanted = (day, add_days(day, 1))

        def work(conn: Connection) -> dict[Day, bytes]:
            with conn.transaction():
                conn.execute("DELETE FROM visit_salts WHERE day < %s::date", (day,))
                for each in wanted:
                    conn.execute("INSERT INTO visit_salts (day, salt) VALUES (%s::date, %s)"
                                 " ON CONFLICT (day) DO NOTHING",
                                 (each, secrets.token_bytes(32)))
            rows = conn.execute("SELECT day::text, salt FROM visit_salts"
                                " WHERE day = ANY(%s::text[]::date[])", (list(wanted),))
            return {str(found): bytes(salt) for found, salt in rows}
        return self.links._call(work, retry=True)

    def parts(self, batch: Batch) -> list[Batch]:
        return batch.parts(max(PART_ROWS, math.ceil(len(batch.tallies) / MOST_PARTS)),
                           VISITOR_ROWS)

    def add(self, batch: Batch) -> None:
        parameters = (batch.id, *add_counts_parameters(self.shard(),
                                                       sorted(batch.tallies.items())))
        # Retried on a new connection if the first was lost: the batch id makes it safe.
        self.links._call(lambda conn: conn.execute(ADD_COUNTS, parameters), retry=True)

    def stats(self, code: str) -> Stats:
        def work(conn: Connection) -> tuple[list[Any], list[Any], list[Any]]:
            return (conn.execute(DAYS, (code,)).fetchall(),
                    conn.execute(DETAIL_COUNTS, (code, code)).fetchall(),
                    conn.execute(UNIQUE_VISITORS, {"code": code}).fetchall())
        days, details, uniques = self.links._call(work, retry=True)
        unique = {day: int(n) for day, n in uniques}
        stats = Stats(days={day: DayCount(int(v), int(b), unique.get(day, 0))
                            for day, v, b, _ in days})
        stats.visits = sum(count.visits for count in stats.days.values())
        stats.bots = sum(count.bots for count in stats.days.values())
        stats.private = sum(int(p) for *_, p in days)
        for kind, value, n in details:
            if kind in stats.details:
                stats.details[kind][value] = int(n)
        return stats

    def totals(self, codes: Sequence[str]) -> dict[str, int]:
        rows = self.links._call(lambda conn: conn.execute(
            "SELECT code, sum(visits)::bigint FROM visit_counts WHERE code = ANY(%s)"
            " GROUP BY code", (list(codes),)).fetchall(), retry=True)
        return {code: int(n) for code, n in rows}

    def maintain(self, now: float | None = None) -> None:
        """Close the days an hour after they end; forget batch ids older than a day."""
        if now is None and time.monotonic() < self._next_maintenance:
            return
        self._next_maintenance = time.monotonic() + MAINTAIN_SECONDS

        def work(conn: Connection) -> None:
            with conn.transaction():
                for close in CLOSE_DAYS:
                    conn.execute(close, {"day": closed_before(now)})
                conn.execute("DELETE FROM visit_batches WHERE added_at < now() - interval "
                             "'1 day'")
        self.links._call(work, retry=False)

    def shard(self) -> int:
        if self._shard is not None:
            return self._shard
        return zlib.crc32(f"{socket.gethostname()}-{os.getpid()}".encode()) % SHARDS


def add_counts_parameters(shard: int, counted: Sequence[tuple[tuple[str, Day], Tally]]
                          ) -> tuple[Any, ...]:
    """ADD_COUNTS's parameters after the batch id, for tallies by (code, day), in the
    order given."""
    details = [detail_arrays(tally) for _, tally in counted]
    return (shard, *count_columns(counted), [keys for keys, _ in details],
            [counts for _, counts in details], [visitor_sketch(t.visitors) for _, t in counted],
            [visitor_hashes(t.visitors) for _, t in counted])


def add_counts_0005_parameters(shard: int,
                               counted: Sequence[tuple[tuple[str, Day], Tally]]
                               ) -> tuple[Any, ...]:
    """ADD_COUNTS_0005's parameters: this release's without the lists of hashes."""
    return add_counts_parameters(shard, counted)[:-1]


def count_columns(counted: Sequence[tuple[tuple[str, Day], Tally]]) -> list[list[Any]]:
    """The code, day, visits, bots and private columns of both releases' statements."""
    return [[code for (code, _), _ in counted], [day for (_, day), _ in counted],
            [t.visits for _, t in counted], [t.bots for _, t in counted],
            [t.private for _, t in counted]]


def detail_arrays(tally: Tally) -> tuple[str, str]:
    """A tally's details as ADD_COUNTS takes them: "kind:value" lines, and their counts.
    No value holds a line break (HTTP headers cannot), but one that did would be split
    wrongly, so it becomes a space."""
    keys, counts = [], []
    for kind in DETAILS:
        for value, n in tally.details[kind].items():
            keys.append(f"{kind}:{value}".replace("\n", " "))
            counts.append(str(n))
    return "\n".join(keys), ",".join(counts)


SKETCH_LEVELS, LEVEL_BITS = 16, 256  # as in migration 0005
EXACT_VISITORS = 64  # as in ADD_COUNTS, which stops joining lists past 64 (migration 0006)
LEVEL_BYTES = LEVEL_BITS // 8
# A visitor's level by bits 8 to 22 of its hash: their trailing zero bits, or the last
# level when all 15 are zero (the level is at most 15 whatever the bits above them).
LEVEL_OF = (SKETCH_LEVELS - 1,) + tuple(
    (low & -low).bit_length() - 1 for low in range(1, 1 << (SKETCH_LEVELS - 1)))


def visitor_hashes(visitors: Collection[int]) -> str | None:
    """Visitor hashes as migration 0006's list takes them, comma-separated; None (the
    sketch counts) if there are more than EXACT_VISITORS."""
    return ",".join(map(str, visitors)) if len(visitors) <= EXACT_VISITORS else None


def visitor_sketch(visitors: Iterable[int]) -> str | None:
    """Visitor hashes as migration 0005's sketch, in PostgreSQL's hex form of a bit string
    ("x" and 1,024 digits): bit ``hash & 255`` of level min(15, the trailing zero bits of
    ``hash >> 8``), levels and bits counted from the left. None for no visitors.

    The sketches were two thirds of the Python work of a part (99 of 151 µs), so a
    visitor's level is read from a table of the 15 bits that decide it (LEVEL_OF), and
    its bit set in bytes rather than in one 4,096-bit int: 7.7 µs a tally of 14
    visitors became 3.9 (the same sketch; tests/test_visits.py)."""
    sketch = bytearray(SKETCH_LEVELS * LEVEL_BITS // 8)
    for visitor in visitors:
        sketch[LEVEL_OF[(visitor >> 8) & 0x7FFF] * LEVEL_BYTES + ((visitor & 255) >> 3)] |= (
            0x80 >> (visitor & 7))
    return "x" + sketch.hex() if any(sketch) else None
