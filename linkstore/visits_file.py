"""Visit counts beside the JSON links file: logs appended per worker, folded into totals.

Everything lives in a ``visits/`` directory beside ``urls.json`` (on EFS on Elastic
Beanstalk, shared by every instance); ``urls.json`` is never touched::

    visits/salt-2026-11-29                 the day's salt (mode 0600), deleted after its day
    visits/log/2026-11-29/HOST-PID.jsonl   one worker's flushes that day, one JSON line each
    visits/totals/SHARD-GENERATION.json    folded totals of the links in a shard, a link a line
    visits/manifest.json                   which totals are current; how far each log is folded
    visits/fold.lock

- **Writing** (every flush): one ``write`` of one line, appended with ``O_APPEND`` to the
  worker's own log, then ``fsync``. Each process has a log of its own: appends by two
  NFS clients to one file can overwrite each other, and an append by one writer
  cannot. A line cut short by a crash is skipped by readers, and the next append
  starts on a new line.
- **Folding** (every ``fold_seconds``, by whichever worker gets ``fold.lock`` first, on
  any instance): under the lock, read every log from where the manifest says it was
  folded to, add those lines to the totals of the shards they touch, write each shard
  as a new file, then commit by replacing the manifest (write, fsync, rename). A reader
  sees the previous fold or the new one, never a mix; a fold that dies before the
  rename leaves the previous one whole, and its files are removed by the next. A
  totals file holds one link a line, in order of code (``totals_file``): a fold parses
  only the lines of the links it adds to and copies the rest as they are, a block at a
  time, and a read finds its links by binary search. Parsing a shard whole, as the
  release before did, cost a fold seconds of CPU a minute and the home page a second
  and a half at 100,000 visited links (docs/visits.md, "Many visited links").
- **Reading**: the manifest, the lines of the code in its shard's totals, and every log
  from where it was folded: counts are complete up to each worker's last flush, folded
  or not.
- **Forgetting**: a day's visitor hashes are kept, to count each visitor once, until an
  hour after the day ends (``visits.CLOSE_AFTER_SECONDS``); the next fold keeps only their
  number. A day's logs are deleted once folded and a day older than that, when no
  instance's clock can still be on that day.
"""
from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import secrets
import socket
import time
import zlib
from collections import Counter
from collections.abc import (Callable, Collection, Container, Iterable, Iterator, Mapping,
                             Sequence)
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from linkstore import StoreUnavailable
from linkstore.jsonfile import exclusive_lock, write_atomically
from visits import (DETAILS, Batch, Day, DayCount, Stats, Tally, add_days, closed_before, day_of,
                    no_details)

log = logging.getLogger("shortener.visits")

SHARDS = 16
FOLD_SECONDS = 60.0
PART_ROWS = 500  # tallies and visitor hashes (each a number in the line) an append


def shard_of(code: str) -> int:
    return zlib.crc32(code.encode()) % SHARDS


@dataclass
class LinkTotals:
    """One link's counts as a totals file keeps them: the all-time totals and details,
    [visits, bots, unique visitors] per day, and the hashes of days not closed yet."""

    visits: int = 0
    bots: int = 0
    private: int = 0
    details: dict[str, Counter[str]] = field(default_factory=no_details)
    days: dict[Day, list[int]] = field(default_factory=dict)
    open: dict[Day, set[int]] = field(default_factory=dict)

    def add(self, day: Day, tally: Tally, closed: Day) -> None:
        self.visits += tally.visits
        self.bots += tally.bots
        self.private += tally.private
        for kind, counts in tally.details.items():
            self.details[kind].update(counts)
        on_day = self.days.setdefault(day, [0, 0, 0])
        on_day[0] += tally.visits
        on_day[1] += tally.bots
        if day < closed:  # a flush that came after its day was closed: counted as new
            on_day[2] += len(tally.visitors)
        elif tally.visitors:
            seen = self.open.setdefault(day, set[int]())
            seen |= tally.visitors
            on_day[2] = len(seen)

    def close(self, before: Day) -> None:
        self.open = {day: seen for day, seen in self.open.items() if day >= before}

    def stats(self) -> Stats:
        return Stats(self.visits, self.bots, self.private,
                     {day: DayCount(*counts) for day, counts in self.days.items()},
                     {kind: Counter(counts) for kind, counts in self.details.items()})

    def to_json(self) -> dict[str, Any]:
        return {"visits": self.visits, "bots": self.bots, "private": self.private,
                **{kind: dict(counts) for kind, counts in self.details.items()},
                "days": self.days, "open": {day: sorted(seen) for day, seen in self.open.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LinkTotals:
        return cls(data["visits"], data["bots"], data["private"],
                   {kind: Counter(data[kind]) for kind in DETAILS}, dict(data["days"]),
                   {day: set(seen) for day, seen in data["open"].items()})


@dataclass
class Manifest:
    generation: int = 0
    folded: dict[str, int] = field(default_factory=dict)  # log path: bytes folded
    totals: dict[str, str] = field(default_factory=dict)  # shard: its current totals file
    open: dict[str, Day] = field(default_factory=dict)  # shard: its oldest day with hashes


class FileVisits:
    """The JSON file backend of ``visits.VisitStore``."""

    def __init__(self, directory: Path, lock_timeout: float = 5.0,
                 fold_seconds: float = FOLD_SECONDS) -> None:
        self.dir = directory
        self.lock_path = directory / "fold.lock"
        self.lock_timeout = lock_timeout
        self.fold_seconds = fold_seconds
        self._next_fold = time.monotonic() + fold_seconds

    def address(self) -> dict[str, Any]:
        return {"directory": str(self.dir.resolve()), "lock_timeout": self.lock_timeout}

    # --- salts ---------------------------------------------------------------------------

    def salts(self, day: Day) -> dict[Day, bytes]:
        try:
            self.dir.mkdir(exist_ok=True)
            wanted = {wanted: self._salt(wanted) for wanted in (day, add_days(day, 1))}
            for old in self.dir.glob("salt-*"):
                if old.name[5:] < day:
                    old.unlink(missing_ok=True)
        except (OSError, ValueError) as exc:
            raise StoreUnavailable(f"cannot keep the visitor salt in {self.dir}: {exc}") from exc
        return wanted

    def _salt(self, day: Day) -> bytes:
        """The salt of day; the first worker to ask makes it, atomically (link(2) fails
        if another got there first), so every worker and instance shares one."""
        path = self.dir / f"salt-{day}"
        if not path.exists():
            draft = self.dir / f".salt-{day}.{secrets.token_hex(8)}"
            fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, secrets.token_hex(32).encode())
                os.fsync(fd)
                os.close(fd)
                with contextlib.suppress(FileExistsError):
                    os.link(draft, path)
            finally:
                draft.unlink(missing_ok=True)
        return bytes.fromhex(path.read_text())

    # --- writing -------------------------------------------------------------------------

    def parts(self, batch: Batch) -> list[Batch]:
        return batch.parts(PART_ROWS)

    def add(self, batch: Batch) -> None:
        rows = [{"code": code, "day": day, **tally.to_json()}
                for (code, day), tally in batch.tallies.items()]
        line = json.dumps({"rows": rows}, separators=(",", ":")) + "\n"
        path = self.dir / "log" / day_of(int(time.time() // 86400)) / \
            f"{socket.gethostname()}-{os.getpid()}.jsonl"
        try:
            self.dir.mkdir(exist_ok=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreUnavailable(f"cannot append to {path}: {exc.strerror}") from exc
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = "\n" + line  # the last append was cut short: start a new line
            data = line.encode()
            while data:
                data = data[os.write(fd, data):]
        except OSError as exc:  # nothing, or part of a line that readers skip: not counted
            os.close(fd)
            raise StoreUnavailable(f"cannot append to {path}: {exc.strerror}") from exc
        try:  # the line is complete: counted, even if it might not outlive a power cut
            os.fsync(fd)
        except OSError as exc:
            log.warning("fsync of %s failed (%s); its last visits may not survive a "
                        "crash of this machine", path, exc.strerror)
        finally:
            os.close(fd)

    # --- folding -------------------------------------------------------------------------

    def maintain(self, now: float | None = None) -> None:
        """Fold, at most every fold_seconds per process, unless another process is."""
        if now is not None:
            self.fold(now=now)
            return
        if time.monotonic() < self._next_fold:
            return
        self._next_fold = time.monotonic() + self.fold_seconds
        if not self.lock_path.exists() and not (self.dir / "log").exists():
            return  # nothing was ever counted here
        try:
            self.fold(wait=0.0)
        except StoreUnavailable as exc:
            if "locked by another process" not in str(exc):
                raise

    def fold(self, wait: float | None = None, now: float | None = None) -> None:
        """Fold every log into the totals (see the module docstring). Waits at most
        `wait` seconds (default: the lock timeout) for another fold to finish."""
        now = time.time() if now is None else now
        with exclusive_lock(self.lock_path, self.lock_timeout if wait is None else wait):
            try:
                closed = closed_before(now)
                self._fold(self._manifest(), closed, add_days(closed, -1))
            except OSError as exc:
                raise StoreUnavailable(f"cannot fold the visit logs in {self.dir}: "
                                       f"{exc.strerror}") from exc

    def _fold(self, manifest: Manifest, closed: Day, expired_before: Day) -> None:
        pending: dict[str, dict[tuple[str, Day], Tally]] = {}
        folded = dict(manifest.folded)
        expired = []
        for rel in self._logs():
            start = manifest.folded.get(rel, 0)
            batches, end = read_lines(self.dir / rel, start)
            for code, day, tally in rows_of(batches, rel):
                rows = pending.setdefault(str(shard_of(code)), {})
                rows.setdefault((code, day), Tally()).add(tally)
            folded[rel] = end
            if end == start and rel.split("/")[1] < expired_before:
                expired.append(rel)  # folded whole by an earlier, committed fold
        closing = {shard for shard, day in manifest.open.items() if day < closed}
        # The release before's one-line files, set out a link a line by the first fold
        # after an upgrade: read as they are, each read would parse one whole.
        one_line = {shard for shard, name in manifest.totals.items() if self._one_line(name)}
        if not pending and not closing and not expired and not one_line:
            return
        new = Manifest(manifest.generation + 1, folded, dict(manifest.totals),
                       dict(manifest.open))
        for shard in sorted(set(pending) | closing | one_line):
            adding: dict[str, list[tuple[Day, Tally]]] = {}
            for (code, day), tally in pending.get(shard, {}).items():
                adding.setdefault(code, []).append((day, tally))
            name = f"totals/{shard}-{new.generation}.json"
            (self.dir / "totals").mkdir(exist_ok=True)
            oldest = self._write_totals(manifest, shard, name, adding, closed,
                                        shard in closing)
            new.totals[shard] = name
            new.open.pop(shard, None)
            if oldest is not None:
                new.open[shard] = oldest
        for rel in expired:  # before the commit: the committed manifest had them folded
            (self.dir / rel).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                (self.dir / rel).parent.rmdir()  # once its last log is gone
            del new.folded[rel]
        write_atomically(self.dir / "manifest.json", [json.dumps(new.__dict__).encode()])
        current = set(new.totals.values())
        for stale in (self.dir / "totals").glob("*.json"):
            if f"totals/{stale.name}" not in current:
                stale.unlink(missing_ok=True)

    def _write_totals(self, manifest: Manifest, shard: str, name: str,
                      adding: Mapping[str, list[tuple[Day, Tally]]], closed: Day,
                      closing: bool) -> Day | None:
        """Write a shard's totals after a fold to name: its links' lines with what the
        fold adds, and (closing: the shard keeps visitors of days before closed) those
        visitors forgotten, their number kept; the oldest day whose visitors are still
        kept, if any. Only the lines of links that change are parsed (``merged``)."""
        # Untouched links' days stay open as they were, unless this fold closes them.
        oldest = [] if closing or shard not in manifest.open else [manifest.open[shard]]

        def updated(totals: LinkTotals, code: str) -> LinkTotals:
            for day, tally in adding.get(code, []):
                totals.add(day, tally, closed)
            totals.close(closed)
            oldest.extend(totals.open)
            return totals
        with self._lines(manifest, shard) as lines:
            write_atomically(self.dir / name, totals_file(merged(lines, adding, updated,
                                                                 closing)))
        return min(oldest, default=None)

    def _one_line(self, name: str) -> bool:
        """Whether a totals file is the release before's, all on one line."""
        try:
            with open(self.dir / name, "rb") as totals:
                return totals.read(2) not in (b"{\n", b"{}")
        except FileNotFoundError:  # the fold that reads it will say
            return False

    # --- reading -------------------------------------------------------------------------

    def stats(self, code: str) -> Stats:
        return self._read({code}).get(code, LinkTotals()).stats()

    def totals(self, codes: Sequence[str]) -> dict[str, int]:
        totals = self._read(set(codes))
        return {code: totals[code].visits for code in codes if code in totals}

    def _read(self, codes: set[str]) -> dict[str, LinkTotals]:
        """The folded totals of codes, plus every unfolded line for them. A fold may
        replace a totals file between the manifest and the file: read again."""
        by_shard: dict[str, list[str]] = {}
        for code in codes:
            by_shard.setdefault(str(shard_of(code)), []).append(code)
        for _ in range(5):
            manifest = self._manifest()
            try:
                found: dict[str, LinkTotals] = {}
                for shard, in_shard in by_shard.items():
                    found |= self._find(manifest, shard, in_shard)
                for rel in self._logs():
                    batches, _ = read_lines(self.dir / rel, manifest.folded.get(rel, 0))
                    for code, day, tally in rows_of(batches, rel, codes):
                        found.setdefault(code, LinkTotals()).add(day, tally, "")
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StoreUnavailable(f"cannot read the visits in {self.dir}: "
                                       f"{exc.strerror}") from exc
            return {code: totals for code, totals in found.items() if code in codes}
        raise StoreUnavailable(f"the visits in {self.dir} kept changing while read; try again")

    def _manifest(self) -> Manifest:
        path = self.dir / "manifest.json"
        try:
            return Manifest(**json.loads(path.read_bytes()))
        except FileNotFoundError:
            return Manifest()
        except (OSError, ValueError, TypeError) as exc:
            raise StoreUnavailable(f"cannot read {path}: {exc}") from exc

    def _find(self, manifest: Manifest, shard: str, codes: Iterable[str]
              ) -> dict[str, LinkTotals]:
        """The folded totals of codes of a shard, found by binary search (``TotalsLines``)."""
        with self._lines(manifest, shard) as lines:
            return {code: LinkTotals.from_json(json.loads(value))
                    for code in codes if (value := lines.find(code))}

    @contextlib.contextmanager
    def _lines(self, manifest: Manifest, shard: str) -> Iterator[TotalsLines]:
        """The folded totals of a shard, a link a line. FileNotFoundError when a fold
        replaced the file after the manifest was read (read again)."""
        name = manifest.totals.get(shard)
        if name is None:
            yield TotalsLines(b"")
            return
        path = self.dir / name
        try:
            with open(path, "rb") as totals, TotalsLines.of(totals) as lines:
                yield lines
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StoreUnavailable(f"{path} is damaged ({exc!r}); the visit counts of "
                                   "its links cannot be read") from exc

    def _logs(self) -> list[str]:
        return sorted(str(path.relative_to(self.dir))
                      for path in self.dir.glob("log/*/*.jsonl"))


# --- totals files ---------------------------------------------------------------------------
#
# A shard's totals: one JSON object, a link a line, in order of code, as ops.backup's
# links files (jsonfile.dump_links):
#
#     {
#     "Ab3":{"visits":12,"bots":1,...,"open":{}},
#     "x_9":{"visits":3,...}
#     }
#
# The release before wrote the same object on one line, in no order; this one reads that
# too (the first fold after an upgrade sets them out), and it reads this one whole (a
# rollback).

class TotalsLines:
    """A totals file's lines of links (its bytes, or a map of them), in order of code."""

    def __init__(self, data: bytes | mmap.mmap) -> None:
        self.data = data
        # where the lines of links start and end: after "{\n", before "}\n"; none in {}
        self.start, self.end = (2, len(data) - 2) if data[:2] == b"{\n" else (0, 0)

    @classmethod
    @contextlib.contextmanager
    def of(cls, totals: IO[bytes]) -> Iterator[TotalsLines]:
        """The lines of an open totals file: mapped, or for the release before's single
        line, parsed whole and set out a link a line."""
        if totals.read(2) != b"{\n":  # one line: the release before's, or {} (no links)
            totals.seek(0)
            whole = json.loads(totals.read())
            yield cls(b"".join(totals_file(link_line(code, whole[code])
                                           for code in sorted(whole))))
            return
        with mmap.mmap(totals.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data[-3:] != b"\n}\n":
                raise ValueError("a totals file cut short")
            yield cls(data)

    def find(self, code: str) -> bytes:
        """The JSON of code's totals; b"" if it has none."""
        at = self.lower_bound(code, self.start, self.end)
        if at < self.end:
            found, value, _ = self.line(at)
            if found == code:
                return value
        return b""

    def lower_bound(self, code: str, low: int, high: int) -> int:
        """Where the first line from low (a line's start) to high (a line's end) whose
        code is not before code starts: high if there is none. A binary search."""
        while low < high:
            middle = (low + high) // 2
            start = self.data.rfind(b"\n", low, middle) + 1 or low
            found, _, end = self.line(start)
            if found < code:
                low = end
            else:
                high = start
        return low

    def line(self, start: int) -> tuple[str, bytes, int]:
        """The code, JSON of its totals, and end (past its newline) of the line at start."""
        end = self.data.find(b"\n", start, self.end) + 1
        text = self.data[start:end].rstrip(b",\n")
        code, length = DECODER.raw_decode(text.decode())
        if not isinstance(code, str) or text[length:length + 1] != b":":
            raise ValueError(f"a totals line that is not a link's ({text[:80]!r})")
        return code, text[length + 1:], end

    def block(self, start: int, end: int) -> bytes:
        """Whole lines from start to end, as ``totals_file`` takes a link's line: without
        the separator after the last."""
        return self.data[start:end].removesuffix(b"\n").removesuffix(b",")


DECODER = json.JSONDecoder()


def merged(lines: TotalsLines, adding: Collection[str],
           updated: Callable[[LinkTotals, str], LinkTotals], closing: bool
           ) -> Iterator[bytes]:
    """A shard's lines after a fold, in order: updated(totals, code) for each code added
    to (its totals, or new ones), and when closing, each link with days still open; the
    rest copied as they are, a block of lines at a time."""
    touched = set(adding)
    if closing:  # once a day a shard: its links whose visitors of the day are kept
        at = lines.start
        while at < lines.end:
            code, value, at = lines.line(at)
            if not value.endswith(b'"open":{}}'):
                touched.add(code)
    at = lines.start
    for code in sorted(touched):
        start = lines.lower_bound(code, at, lines.end)
        if start > at:
            yield lines.block(at, start)
        found, value, end = lines.line(start) if start < lines.end else ("", b"", start)
        totals = LinkTotals.from_json(json.loads(value)) if found == code else LinkTotals()
        yield link_line(code, updated(totals, code).to_json())
        at = end if found == code else start
    if at < lines.end:
        yield lines.block(at, lines.end)


def link_line(code: str, totals: Mapping[str, Any]) -> bytes:
    """A link's line of a totals file (``LinkTotals.to_json``), without its separator."""
    return json.dumps(code).encode() + b":" + json.dumps(totals, separators=(",", ":")).encode()


def totals_file(lines: Iterable[bytes]) -> Iterator[bytes]:
    """A totals file's bytes, from lines of links set out without their separators."""
    separator = b"{\n"
    for line in lines:
        yield separator
        yield line
        separator = b",\n"
    yield b"{}\n" if separator == b"{\n" else b"\n}\n"


def read_lines(path: Path, start: int) -> tuple[list[bytes], int]:
    """The complete lines of a log from byte start on, and where the last one ends: a
    line still being written, or cut short by a crash, is not complete."""
    try:
        with open(path, "rb") as log_file:
            log_file.seek(start)
            data = log_file.read()
    except FileNotFoundError:
        return [], start
    complete = data[:data.rfind(b"\n") + 1]
    return complete.splitlines(), start + len(complete)


def rows_of(lines: list[bytes], where: str, codes: Container[str] | None = None
            ) -> Iterator[tuple[str, Day, Tally]]:
    """The (code, day, tally) rows of log lines, of these codes only if given (a reader
    of a few links makes no tallies of the others: a line holds up to PART_ROWS rows);
    a line that does not parse (a write cut short, then a newline) is skipped, with a
    warning."""
    for line in lines:
        try:
            batch = json.loads(line)
            rows = [(str(row["code"]), str(row["day"]), Tally.from_json(row))
                    for row in batch["rows"] if codes is None or row["code"] in codes]
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning("skipped a visit log line in %s that does not parse (%d bytes: "
                        "a write cut short by a crash)", where, len(line))
            continue
        yield from rows
