"""Counted redirects and the nginx redirect cache (.platform/nginx), with the real nginx
laid out as Elastic Beanstalk lays it out (tests/test_nginx_platform.py).

A redirect nginx answers from its cache never reaches the app, so it could not be
counted: a counted redirect says ``Cache-Control: no-store`` and nginx, which
honours it, passes every one to the app. With VISITS=off the cache works as before.
docs/visits.md has the measurements behind this choice.

proxy_cache_lock is off: with it on, concurrent requests for a response nginx may not
store wait for the first one in steps of 500 ms (the lock's polling interval), which
made a hot counted link's p99 about 460 ms in bench.visits.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

import visits
from linkstore import open_url
from tests.helpers import CHROME_UA
from tests.test_nginx_platform import nginx_can_run, nginx_in_front  # noqa: F401 (autouse)

pytestmark = pytest.mark.alone  # asserts counted redirects never queue behind each other


@pytest.mark.parametrize("counting, cache", [("on", ["MISS"] * 10),
                                             ("off", ["MISS"] + ["HIT"] * 9)])
def test_counted_redirects_pass_the_nginx_cache_and_every_one_is_counted(
        tmp_path: Path, counting: str, cache: list[str]) -> None:
    with nginx_in_front(tmp_path, VISITS=counting, VISITS_FLUSH_SECONDS="3600") as (url, app):
        assert requests.post(f"{app.url}/api/links", timeout=10, json={
            "url": "https://example.com/cached", "code": "cached"}).status_code == 201
        answers = [requests.get(f"{url}/cached", allow_redirects=False, timeout=10,
                                headers={"User-Agent": CHROME_UA, "X-Forwarded-Proto": "https"})
                   for _ in range(10)]
    assert [answer.status_code for answer in answers] == [302] * 10
    assert [answer.headers["X-Cache"] for answer in answers] == cache
    links = open_url((tmp_path / "data" / "urls.json").as_uri())
    assert visits.open_store(links).stats("cached").visits == (10 if counting == "on" else 0)


def test_concurrent_counted_redirects_of_one_link_do_not_queue_behind_each_other(
        tmp_path: Path) -> None:
    with nginx_in_front(tmp_path) as (url, app):
        assert requests.post(f"{app.url}/api/links", timeout=10, json={
            "url": "https://example.com/hot", "code": "hot"}).status_code == 201

        def get(_: int) -> int:
            return requests.get(f"{url}/hot", allow_redirects=False, timeout=10).status_code
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = [status for _ in range(20) for status in pool.map(get, range(8))]
        seconds = time.monotonic() - started
    assert statuses == [302] * 160
    # A round that waits on the cache lock takes at least 500 ms: 20 rounds, 10 s.
    assert seconds < 5, f"20 rounds of 8 took {seconds:.1f} s: requests waited on a lock"
