"""What adding a flush's visit details costs PostgreSQL: migration 0005's arrays against the
JSON object before it, side by side on one server.

Usage: python -m bench.pg_details [--rows 30000] [--rounds 5] [--out bench/results]

Each round, on an empty `visit_counts`, each statement writes the same `rows` tallies
(one link each, the details of a few browsers, systems and referrers) twice: first as
new rows (a link's first flush of the day), then onto those rows (every later flush),
the one that goes first alternating by round. The previous release's statement writes
shard 0 and this release's shard 1, so neither touches the other's rows. Times are the
statement's, from the client, per row; at the end the details of both shards must add up
to the same numbers, or the run fails.
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
from linkstore.visits_postgres import ADD_COUNTS, ADD_COUNTS_0004, detail_arrays
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


def tallies(rows: int) -> list[tuple[str, Tally]]:
    chosen = random.Random(rows)  # nosec B311: a benchmark's mix, not a secret
    made = []
    for index in range(rows):
        tally = Tally()
        for visit in chosen.choices(VISITS, k=chosen.randint(1, 3)):
            tally.count(visit)
        made.append((f"link{index:08d}", tally))
    return made


def parameters(statement: str, counted: list[tuple[str, Tally]]) -> tuple[Any, ...]:
    common = ([code for code, _ in counted], [DAY] * len(counted),
              [t.visits for _, t in counted], [t.bots for _, t in counted],
              [t.private for _, t in counted])
    if statement == "jsonb (0004)":
        return (0, *common, [Jsonb({kind: dict(t.details[kind]) for kind in DETAILS
                                    if t.details[kind]}) for _, t in counted])
    arrays = [detail_arrays(t) for _, t in counted]
    return (1, *common, [keys for keys, _ in arrays], [n for _, n in arrays])


def timed(conn: psycopg.Connection[Any], statement: str, counted: list[tuple[str, Tally]]
          ) -> float:
    sql = ADD_COUNTS_0004 if statement == "jsonb (0004)" else ADD_COUNTS
    started = time.perf_counter()
    with conn.transaction():
        conn.execute(sql.encode(), parameters(statement, counted))
    return (time.perf_counter() - started) / len(counted) * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=30_000, help="tallies per flush")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    if not postgres.available():
        print("bench.pg_details: PostgreSQL is not installed", file=sys.stderr)
        return 1
    counted = tallies(args.rows)
    statements = ["jsonb (0004)", "arrays (0005)"]
    times: dict[tuple[str, str], list[float]] = {}
    with PostgresServer(postgres.SETTINGS) as server, \
            psycopg.connect(server.create_database("details"), autocommit=True) as conn:
        migrate(conn)
        for round_ in range(args.rounds):
            conn.execute("TRUNCATE visit_counts")
            for step in ("new rows", "onto them"):
                for statement in statements[round_ % 2:] + statements[:round_ % 2]:
                    times.setdefault((statement, step), []).append(
                        timed(conn, statement, counted))
        if conn.execute(JSON_DETAILS).fetchall() != conn.execute(ARRAY_DETAILS).fetchall():
            print("bench.pg_details: the two statements counted differently", file=sys.stderr)
            return 1
    lines = [f"# Visit details in PostgreSQL: µs per row, median of {args.rounds} rounds of "
             f"{args.rows:,} rows", "",
             "| flush | jsonb (0004) | arrays (0005) | arrays ÷ jsonb |", "|---|---|---|---|"]
    for step in ("new rows", "onto them"):
        old, new = (statistics.median(times[statement, step]) for statement in statements)
        lines.append(f"| {step} | {old:.1f} | {new:.1f} | {new / old:.2f} |")
    text = "\n".join(lines) + "\n\nBoth statements' details added up to the same numbers.\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pg_details.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
