"""The app under real gunicorn with several workers, over real HTTP on loopback."""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from tests.servers import GunicornServer, links_on_disk

STORM_CLIENTS = 8
STORM_LINKS_EACH = 200


def create(session: requests.Session, base: str, code: str) -> int:
    response = session.post(f"{base}/api/links", timeout=30,
                            json={"url": f"https://example.com/{code}", "code": code})
    return response.status_code


def test_a_link_created_in_one_worker_is_followed_in_every_other(tmp_path: Path) -> None:
    access_log = tmp_path / "access.log"
    # Sync workers take one connection at a time, so concurrent clients reach several of
    # them; a threaded worker may take them all, which would prove nothing here. (gunicorn
    # runs gthread instead of sync whenever threads > 1.)
    server = GunicornServer(tmp_path / "data", workers=3, env={
        "GUNICORN_WORKER_CLASS": "sync", "GUNICORN_THREADS": "1",
        "GUNICORN_CMD_ARGS": f"--access-logfile {access_log} "
                             "--access-logformat '%(p)s %(U)s %(s)s'"})

    def served() -> list[list[str]]:
        return [line.split() for line in access_log.read_text().splitlines()]

    def get(path: str) -> int:
        return requests.get(f"{server.url}{path}", allow_redirects=False, timeout=10).status_code
    with server, ThreadPoolExecutor(max_workers=6) as pool:
        # Every worker loads the (empty) store first, so each must notice the new link.
        deadline = time.monotonic() + 20
        while len({pid for pid, *_ in served()}) < 3 and time.monotonic() < deadline:
            list(pool.map(get, ["/warm-up"] * 12))
        assert len({pid for pid, *_ in served()}) == 3, "not every worker came up"
        assert create(requests.Session(), server.url, "shared") == 201
        statuses = list(pool.map(get, ["/shared"] * 90))
    assert statuses == [302] * 90
    after = [line for line in served() if line[1] == "/shared"]
    assert {status for _, _, status in after} == {"302"}
    workers = {pid for pid, _, _ in after}
    assert len(workers) >= 2, f"only {workers} answered; cannot show cross-worker visibility"


def test_concurrent_creates_lose_nothing_and_the_file_always_parses(server: GunicornServer
                                                                    ) -> None:
    reads = Counter[str]()
    storm_over = threading.Event()

    def reader() -> None:
        while not storm_over.is_set():
            try:
                with open(server.urls_file, encoding="utf-8") as urls_file:
                    json.load(urls_file)
                reads["valid"] += 1
            except FileNotFoundError:
                reads["not yet"] += 1
            except json.JSONDecodeError:
                reads["invalid"] += 1

    def client(n: int) -> Counter[int]:
        session = requests.Session()
        return Counter(create(session, server.url, f"c{n}-{i}") for i in range(STORM_LINKS_EACH))

    watcher = threading.Thread(target=reader)
    watcher.start()
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=STORM_CLIENTS) as pool:
            statuses = sum(pool.map(client, range(STORM_CLIENTS)), Counter[int]())
    finally:
        storm_over.set()
        watcher.join()
    seconds = time.monotonic() - started
    total = STORM_CLIENTS * STORM_LINKS_EACH
    print(f"\n{total} creates from {STORM_CLIENTS} clients in {seconds:.1f} s "
          f"({total / seconds:.0f}/s); reader parsed the file {reads['valid']} times, "
          f"{reads['invalid']} invalid")
    assert statuses == Counter({201: total})
    assert reads["invalid"] == 0 and reads["valid"] > 0
    links = links_on_disk(server.urls_file)
    expected = {f"c{n}-{i}" for n in range(STORM_CLIENTS) for i in range(STORM_LINKS_EACH)}
    assert set(links) == expected
    assert all(links[code]["url"] == f"https://example.com/{code}" for code in expected)
    assert requests.get(f"{server.url}/healthz", timeout=5).json()["links"] == total


def test_kill_9_mid_storm_loses_no_acknowledged_link(server: GunicornServer) -> None:
    acknowledged: list[str] = []
    storm_over = threading.Event()

    def client(n: int) -> None:
        session = requests.Session()
        for i in range(1000):
            if storm_over.is_set():
                return
            code = f"k{n}-{i}"
            try:
                if create(session, server.url, code) == 201:
                    acknowledged.append(code)
            except requests.RequestException:
                return

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while len(acknowledged) < 150 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()
    storm_over.set()
    for thread in threads:
        thread.join(timeout=30)
    assert len(acknowledged) >= 150, "the storm never got going"

    links = links_on_disk(server.urls_file)  # parses: valid JSON after a crash
    assert set(acknowledged) <= set(links)
    restart_seconds = server.start()
    print(f"\nkilled after {len(acknowledged)} acknowledged creates; all on disk; "
          f"restarted in {restart_seconds:.2f} s")
    for code in acknowledged[::10] + acknowledged[-5:]:
        response = requests.get(f"{server.url}/{code}", allow_redirects=False, timeout=5)
        assert response.status_code == 302
        assert response.headers["Location"] == f"https://example.com/{code}"
    assert create(requests.Session(), server.url, "after-restart") == 201
