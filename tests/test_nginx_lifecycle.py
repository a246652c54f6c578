"""What the nginx redirect cache may keep of links that stop, through the real nginx with
the project's .platform files laid out as Elastic Beanstalk does (test_nginx_platform.py
has the layout and the fixtures): nginx honours the app's Cache-Control."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers import CHROME_UA
from tests.servers import GunicornServer
from tests.test_nginx_platform import nginx_can_run, nginx_in_front  # noqa: F401 (autouse)


@pytest.fixture
def platform_nginx(tmp_path: Path) -> Iterator[tuple[str, GunicornServer]]:
    # VISITS=off: with visits counted no redirect is cached at all (test_visits_nginx.py);
    # here the cache keeps plain links and must keep nothing else.
    with nginx_in_front(tmp_path, VISITS="off") as (url, app):
        yield url, app


def through(url: str, path: str) -> requests.Response:
    return requests.get(f"{url}{path}", headers={"X-Forwarded-Proto": "https",
                                                 "User-Agent": CHROME_UA},
                        allow_redirects=False, timeout=5)


def test_a_plain_redirect_carries_its_bounded_lifetime_to_the_browser(
        platform_nginx: tuple[str, GunicornServer]) -> None:
    url, app = platform_nginx
    requests.post(f"{app.url}/api/links", json={"url": "https://example.com/p", "code": "p"},
                  timeout=5)
    first, again = through(url, "/p"), through(url, "/p")
    assert (first.headers["X-Cache"], again.headers["X-Cache"]) == ("MISS", "HIT")
    assert again.headers["Cache-Control"] == "s-maxage=60"  # for nginx; browsers keep none


def test_limited_and_protected_links_are_never_answered_from_the_cache(
        platform_nginx: tuple[str, GunicornServer]) -> None:
    url, app = platform_nginx
    bodies: list[dict[str, str | int]] = [
        {"code": "limited", "max_visits": 3}, {"code": "locked", "password": "open sesame"},
        {"code": "expiring", "expires_at": "2999-01-01T00:00:00Z"}]
    for body in bodies:
        created = requests.post(f"{app.url}/api/links", timeout=5,
                                json={"url": "https://example.com/x", **body})
        assert created.status_code == 201
    limited = [through(url, "/limited") for _ in range(5)]
    assert [r.status_code for r in limited] == [302, 302, 302, 410, 410]
    locked = [through(url, "/locked") for _ in range(3)]
    expiring = [through(url, "/expiring") for _ in range(3)]
    assert [r.status_code for r in locked] == [200] * 3
    assert [r.status_code for r in expiring] == [302] * 3
    for response in limited + locked + expiring:
        assert response.headers.get("X-Cache") != "HIT"  # nginx adds none to a 410
        assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("status, cache_control", [("301", "max-age=60"),
                                                   ("307", "s-maxage=60"),
                                                   ("308", "max-age=60")])
def test_every_redirect_status_is_cached_no_longer_than_the_app_says(
        tmp_path: Path, status: str, cache_control: str) -> None:
    """nginx keeps what the app's Cache-Control allows (307 and 308 are not in the
    platform's proxy_cache_valid: only the header makes them cached); a permanent
    status reaches the browser bounded too, not cached for ever."""
    with nginx_in_front(tmp_path, REDIRECT_STATUS=status, VISITS="off") as (url, app):
        requests.post(f"{app.url}/api/links", timeout=5,
                      json={"url": "https://example.com/p", "code": "p"})
        first, again = through(url, "/p"), through(url, "/p")
    assert first.status_code == again.status_code == int(status)
    assert (first.headers["X-Cache"], again.headers["X-Cache"]) == ("MISS", "HIT")
    assert again.headers["Cache-Control"] == cache_control
    assert "Age" not in again.headers  # so a browser may keep it max-age more: README
