"""A URL shortener you can trust with your links.

One Flask module: configuration from the environment, the link store, validation,
routes and error pages. Read top to bottom; ARCHITECTURE.md has the HTTP contract.

The store is one JSON file in the original app's format. Redirects are served from an
in-memory copy that follows the file's changes through a journal, so a redirect costs
one ``stat`` and a dict lookup; ``FastRedirects`` answers them before Flask's request
machinery. Writes take an exclusive lock, catch up, and atomically replace the file
with a copy that has one more link; a file that cannot be parsed is never overwritten.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import string
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
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

log = logging.getLogger("shortener")

Record = dict[str, str]
Identity = tuple[int, ...]  # see identity_from(): one version of a file


class Packed(str):
    """A URL record in memory: the URL, then NUL and created_at when it has one.

    Nearly every link is one, so it is one string, not a (url, created_at) tuple of
    two: at 1,000,000 links a worker holds about 300 MiB of links instead of 375.
    A str subclass, so a bare JSON string in a malformed file is never taken for one.
    """

    __slots__ = ()


Stored = Record | Packed

CODE_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
CODE_ALPHABET = string.ascii_letters + string.digits
RANDOM_CODE_LENGTH = 7
MAX_URL_LENGTH = 2048
SESSION_CODES_KEPT = 25  # newest first; keeps the signed cookie far below 4 KB
INLINE_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                      ".gif": "image/gif", ".webp": "image/webp"}  # never SVG: it can run script
RESTORE_HINT = ("Restore the last good copy with `python -m ops.backup restore` "
                "(see README, Operating).")


# --- The link store --------------------------------------------------------------------

class StoreUnavailable(Exception):
    """The store cannot take a write now; the message says why and what to do."""


class CodeTaken(Exception):
    """The short name is already used; an existing link is never overwritten."""


class LinkStore:
    """Links in one JSON file, shared by every worker (and, on EFS, every instance).

    Besides the file, every write appends its link to a journal beside it, naming the
    file it was added to (``prev``) and the file that resulted (``now``), by identity.
    A worker whose copy is the ``prev`` of the next entries catches up by applying them,
    instead of parsing the whole file again: at 100,000 links that is 200 bytes read
    rather than 0.3 s of parsing in every worker after every create. Anything else (a
    restored backup, an edit by hand, a journal cut short) breaks the chain, and the
    worker parses the file, which stays the one source of truth.
    """

    JOURNAL_MAX_BYTES = 1 << 20  # then it starts again; workers that far behind re-parse

    def __init__(self, urls_file: Path, lock_timeout: float = 5.0,
                 reserved: frozenset[str] = frozenset()) -> None:
        self.path = urls_file
        self.reserved = reserved  # codes a random one must not be (route prefixes)
        self.lock_path = urls_file.with_name(urls_file.name + ".lock")
        self.journal_path = urls_file.with_name(urls_file.name + ".journal")
        self.lock_timeout = lock_timeout
        self.error: str | None = None  # why the file on disk cannot be used, if it cannot
        self._links: dict[str, Stored] = {}
        self._identity: Identity | None = (-1,)  # the file _links came from; never read yet
        self._journal_offset = 0
        # Threads of one worker (gunicorn gthread) share _links and _identity: they change
        # together under this lock, or a create could see a new identity with old links.
        self._memory_lock = threading.Lock()

    def get(self, code: str) -> Record | None:
        self.refresh()
        stored = self._links.get(code)
        return None if stored is None else expand(stored)

    def count(self) -> int:
        self.refresh()
        return len(self._links)

    def refresh(self) -> None:
        """Catch up with the file if it changed; keep the last good copy if it is bad.

        The identity includes the size, and the store only ever grows, so a reused inode
        number with an unchanged mtime tick cannot hide a newer file.
        """
        with self._memory_lock:
            try:
                identity = identity_of(self.path)
            except OSError as exc:
                self._fail(f"cannot stat {self.path}: {exc.strerror}")
                return
            if identity == self._identity or (self.error is None and self._catch_up(identity)):
                return
            try:
                self._journal_offset = self._journal_size()  # later entries are newer
                self._links, self._identity = self._read()
            except StoreUnavailable as exc:
                self._identity = identity  # do not parse the same bad file on every request
                self._fail(str(exc))
            else:
                self.error = None

    def _catch_up(self, identity: Identity | None) -> bool:
        """Apply the journal's links from our copy on; False unless that reaches identity."""
        try:
            with open(self.journal_path, "rb") as journal:
                journal.seek(self._journal_offset)
                lines = journal.read().splitlines(keepends=True)
        except OSError:
            return False
        current, added, consumed = self._identity, dict[str, Stored](), 0
        for line in lines:
            if current == identity or not line.endswith(b"\n"):
                break  # caught up (later lines may announce a file not renamed yet)
            consumed += len(line)
            try:
                entry = json.loads(line)
                prev = None if entry["prev"] is None else tuple(entry["prev"])
                if prev == current and not shape_problem(entry["links"]):
                    added.update({code: compact(record)
                                  for code, record in entry["links"].items()})
                    current = tuple(entry["now"])
            except (ValueError, TypeError, KeyError):
                return False
        if current != identity:
            return False
        self._links.update(added)
        self._identity, self._journal_offset = current, self._journal_offset + consumed
        return True

    def _journal_size(self) -> int:
        try:
            return os.stat(self.journal_path).st_size
        except FileNotFoundError:
            return 0

    def _fail(self, message: str) -> None:
        if message != self.error:
            log.error("link store unusable: %s. Serving the last good copy (%d links) "
                      "and refusing new links. %s", message, len(self._links), RESTORE_HINT)
        self.error = message

    def _read(self) -> tuple[dict[str, Stored], Identity | None]:
        """Parse the whole file; return its links and the identity of what was parsed."""
        try:
            urls_file = open(self.path, encoding="utf-8")
        except FileNotFoundError:
            if self._journal_size():
                raise StoreUnavailable(f"{self.path} is missing, but {self.journal_path.name} "
                                       "shows links were stored here") from None
            return {}, None
        except OSError as exc:
            raise StoreUnavailable(f"cannot read {self.path}: {exc.strerror}") from exc
        try:
            with urls_file:
                links = json.load(urls_file, object_hook=compact)
                st = os.fstat(urls_file.fileno())
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreUnavailable(f"cannot read {self.path}: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise StoreUnavailable(f"{self.path} is not valid JSON ({exc})") from exc
        problem = shape_problem(links)
        if problem:
            raise StoreUnavailable(f"{self.path} has the wrong shape: {problem}")
        return links, identity_from(st)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's exclusive cross-process lock, waiting at most lock_timeout."""
        try:
            lock_file = open(self.lock_path, "a")
        except OSError as exc:
            raise StoreUnavailable(f"cannot open the lock file {self.lock_path}: "
                                   f"{exc.strerror}") from exc
        with lock_file:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreUnavailable(
                            f"the store has been locked by another process for over "
                            f"{self.lock_timeout:g} s; try again shortly") from None
                    time.sleep(0.005)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def add(self, code: str | None, record: Record) -> str:
        """Store a new link under code (or a fresh random one) and return the code."""
        with self.locked():
            self.refresh()
            if self.error:
                raise StoreUnavailable(f"the link store is unusable: {self.error}")
            if code is None:
                code = self._free_random_code()
            elif code in self._links:
                raise CodeTaken(code)
            try:
                written = write_atomically(
                    self.path, self._with_entry(code, record),
                    lambda now: self._append_journal(self._identity, now, {code: record}))
            except OSError as exc:
                raise StoreUnavailable(f"cannot save the link ({exc.strerror}); nothing was "
                                       "changed") from exc
            with self._memory_lock:
                self._links[code], self._identity = compact(record), written
        return code

    def _with_entry(self, code: str, record: Record) -> Iterator[bytes]:
        """The bytes of the current file with one more entry before its closing brace.

        The file's own bytes are copied, not re-serialized from memory: a million links
        cost a copy, not a json.dumps, and links already there stay byte for byte as
        they were. Called under the lock, after refresh, so the file is the one parsed.
        """
        entry = json.dumps({code: record}, ensure_ascii=False)[1:-1].encode()
        if self._identity is None:
            yield b"{" + entry + b"}"
            return
        with open(self.path, "rb") as current:
            st = os.fstat(current.fileno())
            if identity_from(st) != self._identity:
                raise OSError(errno.EAGAIN, "the file changed outside the lock; try again")
            tail_start = max(0, st.st_size - 4096)
            current.seek(tail_start)
            head = current.read().rstrip()[:-1].rstrip()  # parsed as an object: ends in "}"
            current.seek(0)
            remaining = tail_start + len(head)
            while remaining > 0:
                chunk = current.read(min(1 << 20, remaining))
                remaining -= len(chunk)
                yield chunk
        yield (b"" if head.endswith(b"{") else b",") + entry + b"}"

    def _append_journal(self, prev: Identity | None, now: Identity,
                        links: dict[str, Record]) -> None:
        """Tell the other workers what changed; they re-parse the file if this fails."""
        line = json.dumps({"prev": prev, "now": now, "links": links}, ensure_ascii=False)
        try:
            mode = "w" if self._journal_size() > self.JOURNAL_MAX_BYTES else "a"
            with open(self.journal_path, mode, encoding="utf-8") as journal:
                journal.write(line + "\n")
        except OSError as exc:
            log.warning("could not append to %s (%s); workers will re-read %s instead",
                        self.journal_path, exc.strerror, self.path.name)

    def _free_random_code(self) -> str:
        while True:
            code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(RANDOM_CODE_LENGTH))
            if code not in self._links and code.lower() not in self.reserved:
                return code


def identity_of(path: Path) -> Identity | None:
    """What tells one version of a file from another without reading it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return identity_from(st)


def identity_from(st: os.stat_result) -> Identity:
    """Inode, mtime and size, which a rename keeps; and owner and mode, so that a file
    that could not be read is read again once an operator fixes its permissions."""
    return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode, st.st_uid, st.st_gid)


def write_atomically(path: Path, chunks: Iterable[bytes],
                     announce: Callable[[Identity], None] = lambda _: None) -> Identity:
    """Write a file so that readers see the old content or the new, never a part.

    Returns the new file's identity (a rename keeps inode, mtime and size). ``announce``
    gets that identity before the rename, so what it records (the journal entry) is
    there before any reader can see the new file.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
            st = os.fstat(out.fileno())
        announce(identity_from(st))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return identity_from(st)


def compact(record: Record) -> Stored:
    """The in-memory form of a record (json's object_hook: also sees the outer object)."""
    url, created_at = record.get("url"), record.get("created_at")
    if record.keys() <= {"url", "created_at"} and isinstance(url, str) and "\0" not in url:
        if created_at is None:
            return Packed(url)
        if isinstance(created_at, str) and created_at and "\0" not in created_at:
            return Packed(f"{url}\0{created_at}")
    return record


def expand(stored: Stored) -> Record:
    if isinstance(stored, dict):
        return stored
    url, _, created_at = stored.partition("\0")
    return {"url": url, "created_at": created_at} if created_at else {"url": url}


def shape_problem(links: object) -> str | None:
    """Say what is wrong with a parsed urls file, or None if every record is usable."""
    if not isinstance(links, dict):
        return f"expected a JSON object of links, found {type(links).__name__}"
    for code, record in links.items():
        if isinstance(record, Packed):
            continue  # made by compact() from a valid URL record
        if not isinstance(record, dict) or not all(isinstance(v, str) for v in record.values()):
            return f"link {code!r} is not an object of strings"
        if not isinstance(record.get("url", record.get("file")), str):
            return f"link {code!r} has neither 'url' nor 'file'"
    return None


# --- Validation ------------------------------------------------------------------------

class InvalidInput(Exception):
    """A client's input that cannot be stored, with the field and a message to act on."""

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


# --- Configuration ---------------------------------------------------------------------

def load_config(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults, then the environment, then explicit overrides (tests)."""
    overrides = dict(overrides or {})

    def setting(name: str, default: str) -> Any:
        return overrides.get(name, os.environ.get(name, default))

    data_dir = Path(setting("DATA_DIR", "./data"))
    max_upload_mb = float(setting("MAX_UPLOAD_MB", "10"))
    config: dict[str, Any] = {
        "DATA_DIR": data_dir,
        "URLS_FILE": Path(setting("URLS_FILE", str(data_dir / "urls.json"))),
        "UPLOAD_DIR": Path(setting("UPLOAD_DIR", str(data_dir / "uploads"))),
        "MAX_UPLOAD_BYTES": int(max_upload_mb * 1024 * 1024),
        # The request may carry the form fields as well as the file.
        "MAX_CONTENT_LENGTH": int(max_upload_mb * 1024 * 1024) + 1024 * 1024,
        "APP_VERSION": setting("APP_VERSION", "dev"),
        "PUBLIC_BASE_URL": setting("PUBLIC_BASE_URL", "").rstrip("/"),
        "CREATE_RATE_LIMIT": setting("CREATE_RATE_LIMIT", "60/minute"),
        "RATELIMIT_STORAGE_URI": setting("RATELIMIT_STORAGE_URI", "memory://"),
        "RATELIMIT_HEADERS_ENABLED": True,
        "RATELIMIT_ENABLED": setting("CREATE_RATE_LIMIT", "60/minute").lower() != "off",
        "LOCK_TIMEOUT": float(setting("LOCK_TIMEOUT", "5")),
        "TRUSTED_PROXY_HOPS": int(setting("TRUSTED_PROXY_HOPS", "1")),
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_HTTPONLY": True,
        "WTF_CSRF_TIME_LIMIT": None,  # the token lives as long as the session
    }
    config.update(overrides)
    config["SECRET_KEY"] = (config.get("SECRET_KEY") or os.environ.get("SECRET_KEY")
                            or load_or_create_secret(Path(config["DATA_DIR"])))
    return config


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
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))
        out.flush()
        os.fsync(out.fileno())
    try:
        os.link(tmp, path)  # atomic, and fails if another worker got there first
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


class SessionInterface(SecureCookieSessionInterface):
    """Mark the session cookie Secure whenever the request came over HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure or super().get_cookie_secure(app)


# --- The application -------------------------------------------------------------------

bp = Blueprint("shortener", __name__)
csrf = CSRFProtect()
limiter = Limiter(get_remote_address, default_limits=[])


def csrf_exempt(view: Callable[[], ResponseReturnValue]) -> Callable[[], ResponseReturnValue]:
    """CSRFProtect.exempt with type hints, which Flask-WTF does not ship."""
    csrf.exempt(view)
    return view


def create_limit() -> str:
    return str(current_app.config["CREATE_RATE_LIMIT"])


class FastRedirects:
    """WSGI middleware: answer ``GET /<code>`` for a stored URL without entering Flask.

    Redirects are the hot path of a shortener, and Flask's request machinery (session,
    hooks, extensions) costs several times the lookup itself: this answers in a seventh
    of the time (bench/, docs/performance.md). The answer is byte for byte what
    ``follow`` sends (tests/test_fast_path.py): the same status, Location, body and
    security headers. Anything else (other routes, uploaded files, unknown codes, other
    methods, a store that raises) goes to Flask unchanged.
    """

    def __init__(self, app: Any, links: LinkStore, reserved: frozenset[str]) -> None:
        self.app, self.links, self.reserved = app, links, reserved

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") == "GET" and path.rfind("/") == 0:
            code = path[1:]
            if code.lower() not in self.reserved and CODE_PATTERN.fullmatch(code):
                try:
                    record = self.links.get(code)
                except Exception:  # Flask looks again, then logs and shows its error page
                    record = None
                if record is not None and "url" in record:
                    return self.redirect(record["url"], environ, start_response)
        return self.app(environ, start_response)

    @staticmethod
    def redirect(url: str, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = redirect(url).get_data()
        headers = [("Content-Type", "text/html; charset=utf-8"),
                   ("Content-Length", str(len(body))), ("Location", iri_to_uri(url)),
                   *SECURITY_HEADERS]
        if environ.get("wsgi.url_scheme") == "https":
            headers.append(HSTS)
        start_response("302 FOUND", headers)
        return [body]


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(load_config(config))
    app.session_interface = SessionInterface()
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        Path(app.config["UPLOAD_DIR"]).mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # keep serving redirects; /healthz and creates will say why
        log.error("cannot create the upload directory: %s", exc)
    csrf.init_app(app)
    limiter.init_app(app)
    app.register_blueprint(bp)
    app.config["RESERVED_CODES"] = frozenset(rule.rule.split("/")[1].lower()
                                             for rule in app.url_map.iter_rules()
                                             if not rule.rule.startswith("/<")) - {""}
    app.extensions["link_store"] = LinkStore(Path(app.config["URLS_FILE"]),
                                             app.config["LOCK_TIMEOUT"],
                                             app.config["RESERVED_CODES"])
    # Each proxy appends the address it saw to X-Forwarded-For (on Elastic Beanstalk the
    # load balancer, then nginx: 2 hops); X-Forwarded-Proto is set once, by the first.
    hops = app.config["TRUSTED_PROXY_HOPS"]
    fast = FastRedirects(app.wsgi_app, app.extensions["link_store"], app.config["RESERVED_CODES"])
    app.wsgi_app = ProxyFix(fast, x_for=hops, x_proto=min(hops, 1))  # type: ignore[method-assign]
    app.after_request(add_security_headers)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(Exception, handle_unexpected_error)
    return app


def store() -> LinkStore:
    return current_app.extensions["link_store"]  # type: ignore[no-any-return]


def short_url(code: str) -> str:
    base = current_app.config["PUBLIC_BASE_URL"] or request.host_url
    return f"{base.rstrip('/')}/{code}"  # create_app(config) passes PUBLIC_BASE_URL as given


def remember(code: str) -> None:
    """Keep the codes this browser created, newest first, in its session cookie."""
    codes = [code] + [c for c in session.get("codes", []) if c != code]
    session["codes"] = codes[:SESSION_CODES_KEPT]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@bp.get("/")
def home() -> ResponseReturnValue:
    return render_home()


def render_home(errors: Mapping[str, str] | None = None, status: int = 200, form: str = "url",
                values: Mapping[str, str] | None = None) -> tuple[str, int]:
    """The home page, with errors shown beside their fields and the input kept."""
    links = []
    for code in session.get("codes", []):
        record = store().get(code)
        if record:
            links.append({"code": code, "short_url": short_url(code),
                          "target": record.get("url") or record.get("name") or record["file"]})
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
            record = {"url": checked_url(request.form.get("url", "").strip())}
        else:
            record = save_upload(upload)
    except InvalidInput as exc:
        return render_home({exc.field: exc.message}, exc.status, form)
    page, status = create_and_show(code, record | {"created_at": now()}, form)
    if status != 200 and "file" in record:
        (Path(current_app.config["UPLOAD_DIR"]) / record["file"]).unlink()
    return page, status


def save_upload(upload: FileStorage | None) -> Record:
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
    return {"file": path.name, "name": name}


def create_and_show(code: str | None, record: Record, form: str) -> tuple[str, int]:
    try:
        code = store().add(code, record)
    except CodeTaken:
        return render_home({"code": f"'{code}' is already taken; choose another short name, "
                                    "or leave it blank for a random one."}, 409, form)
    except StoreUnavailable as exc:
        log.error("create refused: %s", exc)
        return render_home({form: f"Links cannot be saved right now ({exc}). "
                                  "Your input is kept; please try again in a minute."}, 503, form)
    remember(code)
    link = short_url(code)
    # A viewBox (omitsize) so the page can size it without clipping; white, with the
    # 4-module quiet zone the QR spec asks for, so it scans on a dark page too.
    svg = segno.make(link, error="m").svg_inline(border=4, omitsize=True, light="#fff")
    qr_svg = Markup(svg)  # nosec B704
    return render_template("result.html", short_url=link, code=code, record=record,
                           qr_svg=qr_svg), 200


def upload_too_large_message() -> str:
    limit = current_app.config["MAX_UPLOAD_BYTES"] / (1024 * 1024)
    return f"That file is larger than the {limit:g} MB limit; choose a smaller file."


@bp.get("/your-url")
def your_url() -> ResponseReturnValue:
    return redirect(url_for(".home"))


@bp.get("/<code>")
def follow(code: str) -> ResponseReturnValue:
    record = store().get(code)
    if record is None:
        raise NotFound()
    if "url" in record:
        return redirect(record["url"])
    return send_upload(record)


def send_upload(record: Record) -> Response:
    """An uploaded file: as a download, unless it is an image type that cannot run script."""
    suffix = Path(record["file"]).suffix.lower()
    response = send_from_directory(current_app.config["UPLOAD_DIR"], record["file"],
                                   as_attachment=suffix not in INLINE_IMAGE_TYPES,
                                   download_name=record.get("name", record["file"]),
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
        url, code = checked_url(url), checked_code(code or "")
    except InvalidInput as exc:
        return api_error(exc.message, exc.status)
    try:
        code = store().add(code, {"url": url, "created_at": now()})
    except CodeTaken:
        return api_error(f"'{code}' is already taken; choose another code or omit it.", 409)
    except StoreUnavailable as exc:
        log.error("create refused: %s", exc)
        return api_error(f"Links cannot be saved right now: {exc}", 503)
    remember(code)
    return jsonify(code=code, short_url=short_url(code), url=url), 201


@bp.get("/api/links/<code>")
def link_details(code: str) -> ResponseReturnValue:
    record = store().get(code)
    if record is None:
        return api_error(f"No link has the code '{code}'.", 404)
    kind = "url" if "url" in record else "file"
    return jsonify({"code": code, kind: record[kind], "created_at": record.get("created_at")})


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    checks = {"store": "ok", "data_dir": "ok"}
    store().refresh()
    if store().error:
        checks["store"] = store().error or ""
    try:  # the copy in memory may be fine while a restarted worker could not read the file
        with open(store().path, "rb"):
            pass
    except FileNotFoundError:
        pass  # no link yet, or a vanished file, which refresh() reports
    except OSError as exc:
        checks["store"] = f"cannot read {store().path}: {exc.strerror}"
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


def handle_unexpected_error(error: Exception) -> ResponseReturnValue:
    log.exception("unhandled error on %s %s", request.method, request.path)
    if wants_json():
        return api_error("Something went wrong on our side; it has been logged.", 500)
    return render_template("error.html", status=500, error=None), 500


CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; "
                           "img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                           "form-action 'self'; frame-ancestors 'none'")

SECURITY_HEADERS = [("Content-Security-Policy", CONTENT_SECURITY_POLICY),
                    ("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
                    ("Referrer-Policy", "strict-origin-when-cross-origin")]
HSTS = ("Strict-Transport-Security", "max-age=31536000; includeSubDomains")


def add_security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS + ([HSTS] if request.is_secure else []):
        response.headers.setdefault(name, value)
    return response


application = create_app()
