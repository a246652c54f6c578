"""Single HTTP requests the benchmark makes itself: correctness checks, creates, polling.

Each request uses a fresh connection (like a new visitor, and so that gunicorn's
listening socket hands it to whichever worker is free).
"""
import http.client
import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from bench.data import Link
from bench.servers import HOST


class ProbeError(RuntimeError):
    """A server answered something other than what the contract promises."""


def get(port: int, path: str, timeout: float = 30.0) -> tuple[int, str | None]:
    """GET path; return (status, Location header)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", path)
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
        connection.request("POST", "/api/links", body, {"Content-Type": "application/json"})
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
    """How long until `streak` consecutive fresh requests for a code all got its redirect."""

    seconds: float
    misses: int


def until_served_everywhere(port: int, link: Link, streak: int, timeout: float) -> Visibility:
    """Poll GET /<code> until `streak` consecutive correct 302s; count answers before that.

    With gunicorn's sync workers every fresh connection goes to whichever worker is idle,
    so a streak of several times the worker count reaches every worker in practice.
    """
    started = time.perf_counter()
    deadline = started + timeout
    in_a_row = misses = 0
    while in_a_row < streak:
        if time.perf_counter() > deadline:
            raise ProbeError(f"/{link.code} not served {streak} times in a row in {timeout} s")
        try:
            status, location = get(port, f"/{link.code}", timeout=timeout)
        except OSError:
            status, location = 0, None
        if status == 302 and location == link.url:
            in_a_row += 1
        elif status == 302:
            raise ProbeError(f"/{link.code} redirected to {location}, stored {link.url}")
        else:
            in_a_row, misses = 0, misses + 1
            time.sleep(0.01)
    return Visibility(round(time.perf_counter() - started, 4), misses)


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
