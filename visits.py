"""Visit statistics that cost a redirect nothing and keep no one's address.

A redirect calls ``Recorder.record(code, environ)``: it keeps the request's method,
User-Agent, Referer and whether the visitor asked not to be tracked and, unless they
did, a keyed hash of the address and User-Agent with the day's salt, in a queue in
memory. The address never enters the queue; nothing is parsed and nothing is written
while the redirect is answered.

A thread in each worker empties the queue every ``VISITS_FLUSH_SECONDS`` (and once more
when the worker exits normally): it makes each distinct request a ``visitors.Hit`` and
classifies it (``visitors.classify``), once, adds the hits up per link and day into a
``Batch``, and hands the batch to the ``VisitStore`` in one write. A store that cannot
take it keeps it for the next flush. So a crash (``kill -9``) loses at most the hits of
one flush interval, and never a link: visits are kept apart from the links.

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
import gc
import hashlib
import logging
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Protocol

import visitors
from linkstore import Link, LinkStore, StoreUnavailable
from visitors import Visit

log = logging.getLogger("shortener.visits")

DETAILS = {"referrer": "referrers", "browser": "browsers", "os": "systems",
           "device": "devices"}  # what a person's visit records, and its name in the stats
CLOSE_AFTER_SECONDS = 3600  # a day's visitor hashes outlive it by this much: late flushes
UNSAVED_BATCHES = 360  # batches kept while the store is down: an hour at the default 10 s
CHART_DAYS = 30
CHUNK = 500  # hits counted between two chances for a request to take the GIL
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
            self.details[kind][value or "Other"] += times

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


# --- On the redirect's path, and the flush ------------------------------------------------

# A queued hit: code, day number, the request's method, User-Agent (cut to the length
# visitors reads), Referer and privacy wish, and the visitor hash. A tuple of strings
# and numbers: Python's garbage collector stops tracking such a tuple at its first
# collection, so the thousands queued between flushes cost no full collections (queued
# objects did: 25-65 ms pauses).
Queued = tuple[str, int, str, str, str | None, bool, int | None]
Request = tuple[str, str, str | None, bool]  # method, User-Agent, Referer, private


def batch_of(hits: Sequence[Queued]) -> Batch:
    """Count queued hits into a batch. Per hit, a few dictionary lookups: each distinct
    request (method, User-Agent, Referer, privacy) becomes a ``visitors.Hit`` and is
    classified once, and each (link, day, visit) is counted once.

    The GIL is given up every CHUNK hits, so that a request waiting for it in the same
    worker waits about a millisecond, not the whole count."""
    kinds: dict[Request, int] = {}
    classified: list[Visit] = []
    seen: Counter[tuple[str, int, int]] = Counter()
    visitors_of: dict[tuple[str, int, int], set[int]] = {}
    for start in range(0, len(hits), CHUNK):
        time.sleep(0)
        for code, day, method, agent, referer, private, visitor in hits[start:start + CHUNK]:
            kind = kinds.get((method, agent, referer, private))
            if kind is None:
                kind = kinds[method, agent, referer, private] = len(classified)
                classified.append(visitors.classify(visitors.Hit(
                    method, agent, visitors.referrer_host(referer), private)))
            seen[code, day, kind] += 1
            if visitor is not None:
                visitors_of.setdefault((code, day, kind), set()).add(visitor)
    batch = Batch()
    days = {day: day_of(day) for _, day, _ in seen}
    for (code, day, kind), times in seen.items():
        visit = classified[kind]
        if visit.kind != "ignored":
            batch.tally(code, days[day]).count(visit, times)
    for (code, day, kind), found in visitors_of.items():
        if classified[kind].browser is not None:  # a person's visit with details: no bot
            batch.tally(code, days[day]).visitors |= found
    return batch


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a flush or a fold runs. What they
    build (thousands of tallies) is freed when they end; collections in the middle would
    promote it to the oldest generation instead, and a collection of that generation
    holds every thread of the worker for 25 ms or more (docs/visits.md, "Cost")."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Recorder:
    """Counts the redirects one worker answers, and flushes them in the background."""

    def __init__(self, store: VisitStore, flush_seconds: float) -> None:
        self.store = store
        self.flush_seconds = flush_seconds
        self._hits: deque[Queued] = deque()
        self._salts: dict[int, bytes] = {}
        self._unsaved: deque[Batch] = deque()
        self._flush_lock = threading.Lock()
        self._closing = threading.Event()
        self._closed = False
        self._keep_salts()  # before the first request, so that its visitor is counted
        self._thread = threading.Thread(target=self._run, daemon=True, name="visit-flush")
        self._thread.start()
        atexit.register(self.close)  # a worker that stops gracefully flushes what it has

    def record(self, code: str, environ: Mapping[str, Any]) -> None:
        """Remember one answered redirect, in memory, without parsing anything: what
        ``visitors.hit`` reads, as the request has it, and the visitor hash. Measured in
        a worker under load, ``visitors.hit`` itself cost 15 to 20 us here; at flush time
        it runs once per distinct request (docs/visits.md, "Cost")."""
        agent = environ.get("HTTP_USER_AGENT", "")[:visitors.MAX_USER_AGENT]
        private = visitors.asks_privacy(environ.get("HTTP_DNT"), environ.get("HTTP_SEC_GPC"))
        day = int(time.time() // 86400)
        visitor = None
        salt = self._salts.get(day)
        if salt is not None and not private:
            seen = f"{environ.get('REMOTE_ADDR', '')}\0{agent}".encode()
            visitor = int.from_bytes(hashlib.blake2b(seen, key=salt, digest_size=8).digest(),
                                     "big", signed=True)  # a PostgreSQL bigint
        self._hits.append((code, day, environ["REQUEST_METHOD"], agent,
                           environ.get("HTTP_REFERER"), private, visitor))

    def flush(self) -> None:
        """Count what the queue holds into one batch, and store it with any batch a
        previous flush could not store."""
        with self._flush_lock, collector_paused():
            batch = batch_of([self._hits.popleft() for _ in range(len(self._hits))])
            if batch.tallies:
                self._unsaved.append(batch)
            while self._unsaved:
                try:
                    self.store.add(self._unsaved[0])
                except StoreUnavailable as exc:
                    self._keep_at_most(UNSAVED_BATCHES, exc)
                    return
                self._unsaved.popleft()

    def close(self) -> None:
        """Stop the thread and flush what is left (a graceful exit of the worker)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._closing.set()
        self._thread.join(timeout=30)
        self.flush()

    def _keep_at_most(self, batches: int, exc: StoreUnavailable) -> None:
        lost = 0
        while len(self._unsaved) > batches:
            lost += sum(t.visits + t.bots for t in self._unsaved.popleft().tallies.values())
        log.warning("visit counts not stored yet (%s); %d batches kept for the next flush%s",
                    exc, len(self._unsaved), f", {lost} visits dropped" if lost else "")

    def _keep_salts(self) -> None:
        """Have today's and tomorrow's salts in memory, and forget earlier ones."""
        now = int(time.time() // 86400)
        if now in self._salts and now + 1 in self._salts:
            return
        try:
            salts = self.store.salts(day_of(now))
        except StoreUnavailable as exc:
            log.warning("no visitor salt for today yet (%s): unique visitors are not "
                        "counted until there is", exc)
            return
        self._salts = {number: salts[day_of(number)] for number in (now, now + 1)}

    def _run(self) -> None:
        visitors.classify(WARM_UP)  # load the parsers here, not in a request's time slice
        while not self._closing.wait(self.flush_seconds):
            try:
                self._keep_salts()
                self.flush()
                with collector_paused():
                    self.store.maintain()
            except StoreUnavailable as exc:
                log.warning("visit store housekeeping failed: %s", exc)
            except Exception:  # the thread must outlive any surprise, or counting stops
                log.exception("visit flush failed; trying again in %g s", self.flush_seconds)


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
