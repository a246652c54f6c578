"""Smoke-test a live shortener through its public URL, the way a user would.

    python -m ops.smoke https://short.example.com [--timeout 10] [--code CODE | --full]

The default run checks: GET /healthz answers 200 with status "ok"; POST /api/links
creates a link with a fresh code; GET /<code> answers 302 with Location exactly the
stored URL (redirects are not followed); GET /api/links/<code> returns the same URL.
This is the create-and-follow path that broke in the original incident (the json.loads
bug only showed when the store was read), so a deploy that passes this cannot repeat it.

`--full` is the synthetic check a new version passes before it gets traffic (staging,
and a canary on its own address): everything a visitor and a script can do.

1. GET /healthz: 200, status "ok"; remember the link count;
2. GET / as a browser: 200, a CSRF token in the form and a session cookie;
3. POST /your-url as that browser (the token, the cookie, Origin and Referer): 200,
   the result page shows the short URL; GET /api lists the code for this browser;
4. POST /api/links: 201;
5. GET /<code> of both links: 302, Location exactly the URL given;
6. POST /your-url with a file (multipart): 200; GET /<code>: 200, the same bytes,
   as an attachment with nosniff;
7. GET /api/links/<code> of all three: the URL, or the file;
8. GET /<code> of a code that does not exist: the 404 page (HTML), and
   GET /api/links/<it>: 404 JSON with an error;
9. GET /healthz again: still "ok", and at least 3 links more than in step 1.

Probe links are tagged, so the store does not fill with anonymous litter: every code a
run creates starts with "smoke-" (then the UTC time and a random suffix) and every
target is under https://example.com/smoke/, so an operator finds them by either. A
--full run adds three links and a 1 KiB file. Nothing can delete a link yet; once the
API can (DELETE /api/links/<code> with a key, planned), --full deletes what it created
as its last step and checks each code then answers 410. The 5-minute probe uses --code
instead: one fixed link, created once and re-checked on every run.

Standard library only (urllib), so it runs anywhere Python runs. Each passed check
prints one line as it passes. Exit 0 when every check passed, 1 when one failed (it
says which and why), 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import html
import http.cookiejar
import json
import re
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any

PROBE_PREFIX = "smoke-"
PROBE_TARGETS = "https://example.com/smoke/"
USER_AGENT = "shortener-probe/1 (+ops.smoke)"  # visitors.PROBE_AGENT: never counted as a visit
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
SHORT_URL_FIELD = re.compile(r'id="short-url" value="([^"]+)"')


class SmokeFailure(Exception):
    """A check failed; the message says which and what was seen."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: Message
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

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


class Visitor:
    """One visitor of base_url: its own cookies (so its session and CSRF token), and
    redirects handed back rather than followed."""

    def __init__(self, base_url: str, timeout: float) -> None:
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        self.opener = urllib.request.build_opener(
            _NoRedirect, urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> Response:
        """One HTTP request; any status is a Response, only network errors raise."""
        url = self.base + path
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise SmokeFailure(f"refusing non-HTTP URL {url!r}")
        req = urllib.request.Request(url, data=body, method=method,  # nosec B310
                                     headers={"User-Agent": USER_AGENT, **(headers or {})})
        try:
            with self.opener.open(req, timeout=self.timeout) as resp:
                return Response(resp.status, resp.headers, resp.read())
        except urllib.error.HTTPError as err:
            return Response(err.code, err.headers, err.read())
        except (urllib.error.URLError, OSError) as err:
            raise SmokeFailure(f"{method} {url}: {err}") from None

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def post_json(self, path: str, payload: Any) -> Response:
        return self.request("POST", path, json.dumps(payload).encode(),
                            {"Content-Type": "application/json"})

    def post_form(self, path: str, fields: Mapping[str, str],
                  file: tuple[str, bytes] | None = None) -> Response:
        """POST as a browser submits the page's form: urlencoded, or multipart with a
        file; with Origin and Referer, which CSRF protection checks over HTTPS."""
        browser = {"Origin": self.base, "Referer": self.base + "/"}
        if file is None:
            body = urllib.parse.urlencode(fields).encode()
            return self.request("POST", path, body, {
                **browser, "Content-Type": "application/x-www-form-urlencoded"})
        boundary = "smoke" + secrets.token_hex(12)
        body, content_type = multipart(fields, "file", file, boundary)
        return self.request("POST", path, body, {**browser, "Content-Type": content_type})


def multipart(fields: Mapping[str, str], file_field: str, file: tuple[str, bytes],
              boundary: str) -> tuple[bytes, str]:
    """A multipart/form-data body, as a browser encodes a form with a file input."""
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
             f"{value}\r\n".encode() for name, value in fields.items()]
    name, content = file
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
                 f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                 .encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def expect_status(resp: Response, status: int, what: str) -> None:
    if resp.status != status:
        raise SmokeFailure(f"{what}: expected HTTP {status}, got {resp.status}: "
                           f"{resp.body[:300]!r}")


def expect_object(resp: Response, what: str) -> dict[str, Any]:
    body = resp.json()
    if not isinstance(body, dict):
        raise SmokeFailure(f"{what}: expected a JSON object, got {body!r}")
    return body


def probe_code(kind: str = "") -> str:
    """A fresh, recognisable probe code: smoke-<UTC time>-<random>[-kind]."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"{PROBE_PREFIX}{stamp}-{secrets.token_hex(3)}" + (f"-{kind}" if kind else "")


def probe_target(code: str) -> str:
    return f"{PROBE_TARGETS}{code}?q=1"


# --- checks, each returning the line it prints ----------------------------------------


def check_health(visitor: Visitor) -> tuple[str, int]:
    """/healthz is 200 and ok; return the line and the link count it reports."""
    resp = visitor.get("/healthz")
    expect_status(resp, 200, "GET /healthz")
    body = expect_object(resp, "GET /healthz")
    if body.get("status") != "ok":
        raise SmokeFailure(f"GET /healthz: status is not ok: {body!r}")
    links = body.get("links")
    return (f"GET /healthz 200 version={body.get('version')} links={links}",
            links if isinstance(links, int) else 0)


def check_create(visitor: Visitor, code: str, target: str, reuse: bool = False) -> str:
    resp = visitor.post_json("/api/links", {"url": target, "code": code})
    if reuse and resp.status == 409:
        return f"POST /api/links 409: {code} exists already (--code), checking it"
    expect_status(resp, 201, "POST /api/links")
    body = expect_object(resp, "POST /api/links")
    if body.get("code") != code or body.get("url") != target:
        raise SmokeFailure(f"POST /api/links: unexpected body {body!r}")
    return f"POST /api/links 201 short_url={body.get('short_url')}"


def check_follow(visitor: Visitor, code: str, target: str) -> str:
    resp = visitor.get(f"/{code}")
    expect_status(resp, 302, f"GET /{code}")
    location = resp.headers.get("Location")
    if location != target:
        raise SmokeFailure(f"GET /{code}: Location is {location!r}, expected {target!r}")
    return f"GET /{code} 302 Location={location}"


def check_lookup(visitor: Visitor, code: str, key: str, value: str) -> str:
    resp = visitor.get(f"/api/links/{code}")
    expect_status(resp, 200, f"GET /api/links/{code}")
    body = expect_object(resp, f"GET /api/links/{code}")
    if body.get(key) != value:
        raise SmokeFailure(f"GET /api/links/{code}: expected {key}={value!r}, got {body!r}")
    return f"GET /api/links/{code} 200 created_at={body.get('created_at')}"


def csrf_token(visitor: Visitor) -> str:
    resp = visitor.get("/")
    expect_status(resp, 200, "GET /")
    match = CSRF_FIELD.search(resp.text)
    if not match:
        raise SmokeFailure("GET /: the page has no form with a CSRF token")
    return html.unescape(match.group(1))


def check_form_create(visitor: Visitor, token: str, code: str,
                      fields: Mapping[str, str], file: tuple[str, bytes] | None = None) -> str:
    """Submit the home page's form; the result page must show the new short URL."""
    resp = visitor.post_form("/your-url", {"csrf_token": token, **fields, "code": code}, file)
    what = f"POST /your-url ({'file' if file else 'url'} form)"
    expect_status(resp, 200, what)
    match = SHORT_URL_FIELD.search(resp.text)
    shown = html.unescape(match.group(1)) if match else None
    if shown is None or not shown.endswith(f"/{code}"):
        raise SmokeFailure(f"{what}: the result page shows {shown!r}, not a short URL "
                           f"ending in /{code}")
    return f"{what} 200 short_url={shown}"


def check_my_codes(visitor: Visitor, code: str) -> str:
    resp = visitor.get("/api")
    expect_status(resp, 200, "GET /api")
    codes = resp.json()
    if not isinstance(codes, list) or code not in codes:
        raise SmokeFailure(f"GET /api: this browser's codes {codes!r} lack {code!r}")
    return f"GET /api 200 lists {code} for this browser"


def check_download(visitor: Visitor, code: str, content: bytes) -> str:
    resp = visitor.get(f"/{code}")
    expect_status(resp, 200, f"GET /{code}")
    if resp.body != content:
        raise SmokeFailure(f"GET /{code}: the download is {len(resp.body)} bytes that differ "
                           f"from the {len(content)} uploaded")
    disposition = resp.headers.get("Content-Disposition", "")
    if not disposition.startswith("attachment") or \
            resp.headers.get("X-Content-Type-Options") != "nosniff":
        raise SmokeFailure(f"GET /{code}: an upload must be an attachment with nosniff, got "
                           f"Content-Disposition={disposition!r}")
    return f"GET /{code} 200 {len(content)} bytes, identical, as an attachment"


def check_not_found(visitor: Visitor, code: str) -> str:
    page = visitor.get(f"/{code}")
    expect_status(page, 404, f"GET /{code} (no such link)")
    if "text/html" not in page.headers.get("Content-Type", "") or "<h1>" not in page.text:
        raise SmokeFailure(f"GET /{code}: the 404 is not the HTML page: {page.body[:200]!r}")
    api = visitor.get(f"/api/links/{code}")
    expect_status(api, 404, f"GET /api/links/{code} (no such link)")
    if "error" not in expect_object(api, f"GET /api/links/{code}"):
        raise SmokeFailure(f"GET /api/links/{code}: a 404 without an error message")
    return f"GET /{code} 404 page, GET /api/links/{code} 404 JSON"


# --- the runs ---------------------------------------------------------------------------


def run(base_url: str, timeout: float, code: str | None = None) -> Iterator[str]:
    """Health, create, follow, read back; yield one line per passed check.

    Without `code` every run creates a new link. With one (the 5-minute probe), the link
    is created once and later runs check that it still redirects exactly: the store
    does not grow by 288 links a day, and /healthz still proves the data directory is
    writable."""
    visitor = Visitor(base_url, timeout)
    reuse = code is not None
    code = code or probe_code()
    target = probe_target(code)
    yield check_health(visitor)[0]
    yield check_create(visitor, code, target, reuse)
    yield check_follow(visitor, code, target)
    yield check_lookup(visitor, code, "url", target)


def run_full(base_url: str, timeout: float) -> Iterator[str]:
    """Everything a visitor and a script can do (see the module docstring)."""
    browser, script = Visitor(base_url, timeout), Visitor(base_url, timeout)
    form_code, api_code, file_code = (probe_code(kind) for kind in ("form", "api", "file"))
    form_target, api_target = probe_target(form_code), probe_target(api_code)
    content = secrets.token_bytes(1024)  # random, so not text: the bytes must survive as is
    line, links_before = check_health(script)
    yield line
    token = csrf_token(browser)
    yield "GET / 200 with a CSRF token and a session cookie"
    yield check_form_create(browser, token, form_code, {"url": form_target})
    yield check_my_codes(browser, form_code)
    yield check_create(script, api_code, api_target)
    yield check_follow(script, form_code, form_target)
    yield check_follow(script, api_code, api_target)
    yield check_form_create(browser, token, file_code, {}, (f"{file_code}.bin", content))
    yield check_download(script, file_code, content)
    yield check_lookup(script, form_code, "url", form_target)
    yield check_lookup(script, api_code, "url", api_target)
    resp = script.get(f"/api/links/{file_code}")
    expect_status(resp, 200, f"GET /api/links/{file_code}")
    if not isinstance(expect_object(resp, "GET /api/links").get("file"), str):
        raise SmokeFailure(f"GET /api/links/{file_code}: no 'file' in {resp.body[:200]!r}")
    yield f"GET /api/links/{file_code} 200 file"
    yield check_not_found(script, probe_code("missing"))
    line, links_after = check_health(script)
    if links_after < links_before + 3:
        raise SmokeFailure(f"GET /healthz: {links_after} links after creating 3, "
                           f"{links_before} before")
    yield line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.smoke",
        description="Check a live shortener end to end: health, create a link, follow it.")
    parser.add_argument("base_url", help="public base URL, e.g. https://short.example.com")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds allowed for each HTTP request (default 10)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--code", help="use this fixed code instead of a new one each run "
                                     "(created on the first run, then re-checked)")
    mode.add_argument("--full", action="store_true",
                      help="the full synthetic check: the form with CSRF, the API, both "
                           "links, an upload downloaded byte for byte, the 404 page")
    args = parser.parse_args(argv)
    started = time.monotonic()
    checks = (run_full(args.base_url, args.timeout) if args.full
              else run(args.base_url, args.timeout, args.code))
    try:
        for line in checks:
            print(f"ok    {line}", flush=True)
    except SmokeFailure as err:
        print(f"FAIL  {err}", flush=True)
        print(f"smoke test FAILED against {args.base_url}", flush=True)
        return 1
    print(f"{'full ' if args.full else ''}smoke test passed against {args.base_url} in "
          f"{time.monotonic() - started:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
