"""A flood of creates from one client meets CREATE_RATE_LIMIT, and redirects stay fast.

With RATELIMIT_STORAGE_URI=redis://... every worker counts in the same place, so the
limit holds exactly across workers. With the default memory:// each worker keeps its own
count: one client gets up to (limit x workers) creates through, which
docs/reliability.md states rather than hides.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import requests

from tests.servers import GunicornServer
from tests.torture.conftest import Record, create, resolve

LIMIT = 5
WORKERS = 3
FLOOD = 60


def flood(server: GunicornServer) -> list[requests.Response]:
    """FLOOD creates, each on a new connection so that every worker sees some."""
    return [create(server.url, f"https://example.com/flood/{n}") for n in range(FLOOD)]


def follow_while(server: GunicornServer, code: str, url: str, done: threading.Event,
                 latencies: list[float]) -> None:
    """Follow one link over and over (at most 2,000 times) until done."""
    with requests.Session() as session:
        for _ in range(2000):
            if done.is_set():
                return
            started = time.monotonic()
            assert resolve(server.url, code, session) == url
            latencies.append(time.monotonic() - started)


def test_a_shared_redis_limit_holds_across_workers_and_redirects_stay_fast(
        tmp_path: Path, redis_url: str, record_figure: Record) -> None:
    server = GunicornServer(tmp_path / "data", workers=WORKERS,
                            env={"CREATE_RATE_LIMIT": f"{LIMIT}/minute",
                                 "RATELIMIT_STORAGE_URI": redis_url})
    server.start()
    latencies: list[float] = []
    done = threading.Event()
    try:
        first = create(server.url, "https://example.com/followed").json()
        follower = threading.Thread(target=follow_while,
                                    args=(server, first["code"], first["url"], done, latencies))
        follower.start()
        try:
            responses = flood(server)
        finally:
            done.set()
            follower.join(timeout=30)
    finally:
        server.stop()
    statuses = [r.status_code for r in responses]
    assert statuses.count(201) == LIMIT - 1, statuses  # the first create counted too
    refused = [r for r in responses if r.status_code == 429]
    assert len(refused) == FLOOD - (LIMIT - 1)
    for response in refused:
        assert int(response.headers["Retry-After"]) > 0
        assert "too many new links" in response.json()["error"].lower()
    assert latencies, "no redirect was followed during the flood"
    latencies.sort()
    record_figure("created_of_flood", statuses.count(201) + 1)
    record_figure("refused_429", len(refused))
    record_figure("redirects_followed", len(latencies))
    record_figure("redirect_p50_ms", round(1000 * latencies[len(latencies) // 2], 1))
    record_figure("redirect_max_ms", round(1000 * latencies[-1], 1))
    record_figure("retry_after_s", refused[0].headers["Retry-After"])
    record_figure("message", refused[0].json()["error"])


def test_the_default_memory_limit_is_per_worker(tmp_path: Path, record_figure: Record) -> None:
    server = GunicornServer(tmp_path / "data", workers=WORKERS,
                            env={"CREATE_RATE_LIMIT": f"{LIMIT}/minute"})
    server.start()
    try:
        statuses = [r.status_code for r in flood(server)]
    finally:
        server.stop()
    created = statuses.count(201)
    assert LIMIT <= created <= LIMIT * WORKERS, statuses
    assert statuses.count(429) == FLOOD - created
    record_figure("created_of_flood", created)
