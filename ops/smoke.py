"""Smoke-test a live shortener through its public URL, the way a user would.

    python -m ops.smoke https://short.example.com [--timeout 10] [--code CODE]

Checks, in order: GET /healthz answers 200 with status "ok"; POST /api/links creates a
link with a fresh code; GET /<code> answers 302 with Location exactly the stored URL
(redirects are not followed); GET /api/links/<code> returns the same URL. This is the
create-and-follow path that broke in the original incident (the json.loads bug only
showed when the store was read), so a deploy that passes this cannot repeat it.

Standard library only (urllib), so it runs anywhere Python runs. Exit 0 when every
check passed, 1 when one failed (it says which and why), 2 for bad arguments.
Each run leaves one link whose code starts with "smoke-", unless --code names a fixed
one (the scheduled probe does that, so production does not fill up with probe links).
"""
from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Any


class SmokeFailure(Exception):
    """A check failed; the message says which and what was seen."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise SmokeFailure(f"expected JSON, got {self.body[:200]!r}") from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Hand 3xx responses back to the caller instead of following them."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Message, newurl: str) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def request(method: str, url: str, timeout: float, payload: Any = None) -> Response:
    """One HTTP request; any status is a Response, only network errors raise."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise SmokeFailure(f"refusing non-HTTP URL {url!r}")
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method=method)  # nosec B310
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return Response(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as err:
        return Response(err.code, err.headers, err.read())
    except (urllib.error.URLError, OSError) as err:
        raise SmokeFailure(f"{method} {url}: {err}") from None


def expect_status(resp: Response, status: int, what: str) -> None:
    if resp.status != status:
        raise SmokeFailure(f"{what}: expected HTTP {status}, got {resp.status}: "
                           f"{resp.body[:300]!r}")


def check_health(base: str, timeout: float) -> str:
    resp = request("GET", f"{base}/healthz", timeout)
    expect_status(resp, 200, "GET /healthz")
    body = resp.json()
    if not isinstance(body, dict) or body.get("status") != "ok":
        raise SmokeFailure(f"GET /healthz: status is not ok: {body!r}")
    return f"GET /healthz 200 version={body.get('version')} links={body.get('links')}"


def check_create(base: str, code: str, target: str, timeout: float,
                 reuse: bool = False) -> str:
    resp = request("POST", f"{base}/api/links", timeout, {"url": target, "code": code})
    if reuse and resp.status == 409:
        return f"POST /api/links 409: {code} exists already (--code), checking it"
    expect_status(resp, 201, "POST /api/links")
    body = resp.json()
    if not isinstance(body, dict) or body.get("code") != code or body.get("url") != target:
        raise SmokeFailure(f"POST /api/links: unexpected body {body!r}")
    return f"POST /api/links 201 short_url={body.get('short_url')}"


def check_follow(base: str, code: str, target: str, timeout: float) -> str:
    resp = request("GET", f"{base}/{code}", timeout)
    expect_status(resp, 302, f"GET /{code}")
    location = resp.headers.get("Location")
    if location != target:
        raise SmokeFailure(f"GET /{code}: Location is {location!r}, expected {target!r}")
    return f"GET /{code} 302 Location={location}"


def check_lookup(base: str, code: str, target: str, timeout: float) -> str:
    resp = request("GET", f"{base}/api/links/{code}", timeout)
    expect_status(resp, 200, f"GET /api/links/{code}")
    body = resp.json()
    if not isinstance(body, dict) or body.get("url") != target:
        raise SmokeFailure(f"GET /api/links/{code}: unexpected body {body!r}")
    return f"GET /api/links/{code} 200 created_at={body.get('created_at')}"


def run(base_url: str, timeout: float, code: str | None = None) -> list[str]:
    """Run every check against base_url; return one line per passed check.

    Without `code` every run creates a new link. With one (the 5-minute probe), the link
    is created once and later runs check that it still redirects exactly: the store
    does not grow by 288 links a day, and /healthz still proves the data directory is
    writable."""
    base = base_url.rstrip("/")
    reuse = code is not None
    code = code or f"smoke-{int(time.time())}-{secrets.token_hex(4)}"
    target = f"https://example.com/smoke/{code}?q=1"
    return [
        check_health(base, timeout),
        check_create(base, code, target, timeout, reuse),
        check_follow(base, code, target, timeout),
        check_lookup(base, code, target, timeout),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.smoke",
        description="Check a live shortener end to end: health, create a link, follow it.")
    parser.add_argument("base_url", help="public base URL, e.g. https://short.example.com")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds allowed for each HTTP request (default 10)")
    parser.add_argument("--code", help="use this fixed code instead of a new one each run "
                                       "(created on the first run, then re-checked)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        for line in run(args.base_url, args.timeout, args.code):
            print(f"ok    {line}", flush=True)
    except SmokeFailure as err:
        print(f"FAIL  {err}", flush=True)
        print(f"smoke test FAILED against {args.base_url}", flush=True)
        return 1
    print(f"smoke test passed against {args.base_url} in "
          f"{time.monotonic() - started:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
