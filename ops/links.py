"""Operator commands for the short links, run where the app runs (``eb ssh``), with its
environment:

    python -m ops.links stats CODE [--json]

The links are opened the way the app opens them, without importing the web app:
PostgreSQL when ``DATABASE_URL`` is set, else the JSON file at ``URLS_FILE`` (default
``$DATA_DIR/urls.json``, ``DATA_DIR`` default ``./data``). Reading changes nothing.

Each command is a function ``NAME(args, links) -> exit status`` with its sub-parser in
``build_parser``; a new command is one more of each.

Exit status: 0 done, 1 no such link or the store cannot be read, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import visits
from linkstore import LinkStore, StoreUnavailable, is_postgres_url, new_api_key, open_url
from linkstore.keys import NoSuchKey, open_keys
from linkstore.reports import open_reports

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
TIMEOUT = 10.0  # seconds for the file's lock or a statement
DETAILS_SHOWN = 10


class CommandError(Exception):
    """A command that cannot be done; the message says why and what to do."""


def open_links(environ: Mapping[str, str]) -> LinkStore:
    """The link store the app at this environment uses (application.load_config's rules)."""
    database_url = environ.get("DATABASE_URL", "")
    if database_url:
        if not is_postgres_url(database_url):
            raise CommandError("DATABASE_URL must be a postgresql:// URL, or unset for the "
                               "JSON file at URLS_FILE")
        return open_url(database_url, timeout=TIMEOUT)
    data_dir = Path(environ.get("DATA_DIR", "./data"))
    urls_file = Path(environ.get("URLS_FILE", str(data_dir / "urls.json")))
    return open_url(urls_file.resolve().as_uri(), timeout=TIMEOUT)


def counting(environ: Mapping[str, str]) -> tuple[bool, float]:
    """VISITS and VISITS_FLUSH_SECONDS as the app reads them."""
    try:
        return (environ.get("VISITS", "on").lower() != "off",
                float(environ.get("VISITS_FLUSH_SECONDS", "10")))
    except ValueError:
        raise CommandError("VISITS_FLUSH_SECONDS must be a number of seconds") from None


# --- The commands ------------------------------------------------------------------------

def stats(args: argparse.Namespace, links: LinkStore) -> int:
    """The numbers of GET /api/links/CODE/stats: as that JSON, or as a few lines."""
    link = links.get(args.code)
    if link is None:
        raise CommandError(f"no link has the code {args.code!r} (codes are case-sensitive)")
    on, flush_seconds = counting(os.environ)
    counted = visits.open_store(links).stats(args.code)
    document = visits.document(link, counted, on, flush_seconds)
    target = link.url or f"the file {link.name or link.file}"
    print(json.dumps(document, indent=2, sort_keys=True) if args.json
          else describe(document, target))
    return EXIT_OK


def describe(document: Mapping[str, Any], target: str) -> str:
    """A stats document as a person reads it."""
    lines = [f"/{document['code']} -> {target}",
             f"visits (people)  {document['visits']:>9,}"
             + (f"   ({document['private_visits']:,} asked not to be tracked: counted in "
                "this total only)" if document["private_visits"] else ""),
             f"bots             {document['bots']:>9,}", ""]
    if document["days"]:
        lines.append(f"{'day (UTC)':<12}{'visits':>9}{'unique':>9}{'bots':>9}")
        lines += [f"{day['date']:<12}{day['visits']:>9,}{day['unique_visitors']:>9,}"
                  f"{day['bots']:>9,}" for day in document["days"]]
        lines.append("")
    for name in visits.DETAILS.values():
        counts = sorted(document[name].items(), key=lambda item: (-item[1], item[0]))
        shown = ", ".join(f"{value} {n:,}" for value, n in counts[:DETAILS_SHOWN])
        more = f" (and {len(counts) - DETAILS_SHOWN} more)" if len(counts) > DETAILS_SHOWN else ""
        lines.append(f"{name + ':':<11}{shown or '-'}{more}")
    if not document["counting"]:
        lines.append("\nVISITS=off: visits are not being counted.")
    return "\n".join(lines)


Command = Callable[[argparse.Namespace, LinkStore], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ops.links",
        description="Operator commands for the short links, with the app's environment "
                    "(DATABASE_URL, or URLS_FILE / DATA_DIR).",
        epilog="Exit status: 0 done, 1 no such link or the store cannot be read, "
               "2 bad arguments. Example: python -m ops.links stats my-page")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(function: Command, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(function.__name__, help=help_text,
                                  description=function.__doc__)
        sub.set_defaults(run=function)
        return sub

    counted = command(stats, "a link's visits: totals, per day, referrers, browsers, "
                             "systems, devices")
    counted.add_argument("code", metavar="CODE", help="the short link's code")
    counted.add_argument("--json", action="store_true",
                         help="print the JSON of GET /api/links/CODE/stats")
    add_reports_and_keys(command)
    return parser


# --- Reports and API keys (issue 13) ------------------------------------------------------

KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def reports(args: argparse.Namespace, links: LinkStore) -> int:
    """Visitors' reports, newest first, each with its link's state now, so that what is
    already disabled stands out. Take a link down with `disable CODE --reason REASON`."""
    now = datetime.now(timezone.utc)
    found = []
    for report in open_reports(links).reports(args.code):
        link = links.current(report.code)
        state = "no such link" if link is None else link.stopped(now) or "active"
        found.append(asdict(report) | {"state": state,
                                       "state_reason": link.reason if link else None})
    if args.json:
        print(json.dumps(found, indent=2, ensure_ascii=False))
        return EXIT_OK
    for item in found:
        why = f": {item['state_reason']}" if item["state_reason"] else ""
        details = " ".join(item["details"].split())  # one line, whatever was typed
        print(f"{item['at']}  /{item['code']}  {item['reason']}  [link {item['state']}{why}]"
              + (f"\n    {details}" if details else ""))
    if not found:
        print("no reports" + (f" of {args.code!r}" if args.code else ""))
    return EXIT_OK


def keys(args: argparse.Namespace, links: LinkStore) -> int:
    """API keys: create one (printed once; only its hash is stored), list them, revoke one
    (refused from the next request)."""
    stored = open_keys(links)
    if args.action == "create":
        if not KEY_NAME.fullmatch(args.name):
            raise CommandError("a key's name is 1 to 64 letters, digits, '.', '_', '@' or '-', "
                               "starting with a letter or digit, e.g. partner-blog")
        key, record = new_api_key(args.name)
        stored.add(record)
        print(key)
        print(f"API key {record.name!r} (id {record.id}) created. Copy it now: it is not shown "
              "again; only its hash is stored. Send it as 'Authorization: Bearer <key>'.",
              file=sys.stderr)
    elif args.action == "revoke":
        try:
            record = stored.revoke(args.name)
        except NoSuchKey as error:
            raise CommandError(str(error)) from None
        print(f"API key {record.name!r} (id {record.id}) revoked at {record.revoked_at}; it "
              "is refused from the next request.")
    elif args.json:
        shown = [{field: value for field, value in asdict(k).items() if field != "key_hash"}
                 for k in stored.all()]
        print(json.dumps(shown, indent=2))
    else:
        for k in stored.all():
            print(f"{k.name:<24} {k.id:<9} created {k.created_at}"
                  + (f"  revoked {k.revoked_at}" if k.revoked_at else ""))
    return EXIT_OK


def add_reports_and_keys(command: Callable[[Command, str], argparse.ArgumentParser]) -> None:
    listed = command(reports, "visitors' reports of links, newest first, with each link's "
                              "state")
    listed.add_argument("--code", metavar="CODE", help="only the reports of this link")
    listed.add_argument("--json", action="store_true", help="print them as JSON")
    managed = command(keys, "API keys: create NAME, list, revoke NAME")
    actions = managed.add_subparsers(dest="action", required=True)
    actions.add_parser("create", help="make a key and print it once").add_argument(
        "name", metavar="NAME", help="who the key is for, e.g. partner-blog")
    actions.add_parser("list", help="every key: name, id, created, revoked").add_argument(
        "--json", action="store_true", help="print them as JSON (without the hashes)")
    actions.add_parser("revoke", help="refuse a key from now on").add_argument(
        "name", metavar="NAME", help="the key's name (or its id)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        links = open_links(os.environ)
        try:
            return int(args.run(args, links))
        finally:
            links.close()
    except (CommandError, StoreUnavailable, ValueError) as error:
        print(f"links {args.command}: {error}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
