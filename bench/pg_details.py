"""What one flush of visit counts costs PostgreSQL under three schemas side by side on one
server: before migration 0005 (details as a JSON object, a row per visitor), 0005
(details as arrays, visitors as a sketch in the row) and 0006 (the sketch, and the
hashes themselves while a row has no more than 64).

Usage: python -m bench.pg_details [--links 1000] [--visitors 14] [--rounds 5]
       [--out bench/results]

The default flush is one worker's in `python -m bench.visits`: 1,000 links, each with
about 14 new visitors in a few browsers and referrers. Each round, on an empty
`visit_counts`, each schema's statements store such a flush twice, each in one
transaction: first as new rows (the links' first flush of the day), then onto them
(every later flush, with other visitors), the schema that goes first turning by round.
Each schema writes a shard of its own (0004 shard 0, 0005 shard 1, 0006 shard 2), so
none touches another's rows. The default flush's rows keep their lists after both: the
most 0006 adds. Times are from the client, per visit. At the end all three must have
counted the same details, 0004 and 0006 the same visitors and 0005 within 2 %, or the
run fails.
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
from linkstore.visits_postgres import (ADD_COUNTS, ADD_COUNTS_0004, ADD_COUNTS_0005,
                                       ADD_VISITORS_0004, UNIQUE_VISITORS,
                                       add_counts_0005_parameters,
                                       add_counts_parameters, count_columns)
from ops.pgserver import PostgresServer
from visitors import Device, Visit
from visits import DETAILS, Batch, Tally

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
 WHERE shard = %s GROUP BY 1, 2 ORDER BY 1, 2"""
VISITORS = """
SELECT (SELECT count(*) FROM visit_visitors),
       (SELECT sum(visit_sketch_count(visitor_sketch)) FROM visit_counts WHERE shard = 1)"""
SCHEMAS = ["0004: JSON, visitor rows", "0005: arrays, sketch", "0006: and a few hashes"]


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
    elif schema == SCHEMAS[1]:
        conn.execute(ADD_COUNTS_0005.encode(), add_counts_0005_parameters(1, counted))
    else:
        conn.execute(ADD_COUNTS.encode(), (Batch().id, *add_counts_parameters(2, counted)))


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
                for schema in SCHEMAS[round_ % 3:] + SCHEMAS[:round_ % 3]:
                    times.setdefault((schema, step), []).append(timed(conn, schema, counted))
        details = conn.execute(JSON_DETAILS).fetchall()
        if any(conn.execute(ARRAY_DETAILS, (shard,)).fetchall() != details for shard in (1, 2)):
            print("bench.pg_details: the schemas counted different details", file=sys.stderr)
            return 1
        [(exact, estimated)] = conn.execute(VISITORS).fetchall()
        conn.execute("DELETE FROM visit_counts WHERE shard <> 2")  # leaves 0006's to read
        conn.execute("TRUNCATE visit_visitors")
        listed = sum(n for code, _ in flushes[0] for _, n in conn.execute(
            UNIQUE_VISITORS.encode(), {"code": code[0]}).fetchall())
        if abs(estimated / exact - 1) > 0.02 or listed != exact:
            print(f"bench.pg_details: {exact} visitors counted as {estimated} from the "
                  f"sketches and {listed} from the lists", file=sys.stderr)
            return 1
    visits = sum(t.visits for _, t in flushes[0])
    lines = [f"# A flush of visit counts in PostgreSQL: µs per visit, median of {args.rounds}"
             f" rounds; {args.links:,} links, {visits:,} visits, each a new visitor", "",
             f"| flush | {' | '.join(SCHEMAS)} | 0005 ÷ 0004 | 0006 ÷ 0004 |",
             "|---|---:|---:|---:|---:|---:|"]
    for step in ("new rows", "onto them"):
        old, sketch, listing = (statistics.median(times[schema, step]) for schema in SCHEMAS)
        lines.append(f"| {step} | {old:.2f} | {sketch:.2f} | {listing:.2f} | "
                     f"{sketch / old:.2f} | {listing / old:.2f} |")
    text = "\n".join(lines) + (f"\n\nAll three counted the same details; {exact:,} "
                               f"visitors, counted from 0006's lists as {listed:,} and "
                               f"estimated from 0005's sketches as {estimated:,}.\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pg_details.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
