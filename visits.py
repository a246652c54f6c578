"""Visit statistics that cost a redirect nothing and keep no one's address.

A redirect calls ``Recorder.record(code, environ)``: it keeps the request's method,
User-Agent, Referer and whether the visitor asked not to be tracked and, unless they
did, a keyed hash of the address and User-Agent with the day's salt, in a queue in
memory. The address never enters the queue; nothing is parsed and nothing is written
while the redirect is answered.

Once a second the queue goes over a pipe to the worker's visit writer, a child process
(``Writer``, ``main``): handed off by the request thread once a response has gone
(``Recorder.hand_off_after_response``), or by a thread of the worker when no request
came. Every ``VISITS_FLUSH_SECONDS`` (and when the pipe ends) the writer makes each
distinct request a ``visitors.Hit``, classifies it (``visitors.classify``) once, adds
the hits up per link and day into a ``Batch``, and hands the batch to the
``VisitStore`` in one write. A store that cannot take it keeps it for the next flush.
So a worker killed with ``kill -9`` loses at most a second of hits (its writer stores
the rest), a writer killed so at most one flush interval's, and neither ever loses a
link: visits are kept apart from the links.

The stores, beside the links of each backend: ``linkstore/visits_file.py`` (a log per
worker beside the links file, folded into totals) and ``linkstore/visits_postgres.py``
(batched upserts into sharded counters). docs/visits.md has the design and the figures.

Unique visitors per day are estimated from those hashes: the salt is random, shared by
every worker and instance for its day (kept in the store), and deleted once its day is
over, after which no hash can be tied to an address again.
"""
from __future__ import annotations

import atexit
import contextlib
import fcntl
import gc
import hashlib
import json
import logging
import math
import marshal  # nosec B403: the pipe between a worker and its own writer
import os
import select
import signal
import struct
import subprocess  # nosec B404: the visit writer, this interpreter running this module
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

import visitors
from linkstore import Link, LinkStore, StoreUnavailable
from visitors import Visit

log = logging.getLogger("shortener.visits")

DETAILS = {"referrer": "referrers", "browser": "browsers", "os": "systems",
           "device": "devices"}  # what a person's visit records, and its name in the stats
CLOSE_AFTER_SECONDS = 3600  # a day's visitor hashes outlive it by this much: late flushes
UNSAVED_ROWS = 1_800_000  # tallies and visitor hashes kept while the store is down
PACE = 3.0  # a writer pauses 3 times as long as a write took: a quarter of a core at most
STEP_SECONDS = 0.0005  # and works at most about this long (CPU) between pauses
CHART_DAYS = 30
HANDOFF_SECONDS = 1.0  # at most this long (or a tenth of the flush interval) in a worker
CHUNK = 500  # hits a frame to the writer: a marshal.dumps of about 100 us holding the GIL
MAX_QUEUED = 100_000  # hits a worker holds while its writer takes none: about 35 MB
WRITER_NICENESS = 10  # requests first; at 19 a writer on a saturated machine fell behind
WRITER_EXIT_SECONDS = 30.0  # for a writer to answer a flush, or to store and exit
CLOSE_SECONDS = 10.0  # a closing worker's hand-off at most: half gunicorn's graceful_timeout
PIPE_BYTES = 1 << 20  # the pipe to a writer: Linux's largest for an unprivileged process
NOW_ONLY = -math.inf  # a deadline already passed: write only what the pipe has room for
EPOCH = date(1970, 1, 1)
WARM_UP = visitors.Hit("GET", "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0", "direct", False)

Day = str  # an ISO date, "2026-11-29", in UTC


def today(now: float | None = None) -> Day:
    return day_of(int((time.time() if now is None else now) // 86400))


def day_of(number: int) -> Day:
    """The ISO date of a day counted from 1970-01-01 (what ``record`` keeps: an int)."""
    return (EPOCH + timedelta(days=number)).isoformat()


def add_days(day: Day, days: int) -> Day:
    return (date.fromisoformat(day) + timedelta(days=days)).isoformat()


def closed_before(now: float | None = None) -> Day:
    """Days before this one are closed: only the number of their unique visitors is
    kept, not the hashes that counted them (an hour after the day ended)."""
    return day_of(int(((time.time() if now is None else now) - CLOSE_AFTER_SECONDS) // 86400))


# --- What is counted ---------------------------------------------------------------------

def no_details() -> dict[str, Counter[str]]:
    return {kind: Counter[str]() for kind in DETAILS}


@dataclass
class Tally:
    """What one link had on one day, or in a batch of it.

    ``visits`` counts people, those who asked not to be tracked included; ``private``
    says how many of them did, and their visits have no details and no visitor hash.
    ``visitors`` holds the day's visitor hashes (64-bit keyed hashes, never an address).
    """

    visits: int = 0
    bots: int = 0
    private: int = 0
    details: dict[str, Counter[str]] = field(default_factory=no_details)
    visitors: set[int] = field(default_factory=set)

    def add(self, other: Tally) -> None:
        self.visits += other.visits
        self.bots += other.bots
        self.private += other.private
        for kind, counts in other.details.items():
            self.details[kind].update(counts)
        self.visitors |= other.visitors

    def rows(self, visitor_rows: float = 1.0) -> float:
        """Its size for cutting a flush into parts: a row, and `visitor_rows` more for
        each visitor hash."""
        return 1 + visitor_rows * len(self.visitors)

    def count(self, visit: Visit, times: int = 1) -> None:
        """Add a classified visit (not an ignored one), seen `times` times."""
        if visit.kind == "bot":
            self.bots += times
            return
        self.visits += times
        if visit.browser is None:  # the visitor asked not to be tracked: the total only
            self.private += times
            return
        for kind, value in (("referrer", visit.referrer), ("browser", visit.browser),
                            ("os", visit.os), ("device", visit.device)):
            counts = self.details[kind]
            key = value or "Other"
            counts[key] = counts.get(key, 0) + times  # not +=: Counter's __missing__ is Python

    def to_json(self) -> dict[str, Any]:
        return {"visits": self.visits, "bots": self.bots, "private": self.private,
                **{kind: dict(counts) for kind, counts in self.details.items()},
                "visitors": sorted(self.visitors)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Tally:
        return cls(int(data["visits"]), int(data["bots"]), int(data["private"]),
                   {kind: Counter[str]({str(k): int(v) for k, v in data[kind].items()})
                    for kind in DETAILS},
                   {int(v) for v in data["visitors"]})


@dataclass
class Batch:
    """One flush: tallies by (code, day). Its id lets a store that took it once, though
    the writer did not hear back, refuse it the second time."""

    tallies: dict[tuple[str, Day], Tally] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def tally(self, code: str, day: Day) -> Tally:
        found = self.tallies.get((code, day))
        if found is None:
            found = self.tallies[code, day] = Tally()
        return found

    def counted(self) -> int:
        """Visits and bots in this batch: what is lost if it is never stored."""
        return sum(tally.visits + tally.bots for tally in self.tallies.values())

    def rows(self, visitor_rows: float = 1.0) -> float:
        """Its tallies and their visitor hashes (``Tally.rows``): what it takes to keep
        in memory."""
        return sum(tally.rows(visitor_rows) for tally in self.tallies.values())

    def parts(self, rows: int, visitor_rows: float = 1.0) -> list[Batch]:
        """This batch as batches of about `rows` rows each, each with an id of its own: a
        tally counts as a row, and each of its visitor hashes as `visitor_rows` more."""
        parts = [Batch()]
        size = 0.0
        for key, tally in sorted(self.tallies.items()):
            rows_of = tally.rows(visitor_rows)
            if size and size + rows_of > rows:
                parts.append(Batch())
                size = 0.0
            parts[-1].tallies[key] = tally
            size += rows_of
        return [part for part in parts if part.tallies]


@dataclass(frozen=True)
class DayCount:
    visits: int = 0
    bots: int = 0
    visitors: int = 0  # unique visitors: distinct hashes that day (private visits excluded)


@dataclass
class Stats:
    """Everything counted for one link; per day, and its details summed over all days."""

    visits: int = 0
    bots: int = 0
    private: int = 0
    days: dict[Day, DayCount] = field(default_factory=dict)
    details: dict[str, Counter[str]] = field(default_factory=no_details)


class VisitStore(Protocol):
    """Where the counts are kept: ``linkstore/visits_file.py``, ``visits_postgres.py``."""

    def salts(self, day: Day) -> dict[Day, bytes]:
        """The salts of day and of the day after, made if missing; every older salt is
        deleted. Every worker and instance gets the same salt for a day."""

    def parts(self, batch: Batch) -> list[Batch]:
        """A flush's batch cut into parts of one ``add`` each: a write of about a
        millisecond of this store's work (``Batch.parts``)."""

    def add(self, batch: Batch) -> None:
        """Add a batch's counts in one write, all or nothing; StoreUnavailable if it
        could not. A batch sent again after StoreUnavailable is counted once."""

    def stats(self, code: str) -> Stats:
        """What was counted for code, up to the last flush of every worker."""

    def totals(self, codes: Sequence[str]) -> dict[str, int]:
        """Visits (people) of each code, for a list of links."""

    def maintain(self, now: float | None = None) -> None:
        """Housekeeping, paced by the store: fold logs, forget closed days' hashes. With
        now (a time.time() value), it is done at once, as at that time."""

    def address(self) -> dict[str, Any]:
        """Where the store is, as JSON, for ``reopen`` in the visit writer process."""


def open_store(links: LinkStore) -> VisitStore:
    """The visit store beside a link store: the same file directory or database."""
    from linkstore.jsonfile import FileStore
    if isinstance(links, FileStore):
        from linkstore.visits_file import FileVisits
        return FileVisits(links.path.with_name("visits"), links.lock_timeout)
    from linkstore.postgres import PostgresStore
    if isinstance(links, PostgresStore):
        from linkstore.visits_postgres import PostgresVisits
        return PostgresVisits(links)
    raise TypeError(f"no visit store for {type(links).__name__}")


def reopen(address: Mapping[str, Any]) -> VisitStore:
    """The store at an ``address()``, for the visit writer: it opens no link store that
    reads links (the file's links are not loaded; the database's are not followed)."""
    if "directory" in address:
        from linkstore.visits_file import FileVisits
        return FileVisits(Path(address["directory"]), float(address["lock_timeout"]))
    from linkstore.postgres import PostgresStore
    from linkstore.visits_postgres import PostgresVisits
    return PostgresVisits(PostgresStore(address["url"], timeout=float(address["timeout"]),
                                        poll_seconds=3600, pool_size=1))


# --- On the redirect's path, the hand-off, and the writer ---------------------------------

# A queued hit: code, day number, the request's method, User-Agent (cut to the length
# visitors reads), Referer and privacy wish, and the visitor hash. A tuple of strings
# and numbers: Python's garbage collector stops tracking such a tuple at its first
# collection, so the thousands queued between hand-offs cost no full collections (queued
# objects did: 25-65 ms pauses).
Queued = tuple[str, int, str, str, str | None, bool, int | None]
Request = tuple[str, str, str | None, bool]  # method, User-Agent, Referer, private

# The pipe from a worker to its writer carries frames: a 4-byte length, then that many
# bytes of ``marshal`` (a list of Queued hits). marshal is the cheapest encoding of
# strings and numbers at both ends (JSON cost 2 us a hit in the worker and 1.5 in the
# writer); it must never read data from anyone else, and this pipe has no other end.
# An empty frame asks the writer to flush now and answer.
FRAME = struct.Struct("!I")
FLUSH = FRAME.pack(0)


def framed(hits: list[Queued]) -> bytes:
    """Hits as one frame of the pipe: their length, then their marshal."""
    payload = marshal.dumps(hits)
    return FRAME.pack(len(payload)) + payload


class Pace:
    """Spreads a writer's work in steps, and lets requests in between: called every 64
    hits, it gives way (``sched_yield``: a process waiting for this core gets it now;
    with none waiting the writer goes straight on), and once a step has used
    STEP_SECONDS of CPU it pauses PACE times as long.

    Whatever its nice value, a process that has a core keeps it until its scheduler
    slice ends (a millisecond or more): a flush classified in one burst (3.7 µs a hit,
    45 ms for 12,000) could hold a redirect on the same core a slice at a time, and in
    steps it held one for a step. Giving way, a worker woken by a request waits about
    50 µs (64 hits) behind a writer, not a step. The pauses spread the writer's work over
    the interval on a saturated machine; CPU time, not the clock, so that a writer kept
    waiting does not also pause longer for it. (docs/visits.md, "Cost": under a steady
    load the file's p99 on ÷ off was 1.06 to 1.18 with the steps alone, 1.00 to 1.16
    giving way; PostgreSQL's, where the database's share remains, 1.02 to 1.23, then
    0.99 to 1.31.)"""

    def __init__(self) -> None:
        self.started = time.thread_time()

    def __call__(self) -> None:
        os.sched_yield()
        worked = time.thread_time() - self.started
        if worked >= STEP_SECONDS:
            time.sleep(worked * PACE)
            self.started = time.thread_time()


class Counting:
    """Hits counted as they come, for the next batch. Per hit, a few dictionary lookups:
    each distinct request (method, User-Agent, Referer, privacy) becomes a
    ``visitors.Hit`` and is classified once, and each (link, day, visit) is counted once.

    A writer counts each frame as it arrives, so that a flush only has to store: its
    work is spread over the interval, not bunched at every flush (docs/visits.md,
    "Cost")."""

    def __init__(self) -> None:
        self.kinds: dict[Request, int] = {}
        self.classified: list[Visit] = []
        self.seen: dict[tuple[str, int, int], int] = {}
        self.visitors_of: dict[tuple[str, int, int], set[int]] = {}

    def add(self, hits: Iterable[Sequence[Any]], pace: Callable[[], None] = lambda: None
            ) -> None:
        """Count hits (``Queued`` tuples); ``pace`` is called every 64. Each key is made
        once, and plain dict lookups (no Counter, no set made and dropped for a known
        visitor list) take a hit, with its ``marshal.loads``, 0.74 to 0.80 µs where they
        took 0.97 to 1.07: a writer's main work (docs/visits.md, "The writer's own
        work, cut")."""
        kinds, seen, visitors_of = self.kinds, self.seen, self.visitors_of
        for number, (code, day, method, agent, referer, private, visitor) in enumerate(hits):
            if not number % 64:
                pace()
            request = (method, agent, referer, private)
            kind = kinds.get(request)
            if kind is None:
                kind = kinds[request] = len(self.classified)
                self.classified.append(visitors.classify(visitors.Hit(
                    method, agent, visitors.referrer_host(referer), private)))
            key = (code, day, kind)
            seen[key] = seen.get(key, 0) + 1
            if visitor is not None:
                found = visitors_of.get(key)
                if found is None:
                    visitors_of[key] = {visitor}
                else:
                    found.add(visitor)

    def batch(self, pace: Callable[[], None] = lambda: None) -> Batch:
        """What was counted, as a batch; ``pace`` is called every 64 entries."""
        batch = Batch()
        days = {day: day_of(day) for day in {day for _, day, _ in self.seen}}
        for number, ((code, day, kind), times) in enumerate(self.seen.items()):
            if not number % 64:
                pace()
            visit = self.classified[kind]
            if visit.kind != "ignored":
                batch.tally(code, days[day]).count(visit, times)
        for number, ((code, day, kind), found) in enumerate(self.visitors_of.items()):
            if not number % 64:
                pace()
            if self.classified[kind].browser is not None:  # a person's, with details
                batch.tally(code, days[day]).visitors |= found
        return batch


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a flush runs. What it builds
    (thousands of tallies) is freed when it ends; collections in the middle would only
    promote it to the oldest generation, and cost the writer time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Recorder:
    """Counts the redirects one worker answers, and hands them to the worker's visit
    writer, a child process that stores them (``Writer``, ``main``).

    Why a process: a flush is CPU work (classifying, adding up, encoding, and the
    database's upsert), and a thread doing it in the worker holds the GIL that the
    worker's requests need; their p99 doubled during flushes (docs/visits.md, "Cost").
    The worker's own share: queueing a tuple, and once a second a marshal.dumps and a
    write to the pipe, after a response (``hand_off_after_response``), or on the
    worker's second thread when no request came for a second."""

    def __init__(self, store: VisitStore, flush_seconds: float) -> None:
        self.store = store
        self.flush_seconds = flush_seconds
        self.handoff_seconds = min(HANDOFF_SECONDS, flush_seconds / 10)
        # Bounded: if the writer takes nothing (stopped, or its pipe full while a flush
        # waits on the store), the oldest hits go, and a log line says how many.
        self._hits: deque[Queued] = deque(maxlen=MAX_QUEUED)
        self._next_hand_off = time.monotonic() + self.handoff_seconds
        self._recorded = 0  # hits appended to _hits, ever
        self._handed = 0  # hits written to a writer, ever
        self._dropped_logged = 0
        # Today's and tomorrow's salts, each as a keyed hash to copy: keying one costs a
        # hit 0.75 us, a copy of one keyed before 0.56 (_keep_salts).
        self._hashers: dict[int, hashlib.blake2b] = {}
        self._writer: subprocess.Popen[bytes] | None = None  # the thread starts it, when first due
        # The frame being written to the writer's pipe (_send_frame), kept whole until the
        # pipe has taken all of it: a writer that dies first never counted any of it (it
        # reads no unfinished frame), and the next one is sent all of it. Its hits count
        # as handed once it is all written.
        self._frame = b""
        self._frame_sent = 0  # bytes of it the pipe has taken
        self._frame_hits = 0
        self._pipe_lock = threading.Lock()
        self._closing = threading.Event()
        self._wake = threading.Event()  # the thread hands off now (a writer to start)
        self._closed = False
        self._keep_salts()  # before the first request, so that its visitor is counted
        self._thread = threading.Thread(target=self._run, daemon=True, name="visit-handoff")
        self._thread.start()
        atexit.register(self.close)  # a worker that stops gracefully hands off what it has

    def record(self, code: str, environ: Mapping[str, Any]) -> None:
        """Remember one answered redirect, in memory, without parsing anything: what
        ``visitors.hit`` reads, as the request has it, and the visitor hash. Measured in
        a worker under load, ``visitors.hit`` itself cost 15 to 20 us here; the writer
        runs it once per distinct request (docs/visits.md, "Cost")."""
        agent = environ.get("HTTP_USER_AGENT", "")[:visitors.MAX_USER_AGENT]
        private = visitors.asks_privacy(environ.get("HTTP_DNT"), environ.get("HTTP_SEC_GPC"))
        day = int(time.time() // 86400)
        visitor = None
        hasher = self._hashers.get(day)
        if hasher is not None and not private:
            seen = hasher.copy()
            seen.update(f"{environ.get('REMOTE_ADDR', '')}\0{agent}".encode())
            visitor = int.from_bytes(seen.digest(), "big", signed=True)  # a PostgreSQL bigint
        self._hits.append((code, day, environ["REQUEST_METHOD"], agent,
                           environ.get("HTTP_REFERER"), private, visitor))
        self._recorded += 1

    def dropped(self) -> int:
        """Hits that fell off the queue's far end before a writer took them. Exact while
        no hand-off is between taking hits off the queue and framing them: with the pipe
        lock held (``_log_dropped``), or with a hand-off waiting on the pipe."""
        return self._recorded - self._handed - len(self._hits) - self._frame_hits

    def due(self) -> bool:
        """Whether the queue is due to be handed off: a hand-off interval since the last."""
        return time.monotonic() >= self._next_hand_off

    def hand_off(self) -> None:
        """Send what the queue holds to the writer, CHUNK hits a frame."""
        with self._pipe_lock:
            self._hand_off()

    def hand_off_after_response(self) -> None:
        """The hand-off of a busy worker: in the request thread, once a response has
        gone (its WSGI ``close``), when one is due (``application`` calls it).

        On the second thread, the hand-off took the GIL in the middle of requests, a
        frame at a time (a ``marshal.dumps`` of 500 hits, about 100 µs), and on a
        saturated machine the request thread then waited for a core as well as for the
        GIL, a queue of requests behind it. Between requests only the next connection
        waits, once a second. Measured side by side, saturated, counting's p99 on ÷ off
        was 1.08 to 1.14 that way and 1.05 to 1.11 this way (docs/visits.md, "The
        hand-off after the response").

        It never waits and never raises (a response's close must not): when the thread
        is handing off, it does nothing, and what the writer's pipe has no room for
        waits for the next hand-off (the thread's, if no request comes: its wait on a
        full pipe stops no request). Nor does it start a writer (the first, or one to
        replace a writer that died): that takes a request thread milliseconds (a fork
        and exec), so it wakes the thread to do it and hand off."""
        if self._closing.is_set() or not self._pipe_lock.acquire(blocking=False):
            return
        try:
            self._hand_off(NOW_ONLY)
        except Exception:  # the response has gone: the thread tries again
            log.exception("visit hand-off after a response failed; the hand-off thread "
                          "tries again")
        finally:
            self._pipe_lock.release()

    def flush(self) -> bool:
        """Hand off, and wait until the writer has tried to store everything; True if
        the store took it all (False: the writer keeps it for its next flush)."""
        with self._pipe_lock:
            self._hand_off()
            if self._writer is None:
                return True  # nothing was ever counted
            self._frame = FLUSH
            self._send_frame()
            return self._answer(self._writer) == b"stored"

    def close(self) -> None:
        """Stop the thread, hand off what is left, and wait while the writer stores it
        and exits (a graceful exit of the worker).

        A writer that reads nothing (stopped, or hung) leaves the hand-off waiting on a
        full pipe. After CLOSE_SECONDS the worker gives up the hits it has not handed
        off, says how many, and goes on exiting, well within gunicorn's graceful_timeout:
        the writer keeps what is in its pipe, and stores it once it reads again (the
        pipe ends with the worker)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._closing.set()
        self._wake.set()
        deadline = time.monotonic() + CLOSE_SECONDS
        self._thread.join(timeout=CLOSE_SECONDS)
        writer = None
        stuck = not self._pipe_lock.acquire(timeout=max(0.0, deadline - time.monotonic()))
        if not stuck:
            try:
                stuck = not self._hand_off(deadline)
                if not stuck:
                    writer, self._writer = self._writer, None
            finally:
                self._pipe_lock.release()
        if stuck:
            log.warning("%d visits not handed off: visit writer %d took nothing for %g s, "
                        "and this worker exits without them", self._recorded - self._handed
                        - self._dropped_logged, self._writer.pid if self._writer else 0,
                        CLOSE_SECONDS)
        elif writer is not None:
            self._end(writer, WRITER_EXIT_SECONDS)

    # --- the pipe to the writer ----------------------------------------------------------

    def _hand_off(self, deadline: float | None = None) -> bool:
        """Send the frame in flight, then the queue, CHUNK hits a frame; True if the pipe
        took all of it. deadline: as ``write_until`` (NOW_ONLY: what the pipe has room
        for now, the rest waits for the next hand-off). The pipe lock is held."""
        self._next_hand_off = time.monotonic() + self.handoff_seconds
        if not self._send_frame(deadline):
            return False
        while self._hits:
            hits = [self._hits.popleft() for _ in range(min(CHUNK, len(self._hits)))]
            self._frame, self._frame_hits = framed(hits), len(hits)
            if not self._send_frame(deadline):
                return False
        return True

    def _send_frame(self, deadline: float | None = None) -> bool:
        """Write what the writer's pipe has not taken of the frame in flight, to the
        running writer (``_running_writer``: a new one is sent all of it); True once all
        is written (its hits are then handed). deadline: as ``write_until``. A writer
        that dies meanwhile is replaced once; then the OSError is raised, the frame
        still in flight. With NOW_ONLY (a request thread's) it starts no writer: it
        wakes the thread to."""
        if not self._frame:
            return True
        for attempt in range(2):
            if deadline == NOW_ONLY and (self._writer is None
                                         or self._writer.poll() is not None):
                self._wake.set()
                return False
            stdin = pipes(self._running_writer())[0].fileno()
            try:
                self._frame_sent += write_until(
                    stdin, memoryview(self._frame)[self._frame_sent:], deadline)
                break
            except OSError:  # it died after poll(): the next round starts another
                if attempt:
                    raise
        if self._frame_sent < len(self._frame):
            return False
        self._handed += self._frame_hits
        self._frame, self._frame_sent, self._frame_hits = b"", 0, 0
        return True

    def _running_writer(self) -> subprocess.Popen[bytes]:
        """The writer, started if there is none or it has died (the counts it had not
        stored yet are lost: at most one flush interval's; a frame its pipe had taken
        only part of goes whole to the new one)."""
        if self._writer is None or self._writer.poll() is not None:
            if self._writer is not None:
                log.warning("visit writer %d exited with %s; starting another, the "
                            "visits it had not stored are lost", self._writer.pid,
                            self._writer.returncode)
                self._end(self._writer, 0)
            self._writer, self._frame_sent = self._start_writer(), 0
        return self._writer

    def _start_writer(self) -> subprocess.Popen[bytes]:
        """``visits.main`` in a child of this worker, with this interpreter; the store's
        address goes in its environment (a database URL holds a password: never on a
        command line, which every user can read)."""
        here = str(Path(__file__).resolve().parent)
        env = dict(os.environ, VISIT_WRITER=json.dumps({
            "store": self.store.address(), "flush_seconds": self.flush_seconds}),
            PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
        writer = subprocess.Popen(  # nosec B603: this interpreter and this module
            [sys.executable, "-c", "import visits; visits.main()"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=env)
        stdin = pipes(writer)[0]
        with contextlib.suppress(OSError):  # a bigger pipe: a hand-off never waits for it
            fcntl.fcntl(stdin, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        os.set_blocking(stdin.fileno(), False)  # every write has its limit (write_until)
        return writer

    @staticmethod
    def _answer(writer: subprocess.Popen[bytes]) -> bytes:
        """The writer's answer to a flush: b"stored" or b"kept"."""
        _, stdout = pipes(writer)
        ready, _, _ = select.select([stdout], [], [], WRITER_EXIT_SECONDS)
        answer = stdout.readline().strip() if ready else b""
        if answer not in (b"stored", b"kept"):
            raise RuntimeError(f"the visit writer did not answer a flush ({answer!r})")
        return answer

    @staticmethod
    def _end(writer: subprocess.Popen[bytes], seconds: float) -> None:
        """Close the writer's stdin (it stores what it has and exits); kill it if it has
        not exited within seconds. A stopped writer (SIGSTOP) cannot exit until it is
        continued, and is not waited for: it stores what it has then, on its own."""
        for stream in (writer.stdin, writer.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        deadline = time.monotonic() + seconds
        while writer.poll() is None:
            if stopped(writer.pid):
                log.warning("visit writer %d is stopped: not waited for; it stores what it "
                            "has once it is continued", writer.pid)
                return
            if time.monotonic() >= deadline:
                log.warning("visit writer %d did not exit within %g s; killed, the visits "
                            "it had not stored are lost", writer.pid, seconds)
                writer.kill()
                writer.wait()
                return
            with contextlib.suppress(subprocess.TimeoutExpired):
                writer.wait(min(0.1, max(0.0, deadline - time.monotonic())))

    def _keep_salts(self) -> None:
        """Have today's and tomorrow's salts in memory, and forget earlier ones."""
        now = int(time.time() // 86400)
        if now in self._hashers and now + 1 in self._hashers:
            return
        try:
            salts = self.store.salts(day_of(now))
        except StoreUnavailable as exc:
            log.warning("no visitor salt for today yet (%s): unique visitors are not "
                        "counted until there is", exc)
            return
        self._hashers = {number: hashlib.blake2b(key=salts[day_of(number)], digest_size=8)
                         for number in (now, now + 1)}

    def _run(self) -> None:
        visitors.classify(WARM_UP)  # for visit-limited links: parsers loaded here, not in a request
        while True:
            woken = self._wake.wait(max(self._next_hand_off - time.monotonic(), 0.001))
            self._wake.clear()
            if self._closing.is_set():
                return
            try:
                self._keep_salts()
                # Due: not handed off after a response since (an idle worker); woken: a
                # request thread found no writer running.
                if woken or self.due():
                    self.hand_off()
                self._log_dropped()
            except Exception:  # the thread must outlive any surprise, or counting stops
                log.exception("visit hand-off failed; trying again in %g s",
                              self.handoff_seconds)
                self._next_hand_off = time.monotonic() + self.handoff_seconds  # not at once

    def _log_dropped(self) -> None:
        with self._pipe_lock:  # no hits between the queue and a frame (dropped())
            dropped = self.dropped()
        if dropped > self._dropped_logged:
            log.warning("%d visits dropped uncounted: the visit writer did not take them "
                        "(the queue holds at most %d)", dropped - self._dropped_logged,
                        MAX_QUEUED)
            self._dropped_logged = dropped


def write_until(fd: int, data: memoryview, deadline: float | None) -> int:
    """Write data to a non-blocking pipe until all of it is written or deadline (a
    time.monotonic() value; None: however long it takes; NOW_ONLY: what the pipe has
    room for now) has passed; the bytes written."""
    written = 0
    waiting = select.poll()
    waiting.register(fd, select.POLLOUT)
    while written < len(data):
        try:
            written += os.write(fd, data[written:])
            continue
        except BlockingIOError:  # full
            pass
        if deadline is None:
            waiting.poll()
        elif (left := deadline - time.monotonic()) > 0:
            waiting.poll(math.ceil(left * 1000))
        else:
            break
    return written


def stopped(pid: int) -> bool:
    """Whether a process is stopped (SIGSTOP, a debugger): state T or t in /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False


def pipes(writer: subprocess.Popen[bytes]) -> tuple[IO[bytes], IO[bytes]]:
    """The writer's stdin and stdout, which Recorder._start_writer always opens."""
    if writer.stdin is None or writer.stdout is None:
        raise RuntimeError(f"visit writer {writer.pid} has no pipes")
    return writer.stdin, writer.stdout


class Writer:
    """Stores the hits of one worker: every flush_seconds, and at the end.

    Each frame's hits are counted as it arrives, in steps (``Pace``), so that a flush
    only adds them up (in steps too) and stores. It goes to the store in the parts the
    store cuts (``VisitStore.parts``), each one write, with a pause after each (PACE
    times as long as the write took): the store's work for a flush of thousands of
    links comes in pieces of about a millisecond, not one burst that a busy machine's
    requests would queue behind. A part the store cannot take is kept for the next
    flush, UNSAVED_ROWS at most (whatever the store's part size)."""

    def __init__(self, store: VisitStore) -> None:
        self.store = store
        self.counting = Counting()
        self._unsaved: deque[Batch] = deque()

    def flush(self) -> bool:
        """Store what was handed off, and any part kept; True if nothing is left."""
        with collector_paused():
            self._unsaved.extend(self.store.parts(self.counting.batch(Pace())))
            self.counting = Counting()
            while self._unsaved:
                started = time.monotonic()
                try:
                    self.store.add(self._unsaved[0])
                except StoreUnavailable as exc:
                    self._keep_at_most(UNSAVED_ROWS, exc)
                    return False
                self._unsaved.popleft()
                if self._unsaved:
                    time.sleep((time.monotonic() - started) * PACE)
        return True

    def serve(self, stdin: int, stdout: BinaryIO, flush_seconds: float, started: float
              ) -> None:
        """Read frames of hits, and flush requests (answered ``stored`` or ``kept``),
        until stdin ends; flush every flush_seconds and at the end, and keep the store's
        house. The first flush is flush_seconds after ``started`` (``time.monotonic()``
        when the writer began): the hits that started it have waited since then, and a
        start takes a loaded machine more than a second (CI's kill -9 test found
        nothing stored when the interval began after it)."""
        pending = b""
        deadline = started + flush_seconds
        while True:
            ready, _, _ = select.select([stdin], [], [], max(0.0, deadline - time.monotonic()))
            if ready:
                data = os.read(stdin, PIPE_BYTES)
                if not data:
                    break
                pending += data
                start = 0  # of the next frame: what was read is cut once, not per frame
                while len(pending) - start >= FRAME.size:
                    (size,) = FRAME.unpack_from(pending, start)
                    end = start + FRAME.size + size
                    if len(pending) < end:
                        break  # the rest of the frame is on its way
                    if size:
                        self.take(pending[start + FRAME.size:end])
                    else:  # the worker waits for the answer: nothing follows until then
                        stdout.write(b"stored\n" if self.flush() else b"kept\n")
                        stdout.flush()
                    start = end
                pending = pending[start:]
            if time.monotonic() >= deadline:
                self._flush_and_maintain()
                deadline = time.monotonic() + flush_seconds
        if not self.flush():
            log.error("visit writer exits with %d visits the store did not take",
                      sum(part.counted() for part in self._unsaved))

    def take(self, frame: bytes) -> None:
        """Count the hits of a frame, in steps (``Pace``) of this frame's own work: not
        of what the writer did before (starting up, a flush), which would make it
        pause three times that long before counting anything."""
        try:
            self.counting.add(marshal.loads(frame), Pace())  # nosec B302: our worker's
        except (ValueError, EOFError, TypeError):
            log.warning("visit writer skipped a frame it cannot read (%d bytes)", len(frame))

    def _flush_and_maintain(self) -> None:
        try:
            self.flush()
            with collector_paused():
                self.store.maintain()
        except StoreUnavailable as exc:
            log.warning("visit store housekeeping failed: %s", exc)
        except Exception:  # the writer must outlive any surprise, or counting stops
            log.exception("visit flush failed; trying again at the next")

    def _keep_at_most(self, rows: int, exc: StoreUnavailable) -> None:
        """Drop the oldest parts until those kept hold at most `rows` (``Batch.rows``): a
        bound on memory whatever size of part the store cuts."""
        lost = 0
        kept = sum(part.rows() for part in self._unsaved)
        while kept > rows:
            part = self._unsaved.popleft()
            kept -= part.rows()
            lost += part.counted()
        log.warning("visit counts not stored yet (%s); %d parts kept for the next flush%s",
                    exc, len(self._unsaved), f", {lost} visits dropped" if lost else "")


def main() -> None:
    """The visit writer, started by a worker's ``Recorder`` (``python -c "import visits;
    visits.main()"``): VISIT_WRITER says where the store is, stdin is the pipe from the
    worker. It exits when the pipe ends, after storing what it has: when its worker
    exits, even by ``kill -9``. SIGTERM, SIGINT and SIGHUP, which a stop or a hangup
    may send the whole process group (and the kernel sends a stopped writer whose
    worker has exited, with SIGCONT), are its worker's to act on. Once started (the
    store opened, the parsers loaded), it lowers its priority below the workers': on a
    busy machine its flushes wait a little, and requests do not."""
    started = time.monotonic()
    for stop in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(stop, signal.SIG_IGN)
    logging.basicConfig(format="[visit writer %(process)d] %(levelname)s %(message)s")
    settings = json.loads(os.environ["VISIT_WRITER"])
    writer = Writer(reopen(settings["store"]))
    visitors.classify(WARM_UP)
    os.nice(WRITER_NICENESS)
    writer.serve(0, sys.stdout.buffer, float(settings["flush_seconds"]), started)


# --- What people see ---------------------------------------------------------------------

def document(link: Link, stats: Stats, counting: bool, flush_seconds: float) -> dict[str, Any]:
    """The stats of a link as ``GET /api/links/<code>/stats`` and ``ops.links stats``
    give them."""
    return {
        "code": link.code,
        "visits": stats.visits,
        "bots": stats.bots,
        "private_visits": stats.private,
        "days": [{"date": day, "visits": count.visits, "bots": count.bots,
                  "unique_visitors": count.visitors}
                 for day, count in sorted(stats.days.items())],
        **{name: dict(stats.details[kind]) for kind, name in DETAILS.items()},
        "counting": counting,
        "delay_seconds": flush_seconds if counting else None,
        # a limited link's exact count of the visits it served (people only), at once
        "max_visits": link.max_visits,
        "visits_used": link.visits if link.max_visits is not None else None,
    }


@dataclass(frozen=True)
class Bar:
    day: Day
    visits: int
    x: float
    y: float
    height: float


@dataclass(frozen=True)
class Chart:
    """Bars for the visits of the last days, in the SVG viewBox ``0 0 WIDTH HEIGHT``."""

    bars: list[Bar]
    top: int  # the number of visits the top of the plot stands for
    bar_width: float
    WIDTH = 600
    HEIGHT = 200
    PLOT_TOP = 10.0  # room above the plot for the top label
    PLOT_HEIGHT = 170.0


def chart(stats: Stats, last_day: Day, days: int = CHART_DAYS) -> Chart:
    """The visits of the `days` days up to last_day; a day without visits is a zero."""
    end = date.fromisoformat(last_day)
    wanted = [(end - timedelta(days=back)).isoformat() for back in range(days - 1, -1, -1)]
    counts = [stats.days.get(day, DayCount()).visits for day in wanted]
    top = nice_top(max(counts, default=0))
    slot = Chart.WIDTH / days
    width = round(slot * 0.8, 2)
    bars = []
    for i, (day, count) in enumerate(zip(wanted, counts)):
        height = round(count / top * Chart.PLOT_HEIGHT, 2)
        bars.append(Bar(day, count, round(i * slot + (slot - width) / 2, 2),
                        round(Chart.PLOT_TOP + Chart.PLOT_HEIGHT - height, 2), height))
    return Chart(bars, top, width)


def nice_top(largest: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, 100... that is at least largest."""
    top = 1
    while top < largest:
        top = top * 5 // 2 if str(top)[0] == "2" else top * 2
    return top
