"""Links in and out of files: our own CSV and JSON, and what Shlink, YOURLS, Kutt and
Bitly export.

``read_links(data, format, reserved=...)`` turns a file into rows, each either a
``Candidate`` (a link the app would accept, with the line it came from) or a ``Problem``
(the line, what is wrong, what to do). Bad input never raises. ``plan_import`` sorts
the rows against the links a site already has: what to add, what is already there,
what conflicts, what is invalid; it never plans to overwrite. ``write_csv`` and
``write_json`` export links in the form ``read_links`` reads back. Nothing here touches
a store: ``python -m ops.links`` runs the plan.

Short links that the source served on another short domain than the one being imported
are reported, never merged: ``domain`` says which one is imported, and by default it is
the source's own default domain, or the only domain the file names.

docs/importing.md says how to get each file out of each peer and what is carried over;
each reader below names the code that defines the format it reads.
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, TextIO
from urllib.parse import unquote, urlsplit

from werkzeug.urls import iri_to_uri

import linkrules
from linkstore import DELETE_REASONS, DISABLE_REASONS

FORMATS = ("csv", "json", "shlink", "yourls", "kutt", "bitly")
COLUMNS = ("code", "url", "file", "name", "created_at", "expires_at", "max_visits", "visits",
           "state", "reason")  # our CSV's header, for people; add new fields at the end
# Our JSON: every field, so that an export rebuilds the links exactly (hashes are hashes).
JSON_FIELDS = COLUMNS + ("note", "changed_by", "changed_at", "password_hash", "manage_hash",
                         "owner")
DELETED = "deleted"  # the state of a code whose link was deleted: it is never reused
# A file's state: the stored one (disabled, deleted) or why a link stopped by itself
# (expired, limit_reached: its expires_at or visits say so, and it is imported as active).
REASONS = {"disabled": DISABLE_REASONS, DELETED: DELETE_REASONS}
WORKING = ("active", "expired", "limit_reached")

Kind = Literal["file", "missing", "code", "reserved", "url", "date", "field", "domain",
               "unsupported", "conflict"]


# --- What a file holds ------------------------------------------------------------------

@dataclass(frozen=True)
class Link:
    """One short link as our files carry it: ``url`` is set, or ``file`` (an upload)."""

    code: str
    url: str | None = None
    file: str | None = None  # the upload's name in UPLOAD_DIR
    name: str | None = None  # the name it downloads as
    created_at: datetime | None = None
    expires_at: datetime | None = None
    max_visits: int | None = None
    visits: int | None = None  # counted so far, towards max_visits
    state: str | None = None  # None for a working link; "disabled" or DELETED
    reason: str | None = None  # why it was disabled or deleted (linkstore's reasons)
    note: str | None = None  # the operator's note on a takedown
    changed_by: str | None = None  # who changed the state last, and when (ISO 8601)
    changed_at: str | None = None
    password_hash: str | None = None  # linkstore's hashes, carried as they are
    manage_hash: str | None = None
    owner: str | None = None  # the API key that made it


@dataclass(frozen=True)
class Candidate:
    """A link from line ``line`` of a file, valid by the app's rules."""

    line: int
    link: Link
    title: str | None = None  # the source's title or description, for the report
    tags: tuple[str, ...] = ()
    domain: str | None = None  # the short domain the source served it on, when it says


@dataclass(frozen=True)
class Problem:
    """Why line ``line`` cannot be imported (``message``) and what to do (``hint``)."""

    line: int
    kind: Kind
    message: str
    hint: str
    code: str | None = None  # the row's short code, when it has one

    def __post_init__(self) -> None:
        if self.code is not None:  # a file's code may hold anything; a report must print it
            object.__setattr__(self, "code", _printable(self.code))

    def __str__(self) -> str:
        return f"line {self.line}: {self.message} {self.hint}"


Row = Candidate | Problem


class InvalidLink(ValueError):
    """A link the app would refuse; ``kind`` and ``message`` say why, ``hint`` what to do."""

    def __init__(self, kind: Kind, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.kind, self.message, self.hint = kind, message, hint


def _quoted(value: str) -> str:
    """``value`` quoted for a message: cut to 80 characters, invisible ones escaped."""
    return "'" + _printable(value if len(value) <= 80 else value[:79] + "…") + "'"


def _printable(text: str) -> str:
    return text if text.isprintable() else ascii(text)[1:-1]


def _utf8(text: str) -> str:
    """``text`` with lone surrogates (a JSON file may hold "\\ud800") escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# --- The app's rules ---------------------------------------------------------------------

PASSWORD_HASH = re.compile(r"scrypt\$[0-9]{1,10}\$[0-9]{1,3}\$[0-9]{1,3}\$[A-Za-z0-9+/=]{1,200}"
                           r"\$[A-Za-z0-9+/=]{1,200}")  # linkstore.hash_password's
MANAGE_HASH = re.compile(r"[0-9a-f]{64}")  # linkstore.hash_token's: SHA-256 in hex
NEW_CODE = "Give the link another code in the file (its old short URL will not work here)."
FIX_URL = "Correct the URL in the file, or leave the row out."


def app_rules(code: str, url: str | None, reserved: Collection[str]) -> str | None:
    """The URL as the app stores it under ``code`` (None for an upload, whose ``url`` is
    None), or InvalidLink: the app would refuse the code or the URL.

    The app's own checks (``linkrules``), with their messages; only the hint, what to do
    about a row of a file, is the import's.
    """
    try:
        linkrules.checked_code(code, reserved="")
    except linkrules.InvalidInput as exc:
        raise InvalidLink("code", f"{_quoted(code)}: {exc.message}", NEW_CODE) from None
    try:
        linkrules.checked_code(code, reserved)
    except linkrules.InvalidInput as exc:
        raise InvalidLink("reserved", exc.message, NEW_CODE) from None
    if url is None:
        return None
    if not url:
        raise InvalidLink("missing", "The row has no URL.", FIX_URL)
    try:
        return linkrules.checked_url(url)
    except linkrules.InvalidInput as exc:
        raise InvalidLink("url", f"{_quoted(url)}: {exc.message}", FIX_URL) from None


# --- Reading -----------------------------------------------------------------------------

@dataclass
class _Raw:
    """One short link as a file states it, before the app's rules are applied."""

    line: int
    code: str
    url: str = ""
    file: str = ""
    name: str = ""
    created_at: str = ""
    expires_at: str = ""
    max_visits: str = ""
    visits: str = ""
    state: str = ""
    reason: str = ""
    note: str = ""
    changed_by: str = ""
    changed_at: str = ""
    password_hash: str = ""
    manage_hash: str = ""
    owner: str = ""
    title: str = ""
    tags: tuple[str, ...] = ()
    short_url: str = ""  # the short link in the source: its host is the link's domain
    default_domain: bool = False  # the source marks that host as its default domain
    naive_times_are_utc: bool = False  # the source writes UTC times without an offset


Reader = Callable[[str], Iterator[_Raw | Problem]]


def read_links(data: bytes, fmt: str, *, reserved: Collection[str],
               domain: str | None = None) -> Iterator[Row]:
    """Each link in ``data`` (a file in format ``fmt``, one of FORMATS), in file order.

    ``reserved``: the codes the app keeps for itself (lower case), as its own
    ``RESERVED_CODES``. ``domain``: the short domain whose links are imported; links the
    source served on any other domain become Problems. By default it is the domain the
    source marks as its default, or else the only domain the file names; a file that
    names several and marks none yields one Problem asking for it, and nothing else.
    ValueError for an unknown format or a domain that is not a host name.
    """
    if fmt not in READERS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if domain is not None and not re.fullmatch(r"[a-z0-9.-]+", _host(domain) or ""):
        raise ValueError(f"{domain!r} is not a domain name")
    return _rows(data, READERS[fmt], reserved, domain)


def _rows(data: bytes, read: Reader, reserved: Collection[str],
          domain: str | None) -> Iterator[Row]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        yield Problem(line, "file", f"The file is not UTF-8 (byte 0x{data[exc.start]:02x} on "
                                    f"line {line}).", "Save it as UTF-8 and import it again.")
        return
    home = _host(domain) if domain else _home_domain(read(text))
    if isinstance(home, Problem):
        yield home
        return
    for raw in read(text):
        if isinstance(raw, Problem):
            yield raw
        else:
            yield _elsewhere(raw, home) or _checked(raw, reserved)


def _home_domain(raws: Iterable[_Raw | Problem]) -> str | Problem | None:
    """The domain to import when none was given (see read_links)."""
    marked: set[str] = set()
    counts: Counter[str] = Counter()
    for raw in raws:
        if isinstance(raw, _Raw) and (host := _host(raw.short_url)):
            counts[host] += 1
            if raw.default_domain:
                marked.add(host)
    if len(marked) == 1:
        return marked.pop()
    if len(counts) <= 1:
        return next(iter(counts), None)
    listing = ", ".join(f"{host} ({n:,})" for host, n in counts.most_common())
    return Problem(1, "domain", f"The file holds short links on {len(counts)} domains: "
                                f"{listing}.",
                   f"Import one domain at a time (--domain {counts.most_common(1)[0][0]}); "
                   "codes of different domains are never merged.")


def _elsewhere(raw: _Raw, home: str | None) -> Problem | None:
    host = _host(raw.short_url)
    if home is None or host is None or host == home:
        return None
    return Problem(raw.line, "domain", f"{_quoted(raw.code)} is a short link on {host} in "
                                       f"the source; this import takes the links on {home}.",
                   f"To keep it, import the file into the site that serves {host}, with "
                   f"--domain {host}.", raw.code)


def _checked(raw: _Raw, reserved: Collection[str]) -> Row:
    try:
        link = _link(raw, reserved)
    except InvalidLink as exc:
        return Problem(raw.line, exc.kind, exc.message, exc.hint, raw.code.strip() or None)
    return Candidate(raw.line, link, _utf8(raw.title.strip()) or None,
                     tuple(_utf8(t.strip()) for t in raw.tags if t.strip()), _host(raw.short_url))


def _link(raw: _Raw, reserved: Collection[str]) -> Link:
    code, url, file = raw.code.strip(), raw.url.strip(), raw.file.strip()
    if not code:
        raise InvalidLink("missing", "The row has no short code.",
                          "Add the code the link had, or leave the row out.")
    if url and file:
        raise InvalidLink("field", "The row has both a URL and a file.", "Keep one of them.")
    if file:
        _check_name("file", file)
        if raw.name:
            _check_name("name", raw.name)
    return Link(code=code, url=app_rules(code, None if file else url, reserved),
                file=file or None, name=(raw.name or None) if file else None,
                created_at=_instant(raw.created_at, "created_at", raw.naive_times_are_utc),
                expires_at=_instant(raw.expires_at, "expires_at", raw.naive_times_are_utc),
                max_visits=_count(raw.max_visits, "max_visits", 1),
                visits=_count(raw.visits, "visits", 0), **_state(raw), **_hashes(raw))


def _check_name(column: str, name: str) -> None:
    if (not name.isprintable() or "/" in name or "\\" in name or name in (".", "..")
            or len(name) > 255):
        raise InvalidLink("field", f"{_quoted(name)} cannot be a file name ({column}).",
                          "Use a plain file name of at most 255 characters.")


def _instant(value: str, column: str, naive_is_utc: bool) -> datetime | None:
    """An aware datetime from ISO 8601 text; None for an empty one."""
    value = value.strip()
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidLink("date", f"{_quoted(value)} is not a date and time ({column}).",
                          "Write it in ISO 8601, e.g. 2026-11-27T05:00:00+00:00, or empty "
                          "it to date the link at the import.") from None
    if when.tzinfo is None:
        if not naive_is_utc:
            raise InvalidLink("date", f"{_quoted(value)} has no UTC offset ({column}).",
                              "Add the offset it was written in, e.g. +00:00.")
        when = when.replace(tzinfo=timezone.utc)
    return when


def _count(value: str, column: str, least: int) -> int | None:
    value = value.strip()
    if not value:
        return None
    if not value.isdecimal() or int(value) < least:
        raise InvalidLink("field", f"{_quoted(value)} is not a whole number of at least "
                                   f"{least} ({column}).", "Correct it, or leave it empty.")
    return int(value)


def _state(raw: _Raw) -> dict[str, str | None]:
    """The state fields of a row: a disabled or deleted link keeps its state and a reason
    linkstore knows (a row without one gets "other" for a takedown, "operator" for a
    delete); a working one (active, expired, limit_reached or empty) has none."""
    state = raw.state.strip()
    if not state or state in WORKING:
        return {}
    if state not in REASONS:
        raise InvalidLink("field", f"{_quoted(state)} is not a link state.",
                          f"Use one of {', '.join(WORKING + tuple(REASONS))}, or leave it empty.")
    reasons = REASONS[state]
    reason = raw.reason.strip() or reasons[-1]
    if reason not in reasons:
        raise InvalidLink("field", f"{_quoted(reason)} is not a reason a link is {state} for.",
                          f"Use one of {', '.join(reasons)}.")
    changed_at = _instant(raw.changed_at, "changed_at", False)
    return {"state": state, "reason": reason, "note": _utf8(raw.note.strip()) or None,
            "changed_by": _utf8(raw.changed_by.strip()) or None,
            "changed_at": None if changed_at is None else changed_at.isoformat()}


def _hashes(raw: _Raw) -> dict[str, str | None]:
    """The password hash, management token hash and owner of our JSON, checked for shape:
    a malformed hash would break the link's password page."""
    for column, pattern in (("password_hash", PASSWORD_HASH), ("manage_hash", MANAGE_HASH)):
        value = getattr(raw, column)
        if value and not pattern.fullmatch(value):
            raise InvalidLink("field", f"The {column} is not one this app writes.",
                              "Export the links again with `python -m ops.links export --format "
                              "json`, or leave the field out.")
    return {"password_hash": raw.password_hash or None, "manage_hash": raw.manage_hash or None,
            "owner": _utf8(raw.owner.strip()) or None}


def _host(url: str | None) -> str | None:
    """The lower-case ASCII host of a short link ("bit.ly/x" included), or None."""
    if not url:
        return None
    try:
        return urlsplit(iri_to_uri(url if "://" in url else "https://" + url)).hostname
    except ValueError:
        return None


def _path_code(url: str) -> str:
    """The short code of a short link: its path without the leading slash, decoded."""
    try:
        return unquote(urlsplit(url if "://" in url else "https://" + url).path[1:])
    except ValueError:
        return ""


# --- Tables and JSON documents ------------------------------------------------------------

Record = tuple[int, dict[str, Any]]  # the line a record starts on, and its fields
RecordReader = Callable[[int, dict[str, Any]], Iterable[_Raw | Problem]]


class _Unreadable(Exception):
    """The rest of the file cannot be read as the format named; the Problem says why."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def _each(records: Iterable[Record | Problem], read: RecordReader) -> Iterator[_Raw | Problem]:
    """``read`` applied to each record; the problems of the file passed on as they come."""
    try:
        for record in records:
            if isinstance(record, Problem):
                yield record
            else:
                yield from read(*record)
    except _Unreadable as stop:
        yield stop.problem


def _csv_records(text: str, delimiter: str = ",") -> Iterator[Record | Problem]:
    """Each row of a CSV file after its header row, by lower-case column name.

    A row's line is where it starts (a quoted field may span lines); blank rows are
    skipped. A row with another number of fields than the header is a Problem; a file
    the csv module cannot read ends with one.
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    start = 1
    try:
        for fields in reader:
            if any(f.strip() for f in fields):
                if header is None:
                    header = [f.strip().lower() for f in fields]
                elif len(fields) != len(header):
                    yield Problem(start, "file", f"The row has {len(fields)} fields; the header "
                                                 f"has {len(header)}.",
                                  "Quote fields that contain the delimiter or line breaks.")
                else:
                    yield start, dict(zip(header, fields))
            start = reader.line_num + 1
    except csv.Error as exc:
        yield Problem(reader.line_num, "file", f"The file stops being valid CSV ({exc}).",
                      "Export it again, or repair it from that line on.")


def _require_columns(row: dict[str, Any], needed: Iterable[tuple[str, ...]], source: str) -> None:
    """_Unreadable unless the header has a column of each group of names in ``needed``."""
    absent = [" or ".join(names) for names in needed if not any(n in row for n in names)]
    if absent:
        raise _Unreadable(Problem(
            1, "file", f"This is not {source}: it has no {', '.join(absent)} column (its "
                       f"columns: {', '.join(map(_quoted, row))}).",
            "Check the --format, and that the file is the export docs/importing.md describes."))


_JSON_STRING_OR_OBJECT = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|\{', re.DOTALL)


def _json_records(text: str, links_in: Callable[[Any], Any], expected: str
                  ) -> Iterator[Record | Problem]:
    """Each link object of one or more JSON documents (API pages appended to one file).

    ``links_in`` finds the list of link objects in one document; anything but a list
    means the document is not ``expected``.
    """
    try:
        documents, line_of = _json_documents(text)
    except ValueError as exc:
        yield Problem(getattr(exc, "lineno", 1), "file", f"The file is not valid JSON ({exc}).",
                      "Save the API's responses unchanged, one after another.")
        return
    for document in documents:
        links = links_in(document)
        if not isinstance(links, list):
            yield Problem(line_of(document), "file", f"Expected {expected}.",
                          "Check the --format, and that the file holds the API's responses.")
            return
        for item in links:
            if isinstance(item, dict):
                yield line_of(item), item
            else:
                yield Problem(line_of(document), "file", f"Expected a link object, found a "
                                                         f"{type(item).__name__}.",
                              "Save the API's responses unchanged.")


def _json_documents(text: str) -> tuple[list[Any], Callable[[Any], int]]:
    """The JSON documents in ``text``, and the line on which each of their objects starts.

    The json module keeps no positions, so the objects are matched up with the "{" that
    open them: both in document order, strings skipped. ValueError for invalid JSON.
    """
    decoder = json.JSONDecoder()
    documents, at = [], _after_space(text, 0)
    while at < len(text):
        try:
            document, at = decoder.raw_decode(text, at)
        except RecursionError:
            raise ValueError("nested too deeply") from None
        documents.append(document)
        at = _after_space(text, at)
    opened = [m.start() for m in _JSON_STRING_OR_OBJECT.finditer(text) if m.group() == "{"]
    objects = [value for value in _in_document_order(documents) if isinstance(value, dict)]
    lines: dict[int, int] = {}
    if len(opened) == len(objects):  # else a key was repeated and json kept the last value
        line, counted = 1, 0
        for obj, start in zip(objects, opened):
            line, counted = line + text.count("\n", counted, start), start
            lines[id(obj)] = line
    return documents, lambda obj: lines.get(id(obj), 1)


def _after_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\n\r":
        at += 1
    return at


def _in_document_order(documents: list[Any]) -> Iterator[Any]:
    stack = list(reversed(documents))
    while stack:
        value = stack.pop()
        yield value
        if isinstance(value, dict):
            stack.extend(reversed(value.values()))
        elif isinstance(value, list):
            stack.extend(reversed(value))


def _looks_like_json(text: str) -> bool:
    return text.lstrip()[:1] in ("{", "[")


def _text(value: Any) -> str:
    """A JSON value as text: "" for null, "3" for 3."""
    return "" if value is None else str(value)


def _texts(value: Any) -> tuple[str, ...]:
    """A JSON list as texts; () for anything else."""
    return tuple(map(_text, value)) if isinstance(value, list) else ()


def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


# --- Our own files --------------------------------------------------------------------------

def _ours_csv(text: str) -> Iterator[_Raw | Problem]:
    """Our CSV export (write_csv): a header row of COLUMNS names, in any order."""
    return _each(_csv_records(text), lambda line, fields: _our_link(line, fields, COLUMNS))


def _ours_json(text: str) -> Iterator[_Raw | Problem]:
    """Our JSON export (write_json): a list of objects whose keys are JSON_FIELDS names."""
    return _each(_json_records(text, lambda doc: doc,
                               "a list of links, as `export --format json` writes"),
                 lambda line, fields: _our_link(line, fields, JSON_FIELDS))


def _our_link(line: int, fields: dict[str, Any], known: tuple[str, ...]) -> Iterator[_Raw]:
    """A field this version does not know stops the import: it would be lost (a file from
    a newer version). A field a row lacks is empty (a file from an older one)."""
    unknown = [name for name in fields if name not in known]
    if unknown:
        raise _Unreadable(Problem(
            line, "file", f"Unknown field(s) {', '.join(map(_quoted, unknown))}: this version "
                          "of the app cannot keep them.",
            "Import with the version that exported the file, or remove those fields if "
            "losing them is fine."))
    texts: dict[str, Any] = {name: _text(value) for name, value in fields.items()}
    yield _Raw(line, **{"code": "", **texts})


# --- Shlink ----------------------------------------------------------------------------------

def _shlink(text: str) -> Iterator[_Raw | Problem]:
    """Shlink's "Export" of the short URLs list (CSV), or its REST API list (JSON).

    CSV: shlink-web-component src/short-urls/helpers/ExportShortUrlsBtn.tsx (columns
    createdAt, domain, shortCode, shortUrl, longUrl, title, tags joined with "|", visits)
    written by @json2csv/plainjs with its defaults (every string quoted, "\\n" line ends,
    no BOM). shortCode is the short URL's path, still percent-encoded.
    JSON: GET /rest/v3/short-urls, {"shortUrls": {"data": [...]}}; shlink
    module/Core/src/ShortUrl/Entity/ShortUrl.php toArray(): dateCreated in ATOM with the
    server's offset, domain null on the default domain, meta.validSince/validUntil/maxVisits.
    """
    if _looks_like_json(text):
        return _each(_json_records(text, lambda doc: _dig(doc, "shortUrls", "data"),
                                   'Shlink\'s {"shortUrls": {"data": [...]}}'),
                     _shlink_api_link)
    return _each(_csv_records(text), _shlink_export_row)


def _shlink_export_row(line: int, row: dict[str, str]) -> Iterator[_Raw]:
    _require_columns(row, [("longurl",), ("shortcode", "shorturl")], "a Shlink export")
    short_url, code = row.get("shorturl", ""), row.get("shortcode", "")
    yield _Raw(line, unquote(code) if code else _path_code(short_url), url=row["longurl"],
               created_at=row.get("createdat", ""), title=row.get("title", ""),
               tags=tuple(row.get("tags", "").split("|")), visits=row.get("visits", ""),
               short_url=short_url)


def _shlink_api_link(line: int, item: dict[str, Any]) -> Iterator[_Raw | Problem]:
    code, since = _text(item.get("shortCode")), _text(_dig(item, "meta", "validSince"))
    if since and _starts_later(since):
        yield Problem(line, "unsupported", f"{_quoted(code)} starts working only at "
                                           f"{_quoted(since)} in Shlink; links here work from "
                                           "their creation.",
                      "Import the file again after that time.", code)
        return
    visits = _dig(item, "visitsSummary", "total")
    yield _Raw(line, code, url=_text(item.get("longUrl")),
               created_at=_text(item.get("dateCreated")), title=_text(item.get("title")),
               tags=_texts(item.get("tags")), expires_at=_text(_dig(item, "meta", "validUntil")),
               max_visits=_text(_dig(item, "meta", "maxVisits")),
               visits=_text(item.get("visitsCount") if visits is None else visits),
               short_url=_text(item.get("shortUrl")), default_domain=item.get("domain") is None)


def _starts_later(since: str) -> bool:
    try:
        when = datetime.fromisoformat(since)
    except ValueError:
        return True  # an unreadable start: do not let the link work early
    return when.tzinfo is None or when > datetime.now(timezone.utc)


# --- YOURLS ----------------------------------------------------------------------------------

def _yourls(text: str) -> Iterator[_Raw | Problem]:
    """YOURLS: its links table as CSV, the Import/Export plugin's CSV, or the stats API.

    Table: YOURLS includes/functions-install.php, table yourls_url (keyword, url, title,
    timestamp, ip, clicks); phpMyAdmin's CSV export (src/Plugins/Export/ExportCsv.php)
    quotes with '"' and writes NULL bare; its "CSV for MS Excel" uses ";". Timestamps
    are UTC without an offset: YOURLS sets PHP's time zone to UTC
    (includes/Config/Init.php) and writes date('Y-m-d H:i:s').
    Plugin: GautamGupta/YOURLS-Import-Export fileio/csv.php, "source,target,hits" with
    source "/keyword/" and CRLF line ends; it has no dates.
    API: yourls-api.php?action=stats&filter=last&limit=N&format=json, includes/functions.php
    yourls_get_stats(): {"links": {"link_1": {"shorturl", "url", "title", "timestamp", ...}}}.
    """
    if _looks_like_json(text):
        return _each(_json_records(text, _yourls_api_links, "the YOURLS stats API's response"),
                     _yourls_api_link)
    header = text.lstrip().partition("\n")[0]
    delimiter = ";" if header.count(";") > header.count(",") else ","
    return _each(_csv_records(text, delimiter), _yourls_table_row)


def _yourls_table_row(line: int, row: dict[str, str]) -> Iterator[_Raw]:
    if "source" in row and "target" in row:  # the plugin's
        yield _Raw(line, row["source"].strip().strip("/"), url=row["target"])
        return
    _require_columns(row, [("keyword",), ("url",)], "the YOURLS links table")
    title = row.get("title", "")
    yield _Raw(line, row["keyword"], url=row["url"], title="" if title == "NULL" else title,
               created_at=row.get("timestamp", ""), naive_times_are_utc=True)


def _yourls_api_links(doc: Any) -> Any:
    if not isinstance(doc, dict) or "statusCode" not in doc:
        return None
    links = doc.get("links", {})  # absent when there are no links
    return list(links.values()) if isinstance(links, dict) else None


def _yourls_api_link(line: int, item: dict[str, Any]) -> Iterator[_Raw]:
    short_url = _text(item.get("shorturl"))
    yield _Raw(line, _path_code(short_url).rpartition("/")[2], url=_text(item.get("url")),
               title=_text(item.get("title")), created_at=_text(item.get("timestamp")),
               short_url=short_url, naive_times_are_utc=True)


# --- Kutt ------------------------------------------------------------------------------------

def _kutt(text: str) -> Iterator[_Raw | Problem]:
    """Kutt's API v2 link list: GET /api/v2/links?limit=50&skip=N (at most 50 a page).

    thedevs-network/kutt server/handlers/links.handler.js get() answers {"total", "limit",
    "skip", "data": [...]}; server/utils/utils.js sanitize.link gives each link address,
    target, description, created_at (UTC, ISO 8601), expire_in, visit_count, domain (null
    on the default domain), password (only whether it has one), banned, and link (the
    short URL). Pages appended to one file, or a list of link objects, both read.
    """
    return _each(_json_records(text, lambda doc: doc if isinstance(doc, list)
                               else _dig(doc, "data"), 'Kutt\'s {"data": [...]} or a list'),
                 _kutt_link)


def _kutt_link(line: int, item: dict[str, Any]) -> Iterator[_Raw | Problem]:
    code = _text(item.get("address"))
    if item.get("password"):
        yield Problem(line, "unsupported", f"{_quoted(code)} is protected by a password in "
                                           "Kutt, which Kutt does not export.",
                      "Left out so that it does not become public; create it here again by "
                      "hand.", code)
    elif item.get("banned"):
        yield Problem(line, "unsupported", f"{_quoted(code)} was banned by the Kutt operator.",
                      "Left out; import it only if you are sure it is safe.", code)
    else:
        yield _Raw(line, code, url=_text(item.get("target")),
                   title=_text(item.get("description")), created_at=_text(item.get("created_at")),
                   expires_at=_text(item.get("expire_in")), visits=_text(item.get("visit_count")),
                   short_url=_text(item.get("link")), default_domain=item.get("domain") is None,
                   naive_times_are_utc=True)


# --- Bitly -----------------------------------------------------------------------------------

_BITLY_COLUMNS = {  # the dashboard export's columns, by what the column holds
    "short": ("link", "bitlink", "short link", "short url"),
    "custom": ("custom link", "custom bitlink", "custom back-half"),
    "long": ("destination url", "long url", "original url"),
    "title": ("title",),
    "created": ("date created", "created", "created at", "created_at"),
    "tags": ("tags",),
}


def _bitly(text: str) -> Iterator[_Raw | Problem]:
    """Bitly: API v4 GET /v4/groups/{group_guid}/bitlinks (JSON), or the dashboard's CSV.

    JSON: {"links": [...], "pagination": {...}}, each link with link, id, custom_bitlinks
    (full short URLs), long_url, title, tags, archived, created_at as
    2021-05-06T15:20:52+0000 (https://dev.bitly.com/api-reference/#getBitlinksByGroup;
    shlink-importer src/Sources/Bitly/BitlyApiImporter.php reads the same). Each short
    link of a Bitlink (its own and every custom back-half) becomes a row.
    CSV (Links, Export): columns matched by name; see docs/importing.md for how sure
    that is. Dates without an offset are taken as UTC, as the API gives them.
    """
    if _looks_like_json(text):
        return _each(_json_records(text, lambda doc: _dig(doc, "links"),
                                   'Bitly\'s {"links": [...]}'), _bitlink)
    return _each(_csv_records(text), _bitly_export_row)


def _bitlink(line: int, item: dict[str, Any]) -> Iterator[_Raw]:
    own = _text(item.get("link")) or _text(item.get("id"))
    for short in dict.fromkeys(s for s in (own, *_texts(item.get("custom_bitlinks"))) if s):
        yield _Raw(line, _path_code(short), url=_text(item.get("long_url")),
                   title=_text(item.get("title")), created_at=_text(item.get("created_at")),
                   tags=_texts(item.get("tags")), short_url=short)


def _bitly_export_row(line: int, row: dict[str, str]) -> Iterator[_Raw]:
    _require_columns(row, [_BITLY_COLUMNS["short"], _BITLY_COLUMNS["long"]], "a Bitly export")
    cell = {key: next((row[name] for name in names if name in row), "")
            for key, names in _BITLY_COLUMNS.items()}
    for short in dict.fromkeys(s.strip() for s in (cell["short"], cell["custom"]) if s.strip()):
        yield _Raw(line, _path_code(short), url=cell["long"], title=cell["title"],
                   tags=tuple(cell["tags"].split(",")), created_at=cell["created"],
                   short_url=short, naive_times_are_utc=True)


READERS: dict[str, Reader] = {"csv": _ours_csv, "json": _ours_json, "shlink": _shlink,
                              "yourls": _yourls, "kutt": _kutt, "bitly": _bitly}


# --- Planning ------------------------------------------------------------------------------

@dataclass
class Plan:
    """What an import would do; nothing in it overwrites a link."""

    add: list[Candidate] = field(default_factory=list)  # codes that are free: create these
    identical: list[Candidate] = field(default_factory=list)  # already here, same target
    conflicts: list[Problem] = field(default_factory=list)  # taken by another target
    invalid: list[Problem] = field(default_factory=list)  # rows that cannot be links


def plan_import(rows: Iterable[Row], existing: Callable[[str], Link | None]) -> Plan:
    """Sort ``rows`` against the links a site has (``existing(code)``, None when free).

    A code the site has, or that an earlier row of the file took, with the same target
    is ``identical`` (so importing a file twice plans nothing the second time); with
    another target, or a deleted one, it is a conflict. Each candidate keeps its
    created_at; a caller adding one fills in the time of the import only where it is None.
    """
    plan = Plan()
    taken: dict[str, Candidate] = {}
    for row in rows:
        if isinstance(row, Problem):
            plan.invalid.append(row)
            continue
        code = row.link.code
        if code in taken:
            earlier = taken[code]
            if _same_target(earlier.link, row.link):
                plan.identical.append(row)
            else:
                plan.conflicts.append(_conflict(row, f"line {earlier.line} of this file gives "
                                                     f"it to {_target(earlier.link)}"))
            continue
        here = existing(code)
        if here is None:
            plan.add.append(row)
        elif _same_target(here, row.link) and (here.state != DELETED
                                               or row.link.state == DELETED):
            plan.identical.append(row)
        else:
            plan.conflicts.append(_conflict(row, "it was deleted here, and a deleted code is "
                                                 "never used again" if here.state == DELETED
                                            else f"here it leads to {_target(here)}"))
            continue
        taken[code] = row
    return plan


def _same_target(a: Link, b: Link) -> bool:
    return (a.url, a.file) == (b.url, b.file)


def _target(link: Link) -> str:
    return link.url or f"the uploaded file {link.name or link.file}"


def _conflict(row: Candidate, why: str) -> Problem:
    code = row.link.code
    return Problem(row.line, "conflict", f"{_quoted(code)} is taken: {why}; the file has "
                                         f"{_target(row.link)}.",
                   "The existing link stays as it is. To import this one too, give it another "
                   "code in the file.", code)


# --- Writing -------------------------------------------------------------------------------

def write_csv(links: Iterable[Link], out: TextIO) -> int:
    """Write ``links`` as our CSV (a COLUMNS header, then a row each); return how many.

    ``out`` is a text stream opened with newline="" (rows end in CRLF, as RFC 4180 has it).
    """
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    count = 0
    for count, link in enumerate(links, 1):
        fields = _fields(link, COLUMNS)
        writer.writerow([fields.get(name, "") for name in COLUMNS])
    return count


def write_json(links: Iterable[Link], out: TextIO) -> int:
    """Write ``links`` as a JSON list, one link object a line, every field that is set
    (JSON_FIELDS); return how many."""
    count = 0
    out.write("[")
    for count, link in enumerate(links, 1):
        out.write(("\n" if count == 1 else ",\n")
                  + json.dumps(_fields(link, JSON_FIELDS), ensure_ascii=False))
    out.write("\n]\n")
    return count


def _fields(link: Link, names: tuple[str, ...]) -> dict[str, str | int]:
    """The fields ``names`` of ``link`` that are set, as our files write them."""
    values: dict[str, Any] = {name: getattr(link, name) for name in names}
    return {name: value.isoformat() if isinstance(value, datetime) else value
            for name, value in values.items() if value is not None}
