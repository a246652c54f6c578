"""A URL shortener you can trust with your links.

The one Flask module: configuration from the environment, validation, routes, error
pages. Read top to bottom; ARCHITECTURE.md has the HTTP contract. The links live in a
store behind one interface (``linkstore``): the JSON file at ``URLS_FILE`` by default,
PostgreSQL when ``DATABASE_URL`` is set. ``FastRedirects`` answers redirects of plain
links from the store before Flask's request machinery; everything else (links that
expire, count their visits, ask for a password or have stopped) goes through the
blueprint, where ``follow`` decides what a visit gets. Both redirect paths hand each
visit they serve to the visit counter (``visits.py``), which counts it in memory and
stores it later, off the redirect's path.
"""
from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import string
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import segno
from flask import (Blueprint, Flask, after_this_request, current_app, jsonify, make_response,
                   redirect, render_template, request, send_file, send_from_directory, session,
                   url_for)
from flask.sessions import SecureCookieSessionInterface
from flask.typing import ResponseReturnValue
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_wtf.csrf import CSRFError, CSRFProtect
from markupsafe import Markup
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.urls import iri_to_uri
from werkzeug.utils import secure_filename
from werkzeug.wrappers import Response
from werkzeug.wsgi import ClosingIterator

import visitors
import visits
from linkrules import (CODE_PATTERN, RESERVED_CODES, InvalidInput, checked_code,
                       checked_url)
from linkstore import (DELETED, MAX_REPORT_DETAILS, REPORT_REASONS, ApiKey, CodeTaken, Link,
                       LinkDeleted, LinkStore, Report, StoreUnavailable, data_paths,
                       hash_password, is_postgres_url, new_manage_token, redacted, utc_now)
from linkstore.jsonfile import FileStore, identity_of, write_atomically
from linkstore.keys import KeyStore, open_keys
from linkstore.reports import ReportStore, open_reports

log = logging.getLogger("shortener")

CODE_ALPHABET = string.ascii_letters + string.digits
RANDOM_CODE_LENGTH = 7
RANDOM_CODE_ATTEMPTS = 5  # 62**7 codes: a second attempt is already rare
SESSION_CODES_KEPT = 25  # newest first; keeps the signed cookie far below 4 KB
INLINE_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                      ".gif": "image/gif", ".webp": "image/webp"}  # never SVG: it can run script
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; "
                           "img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                           "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [("Content-Security-Policy", CONTENT_SECURITY_POLICY),
                    ("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
                    ("Referrer-Policy", "strict-origin-when-cross-origin")]
HSTS = ("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
REDIRECT_STATUSES = (301, 302, 307, 308)
# How long a plain link's redirect may be kept by the nginx redirect cache (and, for a
# permanent status, by browsers), so that a takedown reaches every visitor within it
# (README, "Links that stop").
REDIRECT_MAX_AGE = 60
# A response no cache may keep: a link that can stop, and every counted redirect, which
# must reach the app each time (docs/visits.md, "The nginx redirect cache").
NOT_CACHED = "no-store"
TEMPORARY_TWIN = {301: 302, 302: 302, 307: 307, 308: 307}  # same method rules, never cached
MIN_PASSWORD, MAX_PASSWORD = 8, 256
MAX_VISITS_LIMIT = 1_000_000_000
MANAGE_TOKEN_HEADER = "X-Manage-Token"  # nosec B105: a header's name, not a secret
BEARER_CHALLENGE = 'Bearer realm="api"'  # every 401's WWW-Authenticate
PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000  # GET /api/links
OPENAPI_FILE = Path(__file__).with_name("openapi.json")  # the JSON API's description


# --- Configuration ---------------------------------------------------------------------

class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable and what to set."""


def load_config(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults, then the environment, then explicit overrides (tests); every setting is
    parsed here, once, into the type the app uses."""
    given = dict(overrides or {})

    def setting(name: str, default: str) -> Any:
        return given.pop(name, os.environ.get(name, default))

    def number(name: str, default: str) -> float:
        value = setting(name, default)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, not {value!r}") from None

    data_dir, urls_file, upload_dir = data_paths(lambda name: setting(name, ""))
    max_upload_bytes = int(number("MAX_UPLOAD_MB", "10") * 1024 * 1024)
    database_url = str(setting("DATABASE_URL", ""))
    if database_url and not is_postgres_url(database_url):
        raise ConfigError(
            "DATABASE_URL must be a PostgreSQL URL such as "
            "postgresql://user:password@host:5432/dbname, or unset to keep the links in "
            f"the JSON file at URLS_FILE; it is {redacted(database_url)!r}")
    rate_limit = str(setting("CREATE_RATE_LIMIT", "60/minute"))
    counting = str(setting("VISITS", "on")).lower()
    if counting not in ("on", "off"):
        raise ConfigError(f"VISITS must be on or off, not {counting!r}")
    flush_seconds = number("VISITS_FLUSH_SECONDS", "10")
    if not 0 < flush_seconds <= 3600:
        raise ConfigError("VISITS_FLUSH_SECONDS must be more than 0 and at most 3600 "
                          f"(seconds between writes of the visit counts), not {flush_seconds:g}")
    password_limit = str(setting("PASSWORD_RATE_LIMIT", "10/minute"))
    report_limit = str(setting("REPORT_RATE_LIMIT", "10/hour"))
    anonymous = str(setting("ANONYMOUS_CREATE", "on")).lower()
    if anonymous not in ("on", "off"):
        raise ConfigError(f"ANONYMOUS_CREATE must be on (anyone may create links) or off (an "
                          f"API key is needed: python -m ops.links keys create NAME), not "
                          f"{anonymous!r}")
    redirect_status = setting("REDIRECT_STATUS", "302")
    if str(redirect_status) not in map(str, REDIRECT_STATUSES):
        raise ConfigError(f"REDIRECT_STATUS must be one of 301, 302, 307, 308, not "
                          f"{redirect_status!r}")
    config: dict[str, Any] = {
        "DATA_DIR": data_dir,
        "URLS_FILE": urls_file,
        "UPLOAD_DIR": upload_dir,
        "DATABASE_URL": database_url,
        "DATABASE_TIMEOUT": number("DATABASE_TIMEOUT", "3"),
        "LINK_CACHE_SIZE": int(number("LINK_CACHE_SIZE", "20000")),
        "MAX_UPLOAD_BYTES": max_upload_bytes,
        # The request may carry the form fields as well as the file.
        "MAX_CONTENT_LENGTH": max_upload_bytes + 1024 * 1024,
        "APP_VERSION": str(setting("APP_VERSION", "dev")),
        "PUBLIC_BASE_URL": str(setting("PUBLIC_BASE_URL", "")).rstrip("/"),
        "CREATE_RATE_LIMIT": rate_limit,
        "PASSWORD_RATE_LIMIT": password_limit,
        "REPORT_RATE_LIMIT": report_limit,
        "RATELIMIT_ENABLED": {limit.lower() for limit in (rate_limit, password_limit,
                                                          report_limit)} != {"off"},
        "ANONYMOUS_CREATE": anonymous == "on",
        "RATELIMIT_STORAGE_URI": str(setting("RATELIMIT_STORAGE_URI", "memory://")),
        "RATELIMIT_HEADERS_ENABLED": True,
        "LOCK_TIMEOUT": number("LOCK_TIMEOUT", "5"),
        "TRUSTED_PROXY_HOPS": int(number("TRUSTED_PROXY_HOPS", "1")),
        "VISITS": counting == "on",
        "VISITS_FLUSH_SECONDS": flush_seconds,
        "REDIRECT_STATUS": int(redirect_status),
        "BLOCKED_DOMAINS": str(setting("BLOCKED_DOMAINS", "")),
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_HTTPONLY": True,
        "WTF_CSRF_TIME_LIMIT": None,  # the token lives as long as the session
        "SECRET_KEY": setting("SECRET_KEY", "") or load_or_create_secret(data_dir),
    }
    return config | given  # anything else a test sets (TESTING), as it is


def load_or_create_secret(data_dir: Path) -> str:
    """One secret per data directory, made once, so every worker and restart agree."""
    path = data_dir / "secret_key"
    try:
        if not path.exists():
            create_secret(path)
        return path.read_text().strip()
    except OSError as exc:
        log.error("cannot keep a secret key in %s (%s); sessions will not survive a restart. "
                  "Set SECRET_KEY or make the data directory writable.", data_dir, exc)
        return secrets.token_hex(32)


def create_secret(path: Path) -> None:
    """Write a new secret with mode 0600, complete before any worker can read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret_key.tmp-")  # mode 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
            out.flush()
            os.fsync(out.fileno())
        os.link(tmp, path)  # atomic, and fails if another worker got there first
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


def open_store(config: Mapping[str, Any]) -> LinkStore:
    """PostgreSQL when DATABASE_URL is set, else the JSON file at URLS_FILE."""
    if config["DATABASE_URL"]:
        from linkstore.postgres import PostgresStore
        return PostgresStore(config["DATABASE_URL"], timeout=config["DATABASE_TIMEOUT"],
                             cache_size=config["LINK_CACHE_SIZE"])
    return FileStore(config["URLS_FILE"], config["LOCK_TIMEOUT"])


class BlockedDomains:
    """The domains of BLOCKED_DOMAINS (one a line, ``#`` comments), read again whenever
    the file changes, so an operator adds one without a restart. A domain blocks its
    subdomains too. A file that vanishes or cannot be read keeps the last list."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.domains: frozenset[str] = frozenset()
        self._identity: tuple[int, ...] | None = None
        if not self.refresh():
            raise ConfigError(f"BLOCKED_DOMAINS names {path}, which cannot be read; create "
                              "it (one domain a line) or unset BLOCKED_DOMAINS")

    def refresh(self) -> bool:
        try:
            identity = identity_of(self.path)
            if identity is None or identity == self._identity:
                return identity is not None
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            log.error("cannot read BLOCKED_DOMAINS %s (%s); keeping the last list", self.path,
                      exc)
            return False
        self.domains = frozenset(filter(None, map(ascii_host, lines)))
        self._identity = identity
        return True

    def blocking(self, url: str) -> str | None:
        """The listed domain that url's host is, or is under; None if there is none."""
        self.refresh()
        host = ascii_host(urlsplit(url).hostname or "")
        while host:
            if host in self.domains:
                return host
            host = host.partition(".")[2]
        return None


def ascii_host(text: str) -> str:
    """A host name as a Location header carries it (IDNA), lower case, no trailing dot;
    "" for a comment or a blank line."""
    name = text.split("#", 1)[0].strip().lower().lstrip("*.").rstrip(".")
    if not name:
        return ""
    try:
        return (urlsplit(iri_to_uri(f"http://{name}/")).hostname or "").rstrip(".")
    except ValueError:
        return name


# --- Validation ------------------------------------------------------------------------

def checked_expiry(value: str, utc_offset: str | None = None) -> str | None:
    """When the link stops, in UTC (None: never), or InvalidInput saying why not.

    utc_offset: for the form, whose date and time field has no offset, minutes east of
    UTC (its script sends the browser's; "" without script: UTC). None (the API): a time
    must carry its own offset.
    """
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
        if when.tzinfo is None:
            if utc_offset is None:
                raise InvalidInput("expires_at", "The expiry needs its offset from UTC, e.g. "
                                                 "2030-01-31T18:00:00+01:00 or ...Z for UTC.")
            minutes = int(utc_offset or "0")
            if abs(minutes) > 18 * 60:
                raise ValueError(utc_offset)
            when = when.replace(tzinfo=timezone(timedelta(minutes=minutes)))
        when = when.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        raise InvalidInput("expires_at", "The expiry must be a date and time such as "
                                         "2030-01-31T18:00:00+01:00 (ISO 8601, with its "
                                         "offset from UTC).") from None
    if when <= datetime.now(timezone.utc):
        raise InvalidInput("expires_at", "The expiry is in the past; choose a date and time "
                                         "in the future.")
    return when.isoformat(timespec="seconds")


def checked_max_visits(value: object) -> int | None:
    """The visit limit (None: none), or InvalidInput saying why not."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = whole_number(value.strip(), MAX_VISITS_LIMIT)
    if type(value) is not int or not 1 <= value <= MAX_VISITS_LIMIT:
        raise InvalidInput("max_visits", "The visit limit must be a whole number from 1 to "
                                         f"{MAX_VISITS_LIMIT:,}.")
    return value


def whole_number(text: str, most: int) -> int | None:
    """The number that text's ASCII digits write, if it has no more digits than most
    (int() refuses over 4,300 with a ValueError); else None."""
    digits = text.lstrip("0")
    if not (text.isascii() and text.isdecimal()) or len(digits) > len(str(most)):
        return None
    return int(digits or "0")


def checked_password(value: str) -> str | None:
    """The password visitors must give (None: none), or InvalidInput saying why not."""
    if not value:
        return None
    if not MIN_PASSWORD <= len(value) <= MAX_PASSWORD or not value.isprintable():
        raise InvalidInput("password", f"A password is {MIN_PASSWORD} to {MAX_PASSWORD} "
                                       "characters, with no control characters.")
    return value


def checked_options(values: Mapping[str, Any], form: bool) -> dict[str, Any]:
    """The lifecycle fields of a new link from the form ("More options") or a JSON body:
    ``expires_at``, ``max_visits``, ``password``. InvalidInput names the first bad one."""
    expires_at, password = values.get("expires_at") or "", values.get("password") or ""
    for field, value in (("expires_at", expires_at), ("password", password)):
        if not isinstance(value, str):
            raise InvalidInput(field, f"'{field}' must be a string when given.")
    utc_offset = str(values.get("utc_offset", "")) if form else None
    expires, max_visits = (checked_expiry(expires_at.strip(), utc_offset),
                           checked_max_visits(values.get("max_visits")))
    password_hash = hash_password(password) if checked_password(password) else None
    return {"expires_at": expires, "max_visits": max_visits, "password_hash": password_hash}


def checked_not_blocked(url: str) -> None:
    blocked: BlockedDomains | None = current_app.extensions.get("blocked_domains")
    domain = blocked.blocking(url) if blocked else None
    if domain:
        raise InvalidInput("url", f"Links to {domain} cannot be shortened here: the site's "
                                  "operator has blocked that domain.")


def checked_report(form: Mapping[str, str]) -> tuple[str, str]:
    """A visitor's report: its reason and details, or InvalidInput saying what to change."""
    reason = form.get("reason", "")
    if reason not in REPORT_REASONS:
        raise InvalidInput("reason", "Choose why you are reporting this link: "
                                     f"{', '.join(REPORT_REASONS)}.")
    details = form.get("details", "").replace("\r\n", "\n").strip()
    if len(details) > MAX_REPORT_DETAILS:
        raise InvalidInput("details", f"The details are {len(details):,} characters long; the "
                                      f"limit is {MAX_REPORT_DETAILS:,}. Shorten them and send "
                                      "the report again.")
    if not all(char.isprintable() or char in "\n\t" for char in details):
        raise InvalidInput("details", "The details cannot hold control characters; type them "
                                      "again as plain text.")
    return reason, details


# --- API keys --------------------------------------------------------------------------

class KeyRefused(Exception):
    """No API key where one is needed, or one that is malformed, unknown or revoked: the
    message says what to send."""


KEY_UNKNOWN = ("That API key is not one this site gave out; check it for a typo, or ask the "
               "site's operator for one.")
KEY_REVOKED = "That API key was revoked; ask the site's operator for a new one."
KEY_NEEDED = ("{what} needs an API key: send 'Authorization: Bearer <key>' with the key the "
              "site's operator gave you.")


def presented_key(given: str) -> ApiKey:
    """The stored, usable key that given is, or KeyRefused. Every key sent costs one hash
    and one lookup, known or not (linkstore.key_matching)."""
    found = key_store().find(given)
    if found is None:
        raise KeyRefused(KEY_UNKNOWN)
    if found.revoked_at is not None:
        raise KeyRefused(KEY_REVOKED)
    return found


def bearer_key() -> ApiKey | None:
    """The key of this request's ``Authorization: Bearer`` header, None when it sends
    none, KeyRefused for a bad one."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, key = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise KeyRefused("Send the API key as 'Authorization: Bearer <key>'.")
    return presented_key(key.strip())


def required_key(needed_for: str) -> ApiKey:
    """bearer_key(), where a key is needed (needed_for says for what)."""
    key = bearer_key()
    if key is None:
        raise KeyRefused(KEY_NEEDED.format(what=needed_for))
    return key


def form_key() -> ApiKey | None:
    """With ANONYMOUS_CREATE=off, the key typed into the form; InvalidInput if it is
    missing or refused. None when anyone may create links."""
    if current_app.config["ANONYMOUS_CREATE"]:
        return None
    given = request.form.get("api_key", "").strip()
    if not given:
        raise InvalidInput("api_key", "This site makes links for holders of an API key only; "
                                      "enter yours. Its operator gives them out.")
    try:
        return presented_key(given)
    except KeyRefused as exc:
        raise InvalidInput("api_key", str(exc), 403) from None


def page_size(value: str | None) -> int:
    """GET /api/links's limit, or InvalidInput."""
    if value is None:
        return PAGE_SIZE
    number = whole_number(value, MAX_PAGE_SIZE)
    if number is None or not 1 <= number <= MAX_PAGE_SIZE:
        raise InvalidInput("limit", f"'limit' is a whole number from 1 to {MAX_PAGE_SIZE:,} "
                                    f"(default {PAGE_SIZE}).")
    return number


def cursor_of(link: Link) -> str:
    """Where the next page starts: opaque to clients (base64url of JSON)."""
    position = json.dumps([link.created_at or "", link.code]).encode()
    return base64.urlsafe_b64encode(position).decode().rstrip("=")


def after_cursor(cursor: str | None) -> tuple[str, str] | None:
    """The position a cursor of cursor_of() holds, or InvalidInput."""
    if cursor is None:
        return None
    try:
        created_at, code = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if all(isinstance(part, str) and part.isprintable() for part in (created_at, code)):
            return created_at, code  # printable: what PostgreSQL text can hold
    except (ValueError, TypeError, RecursionError):
        pass
    raise InvalidInput("cursor", "'cursor' must be a next_cursor from an earlier page, as it "
                                 "was given; leave it out for the first page.")


def random_code() -> str:
    """Seven random letters and digits, never a path the site itself uses."""
    while True:
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(RANDOM_CODE_LENGTH))
        if code.lower() not in current_app.config["RESERVED_CODES"]:
            return code


# --- Routes ----------------------------------------------------------------------------

bp = Blueprint("shortener", __name__)
csrf = CSRFProtect()
limiter = Limiter(get_remote_address, default_limits=[])


def csrf_exempt(view: Callable[..., ResponseReturnValue]) -> Callable[..., ResponseReturnValue]:
    """CSRFProtect.exempt with type hints, which Flask-WTF does not ship."""
    csrf.exempt(view)
    return view


def create_limit() -> str:
    return rate_limit("CREATE_RATE_LIMIT")


def create_limit_off() -> bool:
    return limit_off("CREATE_RATE_LIMIT")


def password_limit() -> str:
    return rate_limit("PASSWORD_RATE_LIMIT")


def password_limit_off() -> bool:
    return limit_off("PASSWORD_RATE_LIMIT")


def rate_limit(setting: str) -> str:
    """A limit for Flask-Limiter, which must parse one even when it is exempted ("off")."""
    return "1/second" if limit_off(setting) else str(current_app.config[setting])


def limit_off(setting: str) -> bool:
    return str(current_app.config[setting]).lower() == "off"


def report_limit() -> str:
    return rate_limit("REPORT_RATE_LIMIT")


def report_limit_off() -> bool:
    return limit_off("REPORT_RATE_LIMIT")


def link_and_client() -> str:
    """What password attempts are counted by: one count per link and client address."""
    return f"{(request.view_args or {}).get('code', '')} {get_remote_address()}"


def store() -> LinkStore:
    return current_app.extensions["link_store"]  # type: ignore[no-any-return]


def visit_store() -> visits.VisitStore:
    return current_app.extensions["visit_store"]  # type: ignore[no-any-return]


def key_store() -> KeyStore:
    return current_app.extensions["key_store"]  # type: ignore[no-any-return]


def report_store() -> ReportStore:
    return current_app.extensions["report_store"]  # type: ignore[no-any-return]


def count_visit(code: str) -> bool:
    """Hand this request to the visit counter; False when visits are not counted. A
    counter due to hand its queue off does so once the response has gone."""
    recorder: visits.Recorder | None = current_app.extensions["visits"]
    if recorder is None:
        return False
    recorder.record(code, request.environ)
    if recorder.due():
        hand_off = recorder.hand_off_after_response

        @after_this_request
        def after_response(response: Response) -> Response:
            response.call_on_close(hand_off)
            return response
    return True


def short_url(code: str) -> str:
    return f"{base_url()}/{code}"


def manage_url(code: str, token: str) -> str:
    return f"{base_url()}{url_for('.manage', code=code, token=token)}"


def base_url() -> str:
    return str(current_app.config["PUBLIC_BASE_URL"] or request.host_url).rstrip("/")


def remember(code: str) -> None:
    """Keep the codes this browser created, newest first, in its session cookie."""
    codes = [code] + [c for c in session.get("codes", []) if c != code]
    session["codes"] = codes[:SESSION_CODES_KEPT]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def create(code: str | None, target: Link, field: str) -> tuple[Link, str]:
    """Store a link to target under code, or under a fresh random code, and remember it
    in this browser: the one create path of the form and the API. Returns the link and
    its creator's management token (the store keeps only the token's hash).

    Raises InvalidInput for the given field: 409 for a taken code, 503 when the store
    cannot take the link now.
    """
    token, token_hash = new_manage_token()
    for _ in range(RANDOM_CODE_ATTEMPTS):
        link = replace(target, code=code or random_code(), created_at=now(),
                       manage_hash=token_hash)
        try:
            store().add(link)
        except CodeTaken:
            if code is None:
                continue  # a random code that happened to be taken: draw another
            raise InvalidInput("code", f"'{code}' is already taken; choose another short "
                                       "name, or leave it out for a random one.", 409) from None
        except StoreUnavailable as exc:
            log.error("create refused: %s", exc)
            raise InvalidInput(field, f"Links cannot be saved right now ({exc}); nothing was "
                                      "stored. Please try again in a minute.", 503) from exc
        remember(link.code)
        return link, token
    raise InvalidInput(field, "No free random short name was found; please try again.", 503)


@bp.get("/")
def home() -> ResponseReturnValue:
    return render_home()


def render_home(errors: Mapping[str, str] | None = None, status: int = 200, form: str = "url",
                values: Mapping[str, str] | None = None) -> tuple[str, int]:
    """The home page, with errors shown beside their fields and the input kept."""
    links = []
    for code in session.get("codes", []):
        with contextlib.suppress(StoreUnavailable):  # the page works while the store does not
            link = store().get(code)
            if link:
                links.append({"code": code, "short_url": short_url(code),
                              "target": link.url or link.name or link.file})
    counts: dict[str, int] | None = None
    if links and current_app.config["VISITS"]:
        with contextlib.suppress(StoreUnavailable):
            counts = visit_store().totals([item["code"] for item in links])
    for item in links:
        item["visits"] = None if counts is None else counts.get(item["code"], 0)
    max_upload_mb = current_app.config["MAX_UPLOAD_BYTES"] / (1024 * 1024)
    return render_template("home.html", errors=errors or {}, form=form, links=links,
                           values=request.form if values is None else values,
                           max_upload_mb=max_upload_mb,
                           key_required=not current_app.config["ANONYMOUS_CREATE"]), status


@bp.post("/your-url")
@limiter.shared_limit(create_limit, scope="create",  # one count with the API, per client
                      exempt_when=create_limit_off)
def shorten_form() -> ResponseReturnValue:
    upload = request.files.get("file")
    form = "file" if upload is not None and "url" not in request.form else "url"
    try:
        key = form_key()
        code = checked_code(request.form.get("code", "").strip())
        options = checked_options(request.form, form=True) | {"owner": key.id if key else None}
        if form == "url":
            url = checked_url(request.form.get("url", "").strip())
            checked_not_blocked(url)
            target = Link("", url=url, **options)
        else:
            target = replace(save_upload(upload), **options)
        with removed_unless_stored(target):
            link, token = create(code, target, form)
    except InvalidInput as exc:
        return render_home({exc.field: exc.message}, exc.status, form)
    # A viewBox (omitsize) so the page can size it without clipping; white, with the
    # 4-module quiet zone the QR spec asks for, so it scans on a dark page too.
    svg = segno.make(short_url(link.code), error="m").svg_inline(border=4, omitsize=True,
                                                                 light="#fff")
    response = make_response(render_template(
        "result.html", short_url=short_url(link.code), code=link.code, record=link,
        manage_url=manage_url(link.code, token),
        qr_svg=Markup(svg)))  # nosec B704: segno's own SVG
    response.headers["Cache-Control"] = NOT_CACHED  # it holds the management URL
    return response


def save_upload(upload: FileStorage | None) -> Link:
    """Keep an uploaded file under a name the app makes up; the user's name is only shown."""
    name = upload.filename if upload else ""
    if not upload or not name:
        raise InvalidInput("file", "Choose a file to upload.")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise InvalidInput("file", "A file name cannot contain a folder path; rename the file "
                                   "and upload it again.")
    path = Path(current_app.config["UPLOAD_DIR"]) / (
        secrets.token_hex(16) + Path(secure_filename(name)).suffix.lower())
    try:
        write_atomically(path, iter(lambda: upload.stream.read(1 << 20), b""))
    except OSError as exc:
        raise InvalidInput("file", f"The file could not be saved ({exc.strerror}); please try "
                                   "again in a minute.", 503) from exc
    size = path.stat().st_size
    if size == 0 or size > current_app.config["MAX_UPLOAD_BYTES"]:
        path.unlink()
        if size == 0:
            raise InvalidInput("file", f"'{name}' is empty; choose a file with something in it.")
        raise InvalidInput("file", upload_too_large_message(), 413)
    return Link("", file=path.name, name=name)


@contextlib.contextmanager
def removed_unless_stored(target: Link) -> Iterator[None]:
    """Delete an uploaded file again if its link could not be stored, whatever went wrong."""
    try:
        yield
    except BaseException:
        if target.file:
            (Path(current_app.config["UPLOAD_DIR"]) / target.file).unlink(missing_ok=True)
        raise


def upload_too_large_message() -> str:
    limit = current_app.config["MAX_UPLOAD_BYTES"] / (1024 * 1024)
    return f"That file is larger than the {limit:g} MB limit; choose a smaller file."


@bp.get("/your-url")
def your_url() -> ResponseReturnValue:
    return redirect(url_for(".home"))


# --- Following a link ------------------------------------------------------------------

@bp.get("/<code>")
def follow(code: str) -> ResponseReturnValue:
    """A visit: the redirect (or the file), the password page, or 410 saying why not."""
    link = store().get(code)
    if link is None:
        raise NotFound()
    if link.stopped(datetime.now(timezone.utc)):
        return gone(link)
    if link.password_hash is not None:
        return password_page(code)
    return serve(link)


@bp.post("/<code>/password")
@limiter.limit(password_limit, key_func=link_and_client, scope="password",
               exempt_when=password_limit_off,
               deduct_when=lambda response: response.status_code == 403)  # wrong ones only
def unlock(code: str) -> ResponseReturnValue:
    """The password page's answer. Every answer costs one scrypt (an unknown code and a
    link without a password too), so its time tells nothing; a wrong password is a 403,
    and only those count towards PASSWORD_RATE_LIMIT."""
    link = store().get(code)
    right = (link or Link(code)).accepts_password(request.form.get("password", ""))
    if link is None:
        raise NotFound()
    if link.stopped(datetime.now(timezone.utc)):
        return gone(link)
    if link.password_hash is None:
        return redirect(url_for(".follow", code=code), 303)
    if not right:
        return password_page(code, "That password is not right. Check it and try again.", 403)
    return serve(link, after_post=True)


def serve(link: Link, after_post: bool = False) -> ResponseReturnValue:
    """Redirect to the link's URL (or send its file), and hand the visit to the visit
    counter. A link with a limit counts the visit first (a visit the store refuses is not
    served), and only a person's: a HEAD request, a bot or a link preview gets a page
    saying so, uses up nothing and does not learn the target; the statistics count a bot
    there as a bot, as anywhere (docs/visits.md)."""
    if link.max_visits is not None:
        if visitors.classify(visitors.hit(request.method, request.headers)).kind != "person":
            count_visit(link.code)  # the writer classifies it alike: a bot, or not counted
            return people_only(link)
        counted = store().consume_visit(link.code)
        if counted is None:
            return gone(store().current(link.code) or link, fallback="limit_reached")
        link = counted
    counting = count_visit(link.code)  # every link's, not only a plain one's
    cacheable = link.plain and not counting
    if link.url is None:
        response = send_upload(link.file or "", link.name)
        if not cacheable:
            response.headers["Cache-Control"] = NOT_CACHED
        return response
    return redirect_to(link, 302 if after_post else None, cacheable)


def people_only(link: Link) -> Response:
    """What a HEAD request, a bot or a link preview gets from a link with a visit limit."""
    left = max((link.max_visits or 0) - link.visits, 0)
    page = render_template("people_only.html", left=left, short_url=short_url(link.code),
                           code=link.code)
    response = make_response(page)
    response.headers["Cache-Control"] = NOT_CACHED
    return response


def redirect_to(link: Link, status: int | None = None, cacheable: bool = True) -> Response:
    """The redirect of a link with REDIRECT_STATUS and cache headers to match: a plain link
    may be cached for REDIRECT_MAX_AGE, unless its visits are counted; one that can stop,
    counts or asks for a password is never cached and never permanent. status: 302 after
    the password form's POST (ARCHITECTURE.md): the target gets a GET, where a 307 or 308
    would send it the password."""
    configured = current_app.config["REDIRECT_STATUS"]
    if status is None:
        status = configured if link.plain else TEMPORARY_TWIN[configured]
    response = redirect(link.url or "", status)
    response.headers["Cache-Control"] = (redirect_cache_control(status) if cacheable
                                         and link.plain else NOT_CACHED)
    return response


def redirect_cache_control(status: int) -> str:
    """A plain link's redirect: a temporary one (302, 307) only for shared caches such as
    the nginx redirect cache (``s-maxage``; browsers do not keep it, as today); a permanent
    one (301, 308), which browsers would otherwise keep for good, for them too."""
    return f"{'max-age' if status in (301, 308) else 's-maxage'}={REDIRECT_MAX_AGE}"


def password_page(code: str, error: str = "", status: int = 200) -> Response:
    """The page that asks for a link's password; never cached.

    Its form posts to this site, whose answer redirects to the link's target: Chromium
    applies ``form-action`` to that redirect too, so this page alone allows http(s)
    targets there. Naming the target's origin instead would tell it before the password.
    """
    response = make_response(render_template("password.html", code=code, error=error,
                                             short_url=short_url(code)), status)
    response.headers["Cache-Control"] = NOT_CACHED
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY.replace(
        "form-action 'self'", "form-action 'self' http: https:")
    return response


GONE_MESSAGES = {
    "expired": "This link expired on {expires}.",
    "limit_reached": "This link was used as many times as its creator allowed "
                     "({max_visits:,} visits).",
    "deleted": "This link was deleted by its creator.",
    "deleted_by_operator": "This link was removed by the site's operator.",
    "disabled": "This link was disabled by the site's operator: it was reported as {reason}.",
}
DISABLE_LABELS = {"phishing": "phishing (a page that tries to steal passwords or details)",
                  "malware": "malware", "spam": "spam", "legal": "the subject of a legal request",
                  "other": "breaking the site's rules"}


def gone(link: Link, fallback: str = "") -> ResponseReturnValue:
    """410 Gone, saying why the link stopped: a page, or JSON for Accept: application/json."""
    why = link.stopped(datetime.now(timezone.utc)) or fallback
    key = "deleted_by_operator" if why == "deleted" and link.reason == "operator" else why
    message = GONE_MESSAGES[key].format(
        expires=(link.expires_at or "").replace("T", " ").replace("+00:00", " UTC"),
        max_visits=link.max_visits or 0, reason=DISABLE_LABELS.get(link.reason or "", "abuse"))
    if prefers_json():
        response = jsonify(error=message, code=link.code, state=why, reason=link.reason)
    else:
        response = make_response(render_template("gone.html", message=message, why=why,
                                                 code=link.code))
    response.status_code = 410
    response.headers["Cache-Control"] = NOT_CACHED  # a disabled link may come back
    return response


def prefers_json() -> bool:
    return request.accept_mimetypes.best_match(["text/html", "application/json"]) == (
        "application/json")


@bp.get("/<code>+")
def stats_page(code: str) -> ResponseReturnValue:
    link = store().current(code)
    if link is None:
        raise NotFound()
    stats = visit_store().stats(code)
    last_day = visits.today()
    return render_template("stats.html", link=link, target=details_of(link),
                           short_url=short_url(code), stats=stats,
                           chart=visits.chart(stats, last_day), last_day=last_day,
                           details=visits.DETAILS, counting=current_app.config["VISITS"],
                           flush_seconds=current_app.config["VISITS_FLUSH_SECONDS"])


def send_upload(stored_name: str, name: str | None) -> Response:
    """An uploaded file: as a download, unless it is an image type that cannot run script."""
    suffix = Path(stored_name).suffix.lower()
    response = send_from_directory(current_app.config["UPLOAD_DIR"], stored_name,
                                   as_attachment=suffix not in INLINE_IMAGE_TYPES,
                                   download_name=name or stored_name,
                                   mimetype=INLINE_IMAGE_TYPES.get(suffix,
                                                                   "application/octet-stream"))
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


# --- Managing a link: its creator's secret page and the API ----------------------------

@bp.get("/manage/<code>/<token>")
def manage(code: str, token: str) -> ResponseReturnValue:
    """The creator's page for one link (its URL is the secret): what it is, and Delete."""
    link = managed_link(code, token)
    response = make_response(render_template(
        "manage.html", link=link, token=token, short_url=short_url(code),
        details=details_of(link), deleted=link.state == DELETED))
    response.headers["Cache-Control"] = NOT_CACHED
    response.headers["Referrer-Policy"] = "no-referrer"  # the URL holds the token
    return response


@bp.post("/manage/<code>/<token>")
def delete_by_creator(code: str, token: str) -> ResponseReturnValue:
    managed_link(code, token)
    with contextlib.suppress(LinkDeleted):  # deleted already: the page says so
        store().delete(code, by="creator", reason="creator")
    return redirect(url_for(".manage", code=code, token=token), 303)


def managed_link(code: str, token: str) -> Link:
    """The link whose management token this is; 404 for any other token or code."""
    link = store().current(code)
    if link is None or not link.accepts_token(token):
        raise NotFound()
    return link


@bp.delete("/api/links/<code>")
@csrf_exempt  # the token or key is the credential; no cross-site form can send a DELETE
def delete_link(code: str) -> ResponseReturnValue:
    """Delete a link with its management token (X-Manage-Token) or the API key that made
    it (Authorization: Bearer): 401 without either, 403 with the wrong one."""
    token = request.headers.get(MANAGE_TOKEN_HEADER)
    try:
        key = bearer_key()
    except KeyRefused as exc:
        return api_error(str(exc), 401)
    if key is None and token is None:
        return api_error(f"Deleting a link needs its management token in the "
                         f"{MANAGE_TOKEN_HEADER} header, as given when it was made, or "
                         "'Authorization: Bearer <key>' with the API key that made it.", 401)
    link = store().current(code)
    if link is None:
        return api_error(f"No link has the code '{code}'.", 404)
    by_key = key is not None and link.owner == key.id
    if not by_key and not link.accepts_token(token or ""):
        return api_error(f"Neither the {MANAGE_TOKEN_HEADER} nor the API key sent is this "
                         "link's: only its creator can delete it.", 403)
    try:
        deleted = store().delete(code, by=f"api key {key.id}" if key and by_key else "creator",
                                 reason="creator")
    except LinkDeleted:
        return api_error(f"The link '{code}' was already deleted.", 410)
    return jsonify(details_of(deleted))


# --- Reports: a visitor tells the operator about a link --------------------------------

REPORT_LABELS = {"phishing": "Phishing: it tries to steal passwords or personal details",
                 "malware": "Malware: it leads to something harmful to download or run",
                 "spam": "Spam: unwanted advertising, sent in bulk",
                 "legal": "Illegal content, or someone's rights (copyright, privacy)",
                 "other": "Something else"}


@bp.get("/report/<code>")
def report_form(code: str) -> ResponseReturnValue:
    reported_link(code)
    return report_page(code)


@bp.post("/report/<code>")
@limiter.limit(report_limit, scope="report", exempt_when=report_limit_off)
def report(code: str) -> ResponseReturnValue:
    """Store a visitor's report (nothing that says who sent it), then thank them."""
    reported_link(code)
    try:
        reason, details = checked_report(request.form)
    except InvalidInput as exc:
        return report_page(code, {exc.field: exc.message}, exc.status)
    report_store().add(Report(code, reason, details, utc_now()))
    log.info("link %s reported as %s", code, reason)
    return redirect(url_for(".report_sent", code=code), 303)


@bp.get("/report/<code>/sent")
def report_sent(code: str) -> ResponseReturnValue:
    reported_link(code)
    return render_template("reported.html", short_url=short_url(code))


def reported_link(code: str) -> Link:
    """The link a report is about, whatever its state; 404 for an unknown code."""
    link = store().current(code)
    if link is None:
        raise NotFound()
    return link


def report_page(code: str, errors: Mapping[str, str] | None = None, status: int = 200
                ) -> tuple[str, int]:
    """The report form, with errors beside their fields and what was typed kept."""
    return render_template("report.html", code=code, short_url=short_url(code),
                           labels=REPORT_LABELS, errors=errors or {},
                           values=request.form, max_details=MAX_REPORT_DETAILS), status


# --- The JSON API ----------------------------------------------------------------------

@bp.get("/api")
def my_codes() -> ResponseReturnValue:
    return jsonify(session.get("codes", []))


@bp.post("/api/links")
@csrf_exempt  # JSON only: a cross-site form cannot send application/json without CORS
@limiter.shared_limit(create_limit, scope="create", exempt_when=create_limit_off)
def create_link() -> ResponseReturnValue:
    try:
        key = (bearer_key() if current_app.config["ANONYMOUS_CREATE"]
               else required_key("Creating a link"))
    except KeyRefused as exc:
        return api_error(str(exc), 401)
    if not request.is_json:
        return api_error("Send the link as JSON with 'Content-Type: application/json'.", 415)
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # e.g. 100,000 '[': silent=True only covers ValueError
        body = None
    if not isinstance(body, dict):
        return api_error('The body must be a JSON object such as {"url": "https://..."}.', 400)
    url, code = body.get("url"), body.get("code")
    if not isinstance(url, str):
        return api_error("'url' is required and must be a string.", 400, "url")
    if code is not None and not isinstance(code, str):
        return api_error("'code' must be a string when given.", 400, "code")
    try:
        code = checked_code(code or "")
        url = checked_url(url)
        checked_not_blocked(url)
        options = checked_options(body, form=False)
        link, token = create(code, Link("", url=url, owner=key.id if key else None, **options),
                             "url")
    except InvalidInput as exc:
        return api_error(exc.message, exc.status, exc.field)
    return jsonify(details_of(link) | {"short_url": short_url(link.code),
                                       "manage_url": manage_url(link.code, token),
                                       "manage_token": token}), 201


@bp.get("/api/links")
def list_links() -> ResponseReturnValue:
    """The links made with the request's API key, newest first, a page at a time."""
    try:
        key = required_key("Listing your links")
    except KeyRefused as exc:
        return api_error(str(exc), 401)
    try:
        limit = page_size(request.args.get("limit"))
        after = after_cursor(request.args.get("cursor"))
    except InvalidInput as exc:
        return api_error(exc.message, exc.status, exc.field)
    links = store().owned(key.id, limit + 1, after)
    page = links[:limit]
    return jsonify(links=[details_of(link) | {"short_url": short_url(link.code)}
                          for link in page],
                   next_cursor=cursor_of(page[-1]) if len(links) > limit else None)


@bp.get("/api/links/<code>")
def link_details(code: str) -> ResponseReturnValue:
    link = store().current(code)
    if link is None:
        return api_error(f"No link has the code '{code}'.", 404)
    return jsonify(details_of(link))


def details_of(link: Link) -> dict[str, Any]:
    """What anyone may know of a link. Its target only while following it works and asks
    and counts nothing: a preview must not get round a password, a visit limit or a
    takedown. Never a hash."""
    stopped = link.stopped(datetime.now(timezone.utc))
    details: dict[str, Any] = {"code": link.code}
    if not stopped and link.password_hash is None and link.max_visits is None:
        details |= {"url": link.url} if link.url is not None else {"file": link.file}
    return details | {
        "created_at": link.created_at, "state": stopped or "active",
        "reason": link.reason if stopped in ("disabled", "deleted") else None,
        "expires_at": link.expires_at, "max_visits": link.max_visits,
        "visits": link.visits if link.max_visits is not None else None,
        "protected": link.password_hash is not None}


@bp.get("/api/links/<code>/stats")
def link_stats(code: str) -> ResponseReturnValue:
    link = store().current(code)
    if link is None:
        return api_error(f"No link has the code '{code}'.", 404)
    return jsonify(visits.document(link, visit_store().stats(code), current_app.config["VISITS"],
                                   current_app.config["VISITS_FLUSH_SECONDS"]))


@bp.get("/api/openapi.json")
def openapi() -> ResponseReturnValue:
    """The OpenAPI 3.1 description of the JSON API; tests/test_openapi.py keeps it true."""
    return send_file(OPENAPI_FILE, mimetype="application/json")


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    checks = {"store": store().problem() or "ok", "data_dir": "ok"}
    try:
        with tempfile.TemporaryFile(dir=current_app.config["DATA_DIR"]) as probe:
            probe.write(b"ok")
            probe.flush()
    except OSError as exc:
        checks["data_dir"] = f"not writable: {exc.strerror}"
    failed = [name for name, result in checks.items() if result != "ok"]
    if failed:
        return jsonify(status="fail", checks=checks, version=current_app.config["APP_VERSION"],
                       error=f"{', '.join(failed)} check failed"), 503
    return jsonify(status="ok", version=current_app.config["APP_VERSION"],
                   links=store().count(), checks=checks)


# --- Errors and headers ----------------------------------------------------------------

def api_error(message: str, status: int, field: str | None = None) -> ResponseReturnValue:
    """A JSON error; field names the request field to change, when one is at fault. A 401
    says which credentials the API takes (RFC 9110, 11.6.1)."""
    response = jsonify({"error": message} | ({"field": field} if field else {}))
    if status == 401:
        response.headers["WWW-Authenticate"] = BEARER_CHALLENGE
    return response, status


def wants_json() -> bool:
    return request.path.startswith("/api") or request.path == "/healthz"


FORM_EXPIRED = "The form expired or came from another site; reload the page and try again."
FORM_ERRORS = {400: ("url", FORM_EXPIRED),
               413: ("file", ""),
               429: ("url", "You are creating links too fast; wait a minute and try again.")}


def handle_http_error(error: HTTPException) -> ResponseReturnValue:
    """Every HTTP error as a page a person can act on (or JSON for the API), never a trace.

    The response keeps the error's own headers, such as Allow on 405 and Retry-After on 429.
    """
    status = error.code or 500
    if isinstance(error, CSRFError):
        error.description = FORM_EXPIRED
    response = error.get_response()
    if request.endpoint == "shortener.shorten_form" and status in FORM_ERRORS:
        field, message = FORM_ERRORS[status]
        if status == 413:  # the body was never read, so there is no input to keep
            message, values = upload_too_large_message(), MultiDict[str, str]()
        else:
            values = request.form
            if not isinstance(error, CSRFError) and status == 400:
                message = error.description or message
        form = "file" if status == 413 or "file" in request.files else "url"
        response.set_data(render_home({field: message}, status, form, values)[0])
        response.content_type = "text/html; charset=utf-8"
    elif request.endpoint == "shortener.unlock" and status in (400, 429):
        message = FORM_EXPIRED if status == 400 else (
            "Too many wrong passwords for this link from your address; wait a minute and "
            "try again.")
        page = password_page((request.view_args or {}).get("code", ""), message, status)
        if "Retry-After" in response.headers:
            page.headers["Retry-After"] = response.headers["Retry-After"]
        return page
    elif request.endpoint == "shortener.report" and status in (400, 429):
        message = FORM_EXPIRED if status == 400 else (
            "You have sent many reports in a short time; wait a while and try again.")
        response.set_data(report_page((request.view_args or {}).get("code", ""),
                                      {"reason": message}, status)[0])
        response.content_type = "text/html; charset=utf-8"
    elif wants_json():
        detail = error.description
        if status == 429:  # Flask-Limiter's description is only the limit, e.g. "5 per 1 minute"
            detail = (f"Too many new links from your address (limit: {detail}); try again "
                      "after the number of seconds in the Retry-After header.")
        response.set_data(json.dumps({"error": detail}))
        response.content_type = "application/json"
    else:
        template = "404.html" if status == 404 else "error.html"
        response.set_data(render_template(template, status=status, error=error))
        response.content_type = "text/html; charset=utf-8"
    return response


def handle_store_unavailable(error: StoreUnavailable) -> ResponseReturnValue:
    """A lookup the store could not answer (its database is down): 503, never a 404."""
    log.error("lookup failed on %s %s: %s", request.method, request.path, error)
    message = f"Links cannot be looked up right now ({error}); please try again in a minute."
    if wants_json():
        return api_error(message, 503)
    return render_template("error.html", status=503, error=None), 503


def handle_unexpected_error(error: Exception) -> ResponseReturnValue:
    log.exception("unhandled error on %s %s", request.method, request.path)
    if wants_json():
        return api_error("Something went wrong on our side; it has been logged.", 500)
    return render_template("error.html", status=500, error=None), 500


def add_security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS + ([HSTS] if request.is_secure else []):
        response.headers.setdefault(name, value)
    return response


class FastRedirects:
    """WSGI middleware: answer ``GET /<code>`` for a plain link's URL without Flask.

    Redirects are the hot path of a shortener, and Flask's request machinery (session,
    hooks, extensions) costs several times the lookup itself (docs/performance.md). The
    answer is byte for byte what ``follow`` sends (tests/test_fast_path.py): the same
    status, Location, Cache-Control, body and security headers. Anything else (other
    routes, uploaded files, unknown codes, links that expire, count visits, ask for a
    password or have stopped, other methods, a store that raises) goes to Flask. A
    redirect is handed to the visit counter, when there is one, as ``follow`` does, and
    is then never cached.
    """

    def __init__(self, app: Any, links: LinkStore, reserved: frozenset[str],
                 counter: visits.Recorder | None, status: int = 302) -> None:
        self.app, self.links, self.reserved, self.counter = app, links, reserved, counter
        self.status = f"{status} {HTTPStatus(status).phrase.upper()}"
        self.cache_control = ("Cache-Control",
                              NOT_CACHED if counter else redirect_cache_control(status))

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") == "GET" and path.rfind("/") == 0:
            code = path[1:]
            if code.lower() not in self.reserved and CODE_PATTERN.fullmatch(code):
                try:
                    link = self.links.get(code)
                except Exception:  # Flask looks again, then logs and shows its error page
                    link = None
                if link is not None and link.url is not None and link.plain:
                    body = self.redirect(link.url, environ, start_response)
                    if self.counter is None:
                        return body
                    self.counter.record(code, environ)
                    if self.counter.due():  # once the answer has gone
                        return ClosingIterator(body, self.counter.hand_off_after_response)
                    return body
        return self.app(environ, start_response)

    def redirect(self, url: str, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = redirect(url).get_data()
        headers = [("Content-Type", "text/html; charset=utf-8"),
                   ("Content-Length", str(len(body))), ("Location", iri_to_uri(url)),
                   self.cache_control, *SECURITY_HEADERS]
        if environ.get("wsgi.url_scheme") == "https":
            headers.append(HSTS)
        start_response(self.status, headers)
        return [body]


class SessionInterface(SecureCookieSessionInterface):
    """Mark the session cookie Secure whenever the request came over HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure or super().get_cookie_secure(app)


# --- The application -------------------------------------------------------------------

def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    app = Flask(__name__)
    app.config.update(load_config(config))
    app.session_interface = SessionInterface()
    try:
        Path(app.config["UPLOAD_DIR"]).mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # keep serving redirects; /healthz and creates will say why
        log.error("cannot create the upload directory: %s", exc)
    csrf.init_app(app)
    limiter.init_app(app)
    app.register_blueprint(bp)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(StoreUnavailable, handle_store_unavailable)
    app.register_error_handler(Exception, handle_unexpected_error)
    app.after_request(add_security_headers)
    # A short name must never shadow a route: its first path segment is reserved (and
    # listed in linkrules.RESERVED_CODES for the operator's import; a test checks it).
    app.config["RESERVED_CODES"] = RESERVED_CODES | frozenset(
        rule.rule.split("/")[1].lower() for rule in app.url_map.iter_rules()
        if not rule.rule.startswith("/<")) - {""}
    if app.config["BLOCKED_DOMAINS"]:
        app.extensions["blocked_domains"] = BlockedDomains(Path(app.config["BLOCKED_DOMAINS"]))
    links = app.extensions["link_store"] = open_store(app.config)
    counts = app.extensions["visit_store"] = visits.open_store(links)
    app.extensions["key_store"] = open_keys(links)
    app.extensions["report_store"] = open_reports(links)
    counter = app.extensions["visits"] = (
        visits.Recorder(counts, app.config["VISITS_FLUSH_SECONDS"]) if app.config["VISITS"]
        else None)
    # Each proxy appends the address it saw to X-Forwarded-For (on Elastic Beanstalk the
    # load balancer, then nginx: 2 hops); X-Forwarded-Proto is set once, by the first.
    hops = app.config["TRUSTED_PROXY_HOPS"]
    fast = FastRedirects(app.wsgi_app, links, app.config["RESERVED_CODES"], counter,
                         app.config["REDIRECT_STATUS"])
    app.wsgi_app = ProxyFix(fast, x_for=hops, x_proto=min(hops, 1))  # type: ignore[method-assign]
    return app


def create_app_or_exit() -> Flask:
    """The app for gunicorn; a setting it cannot use stops the server with one clear
    line, not a traceback, and gunicorn does not restart workers that cannot boot."""
    try:
        return create_app()
    except ConfigError as exc:
        log.critical("cannot start: %s", exc)
        logging.shutdown()
        raise SystemExit(3) from None  # gunicorn's "worker failed to boot": the master stops


application = create_app_or_exit()
