"""Visit counting under real gunicorn (3 workers) over loopback HTTP, on the JSON file and
on a real PostgreSQL: what is counted, what is not, what is stored, and what a graceful
stop and a kill -9 do to the counts.

Most tests count with VISITS_FLUSH_SECONDS=3600, so that nothing is stored until the
server stops gracefully: the stop is the flush, and the counts are then exact whichever
worker answered, with no waiting on a clock.
"""
from __future__ import annotations

import os
import signal
import subprocess  # nosec B404: runs ops.smoke as the pipeline does
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

import visits
from ops import processes
from tests.helpers import CHROME_UA, FIREFOX_UA, eventually, everything_stored
from tests.servers import REPO, GunicornServer, Site, create_link, follow
from visits import DayCount

pytestmark = pytest.mark.alone  # its bounds are times (a flush interval), not to be shared

BOTS = ["curl/8.11.1", "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"]
PROBE = "shortener-probe/1 (+ops.smoke)"


@pytest.fixture
def server(site: Site) -> Iterator[GunicornServer]:
    with site.server() as running:
        yield running


def test_every_visit_is_counted_once_whichever_worker_answered_it(
        site: Site, server: GunicornServer) -> None:
    create_link(server, "hot")

    def visitor(n: int) -> None:  # 6 visitors: 3 addresses, each with 2 browsers
        for i in range(40):
            follow(server, "hot", User_Agent=CHROME_UA if n % 2 else FIREFOX_UA,
                   X_Forwarded_For=f"192.0.2.{n // 2}",
                   **({"Referer": "https://t.co/a1b2"} if i % 2 else {}))
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(visitor, range(6)))
    assert len(site.served_by("/hot")) >= 2, "one worker answered everything: not shown"
    server.stop()
    stats = site.stats("hot")
    assert (stats.visits, stats.bots, stats.private) == (240, 0, 0)
    assert stats.days == {visits.today(): DayCount(240, 0, 6)}
    assert stats.details["browser"] == {"Chrome": 120, "Firefox": 120}
    assert stats.details["referrer"] == {"t.co": 120, "direct": 120}
    assert stats.details["device"] == {"desktop": 240}


def test_bots_count_apart_and_head_requests_and_the_probe_not_at_all(
        site: Site, server: GunicornServer) -> None:
    create_link(server, "shared")
    for agent in BOTS * 5:
        follow(server, "shared", User_Agent=agent)
    for _ in range(5):
        follow(server, "shared", "HEAD", User_Agent=CHROME_UA)
        follow(server, "shared", User_Agent=PROBE)
    follow(server, "shared", User_Agent=CHROME_UA)
    server.stop()
    stats = site.stats("shared")
    assert (stats.visits, stats.bots) == (1, 15)
    assert stats.days == {visits.today(): DayCount(1, 15, 1)}


def test_the_apps_own_synthetic_check_is_never_counted(site: Site,
                                                       server: GunicornServer) -> None:
    done = subprocess.run(  # nosec B603: python -m ops.smoke, as the pipeline runs it
        [sys.executable, "-m", "ops.smoke", "--full", server.url], cwd=REPO,
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    server.stop()
    links = site.links()
    try:
        probed = [link.code for link in links.links() if link.code.startswith("smoke-")]
    finally:
        links.close()
    assert len(probed) == 3  # two redirects and a file, each followed by the check
    assert [(site.stats(code).visits, site.stats(code).bots) for code in probed] == [(0, 0)] * 3


def test_visitors_who_ask_not_to_be_tracked_count_only_in_the_total(
        site: Site, server: GunicornServer) -> None:
    create_link(server, "private")
    for headers in [{"DNT": "1"}] * 4 + [{"Sec-GPC": "1"}] * 3 + [{}] * 2:
        follow(server, "private", User_Agent=CHROME_UA, Referer="https://news.example/", **headers)
    server.stop()
    stats = site.stats("private")
    assert (stats.visits, stats.private) == (9, 7)
    assert stats.details["referrer"] == {"news.example": 2}
    assert stats.details["browser"] == {"Chrome": 2}
    assert stats.days[visits.today()].visitors == 1


def test_counts_reach_the_api_the_page_and_the_home_page_within_the_flush_interval(
        site: Site) -> None:
    with site.server(VISITS_FLUSH_SECONDS="1") as server:
        browser = requests.Session()
        create_link(server, "seen", browser)
        for agent in [CHROME_UA, FIREFOX_UA, CHROME_UA, BOTS[0]]:
            follow(server, "seen", User_Agent=agent)

        def api() -> dict[str, object]:
            answer: dict[str, object] = requests.get(
                f"{server.url}/api/links/seen/stats", timeout=10).json()
            return answer
        waited = eventually(lambda: api()["visits"] == 3 and api()["bots"] == 1)
        document = api()
        page = requests.get(f"{server.url}/seen+", timeout=10)
        home = browser.get(f"{server.url}/", timeout=10)
    print(f"\ncounted in {waited:.1f} s with a 1 s flush interval")
    assert document["days"] == [{"date": visits.today(), "visits": 3, "bots": 1,
                                 "unique_visitors": 2}]
    assert document["browsers"] == {"Chrome": 2, "Firefox": 1}
    assert (document["counting"], document["delay_seconds"]) == (True, 1.0)
    assert page.status_code == 200 and "<dd>3</dd>" in page.text
    assert f"{visits.today()}: 3 visits" in page.text
    assert ">3 visits<" in home.text and 'href="' + server.url + '/seen+"' in home.text


def test_a_graceful_stop_flushes_what_every_worker_counted(site: Site,
                                                           server: GunicornServer) -> None:
    create_link(server, "stopped")
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda _: follow(server, "stopped", User_Agent=CHROME_UA), range(60)))
    api = requests.get(f"{server.url}/api/links/stopped/stats", timeout=10).json()
    assert api["visits"] == 0, "counted on the redirect's path, not by a flush"
    assert len(site.served_by("/stopped")) >= 2
    server.stop()
    server.start()
    assert requests.get(f"{server.url}/api/links/stopped/stats", timeout=10).json()[
        "visits"] == 60


def test_kill_9_loses_at_most_one_flush_interval_of_counts_and_never_a_link(site: Site) -> None:
    flush = 1.0
    server = site.server(VISITS_FLUSH_SECONDS=str(flush))
    with server:
        codes = [f"k{n}" for n in range(20)]
        for code in codes:
            create_link(server, code)
        acknowledged: list[float] = []
        stop = threading.Event()

        def visitor() -> None:
            session = requests.Session()
            while not stop.is_set():
                try:
                    session.get(f"{server.url}/k0", allow_redirects=False, timeout=5,
                                headers={"User-Agent": CHROME_UA})
                except requests.RequestException:
                    return  # the server is gone
                acknowledged.append(time.monotonic())
        visitors = [threading.Thread(target=visitor) for _ in range(3)]
        for thread in visitors:
            thread.start()
        eventually(lambda: len(acknowledged) > 300)
        time.sleep(2 * flush)
        stored_before = requests.get(f"{server.url}/api/links/k0/stats", timeout=10).json()[
            "visits"]
        killed_at = time.monotonic()
        server.kill()
        stop.set()
        for thread in visitors:
            thread.join(timeout=30)
        sent = len(acknowledged)
        server.start()
        counted = requests.get(f"{server.url}/api/links/k0/stats", timeout=10).json()["visits"]
        links_back = [requests.get(f"{server.url}/{code}", allow_redirects=False,
                                   timeout=10).headers.get("Location") for code in codes]

    def answered_in_the_last(seconds: float) -> int:
        return sum(1 for at in acknowledged if at > killed_at - seconds)
    print(f"\nkill -9 after {sent} visits: {counted} counted, {sent - counted} lost; "
          f"{answered_in_the_last(flush)} were answered in the last flush interval")
    assert links_back == [f"https://example.com/{code}" for code in codes]
    assert stored_before <= counted <= sent
    # One interval, and one more for a flushing thread that a loaded machine runs late.
    assert sent - counted <= answered_in_the_last(2 * flush), (
        f"lost more than one interval; the server's log ends:\n{server.log()[-4000:]}")


def test_a_worker_killed_with_9_loses_only_what_it_had_not_handed_to_its_writer(
        site: Site, server: GunicornServer) -> None:
    """The writer, a child of the worker, stores what it was handed when its pipe ends."""
    create_link(server, "orphaned")
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda _: follow(server, "orphaned", User_Agent=CHROME_UA), range(60)))
    time.sleep(2.5 * visits.HANDOFF_SECONDS)  # every worker has handed its hits off
    workers, writers = server.worker_pids(), server.writer_pids()
    assert len(site.served_by("/orphaned")) >= 2 and len(writers) >= 2
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    waited = eventually(lambda: site.stats("orphaned").visits == 60)
    eventually(lambda: not set(writers) & alive())
    print(f"\n60 of 60 visits stored {waited:.1f} s after kill -9 of every worker")
    assert requests.get(f"{server.url}/orphaned", allow_redirects=False,
                        timeout=10).status_code == 302, "the master forked new workers"


def test_a_writer_killed_with_9_is_replaced_and_counting_goes_on(
        site: Site, server: GunicornServer) -> None:
    """What a dead writer had not stored is lost (here all of it: the flush interval is
    an hour); every visit after it died is counted by the writer that replaced it."""
    create_link(server, "rewritten")
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda _: follow(server, "rewritten", User_Agent=CHROME_UA), range(30)))
    time.sleep(2.5 * visits.HANDOFF_SECONDS)  # handed off to the writers about to die
    writers = server.writer_pids()
    assert len(writers) >= 2
    for pid in writers:
        os.kill(pid, signal.SIGKILL)
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda _: follow(server, "rewritten", User_Agent=FIREFOX_UA), range(40)))
    eventually(lambda: len(set(server.writer_pids()) - set(writers)) >= 2)
    server.stop()
    stats = site.stats("rewritten")
    assert (stats.visits, stats.details["browser"]) == (40, {"Firefox": 40})
    assert "starting another, the visits it had not stored are lost" in server.log()


def alive() -> set[int]:
    return {p.pid for p in processes.process_table().values() if not p.zombie}


def test_no_address_user_agent_cookie_or_referrer_path_is_stored(site: Site,
                                                                 server: GunicornServer) -> None:
    create_link(server, "private-data")
    agent = CHROME_UA + " Tracer/7f3e9a51"
    for _ in range(3):
        follow(server, "private-data", User_Agent=agent, X_Forwarded_For="203.0.113.201",
               Cookie="session=cookie-c0ffee1234; tracker=cookie-beef5678",
               Referer="https://news.example/story?reader=alice-4d5e6f")
    server.stop()
    stats = site.stats("private-data")
    assert stats.days[visits.today()] == DayCount(3, 0, 1)  # the visits and their visitor are there
    everything = site.stored()
    assert b"news.example" in everything
    for secret in ["203.0.113.201", agent, "Tracer", "7f3e9a51", "cookie-c0ffee1234",
                   "cookie-beef5678", "alice-4d5e6f", "reader="]:
        assert secret.encode() not in everything, f"{secret!r} is stored"


def test_visits_off_counts_nothing_and_leaves_redirects_cacheable(site: Site) -> None:
    with site.server(VISITS="off") as server:
        create_link(server, "uncounted")
        response = requests.get(f"{server.url}/uncounted", allow_redirects=False, timeout=10,
                                headers={"User-Agent": CHROME_UA})
        page = requests.get(f"{server.url}/uncounted+", timeout=10)
    assert response.status_code == 302
    assert response.headers["Cache-Control"] == "s-maxage=60"  # the nginx cache may keep it
    assert "not being counted" in page.text
    assert site.stats("uncounted").visits == 0
    assert not (site.data_dir / "visits").exists()
    if site.database_url:
        assert b"INSERT INTO public.visit" not in everything_stored(
            database_url=site.database_url)


def test_a_counted_redirect_tells_every_cache_not_to_keep_it(server: GunicornServer) -> None:
    create_link(server, "fresh")
    response = requests.get(f"{server.url}/fresh", allow_redirects=False, timeout=10)
    assert response.headers["Cache-Control"] == "no-store"
