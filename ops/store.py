"""Move links between stores, and bring a PostgreSQL schema up to date.

    python -m ops.store copy --from file:///var/app/data/urls.json --to env:DATABASE_URL
    python -m ops.store migrate env:DATABASE_URL

A store is ``file:///path/to/urls.json`` or ``postgresql://user:password@host:5432/db``;
``env:NAME`` reads the URL from the environment variable NAME, which keeps a password
out of ``ps`` and the shell's history.

``copy`` is how a site moves from the file to PostgreSQL (docs/database.md), and back:
1. plan: both stores are read in code order, side by side. A code the destination holds
   with a different link stops the copy before anything is written: a link is never
   overwritten.
2. write: every link the destination lacks is added (in batches, through COPY, for
   PostgreSQL); a link it already holds, identically, is left alone, so a copy can be
   run again, or resumed after an interruption, and adds only what is new.
3. verify: both are read again; every link of the source must be in the destination,
   identical, and the counts and a SHA-256 over the source's links must match.

``migrate`` applies the schema migrations the database lacks (the app also does it when
it starts; run it ahead of a deploy whose migration takes a while).

Exit status: 0 done and verified, 1 refused, unreachable or not verified, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

from linkstore import CodeTaken, Link, LinkStore, StoreUnavailable, is_postgres_url, open_url

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
TIMEOUT = 60.0  # seconds for a lock or a statement: an import batch is larger than a create
SHOWN = 10


class CopyError(Exception):
    """A copy that cannot go ahead or did not verify; the message says why and what to do."""


@dataclass
class Report:
    source_links: int = 0
    already_there: int = 0
    added: int = 0
    destination_links: int = 0
    sha256: str = ""


def pairs(source: Iterable[Link], destination: Iterable[Link]
          ) -> Iterator[tuple[Link, Link | None]]:
    """Each source link with the destination's link under the same code, or None: a
    merge of two walks in code order, so memory does not grow with the store."""
    others = iter(destination)
    other = next(others, None)
    for link in source:
        while other is not None and other.code < link.code:
            other = next(others, None)
        yield link, other if other is not None and other.code == link.code else None


def canonical(link: Link) -> bytes:
    return json.dumps([link.code, link.record()], sort_keys=True,
                      ensure_ascii=False).encode() + b"\n"


def copy(source: LinkStore, destination: LinkStore) -> Report:
    """Plan, write and verify (see the module docstring); CopyError if refused or unequal."""
    report = Report()
    differing = []
    for link, other in pairs(source.links(), destination.links()):
        report.source_links += 1
        if other == link:
            report.already_there += 1
        elif other is not None:
            differing.append(link.code)
    if differing:
        shown = ", ".join(differing[:SHOWN]) + (" ..." if len(differing) > SHOWN else "")
        raise CopyError(f"the destination holds a different link under {len(differing)} of "
                        f"the source's codes ({shown}); nothing was copied. A link is never "
                        "overwritten: resolve these by hand first.")
    try:
        report.added = destination.add_many(source.links())
    except CodeTaken as taken:  # created in the destination since the plan
        raise CopyError(f"the destination got a different link under {taken.code!r} during "
                        "the copy; run the copy again to see every such code") from None
    verify(source, destination, report)
    return report


def verify(source: LinkStore, destination: LinkStore, report: Report) -> None:
    """Every source link is in the destination, identical: counts and SHA-256 agree."""
    ours, theirs = hashlib.sha256(), hashlib.sha256()
    count, missing = 0, []
    for link, other in pairs(source.links(), destination.links()):
        count += 1
        ours.update(canonical(link))
        theirs.update(canonical(other) if other is not None else b"-\n")
        if other != link:
            missing.append(link.code)
    report.source_links, report.sha256 = count, ours.hexdigest()
    report.destination_links = destination.count()
    if missing or ours.digest() != theirs.digest() or report.destination_links < count:
        shown = ", ".join(missing[:SHOWN])
        raise CopyError(f"not verified: {len(missing)} of {count} source links are missing or "
                        f"different in the destination ({shown}). Links created in the "
                        "source during the copy are copied by running it again.")


def resolve(url: str) -> str:
    """The URL itself, or the value of the environment variable an ``env:NAME`` names."""
    if not url.startswith("env:"):
        return url
    value = os.environ.get(url[4:], "")
    if not value:
        raise CopyError(f"{url}: the environment variable {url[4:]} is not set")
    return value


def open_store(url: str) -> LinkStore:
    try:
        return open_url(resolve(url), timeout=TIMEOUT)
    except ValueError as error:
        raise CopyError(str(error)) from None


def migrate(url: str) -> list[str]:
    """Apply the migrations the database at url lacks; return their file names."""
    import psycopg

    from linkstore.postgres import migrate as apply
    resolved = resolve(url)
    if not is_postgres_url(resolved):
        raise CopyError("migrate needs a postgresql:// URL")
    try:
        with psycopg.connect(resolved, autocommit=True, connect_timeout=10) as conn:
            return apply(conn)
    except psycopg.Error as error:
        raise CopyError(f"cannot migrate: {' '.join(str(error).split())}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ops.store",
        description="Copy links between stores (file:///path/urls.json, "
                    "postgresql://...), or bring a PostgreSQL schema up to date. "
                    "env:NAME reads a URL from the environment variable NAME.",
        epilog="Exit status: 0 done and verified, 1 refused, unreachable or not verified, "
               "2 bad arguments. Example: python -m ops.store copy --from "
               "file:///var/app/data/urls.json --to env:DATABASE_URL")
    sub = parser.add_subparsers(dest="command", required=True)
    copying = sub.add_parser("copy", help="copy every link the destination lacks, then verify")
    copying.add_argument("--from", dest="source", required=True, metavar="URL",
                         help="the store to copy from")
    copying.add_argument("--to", dest="destination", required=True, metavar="URL",
                         help="the store to copy into (a new file is created)")
    migrating = sub.add_parser("migrate", help="apply the schema migrations a database lacks")
    migrating.add_argument("url", metavar="URL", help="postgresql://... or env:NAME")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "migrate":
            result: dict[str, object] = {"applied": migrate(args.url)}
        else:
            source = open_store(args.source)
            destination = open_store(args.destination)
            try:
                result = asdict(copy(source, destination))
            finally:
                source.close()
                destination.close()
    except (CopyError, StoreUnavailable) as error:
        print(f"store {args.command}: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(result, indent=2))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
