"""Find and group the errors in Elastic Beanstalk logs.

Replaces the post-incident report's pipeline

    eb logs | awk '/error/ {print NR":"$0}' | sort -u -k2,2 | sort -n -t':' -k1,1

which matched only lowercase ``error`` (so ``ERROR``, ``TypeError`` and HTTP 5xx
responses were invisible), de-duplicated on the *second word* of each line (the day of
the month, in ``web.stdout.log``) and cut every traceback down to one line.

Here a record is one error event, whole: a log line at level ERROR or worse, with the
traceback that follows it; a bare Python traceback; an nginx error; a 5xx access-log
line. Records are grouped by a signature that ignores timestamps, process ids, request
ids, addresses and numbers, in order of first appearance.

Inputs: log files (plain or rotated ``.gz``), directories (an unpacked ``eb logs --all``
bundle), ``.zip`` bundles (``eb logs --zip``), or ``-`` for standard input
(``eb logs | python -m ops.error_hunt -``; the ``eb logs`` section headers name the
file each line came from).

Exit status: 0 no errors found, 1 errors found (so a scheduled job can alert on it),
2 an input could not be read or an option was invalid.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import re
import sys
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import IO, Any, Iterable, Iterator, Sequence

EXIT_CLEAN, EXIT_FOUND, EXIT_USAGE = 0, 1, 2
MAX_RECORD_LINES = 400
ERROR_LEVELS = {"ERROR", "CRITICAL", "FATAL", "CRIT", "ALERT", "EMERG"}

# `Nov 27 05:12:00 ip-172-31-1-2 web[1234]: message` (journald/rsyslog, web.stdout.log)
SYSLOG = re.compile(
    r"^(?P<ts>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) \S+ [\w.@/-]+(?:\[\d+\])?: ?(?P<msg>.*)$"
)
# Each leveled format: (kind, pattern with ts/level/msg groups, strptime format).
LEVELED: list[tuple[str, re.Pattern[str], str]] = [
    ("gunicorn", re.compile(
        r"^\[(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4})\] \[\d+\] "
        r"\[(?P<level>[A-Z]+)\] (?P<msg>.*)$"), "%Y-%m-%d %H:%M:%S %z"),
    ("app", re.compile(
        r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?P<level>[A-Z]+) "
        r"(?P<msg>[\w.-]+: .*)$"), "%Y-%m-%d %H:%M:%S,%f"),
    ("flask", re.compile(
        r"^\[(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] (?P<level>[A-Z]+) "
        r"(?P<msg>in [\w.-]+: .*)$"), "%Y-%m-%d %H:%M:%S,%f"),
    ("eb-engine", re.compile(
        r"^(?P<ts>\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d+) \[(?P<level>[A-Z]+)\] (?P<msg>.*)$"),
        "%Y/%m/%d %H:%M:%S.%f"),
    ("nginx", re.compile(
        r"^(?P<ts>\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) \[(?P<level>[a-z]+)\] \d+#\d+: (?P<msg>.*)$"),
        "%Y/%m/%d %H:%M:%S"),
]
ACCESS = re.compile(
    r'^\S+ \S+ \S+ \[(?P<ts>[^\]]+)\] "(?P<method>[A-Z]+) (?P<path>\S+)[^"]*" '
    r"(?P<status>\d{3}) "
)
ACCESS_TIME = "%d/%b/%Y:%H:%M:%S %z"
TRACEBACK = "Traceback (most recent call last):"
FRAME = re.compile(r'^\s+File "(?P<file>[^"]+)", line \d+, in (?P<func>\S+)')
KEYWORD = re.compile(r"\b(?:error|critical|fatal|panic)\b", re.IGNORECASE)
# `eb logs` (tail) prints each file between two dashed lines; `--all` adds instance banners.
EB_RULE = re.compile(r"^-{10,}\s*$")
EB_INSTANCE = re.compile(r"^=+ (i-[0-9a-f]+) =+\s*$")

# Variable parts removed from a signature, in this order.
NORMALIZERS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                r"[0-9a-fA-F]{12}\b"), "<id>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<addr>"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"), "<ip>"),
    (re.compile(r"\b(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{12,}\b"), "<hex>"),
    (re.compile(r"\d+"), "<n>"),
]
NGINX_CONTEXT = re.compile(r", client: .*$")


@dataclass
class Line:
    """One physical line with where it came from."""

    source: str
    number: int
    text: str


@dataclass
class Record:
    """One error event: its first line plus any traceback or continuation lines."""

    kind: str
    source: str
    line: int
    time: datetime | None
    headline: str
    lines: list[str] = field(default_factory=list)
    exception: str = ""
    frame: str = ""

    def signature(self) -> str:
        """A traceback is known by its exception and deepest frame, whichever route or
        logger reported it; anything else by its first line."""
        if self.exception:
            return normalize(f"{self.exception} at {self.frame}")
        if self.kind == "nginx-access":
            return self.headline  # already a shape (see route); the status must stay
        return normalize(self.headline)


@dataclass
class Group:
    """Records that share a signature."""

    signature: str
    kind: str
    first: Record
    last: Record
    count: int = 1
    sources: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "signature": self.signature,
            "kind": self.kind,
            "count": self.count,
            "first": where(self.first),
            "last": where(self.last),
            "sources": self.sources,
            "example": "\n".join(self.first.lines),
        }


def where(record: Record) -> dict[str, Any]:
    return {
        "time": record.time.isoformat() if record.time else None,
        "source": record.source,
        "line": record.line,
    }


def normalize(text: str) -> str:
    """Strip the parts of a message that change from one occurrence to the next."""
    text = NGINX_CONTEXT.sub("", text)
    for pattern, replacement in NORMALIZERS:
        text = pattern.sub(replacement, text)
    return " ".join(text.split())


def module_name(file: str) -> str:
    """`application.py`, or `json/__init__.py` where the file name alone says nothing.

    The directory above is left out on purpose: EB's venv path has a random part.
    """
    path = PurePosixPath(file)
    return f"{path.parent.name}/{path.name}" if path.name == "__init__.py" else path.name


def route(path: str) -> str:
    """The shape of a request path: query dropped, generated-looking segments (with a
    digit or capital, as random short codes almost always have) replaced by <code>."""
    segments = path.split("?", 1)[0].split("/")
    return "/".join("<code>" if re.search(r"[0-9A-Z]", s) else s for s in segments)


def strip_syslog(text: str) -> tuple[str | None, str]:
    """Split a journald/rsyslog prefix off: (its timestamp or None, the message)."""
    match = SYSLOG.match(text)
    if match:
        return match["ts"], match["msg"]
    return None, text


def parse_time(text: str, fmt: str) -> datetime | None:
    try:
        parsed = datetime.strptime(text, fmt)
    except ValueError:
        return None
    # EB instances log in UTC; formats without an offset are taken as UTC.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def syslog_time(text: str, year: int) -> datetime | None:
    """Syslog stamps carry no year: the caller supplies the one the source is from."""
    return parse_time(f"{year} {text}", "%Y %b %d %H:%M:%S")


@dataclass
class Header:
    """What the first line of a record says about itself."""

    kind: str
    time: datetime | None
    is_error: bool
    headline: str


def classify(message: str) -> Header | None:
    """Recognize a line that starts a log entry in one of the known formats."""
    for kind, pattern, fmt in LEVELED:
        match = pattern.match(message)
        if match:
            level = match["level"].upper()
            return Header(kind, parse_time(match["ts"], fmt), level in ERROR_LEVELS,
                          f"{level} {match['msg']}")
    match = ACCESS.match(message)
    if match:
        status = int(match["status"])
        return Header("nginx-access", parse_time(match["ts"], ACCESS_TIME), status >= 500,
                      f"HTTP {status} {match['method']} {route(match['path'])}")
    return None


CHAINED = ("During handling of the above exception", "The above exception was the direct")


class Parser:
    """Turns a stream of lines into error records, one source at a time.

    A record stays open while lines continue it: a traceback (frames, the exception
    line, chained tracebacks), indented detail, or eb-engine's unstamped command output.
    """

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.current: Record | None = None
        self.state = ""  # "", "traceback" (in frames) or "raised" (after the exception)
        self.blanks: list[str] = []
        self.year = datetime.now(timezone.utc).year

    def feed(self, line: Line) -> None:
        stamp, message = strip_syslog(line.text)
        header = classify(message)
        if header is not None and header.time is not None:
            self.year = header.time.year
        if header is None and self.current is not None and self.continues(
                self.current, line, message):
            return
        self.current, self.state, self.blanks = None, "", []
        time = header.time if header and header.time else (
            syslog_time(stamp, self.year) if stamp else None)
        if header is not None:
            if header.is_error:
                self.start(header.kind, line, time, header.headline)
        elif message.startswith(TRACEBACK):
            self.start("traceback", line, time, message)
            self.state = "traceback"
        elif KEYWORD.search(message):
            self.start("other", line, time, message.strip())

    def continues(self, record: Record, line: Line, message: str) -> bool:
        """Append the line to the open record if it belongs there; say whether it did."""
        if len(record.lines) >= MAX_RECORD_LINES:
            return False
        if not message.strip():
            # Only a chained traceback continues across blank lines; wait and see.
            self.blanks.append(line.text)
            return self.state == "raised"
        if message.startswith(TRACEBACK):
            self.state = "traceback"
        elif message[:1].isspace():
            frame = FRAME.match(message)
            if frame:
                record.frame = f"{module_name(frame['file'])}:{frame['func']}"
        elif self.state == "traceback":
            record.exception, self.state = message.strip(), "raised"
        elif not (self.state == "raised" and message.startswith(CHAINED)
                  or record.kind == "eb-engine"):
            return False
        record.lines.extend(self.blanks)
        record.lines.append(line.text)
        self.blanks = []
        return True

    def start(self, kind: str, line: Line, time: datetime | None, headline: str) -> None:
        self.current = Record(kind, line.source, line.number, time, headline, [line.text])
        self.records.append(self.current)

    def end_source(self) -> None:
        self.current, self.state, self.blanks = None, "", []
        self.year = datetime.now(timezone.utc).year


def group(records: Iterable[Record]) -> list[Group]:
    """Group records by signature, in order of first appearance."""
    groups: dict[str, Group] = {}
    for record in records:
        signature = record.signature()
        found = groups.get(signature)
        if found is None:
            groups[signature] = Group(signature, record.kind, record, record,
                                      sources=[record.source])
            continue
        found.count += 1
        found.last = record
        if record.source not in found.sources:
            found.sources.append(record.source)
    return list(groups.values())


# ---- reading inputs -------------------------------------------------------------------

def is_binary(head: bytes) -> bool:
    return b"\0" in head[:4096]


def decode_lines(source: str, data: bytes) -> Iterator[Line]:
    if source.endswith(".gz"):
        data = gzip.decompress(data)
    if is_binary(data):
        return
    text = data.decode("utf-8", errors="replace")
    for number, raw in enumerate(text.splitlines(), start=1):
        yield Line(source, number, raw)


def read_directory(root: Path) -> Iterator[list[Line]]:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        yield list(read_path(path, str(path.relative_to(root.parent))))


def read_path(path: Path, name: str) -> Iterator[Line]:
    yield from decode_lines(name, path.read_bytes())


def read_zip(path: Path) -> Iterator[list[Line]]:
    with zipfile.ZipFile(path) as bundle:
        for info in sorted(bundle.infolist(), key=lambda i: i.filename):
            if not info.is_dir():
                name = f"{path.name}:{info.filename}"
                yield list(decode_lines(name, bundle.read(info)))


def read_stream(stream: IO[str], name: str) -> Iterator[list[Line]]:
    """Split `eb logs` output into its files; a plain log stays one source.

    Sources are named `<instance id>:<path>` from the output's banners and headers.
    What comes before the first file header ("Retrieving logs...") is not a log, unless
    the stream has no headers at all. Line numbers are positions in the stream, as
    `awk NR` counted them.
    """
    lines = stream.read().splitlines()
    sections: list[list[Line]] = [[]]
    instance, source = "", name
    index = 0
    while index < len(lines):
        text = lines[index]
        banner = EB_INSTANCE.match(text)
        if banner:
            instance = banner[1]
        elif (EB_RULE.match(text) and index + 2 < len(lines)
                and EB_RULE.match(lines[index + 2]) and lines[index + 1].startswith("/")):
            source = f"{instance}:{lines[index + 1].strip()}" if instance else lines[index + 1]
            sections.append([])
            index += 3
            continue
        else:
            sections[-1].append(Line(source, index + 1, text))
        index += 1
    yield from (section for section in sections[len(sections) > 1:] if section)


def read_input(argument: str, stdin: IO[str]) -> Iterator[list[Line]]:
    """Yield the lines of each log source an argument names."""
    if argument == "-":
        yield from read_stream(stdin, "<stdin>")
        return
    path = Path(argument)
    if path.is_dir():
        yield from read_directory(path)
    elif zipfile.is_zipfile(path):
        yield from read_zip(path)
    else:
        yield list(read_path(path, argument))


def hunt(arguments: Sequence[str], stdin: IO[str] | None = None) -> tuple[list[Record], int]:
    """Parse every input; return its error records and how many sources were read."""
    parser = Parser()
    sources = 0
    for argument in arguments:
        for lines in read_input(argument, stdin or sys.stdin):
            sources += 1
            for line in lines:
                parser.feed(line)
            parser.end_source()
    return parser.records, sources


# ---- command line ---------------------------------------------------------------------

DURATION = re.compile(r"^(\d+)([smhd])$")


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`15m`, `2h`, `1d` ago, or an ISO 8601 time (UTC unless it has an offset)."""
    match = DURATION.match(text.strip())
    if match:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match[2]]
        return (now or datetime.now(timezone.utc)) - timedelta(**{unit: int(match[1])})
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since {text!r}: use an ISO time like 2026-11-27T05:00 or a span like 30m, "
            "2h, 1d") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def since_filter(records: list[Record], since: datetime | None) -> list[Record]:
    """Drop records older than `since`; keep records whose time is unknown."""
    if since is None:
        return records
    return [r for r in records if r.time is None or r.time >= since]


def render_text(groups: list[Group], records: int, sources: int) -> str:
    if not groups:
        return f"error_hunt: no errors in {sources} log source(s).\n"
    out = [f"error_hunt: {records} error record(s) in {len(groups)} group(s), "
           f"from {sources} log source(s).\n"]
    for number, found in enumerate(groups, start=1):
        first, last = where(found.first), where(found.last)
        out.append(f"#{number}  x{found.count}  [{found.kind}]  {found.signature}")
        out.append(f"    first: {first['time'] or '?'}  {first['source']}:{first['line']}")
        out.append(f"    last:  {last['time'] or '?'}  {last['source']}:{last['line']}")
        if len(found.sources) > 1:
            out.append(f"    seen in: {', '.join(found.sources)}")
        out.append("    example:")
        out.extend(f"      | {text}" for text in found.first.lines)
        out.append("")
    return "\n".join(out) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ops.error_hunt",
        description="Find, group and count the errors in Elastic Beanstalk logs "
                    "(web.stdout.log, gunicorn, nginx error/access, eb-engine.log, app logs).",
        epilog="Exit status: 0 no errors, 1 errors found, 2 unreadable input or bad option. "
               "Example: eb logs | python -m ops.error_hunt - --since 30m",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="a log file (.gz too), a directory (unpacked `eb logs --all`), "
                             "a .zip bundle (`eb logs --zip`), or - for standard input")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON document instead of the readable report")
    parser.add_argument("--since", type=parse_since, metavar="TIME",
                        help="only records at or after TIME: ISO 8601 (UTC unless an offset "
                             "is given) or a span back from now such as 30m, 2h, 1d; records "
                             "without a timestamp are kept")
    return parser


def main(argv: Sequence[str] | None = None, stdin: IO[str] | None = None,
         stdout: IO[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = stdout or sys.stdout
    try:
        records, sources = hunt(args.inputs, stdin)
    except (OSError, zipfile.BadZipFile, EOFError, gzip.BadGzipFile) as error:
        print(f"error_hunt: cannot read input: {error}", file=sys.stderr)
        return EXIT_USAGE
    records = since_filter(records, args.since)
    groups = group(records)
    if args.json:
        document = {
            "records": len(records),
            "sources": sources,
            "since": args.since.isoformat() if args.since else None,
            "groups": [g.as_dict() for g in groups],
        }
        out.write(json.dumps(document, indent=2) + "\n")
    else:
        out.write(render_text(groups, len(records), sources))
    return EXIT_FOUND if records else EXIT_CLEAN


if __name__ == "__main__":
    sys.exit(main(stdin=io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8",
                                         errors="replace")))
