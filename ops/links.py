"""Operator commands for the short links, run where the app runs (``eb ssh``), with its
environment:

    python -m ops.links list [--state STATE] [--limit N] [--json]
    python -m ops.links search TEXT [--limit N] [--json]
    python -m ops.links show CODE [--json]
    python -m ops.links stats CODE [--json]
    python -m ops.links disable CODE --reason {phishing,malware,spam,legal,other} [--note TEXT]
    python -m ops.links enable CODE
    python -m ops.links delete CODE
    python -m ops.links export --format csv|json [--output FILE]
    python -m ops.links import FILE --format csv|json|shlink|yourls|kutt|bitly [--dry-run]

The links are opened the way the app opens them, without importing the web app:
PostgreSQL when ``DATABASE_URL`` is set, else the JSON file at ``URLS_FILE`` (default
``$DATA_DIR/urls.json``, ``DATA_DIR`` default ``./data``). Reading changes nothing;
``disable``, ``enable`` and ``delete`` go through the store, which records who (``--by``,
default the OS user), when and why in the link's history.

Each command is a function ``NAME(args, links) -> exit status`` with its sub-parser in
``build_parser``; a new command is one more of each.

Exit status: 0 done, 1 refused (no such link, already deleted, rows an import could not
take) or the store cannot be read, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import getpass
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import linkrules
import visits
from linkstore import (ACTIVE, DISABLE_REASONS, CodeTaken, Link, LinkDeleted,
                       LinkStore, NoSuchLink, StoreUnavailable, data_paths, is_postgres_url,
                       new_api_key, open_url, utc_now)
from linkstore.jsonfile import write_atomically
from linkstore.keys import NoSuchKey, open_keys
from linkstore.reports import open_reports
from ops import linkformats

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
TIMEOUT = 10.0  # seconds for the file's lock or a statement
DETAILS_SHOWN = 10
STATES = ("active", "expired", "limit_reached", "disabled", "deleted")  # as the API says


class CommandError(Exception):
    """A command that cannot be done; the message says why and what to do."""


def upload_dir(environ: Mapping[str, str]) -> Path:
    """UPLOAD_DIR as the app reads it."""
    return data_paths(environ.get)[2]


def open_links(environ: Mapping[str, str]) -> LinkStore:
    """The link store the app at this environment uses (application.load_config's rules)."""
    database_url = environ.get("DATABASE_URL", "")
    if database_url:
        if not is_postgres_url(database_url):
            raise CommandError("DATABASE_URL must be a postgresql:// URL, or unset for the "
                               "JSON file at URLS_FILE")
        return open_url(database_url, timeout=TIMEOUT)
    return open_url(data_paths(environ.get)[1].resolve().as_uri(), timeout=TIMEOUT)


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


# --- Finding links -----------------------------------------------------------------------

def list_links(args: argparse.Namespace, links: LinkStore) -> int:
    """The newest links first, optionally only those in one state."""
    now = datetime.now(timezone.utc)
    chosen = (link for link in links.links()
              if args.state is None or state_at(link, now) == args.state)
    print_links(newest(chosen, args.limit), args.json, now)
    return EXIT_OK


def search(args: argparse.Namespace, links: LinkStore) -> int:
    """The newest links whose code or target contains TEXT (any case)."""
    text = args.text.casefold()
    found = (link for link in links.links()
             if any(text in value.casefold() for value in (link.code, target_of(link))))
    print_links(newest(found, args.limit), args.json, datetime.now(timezone.utc))
    return EXIT_OK


def show(args: argparse.Namespace, links: LinkStore) -> int:
    """Everything known of one link, and who changed its state, when and why."""
    link = existing(links, args.code)
    details = details_of(link, datetime.now(timezone.utc))
    history = [{"action": change.action, "by": change.by, "at": change.at,
                "reason": change.reason, "note": change.note}
               for change in links.history(link.code)]
    if args.json:
        print(json.dumps(details | {"history": history}, indent=2, ensure_ascii=False))
        return EXIT_OK
    width = max(map(len, details))
    for name, value in details.items():
        print(f"{name:<{width}}  {readable(value)}")
    print("\nhistory" + ("" if history else ": no change of state recorded"))
    for change in history:
        why = " ".join(filter(None, [change["reason"], change["note"] and f"({change['note']})"]))
        print(f"  {change['at']}  {change['action']:<8} by {change['by']}  {why}".rstrip())
    return EXIT_OK


def readable(value: object) -> str:
    """A field's value as show prints it."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


def state_at(link: Link, now: datetime) -> str:
    """What the link answers now: active, or why it stopped (the API's "state")."""
    return link.stopped(now) or ACTIVE


def target_of(link: Link) -> str:
    return link.url or f"file {link.name or link.file}"


def created(link: Link) -> datetime:
    """When the link was made, for sorting; links without a readable time sort last."""
    try:
        when = datetime.fromisoformat(link.created_at or "")
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def newest(links: Iterable[Link], limit: int) -> list[Link]:
    return sorted(links, key=lambda link: (created(link), link.code), reverse=True)[:limit]


def details_of(link: Link, now: datetime) -> dict[str, Any]:
    """What a person may know of a link: every field but the hashes."""
    return {"code": link.code, "url": link.url, "file": link.file, "name": link.name,
            "created_at": link.created_at, "state": state_at(link, now),
            "reason": link.reason, "note": link.note, "changed_by": link.changed_by,
            "changed_at": link.changed_at, "expires_at": link.expires_at,
            "max_visits": link.max_visits,
            "visits": link.visits if link.max_visits is not None else None,
            "protected": link.password_hash is not None, "owner": link.owner}


def print_links(chosen: list[Link], as_json: bool, now: datetime) -> None:
    if as_json:
        print(json.dumps([details_of(link, now) for link in chosen], indent=2,
                         ensure_ascii=False))
        return
    for link in chosen:
        print(f"{link.created_at or '-':<25}  {state_at(link, now):<13}  /{link.code}  "
              f"{target_of(link)}")
    print(f"({len(chosen):,} link{'' if len(chosen) == 1 else 's'})", file=sys.stderr)


def existing(links: LinkStore, code: str) -> Link:
    link = links.current(code)
    if link is None:
        raise CommandError(f"no link has the code {code!r} (codes are case-sensitive)")
    return link


# --- Taking links down -------------------------------------------------------------------

def disable(args: argparse.Namespace, links: LinkStore) -> int:
    """Take a link down: it answers 410 Gone saying it was disabled and why, until enabled."""
    before = existing(links, args.code)
    after = changed(lambda: links.disable(args.code, args.reason, args.by, args.note))
    report(before, after, f"disabled ({args.reason}): it answers 410 Gone")
    return EXIT_OK


def enable(args: argparse.Namespace, links: LinkStore) -> int:
    """Bring a disabled link back: it redirects again (unless it expired or used its
    visits, which enabling does not change)."""
    before = existing(links, args.code)
    after = changed(lambda: links.enable(args.code, args.by))
    still = after.stopped(datetime.now(timezone.utc))
    report(before, after, "enabled: it works again" if not still else
           "enabled, but it " + ("has expired" if still == "expired" else "used all its visits")
           + ": it still answers 410 Gone")
    return EXIT_OK


def delete(args: argparse.Namespace, links: LinkStore) -> int:
    """Delete a link for good: it answers 410 Gone, and its code is never used again."""
    before = existing(links, args.code)
    after = changed(lambda: links.delete(args.code, args.by, reason="operator"))
    report(before, after, "deleted for good: it answers 410 Gone")
    return EXIT_OK


def changed(change: Callable[[], Link]) -> Link:
    try:
        return change()
    except NoSuchLink as error:
        raise CommandError(f"{error} (codes are case-sensitive)") from None
    except LinkDeleted as error:
        raise CommandError(f"{error}; nothing changed") from None


def report(before: Link, after: Link, what: str) -> None:
    if after == before:
        print(f"/{after.code} was already {after.state}; nothing changed")
        return
    was = before.state + (f" ({before.reason})" if before.reason else "")
    print(f"/{after.code} {what}; it was {was}."
          f"\nRecorded: {after.changed_at} by {after.changed_by}"
          + (f", note: {after.note}" if after.note else "")
          + ".\nEvery server follows within seconds; nginx may serve a cached redirect of a "
            "plain link for up to 60 s (docs/operating.md).")


# --- Moving links in and out -------------------------------------------------------------

def export(args: argparse.Namespace, links: LinkStore) -> int:
    """Every link, in code order: CSV for people (no hashes), or JSON with every field."""
    now = datetime.now(timezone.utc)
    out = io.StringIO(newline="")
    if args.format == "csv":
        count = linkformats.write_csv((for_people(link, now) for link in links.links()), out)
    else:
        count = linkformats.write_json(map(as_file_link, links.links()), out)
    if args.output is None:
        sys.stdout.write(out.getvalue())
    else:
        write_atomically(Path(args.output), [out.getvalue().encode()])
    print(f"exported {count:,} link{'' if count == 1 else 's'}"
          + (f" to {args.output}" if args.output else ""), file=sys.stderr)
    return EXIT_OK


def as_file_link(link: Link) -> linkformats.Link:
    """A stored link as our JSON carries it: every field, the state as stored."""
    return linkformats.Link(
        link.code, link.url, link.file, link.name, instant(link.created_at),
        instant(link.expires_at), link.max_visits,
        link.visits if link.max_visits is not None else None,
        None if link.state == ACTIVE else link.state, link.reason, link.note,
        link.changed_by, link.changed_at, link.password_hash, link.manage_hash, link.owner)


def for_people(link: Link, now: datetime) -> linkformats.Link:
    """A stored link as our CSV shows it: what it answers now, no hashes."""
    full = as_file_link(link)
    return linkformats.Link(full.code, full.url, full.file, full.name, full.created_at,
                            full.expires_at, full.max_visits, full.visits, state_at(link, now),
                            link.reason)


def instant(text: str | None) -> datetime | None:
    """A stored time (ISO 8601) as an aware datetime; one without an offset is UTC."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"a link holds the time {text!r}, which is not ISO 8601; correct "
                           "it in the store first") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def import_links(args: argparse.Namespace, links: LinkStore) -> int:
    """Add the links of FILE whose codes are free; report every other row by its line."""
    try:
        data = Path(args.file).read_bytes()
    except OSError as error:
        raise CommandError(f"cannot read {args.file}: {error.strerror}") from None
    rows = linkformats.read_links(data, args.format, reserved=linkrules.RESERVED_CODES,
                                  domain=args.domain)
    here = {link.code: as_file_link(link) for link in links.links()}
    plan = linkformats.plan_import(rows, here.get)
    uploads = upload_dir(os.environ)
    missing = [row for row in plan.add if row.link.file and not (uploads / row.link.file).is_file()]
    plan.add = [row for row in plan.add if row not in missing]
    plan.invalid += [linkformats.Problem(
        row.line, "missing", f"The uploaded file {row.link.file!r} is not in {uploads}.",
        "Copy the uploads along first (python -m ops.backup carries them).", row.link.code)
        for row in missing]
    if not args.dry_run:
        try:
            links.add_many(to_store(row.link) for row in plan.add)
        except CodeTaken as taken:
            raise CommandError(f"the code {taken.code!r} was taken while importing; nothing "
                               "was imported. Run the import again.") from None
    print_plan(plan, args.dry_run)
    return EXIT_FAILED if plan.conflicts or plan.invalid else EXIT_OK


def to_store(link: linkformats.Link) -> Link:
    """A link of a file as the store keeps it, dated now when the file has no time."""
    limited = link.max_visits is not None
    return Link(link.code, link.url, link.file, link.name,
                link.created_at.isoformat() if link.created_at else utc_now(),
                expires_at=None if link.expires_at is None else link.expires_at.astimezone(
                    timezone.utc).isoformat(timespec="seconds"),
                max_visits=link.max_visits, password_hash=link.password_hash,
                manage_hash=link.manage_hash, owner=link.owner,
                visits=min(link.visits or 0, link.max_visits or 0) if limited else 0,
                state=link.state or ACTIVE, reason=link.reason, note=link.note,
                changed_by=link.changed_by, changed_at=link.changed_at)


def print_plan(plan: linkformats.Plan, dry_run: bool) -> None:
    """Each row by its line: added, already there, or why not; then the totals."""
    added = "would be added" if dry_run else "added"
    lines: list[tuple[int, str]] = [(row.line, f"line {row.line}: /{row.link.code} {added}")
                                    for row in plan.add]
    lines += [(row.line, f"line {row.line}: /{row.link.code} already there")
              for row in plan.identical]
    lines += [(problem.line, f"{problem} [{problem.kind}]")
              for problem in plan.conflicts + plan.invalid]
    for _, line in sorted(lines, key=lambda item: item[0]):
        print(line)
    print(f"{len(plan.add):,} {added}, {len(plan.identical):,} already there, "
          f"{len(plan.conflicts):,} conflicting, {len(plan.invalid):,} invalid"
          + (" (dry run: nothing was changed)" if dry_run else ""))


Command = Callable[[argparse.Namespace, LinkStore], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ops.links",
        description="Operator commands for the short links, with the app's environment "
                    "(DATABASE_URL, or URLS_FILE / DATA_DIR).",
        epilog="Exit status: 0 done, 1 refused (no such link, already deleted, rows an "
               "import could not take) or the store cannot be read, 2 bad arguments. "
               "Example: python -m ops.links disable my-page --reason phishing")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(function: Command, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(function.__name__, help=help_text,
                                  description=function.__doc__)
        sub.set_defaults(run=function)
        return sub

    def command_of(function: Command, name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=function.__doc__)
        sub.set_defaults(run=function)
        return sub

    def as_json(sub: argparse.ArgumentParser, what: str) -> None:
        sub.add_argument("--json", action="store_true", help=f"print {what} as JSON")

    def limit(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--limit", type=positive, default=50, metavar="N",
                         help="at most N links, newest first (default 50)")

    listing = command_of(list_links, "list", "the newest links, optionally in one state")
    listing.add_argument("--state", choices=STATES, help="only links in this state")
    limit(listing)
    as_json(listing, "the links")

    found = command(search, "links whose code or target contains TEXT (any case)")
    found.add_argument("text", metavar="TEXT")
    limit(found)
    as_json(found, "the links")

    shown = command(show, "everything about one link, and its history")
    shown.add_argument("code", metavar="CODE", help="the short link's code")
    as_json(shown, "the link and its history")

    counted = command(stats, "a link's visits: totals, per day, referrers, browsers, "
                             "systems, devices")
    counted.add_argument("code", metavar="CODE", help="the short link's code")
    counted.add_argument("--json", action="store_true",
                         help="print the JSON of GET /api/links/CODE/stats")

    for function, help_text in [(disable, "take a link down (410 Gone, saying why)"),
                                (enable, "bring a disabled link back"),
                                (delete, "delete a link for good (its code is never reused)")]:
        change = command(function, help_text)
        change.add_argument("code", metavar="CODE", help="the short link's code")
        change.add_argument("--by", default=getpass.getuser(),
                            help="who is making the change, for the history (default: the "
                                 "OS user)")
        if function is disable:
            change.add_argument("--reason", required=True, choices=DISABLE_REASONS)
            change.add_argument("--note", help="a note for the history, e.g. a ticket")

    out = command(export, "every link, as CSV for people or JSON that loses nothing")
    out.add_argument("--format", required=True, choices=("csv", "json"))
    out.add_argument("--output", metavar="FILE",
                     help="write FILE, whole or not at all (default: standard output)")

    into = command_of(import_links, "import", "add the links of a file (ours, or a peer's "
                                              "export); never overwrites")
    into.add_argument("file", metavar="FILE")
    into.add_argument("--format", required=True, choices=linkformats.FORMATS)
    into.add_argument("--domain", help="the short domain whose links are imported (for a "
                                       "file that holds several; docs/importing.md)")
    into.add_argument("--dry-run", action="store_true",
                      help="change nothing; print what would be done")
    add_reports_and_keys(command)
    return parser


def positive(text: str) -> int:
    if not text.isdecimal() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1")
    return int(text)


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
            problem = links.problem()  # e.g. a damaged file, read as the last good copy
            if problem:
                raise CommandError(f"the link store cannot be used: {problem}")
            return int(args.run(args, links))
        finally:
            links.close()
    except (CommandError, StoreUnavailable, ValueError) as error:
        print(f"links {args.command}: {error}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
