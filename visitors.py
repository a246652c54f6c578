"""Who visited a short link, in the few words the visit statistics keep.

A redirect calls ``hit(method, headers)``: a few string checks and one ``urlsplit``,
nothing parsed. The visit counter buffers the ``Hit`` in memory and, at flush time, off
the redirect's path, calls ``classify(hit)`` for a ``Visit``:

- ``ignored``: a ``HEAD`` request, or the app's own probe (a User-Agent that starts with
  ``PROBE_AGENT``);
- ``bot``: crawlers, link-preview fetchers, HTTP libraries, headless browsers;
- ``person``: everyone else, with browser family, operating system, device type and
  referring host; or, when the request says ``DNT: 1`` or ``Sec-GPC: 1``, with nothing
  but the fact of the visit.

A ``Hit`` holds the User-Agent only in memory; a ``Visit``, the only thing stored,
never holds it, nor an address, a cookie, or a referrer's path or query. What a
User-Agent says is cached per string (a bounded LRU), since most visits repeat a few
thousand browsers. docs/visits.md says which libraries do the work, why, and how well.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import cache, lru_cache
from typing import Literal, Protocol
from urllib.parse import urlsplit

from crawlerdetect import CrawlerDetect  # type: ignore[import-untyped]
from ua_parser import BasicResolver, Domain, load_lazy_builtins

PROBE_AGENT = "shortener-probe/"  # ops.smoke sends "shortener-probe/1 (+ops.smoke)"
MAX_USER_AGENT = 512  # characters kept; real User-Agents stay under 400
CACHE_SIZE = 4096  # User-Agents whose description is kept; docs/visits.md: its memory
DIRECT = "direct"  # the referrer of a visit that names no usable referring host
REFERRER_SCHEMES = frozenset({"http", "https", "android-app"})  # android-app://com.slack/

Kind = Literal["person", "bot", "ignored"]
Device = Literal["desktop", "mobile", "tablet", "other"]


class Headers(Protocol):
    """Request headers, looked up by name: a Werkzeug ``Headers``, or a plain dict."""

    def get(self, key: str, /) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Hit:
    """One answered redirect as the visit counter buffers it, in memory only."""

    method: str
    user_agent: str  # at most MAX_USER_AGENT characters; "" when none was sent
    referrer: str  # the referring host, or DIRECT
    private: bool  # the visitor asked not to be tracked (DNT: 1 or Sec-GPC: 1)


@dataclass(frozen=True, slots=True)
class Visit:
    """What the statistics keep of one hit. Only a person's visit has details, and only
    when the person did not ask for privacy."""

    kind: Kind
    browser: str | None = None  # the parser's family: "Chrome Mobile", "Samsung Internet"
    os: str | None = None  # "Android", "iOS", "Windows", "Mac OS X", "Linux"
    device: Device | None = None
    referrer: str | None = None  # a host such as "t.co", or DIRECT


IGNORED = Visit("ignored")
BOT = Visit("bot")
PRIVATE = Visit("person")


def hit(method: str, headers: Headers) -> Hit:
    """What the redirect keeps of a request: cheap enough for the redirect's path."""
    return Hit(method,
               (headers.get("User-Agent") or "")[:MAX_USER_AGENT],
               referrer_host(headers.get("Referer")),
               asks_privacy(headers.get("DNT"), headers.get("Sec-GPC")))


def classify(hit: Hit) -> Visit:
    """The visit a hit counts as. Thread-safe; parses each User-Agent once per cache."""
    if hit.method == "HEAD" or hit.user_agent.startswith(PROBE_AGENT):
        return IGNORED
    visit = _described(hit.user_agent[:MAX_USER_AGENT])
    if visit.kind == "bot":
        return BOT
    if hit.private:
        return PRIVATE
    return replace(visit, referrer=hit.referrer)


def describe(user_agent: str) -> Visit:
    """What a User-Agent alone says: a bot, or a person's browser, OS and device.

    Uncached (``classify`` caches it). A bot is whatever the crawler list matches, what
    the parser itself calls a spider, or a string in which the parser finds neither an
    operating system nor a device: every browser names one, HTTP libraries do not."""
    agent = user_agent[:MAX_USER_AGENT]
    if on_crawler_list(agent):  # first: the parser is slowest on what it cannot match
        return BOT
    parsed = _parser()(agent, Domain.ALL)
    os = parsed.os.family if parsed.os else None
    device = parsed.device.family if parsed.device else None
    if device == "Spider" or (os is None and device is None):
        return BOT
    return Visit("person", parsed.user_agent.family if parsed.user_agent else "Other",
                 os or "Other", device_type(agent, os, device or "Other"))


_described = lru_cache(maxsize=CACHE_SIZE)(describe)
cache_info = _described.cache_info
cache_clear = _described.cache_clear


def on_crawler_list(user_agent: str) -> bool:
    """Whether Crawler-Detect's list (the crawlerdetect package) matches the string."""
    return bool(_crawler_list().is_crawler(user_agent))


def device_type(user_agent: str, os: str | None, device: str) -> Device:
    """Desktop, mobile, tablet or other, from the parser's device family and OS.

    uap-core leaves device types out on purpose (ua-parser/uap-core#31), so the type
    follows the browsers' own convention: mobile browsers put "Mobi" in the User-Agent
    (MDN's advice for detecting one), and Android browsers leave "Mobile" out on
    tablets. What the parser calls "Other" or "Mac" and runs an OS is a computer; a
    named device that is none of these (a TV, a console) is "other"."""
    if device == "iPad" or "Tablet" in device:
        return "tablet"
    if "Mobi" in user_agent or device in ("iPhone", "iPod"):
        return "mobile"
    if os == "Android":
        return "tablet"
    if device in ("Other", "Mac"):
        return "desktop"
    return "other"


def referrer_host(referer: str | None) -> str:
    """The referring host, lower-cased and in ASCII (IDNA), without port, user, path or
    query; DIRECT when there is none.

    Anything but a domain name under http, https or android-app counts as DIRECT: junk,
    a file: URL, or an IP address, which may be a person's own."""
    try:
        url = urlsplit((referer or "").strip())
        host = (url.hostname or "").rstrip(".").encode("idna").decode("ascii")
    except (ValueError, UnicodeError):  # "http://[::1", an empty or 64-letter label
        return DIRECT
    if url.scheme not in REFERRER_SCHEMES or not is_domain_name(host):
        return DIRECT
    return host


_DOMAIN_NAME = re.compile(r"[a-z0-9_.-]{1,253}")
_NUMBER = re.compile(r"[0-9]+|0x[0-9a-f]*")


def is_domain_name(host: str) -> bool:
    """A lower-case ASCII host name, not an IP address: a browser's URL parser reads a
    host whose last label is a number as IPv4 ("http://1234/", "http://0x7f.1/")."""
    return bool(_DOMAIN_NAME.fullmatch(host)) and not _NUMBER.fullmatch(host.rsplit(".", 1)[-1])


def asks_privacy(dnt: str | None, sec_gpc: str | None) -> bool:
    """``DNT: 1`` (extensions may follow the 1) or ``Sec-GPC: 1``; other values are not
    a request."""
    return (dnt or "").strip().startswith("1") or (sec_gpc or "").strip() == "1"


@cache
def _parser() -> BasicResolver:
    """ua-parser's pure-Python engine, each pattern compiled when first needed. Its Rust
    engine (ua-parser-rs) gives the same answers here, faster, for far more memory per
    process: docs/visits.md weighs the two."""
    return BasicResolver(load_lazy_builtins())


class _CrawlerList(CrawlerDetect):  # type: ignore[misc]
    CACHE_SIZE = 0  # describe() is cached whole: no second cache of User-Agents


@cache
def _crawler_list() -> _CrawlerList:
    return _CrawlerList()
