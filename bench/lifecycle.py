"""What links that stop cost: a redirect's lookup with the state file beside urls.json,
a counted visit of a limited link on each backend, and a password check.

Usage: python -m bench.lifecycle [--links 100000] [--states 1000] [--visits 300]

Side by side in one run, best of three:

- ``FileStore.get`` of a plain link, with no state file, then with one of ``--states``
  entries (each worker stats it on every request, as it stats urls.json);
- ``consume_visit`` on the file (under the flock: the state file rewritten and fsynced
  per visit, ``--states`` entries in it) and on PostgreSQL (one UPDATE; a throwaway
  server, ops/pgserver.py), ``--visits`` each;
- one scrypt password check (``Link.accepts_password``).

It prints a table and the ratios; docs/performance.md records a run. It is not part of
``make test`` or ``python -m bench``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from linkstore import Link, LinkStore, hash_password
from linkstore.jsonfile import FileStore, dump_links, write_atomically
from linkstore.postgres import PostgresStore
from ops.pgserver import PostgresServer


def best_per_call(work: Callable[[], object], calls: int, repeat: int = 3) -> float:
    """Seconds per call, the best of repeat runs of calls calls."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(calls):
            work()
        best = min(best, (time.perf_counter() - started) / calls)
    return best


def links(count: int, limited: int) -> list[Link]:
    """count plain links, and limited links with a huge limit that visits never reach."""
    return ([Link(f"p{i:07d}", url=f"https://example.com/{i}") for i in range(count)]
            + [Link(f"l{i:07d}", url=f"https://example.com/l{i}", max_visits=10**9)
               for i in range(limited)])


def fill(store: LinkStore, limited: int) -> None:
    """Give each limited link one visit, so each has an entry in the state file."""
    for i in range(limited):
        store.consume_visit(f"l{i:07d}")


def time_visits(store: LinkStore, visits: int) -> float:
    return best_per_call(lambda: store.consume_visit("l0000000"), visits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--links", type=int, default=100_000)
    parser.add_argument("--states", type=int, default=1_000)
    parser.add_argument("--visits", type=int, default=300)
    args = parser.parse_args()
    rows: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "urls.json"
        write_atomically(path, dump_links(links(args.links, args.states)))
        store = FileStore(path)
        store.get("p0000001")
        rows["file: get, no state file"] = best_per_call(
            lambda: store.get("p0000001"), 200_000)
        fill(store, args.states)
        rows[f"file: get, {args.states:,} states"] = best_per_call(
            lambda: store.get("p0000001"), 200_000)
        rows[f"file: consume_visit, {args.states:,} states"] = time_visits(store,
                                                                           args.visits)
    with PostgresServer() as server:
        url = server.create_database("bench_lifecycle")
        database = PostgresStore(url)
        try:
            database.add_many(links(1_000, args.states))
            rows["PostgreSQL: consume_visit"] = time_visits(database, args.visits)
        finally:
            database.close()
    stored = hash_password("a password of some length")
    protected = Link("p", url="https://example.com/", password_hash=stored)
    rows["password check (scrypt)"] = best_per_call(
        lambda: protected.accepts_password("a wrong guess"), 20)
    print(f"{args.links:,} plain links, {args.states:,} limited ones with a visit each\n")
    for name, seconds in rows.items():
        print(f"{name:<40} {seconds * 1e6:>12,.1f} µs")
    plain = rows["file: get, no state file"]
    print(f"\nget with states / without: {rows[f'file: get, {args.states:,} states'] / plain:.2f}")


if __name__ == "__main__":
    main()
