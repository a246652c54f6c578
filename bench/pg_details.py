"""What one flush of visit counts costs PostgreSQL: migration 0005's schema (details as
arrays, visitors as a sketch in the row) against the one before it (details as a JSON
object, a row per visitor), side by side on one server.

Usage: python -m bench.pg_details [--links 1000] [--visitors 14] [--rounds 5]
       [--out bench/results]

The default flush is one worker's in `python -m bench.visits`: 1,000 links, each with
about 14 new visitors in a few browsers and referrers. Each round, on an empty
`visit_counts`, each schema's statements store such a flush twice, each in one
transaction: first as new rows (the links' first flush of the day), then onto them
(every later flush, with other visitors), the schema that goes first alternating by
round. The release before writes shard 0 and this one shard 1, so neither touches the
other's rows. Times are from the client, per visit. At the end both must have counted
the same details, and the same visitors within 2 %, or the run fails.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench import postgres
from linkstore.postgres import migrate
from linkstore.visits_postgres import (ADD_COUNTS, ADD_COUNTS_0004, ADD_VISITORS_0004,
                                       add_counts_parameters, count_columns)
from ops.pgserver import PostgresServer
from visitors import Device, Visit
from visits import DETAILS, Tally

BROWSERS: list[tuple[str, str, Device]] = [
    ("Chrome", "Windows", "desktop"), ("Firefox", "Linux", "desktop"),
    ("Mobile Safari", "iOS", "mobile")]
VISITS = [Visit("person", browser, os, device, referrer) for browser, os, device in BROWSERS
          for referrer in ("direct", "t.co", "news.ycombinator.com")]
DAY = "2026-11-30"
JSON_DETAILS = """
SELECT kind.key, value.key, sum(value.value::bigint)
  FROM visit_counts, jsonb_each(details) AS kind, jsonb_each_text(kind.value) AS value
 WHERE shard = 0 GROUP BY 1, 2 ORDER BY 1, 2"""
ARRAY_DETAILS = """
SELECT split_part(key, ':', 1), substr(key, strpos(key, ':') + 1), sum(n)
  FROM visit_counts, unnest(detail_keys, detail_counts) AS d(key, n)
 WHERE shard = 1 GROUP BY 1, 2 ORDER BY 1, 2"""


VISITORS = """
SELECT (SELECT count(*) FROM visit_visitors),
       (SELECT sum(visit_sketch_count(visitor_sketch)) FROM visit_counts WHERE shard = 1)"""
SCHEMAS = ["0004: JSON, visitor rows", "0005: arrays, sketch"]


def flush(links: int, visitors: int, seed: int) -> list[tuple[tuple[str, str], Tally]]:
    """A flush: each link's visits, from about `visitors` new visitors each."""
    chosen = random.Random(seed)  # nosec B311: a benchmark's mix, not a secret
    made = []
    for index in range(links):
        tally = Tally()
        for visit in chosen.choices(VISITS, k=chosen.randint(1, 2 * visitors - 1)):
            tally.count(visit)
            tally.visitors.add(chosen.getrandbits(64) - 2**63)
        made.append(((f"link{index:08d}", DAY), tally))
    return made


def store(conn: psycopg.Connection[Any], schema: str,
          counted: list[tuple[tuple[str, str], Tally]]) -> None:
    if schema == SCHEMAS[0]:
        conn.execute(ADD_COUNTS_0004.encode(), (0, *count_columns(counted), [
            Jsonb({kind: dict(t.details[kind]) for kind in DETAILS if t.details[kind]})
            for _, t in counted]))
        visitors = sorted((code, day, visitor) for (code, day), t in counted
                          for visitor in t.visitors)
        conn.execute(ADD_VISITORS_0004.encode(), tuple(map(list, zip(*visitors))))
        return
    conn.execute(ADD_COUNTS.encode(), add_counts_parameters(1, counted))


def timed(conn: psycopg.Connection[Any], schema: str,
          counted: list[tuple[tuple[str, str], Tally]]) -> float:
    """µs per visit to store the flush, in one transaction."""
    started = time.perf_counter()
    with conn.transaction():
        store(conn, schema, counted)
    return (time.perf_counter() - started) / sum(t.visits for _, t in counted) * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--links", type=int, default=1000, help="links in a flush")
    parser.add_argument("--visitors", type=int, default=14, help="a link's, on average")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    if not postgres.available():
        print("bench.pg_details: PostgreSQL is not installed", file=sys.stderr)
        return 1
    flushes = [flush(args.links, args.visitors, seed) for seed in (1, 2)]
    times: dict[tuple[str, str], list[float]] = {}
    with PostgresServer(postgres.SETTINGS) as server, \
            psycopg.connect(server.create_database("details"), autocommit=True) as conn:
        migrate(conn)
        for round_ in range(args.rounds):
            conn.execute("TRUNCATE visit_counts")
            conn.execute("TRUNCATE visit_visitors")
            for step, counted in zip(("new rows", "onto them"), flushes):
                for schema in SCHEMAS[round_ % 2:] + SCHEMAS[:round_ % 2]:
                    times.setdefault((schema, step), []).append(timed(conn, schema, counted))
        if conn.execute(JSON_DETAILS).fetchall() != conn.execute(ARRAY_DETAILS).fetchall():
            print("bench.pg_details: the two schemas counted different details", file=sys.stderr)
            return 1
        [(exact, estimated)] = conn.execute(VISITORS).fetchall()
        if abs(estimated / exact - 1) > 0.02:
            print(f"bench.pg_details: {exact} visitors counted as {estimated}", file=sys.stderr)
            return 1
    visits = sum(t.visits for _, t in flushes[0])
    lines = [f"# A flush of visit counts in PostgreSQL: µs per visit, median of {args.rounds}"
             f" rounds; {args.links:,} links, {visits:,} visits, each a new visitor", "",
             f"| flush | {SCHEMAS[0]} | {SCHEMAS[1]} | 0005 ÷ 0004 |", "|---|---:|---:|---:|"]
    for step in ("new rows", "onto them"):
        old, new = (statistics.median(times[schema, step]) for schema in SCHEMAS)
        lines.append(f"| {step} | {old:.2f} | {new:.2f} | {new / old:.2f} |")
    text = "\n".join(lines) + (f"\n\nBoth counted the same details; {exact:,} visitors, "
                               f"estimated from the sketches as {estimated:,}.\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pg_details.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
