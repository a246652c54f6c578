"""A URL shortener you can trust with your links.

The one Flask module: configuration from the environment, validation, routes, error
pages. Read top to bottom; ARCHITECTURE.md has the HTTP contract. The links live in a
store behind one interface (``linkstore``): the JSON file at ``URLS_FILE`` by default,
PostgreSQL when ``DATABASE_URL`` is set. ``FastRedirects`` answers redirects from the
store before Flask's request machinery; everything else goes through the blueprint.
Both redirect paths hand each visit to the visit counter (``visits.py``), which counts
it in memory and stores it later, off the redirect's path.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import string
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import segno
from flask import (Blueprint, Flask, current_app, jsonify, redirect, render_template, request,
                   send_from_directory, session, url_for)
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

import visits
from linkstore import CodeTaken, Link, LinkStore, StoreUnavailable, is_postgres_url, redacted
from linkstore.jsonfile import FileStore, write_atomically

log = logging.getLogger("shortener")

CODE_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
CODE_ALPHABET = string.ascii_letters + string.digits
RANDOM_CODE_LENGTH = 7
RANDOM_CODE_ATTEMPTS = 5  # 62**7 codes: a second attempt is already rare
MAX_URL_LENGTH = 2048
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
# A counted redirect must reach the app every time: no cache may answer it, neither
# nginx's redirect cache nor a browser's (docs/visits.md, "The nginx redirect cache").
NOT_CACHED = "no-store"


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

    data_dir = Path(setting("DATA_DIR", "./data"))
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
    config: dict[str, Any] = {
        "DATA_DIR": data_dir,
        "URLS_FILE": Path(setting("URLS_FILE", str(data_dir / "urls.json"))),
        "UPLOAD_DIR": Path(setting("UPLOAD_DIR", str(data_dir / "uploads"))),
        "DATABASE_URL": database_url,
        "DATABASE_TIMEOUT": number("DATABASE_TIMEOUT", "3"),
        "LINK_CACHE_SIZE": int(number("LINK_CACHE_SIZE", "20000")),
        "MAX_UPLOAD_BYTES": max_upload_bytes,
        # The request may carry the form fields as well as the file.
        "MAX_CONTENT_LENGTH": max_upload_bytes + 1024 * 1024,
        "APP_VERSION": str(setting("APP_VERSION", "dev")),
        "PUBLIC_BASE_URL": str(setting("PUBLIC_BASE_URL", "")).rstrip("/"),
        "CREATE_RATE_LIMIT": rate_limit,
        "RATELIMIT_ENABLED": rate_limit.lower() != "off",
        "RATELIMIT_STORAGE_URI": str(setting("RATELIMIT_STORAGE_URI", "memory://")),
        "RATELIMIT_HEADERS_ENABLED": True,
        "LOCK_TIMEOUT": number("LOCK_TIMEOUT", "5"),
        "TRUSTED_PROXY_HOPS": int(number("TRUSTED_PROXY_HOPS", "1")),
        "VISITS": counting == "on",
        "VISITS_FLUSH_SECONDS": flush_seconds,
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


# --- Validation ------------------------------------------------------------------------

class InvalidInput(Exception):
    """A request that cannot be stored, with the field and a message to act on."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status


def checked_url(url: str) -> str:
    """The URL as it will be stored and sent in Location, or InvalidInput saying why not."""
    if not url:
        raise InvalidInput("url", "Enter the URL to shorten.")
    if " " in url or not url.isprintable():
        raise InvalidInput("url", "A URL cannot contain spaces or control characters; "
                                  "remove them and try again.")
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError for a malformed port
        stored = iri_to_uri(url)  # the ASCII form a Location header carries
        if " " in stored or not stored.isprintable():  # IDNA maps e.g. "¨" to " \u0308"
            raise ValueError(stored)
    except ValueError:
        raise InvalidInput("url", "That is not a valid URL; check it and try again.") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidInput("url", "Only http:// and https:// links can be shortened, "
                                  "e.g. https://example.com/page.")
    if not parts.hostname:
        raise InvalidInput("url", "That URL has no host name, e.g. https://example.com/page.")
    if len(stored) > MAX_URL_LENGTH:
        raise InvalidInput("url", f"That URL is {len(stored):,} characters long; the limit "
                                  f"is {MAX_URL_LENGTH:,}.")
    return stored


def checked_code(code: str) -> str | None:
    """The chosen short name, None for a random one, or InvalidInput saying why not."""
    if not code:
        return None
    if not CODE_PATTERN.fullmatch(code):
        raise InvalidInput("code", "A short name is 1 to 64 letters, digits, '-' or '_' "
                                   "(no spaces, slashes or accents).")
    if code.lower() in current_app.config["RESERVED_CODES"]:
        raise InvalidInput("code", f"'{code}' is used by the site itself; choose another "
                                   "short name.")
    return code


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


def csrf_exempt(view: Callable[[], ResponseReturnValue]) -> Callable[[], ResponseReturnValue]:
    """CSRFProtect.exempt with type hints, which Flask-WTF does not ship."""
    csrf.exempt(view)
    return view


def create_limit() -> str:
    return str(current_app.config["CREATE_RATE_LIMIT"])


def store() -> LinkStore:
    return current_app.extensions["link_store"]  # type: ignore[no-any-return]


def visit_store() -> visits.VisitStore:
    return current_app.extensions["visit_store"]  # type: ignore[no-any-return]


def count_visit(code: str) -> bool:
    """Hand this request to the visit counter; False when visits are not counted."""
    recorder: visits.Recorder | None = current_app.extensions["visits"]
    if recorder is not None:
        recorder.record(code, request.environ)
    return recorder is not None


def short_url(code: str) -> str:
    base = current_app.config["PUBLIC_BASE_URL"] or request.host_url
    return f"{base.rstrip('/')}/{code}"


def remember(code: str) -> None:
    """Keep the codes this browser created, newest first, in its session cookie."""
    codes = [code] + [c for c in session.get("codes", []) if c != code]
    session["codes"] = codes[:SESSION_CODES_KEPT]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def create(code: str | None, target: Link, field: str) -> Link:
    """Store a link to target under code, or under a fresh random code, and remember it
    in this browser: the one create path of the form and the API.

    Raises InvalidInput for the given field: 409 for a taken code, 503 when the store
    cannot take the link now.
    """
    for _ in range(RANDOM_CODE_ATTEMPTS):
        link = replace(target, code=code or random_code(), created_at=now())
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
        return link
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
                           max_upload_mb=max_upload_mb), status


@bp.post("/your-url")
@limiter.shared_limit(create_limit, scope="create")  # one count with the API, per client
def shorten_form() -> ResponseReturnValue:
    upload = request.files.get("file")
    form = "file" if upload is not None and "url" not in request.form else "url"
    try:
        code = checked_code(request.form.get("code", "").strip())
        if form == "url":
            target = Link("", url=checked_url(request.form.get("url", "").strip()))
        else:
            target = save_upload(upload)
        with removed_unless_stored(target):
            link = create(code, target, form)
    except InvalidInput as exc:
        return render_home({exc.field: exc.message}, exc.status, form)
    # A viewBox (omitsize) so the page can size it without clipping; white, with the
    # 4-module quiet zone the QR spec asks for, so it scans on a dark page too.
    svg = segno.make(short_url(link.code), error="m").svg_inline(border=4, omitsize=True,
                                                                 light="#fff")
    return render_template("result.html", short_url=short_url(link.code), code=link.code,
                           record=link, qr_svg=Markup(svg))  # nosec B704: segno's own SVG


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


@bp.get("/<code>")
def follow(code: str) -> ResponseReturnValue:
    link = store().get(code)
    if link is None:
        raise NotFound()
    counted = count_visit(code)
    if link.url is not None:
        response = redirect(link.url)
        if counted:
            response.headers["Cache-Control"] = NOT_CACHED
        return response
    return send_upload(link.file or "", link.name)


@bp.get("/<code>+")
def stats_page(code: str) -> ResponseReturnValue:
    link = store().get(code)
    if link is None:
        raise NotFound()
    stats = visit_store().stats(code)
    last_day = visits.today()
    return render_template("stats.html", link=link, short_url=short_url(code), stats=stats,
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


@bp.get("/api")
def my_codes() -> ResponseReturnValue:
    return jsonify(session.get("codes", []))


@bp.post("/api/links")
@csrf_exempt  # JSON only: a cross-site form cannot send application/json without CORS
@limiter.shared_limit(create_limit, scope="create")
def create_link() -> ResponseReturnValue:
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
        return api_error("'url' is required and must be a string.", 400)
    if code is not None and not isinstance(code, str):
        return api_error("'code' must be a string when given.", 400)
    try:
        link = create(checked_code(code or ""), Link("", url=checked_url(url)), "url")
    except InvalidInput as exc:
        return api_error(exc.message, exc.status)
    return jsonify(code=link.code, short_url=short_url(link.code), url=link.url), 201


@bp.get("/api/links/<code>")
def link_details(code: str) -> ResponseReturnValue:
    link = store().get(code)
    if link is None:
        return api_error(f"No link has the code '{code}'.", 404)
    kind, target = ("url", link.url) if link.url is not None else ("file", link.file)
    return jsonify({"code": code, kind: target, "created_at": link.created_at})


@bp.get("/api/links/<code>/stats")
def link_stats(code: str) -> ResponseReturnValue:
    link = store().get(code)
    if link is None:
        return api_error(f"No link has the code '{code}'.", 404)
    return jsonify(visits.document(link, visit_store().stats(code), current_app.config["VISITS"],
                                   current_app.config["VISITS_FLUSH_SECONDS"]))


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

def api_error(message: str, status: int) -> ResponseReturnValue:
    return jsonify(error=message), status


def wants_json() -> bool:
    return request.path.startswith("/api") or request.path == "/healthz"


FORM_ERRORS = {400: ("url", "The form expired or came from another site; reload the page "
                            "and try again."),
               413: ("file", ""),
               429: ("url", "You are creating links too fast; wait a minute and try again.")}


def handle_http_error(error: HTTPException) -> ResponseReturnValue:
    """Every HTTP error as a page a person can act on (or JSON for the API), never a trace.

    The response keeps the error's own headers, such as Allow on 405 and Retry-After on 429.
    """
    status = error.code or 500
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
    """WSGI middleware: answer ``GET /<code>`` for a stored URL without entering Flask.

    Redirects are the hot path of a shortener, and Flask's request machinery (session,
    hooks, extensions) costs several times the lookup itself (docs/performance.md). The
    answer is byte for byte what ``follow`` sends (tests/test_fast_path.py): the same
    status, Location, body and security headers. Anything else (other routes, uploaded
    files, unknown codes, other methods, a store that raises) goes to Flask unchanged.
    A redirect is handed to the visit counter, when there is one, as ``follow`` does.
    """

    def __init__(self, app: Any, links: LinkStore, reserved: frozenset[str],
                 counter: visits.Recorder | None) -> None:
        self.app, self.links, self.reserved, self.counter = app, links, reserved, counter
        self.headers = [*SECURITY_HEADERS, *([("Cache-Control", NOT_CACHED)] if counter else [])]

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") == "GET" and path.rfind("/") == 0:
            code = path[1:]
            if code.lower() not in self.reserved and CODE_PATTERN.fullmatch(code):
                try:
                    link = self.links.get(code)
                except Exception:  # Flask looks again, then logs and shows its error page
                    link = None
                if link is not None and link.url is not None:
                    if self.counter is not None:
                        self.counter.record(code, environ)
                    return self.redirect(link.url, environ, start_response)
        return self.app(environ, start_response)

    def redirect(self, url: str, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = redirect(url).get_data()
        headers = [("Content-Type", "text/html; charset=utf-8"),
                   ("Content-Length", str(len(body))), ("Location", iri_to_uri(url)),
                   *self.headers]
        if environ.get("wsgi.url_scheme") == "https":
            headers.append(HSTS)
        start_response("302 FOUND", headers)
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
    # A short name must never shadow a route: its first path segment is reserved.
    app.config["RESERVED_CODES"] = frozenset(rule.rule.split("/")[1].lower()
                                             for rule in app.url_map.iter_rules()
                                             if not rule.rule.startswith("/<")) - {""}
    links = app.extensions["link_store"] = open_store(app.config)
    counts = app.extensions["visit_store"] = visits.open_store(links)
    counter = app.extensions["visits"] = (
        visits.Recorder(counts, app.config["VISITS_FLUSH_SECONDS"]) if app.config["VISITS"]
        else None)
    # Each proxy appends the address it saw to X-Forwarded-For (on Elastic Beanstalk the
    # load balancer, then nginx: 2 hops); X-Forwarded-Proto is set once, by the first.
    hops = app.config["TRUSTED_PROXY_HOPS"]
    fast = FastRedirects(app.wsgi_app, links, app.config["RESERVED_CODES"], counter)
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
