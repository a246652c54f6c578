"""Single HTTP requests the benchmark makes itself: correctness checks, creates, polling.

Each request uses a fresh connection (like a new visitor, and so that gunicorn's
listening socket hands it to whichever worker is free), and says it is the app's own
probe (visitors.PROBE_AGENT), so that the app does not count it as a visit.
"""
import http.client
import json
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bench.data import Link
from bench.servers import HOST

PROBE = {"User-Agent": "shortener-probe/1 (+bench)"}


class ProbeError(RuntimeError):
    """A server answered something other than what the contract promises."""


def get(port: int, path: str, timeout: float = 30.0) -> tuple[int, str | None]:
    """GET path; return (status, Location header)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", path, headers=PROBE)
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("Location")
    finally:
        connection.close()


def check_redirects(port: int, links: Iterable[Link]) -> int:
    """Every link must redirect to exactly its stored URL; return how many were checked."""
    checked = 0
    for link in links:
        status, location = get(port, f"/{link.code}")
        if status != 302 or location != link.url:
            raise ProbeError(f"/{link.code}: expected 302 to {link.url}, got {status} {location}")
        checked += 1
    return checked


def create(port: int, url: str, code: str | None = None,
           timeout: float = 60.0) -> tuple[str, float]:
    """POST /api/links (with a chosen code if given); return (code, seconds it took)."""
    body = json.dumps({"url": url} if code is None else {"url": url, "code": code})
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    started = time.perf_counter()
    try:
        connection.request("POST", "/api/links", body,
                           {"Content-Type": "application/json", **PROBE})
        response = connection.getresponse()
        answer = response.read()
    finally:
        connection.close()
    seconds = time.perf_counter() - started
    if response.status != 201:
        raise ProbeError(f"POST /api/links answered {response.status}: {answer[:300]!r}")
    created: str = json.loads(answer)["code"]
    return created, seconds


@dataclass(frozen=True)
class Visibility:
    """How long until a whole round of simultaneous requests for a code got its redirect."""

    seconds: float
    misses: int


def until_served_everywhere(port: int, link: Link, streak: int, timeout: float) -> Visibility:
    """Send rounds of `streak` simultaneous GET /<code> until two rounds in a row are all
    correct 302s; return the time to the first of them and the answers that were not.

    Simultaneous, because a sync worker takes one connection at a time: a round keeps
    every worker busy at once and so reaches each of them, where requests one after
    another often all land on the same idle worker and prove nothing about the others.
    """
    started = time.perf_counter()
    deadline = started + timeout
    first_good, good_rounds, misses = 0.0, 0, 0
    with ThreadPoolExecutor(max_workers=streak) as pool:
        while good_rounds < 2:
            if time.perf_counter() > deadline:
                raise ProbeError(f"/{link.code} not served by every worker in {timeout} s")
            answers = list(pool.map(lambda _: _get_or_fail(port, f"/{link.code}", timeout),
                                    range(streak)))
            wrong = [location for status, location in answers
                     if status == 302 and location != link.url]
            if wrong:
                raise ProbeError(f"/{link.code} redirected to {wrong[0]}, stored {link.url}")
            bad = sum(status != 302 for status, _ in answers)
            if bad:
                good_rounds, misses = 0, misses + bad
                time.sleep(0.01)
                continue
            good_rounds += 1
            if good_rounds == 1:
                first_good = time.perf_counter() - started
    return Visibility(round(first_good, 4), misses)


def _get_or_fail(port: int, path: str, timeout: float) -> tuple[int, str | None]:
    """get(), with a connection error counted as status 0 (the server is still starting)."""
    try:
        return get(port, path, timeout=timeout)
    except OSError:
        return 0, None


class CreateTicker:
    """Creates links at `rate` per second in a background thread until stopped."""

    def __init__(self, port: int, rate: float, limit: int) -> None:
        self.port, self.interval, self.limit = port, 1.0 / rate, limit
        self.seconds: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "CreateTicker":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _run(self) -> None:
        next_at = time.monotonic()
        for number in range(self.limit):
            if self._stop.wait(max(0.0, next_at - time.monotonic())):
                return
            next_at += self.interval
            try:
                _, seconds = create(self.port, f"https://mixed.example.com/{number}")
                self.seconds.append(seconds)
            except (OSError, ProbeError) as error:
                self.failures.append(str(error))
