"""The link store: one interface (``LinkStore``), two backends, no Flask.

- ``linkstore.jsonfile.FileStore``: one JSON file in the original app's format, the
  default. Nothing to install; every worker follows the file through a journal.
- ``linkstore.postgres.PostgresStore``: PostgreSQL (Amazon RDS in production), for a
  site that has outgrown one file. Each worker caches the links it has served.

The web app, the operator tools and the tests use only what is in this module, so
everything above the store is the same for both. ``open_url`` picks the backend from a
URL: ``file:///path/urls.json`` or ``postgresql://user:password@host:5432/dbname``.

A link's lifecycle: what its creator set when it was made (``expires_at``,
``max_visits``, a password, the management token) never changes; what changes is its
``state`` (active, disabled by the operator, deleted: a tombstone, whose code is never
reused) and, for a link with a visit limit, the ``visits`` used. ``consume_visit``
counts a visit atomically across every worker and server; ``disable``, ``enable`` and
``delete`` change the state and record who did it, when and why (``history``). How a
change of state reaches every worker, and within what bound, is each backend's business;
docs/database.md states it.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import unquote, urlsplit

POSTGRES_SCHEMES = ("postgresql", "postgres")
ACTIVE, DISABLED, DELETED = "active", "disabled", "deleted"
STATES = (ACTIVE, DISABLED, DELETED)
DISABLE_REASONS = ("phishing", "malware", "spam", "legal", "other")
DELETE_REASONS = ("creator", "operator")  # who deleted it: the 410 page says which
Stopped = Literal["expired", "limit_reached", "deleted", "disabled"]


class StoreUnavailable(Exception):
    """The store cannot serve this now; the message says why and what to do."""


class CodeTaken(Exception):
    """The short name already holds a link; an existing link is never overwritten."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class NoSuchLink(LookupError):
    """No link has this code: there is nothing to change."""

    def __init__(self, code: str) -> None:
        super().__init__(f"no link has the code {code!r}")
        self.code = code


class LinkDeleted(Exception):
    """The link was deleted; a deleted link stays deleted and its code is never reused."""

    def __init__(self, code: str) -> None:
        super().__init__(f"the link {code!r} was deleted; a deleted link cannot change")
        self.code = code


@dataclass(frozen=True, slots=True)
class Link:
    """One short link: its code and where it leads.

    Exactly one of ``url`` (a redirect) and ``file`` (an uploaded file, by the name the
    app stored it under) is set. New optional fields go at the end, with a default, so
    every backend and caller keeps working while they learn about them.

    Everything up to ``owner`` is set when the link is made and never changes (the JSON
    file's record, ``record()``). ``visits`` and the state fields after it change: the
    visits used towards ``max_visits`` (counted only for a link that has a limit), and
    the state with who changed it last, when and why.
    """

    code: str
    url: str | None = None
    file: str | None = None
    name: str | None = None  # an upload's own file name, used as the download name
    created_at: str | None = None  # ISO 8601 text, kept exactly as it was written
    extra: Mapping[str, str] | None = None  # other fields of a links file, kept as they are
    expires_at: str | None = None  # ISO 8601 in UTC, to the second: it stops then
    max_visits: int | None = None  # it stops after this many visits
    password_hash: str | None = None  # hash_password(): visitors must give the password
    manage_hash: str | None = None  # hash_token() of the creator's management token
    owner: str | None = None  # the API key that made it, when one did
    visits: int = 0  # visits used towards max_visits
    state: str = ACTIVE  # ACTIVE, DISABLED or DELETED
    reason: str | None = None  # DISABLE_REASONS or DELETE_REASONS
    note: str | None = None  # the operator's note on a takedown
    changed_by: str | None = None  # who changed the state last
    changed_at: str | None = None  # ISO 8601 in UTC: when

    @property
    def plain(self) -> bool:
        """An active link that redirects without asking or counting anything: the kind
        the fast path serves and caches may keep."""
        return (self.state == ACTIVE and self.expires_at is None and self.max_visits is None
                and self.password_hash is None)

    def stopped(self, now: datetime) -> Stopped | None:
        """Why the link no longer works at ``now`` (aware), or None while it does."""
        if self.state == DELETED:
            return "deleted"
        if self.state == DISABLED:
            return "disabled"
        if self.expires_at is not None and now >= datetime.fromisoformat(self.expires_at):
            return "expired"
        if self.max_visits is not None and self.visits >= self.max_visits:
            return "limit_reached"
        return None

    def accepts_password(self, password: str) -> bool:
        """Whether password is this link's. Costs one scrypt whatever the answer, and one
        for a link without a password too, so the time taken says nothing."""
        return password_matches(self.password_hash, password)

    def accepts_token(self, token: str) -> bool:
        """Whether token is this link's management token (compared in constant time)."""
        return self.manage_hash is not None and hmac.compare_digest(
            self.manage_hash, hash_token(token))

    def record(self) -> dict[str, str]:
        """The link as the JSON file holds it: the original app's ``{"url": ...}`` or
        ``{"file": ...}``, then the optional fields that are set, every value a string
        (what an older release of the app expects of the file). Not the state: that
        changes, and lives beside it."""
        fields = {"url": self.url, "file": self.file, "name": self.name,
                  "created_at": self.created_at, "expires_at": self.expires_at,
                  "max_visits": None if self.max_visits is None else str(self.max_visits),
                  "password_hash": self.password_hash, "manage_hash": self.manage_hash,
                  "owner": self.owner}
        return {key: value for key, value in fields.items() if value is not None} | dict(
            self.extra or {})

    @classmethod
    def from_record(cls, code: str, record: Mapping[str, str]) -> Link:
        """The link a JSON record describes (already checked by ``shape_problem``)."""
        extra = {key: value for key, value in record.items() if key not in RECORD_FIELDS}
        max_visits = record.get("max_visits")
        return cls(code, record.get("url"), record.get("file"), record.get("name"),
                   record.get("created_at"), extra or None, record.get("expires_at"),
                   None if max_visits is None else int(max_visits),
                   record.get("password_hash"), record.get("manage_hash"), record.get("owner"))


RECORD_FIELDS = ("url", "file", "name", "created_at", "expires_at", "max_visits",
                 "password_hash", "manage_hash", "owner")


@dataclass(frozen=True, slots=True)
class StateChange:
    """One change of a link's state, as the audit record keeps it."""

    code: str
    action: Literal["disable", "enable", "delete"]
    by: str
    at: str  # ISO 8601 in UTC
    reason: str | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        reasons = {"disable": DISABLE_REASONS, "delete": DELETE_REASONS}.get(self.action)
        if reasons is not None and self.reason not in reasons:
            raise ValueError(f"a {self.action} needs a reason: one of {', '.join(reasons)}")


def changed_link(link: Link, change: StateChange) -> Link:
    """What a change does to a link (the same rules on every backend)."""
    if link.state == DELETED:
        raise LinkDeleted(link.code)
    if change.action == "enable":
        if link.state == ACTIVE:
            return link
        return replace(link, state=ACTIVE, reason=None, note=None, changed_by=change.by,
                       changed_at=change.at)
    state = DISABLED if change.action == "disable" else DELETED
    return replace(link, state=state, reason=change.reason, note=change.note,
                   changed_by=change.by, changed_at=change.at)


class StateChanges:
    """``disable``, ``enable`` and ``delete``, the same on every backend: each makes a
    StateChange (which checks the reason) and hands it to the backend's ``change``."""

    def change(self, change: StateChange) -> Link:
        """Apply change by ``changed_link``'s rules and record it; return the link now.
        Raises NoSuchLink, or LinkDeleted."""
        raise NotImplementedError

    def disable(self, code: str, reason: str, by: str, note: str | None = None) -> Link:
        return self.change(StateChange(code, "disable", by, utc_now(), reason, note))

    def enable(self, code: str, by: str) -> Link:
        return self.change(StateChange(code, "enable", by, utc_now()))

    def delete(self, code: str, by: str, reason: str) -> Link:
        return self.change(StateChange(code, "delete", by, utc_now(), reason))


# --- Passwords and management tokens -----------------------------------------------------

# scrypt as RFC 7914 and Colin Percival's scrypt paper recommend for interactive logins:
# N=2**14, r=8, p=1 takes 16 MiB and about 50 ms on the build machine per check, which a
# guesser pays for every guess (the app also rate-limits them). The parameters are part
# of the stored hash, so they can be raised later without breaking older links.
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_LENGTH = 2**14, 8, 1, 32
# A stored hash no password matches; checked against when there is none, so that an
# unknown code or a link without a password costs the same time as a wrong password.
_NO_PASSWORD = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 43 + "="


def hash_password(password: str) -> str:
    """A slow salted hash of password: ``scrypt$N$r$p$salt$key``, salt and key base64."""
    salt = secrets.token_bytes(16)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P),
                     base64.b64encode(salt).decode(), base64.b64encode(key).decode()])


def password_matches(stored: str | None, password: str) -> bool:
    """Whether password matches the stored hash; one scrypt in every case (stored None
    is checked against a hash nothing matches), compared in constant time."""
    _, n, r, p, salt, key = (stored or _NO_PASSWORD).split("$")
    given = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    return hmac.compare_digest(given, base64.b64decode(key)) and stored is not None


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r, p=p,
                          dklen=SCRYPT_LENGTH, maxmem=256 * n * r)


def new_manage_token() -> tuple[str, str]:
    """A management token for a link's creator, and the hash the store keeps of it.

    The token is 256 random bits, so a fast hash is enough: nobody can guess one to
    test against it, and a stolen hash gives no token back.
    """
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


# --- API keys --------------------------------------------------------------------------

API_KEY_PREFIX = "sk_"  # tells a key from other secrets in a config file or a leak scan
KEY_ID_LENGTH = 8  # the start of the random part: shown by `keys list`, stored as the owner


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as the store keeps it: never the key itself, only its hash.

    id: the first KEY_ID_LENGTH characters of the key's random part, which a person
    can match against the key they hold; a link made with the key has it as ``owner``.
    """

    id: str
    name: str
    key_hash: str  # hash_token() of the key
    created_at: str  # ISO 8601 in UTC
    revoked_at: str | None = None


def new_api_key(name: str) -> tuple[str, ApiKey]:
    """A new key (256 random bits, so SHA-256 is enough to store it: see new_manage_token)
    and the record the store keeps of it."""
    secret = secrets.token_hex(32)
    key = API_KEY_PREFIX + secret
    return key, ApiKey(secret[:KEY_ID_LENGTH], name, hash_token(key), utc_now())


def key_matching(keys: Iterable[ApiKey], key: str) -> ApiKey | None:
    """The key among keys whose hash is key's, revoked or not, or None. Compares every
    one in constant time, whatever matches, so a wrong key and an unknown one cost the
    same."""
    wanted, found = hash_token(key), None
    for candidate in keys:
        if hmac.compare_digest(candidate.key_hash, wanted):
            found = candidate
    return found


# --- Reports -----------------------------------------------------------------------------

REPORT_REASONS = DISABLE_REASONS  # what a visitor reports is what an operator disables for
MAX_REPORT_DETAILS = 1000


@dataclass(frozen=True, slots=True)
class Report:
    """A visitor's report of a link. Nothing in it says who sent it (docs/visits.md's
    rule): no address, no User-Agent, no cookie."""

    code: str
    reason: str  # one of REPORT_REASONS
    details: str  # what the visitor wrote, at most MAX_REPORT_DETAILS characters
    at: str  # ISO 8601 in UTC


def utc_now() -> str:
    """Now, as the store writes times: ISO 8601 in UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class LinkStore(Protocol):
    """What the app, the operator tools and the tests need of a link store."""

    def get(self, code: str) -> Link | None:
        """The link stored under code, or None. Raises StoreUnavailable when it cannot
        tell (never None for a link it merely cannot reach)."""

    def add(self, link: Link) -> None:
        """Store a new link. Raises CodeTaken if its code holds any link (the caller
        picks another code), StoreUnavailable if nothing could be stored."""

    def add_many(self, links: Iterable[Link]) -> int:
        """Store every link whose code is free, in one step per call; return how many.

        A code that already holds the identical link is skipped, so a copy can be run
        again. A code that holds a different link raises CodeTaken and stores nothing.
        """

    def count(self) -> int:
        """How many links are stored."""

    def problem(self) -> str | None:
        """None when the store can serve and take links; otherwise what is wrong, naming
        the file or the database (``/healthz`` shows it)."""

    def links(self) -> Iterator[Link]:
        """Every stored link, in code order (the same order on both backends)."""

    def current(self, code: str) -> Link | None:
        """The link as the store holds it now, state and visits used, never from a
        worker's cache: for showing a link, not for every redirect."""

    def consume_visit(self, code: str) -> Link | None:
        """Count one visit of a link with a visit limit, atomically across every worker
        and server, and return the link with ``visits`` including it; or None, counting
        nothing, when this visit may not be served: no such link, no limit, the limit
        reached, expired, or no longer active. Never served from a cache."""

    def disable(self, code: str, reason: str, by: str, note: str | None = None) -> Link:
        """Take a link down (reason: one of DISABLE_REASONS), recording who, when and
        why; return it as it is now. Raises NoSuchLink, or LinkDeleted."""

    def enable(self, code: str, by: str) -> Link:
        """Bring a disabled link back (recorded; nothing to do for an active one).
        Raises NoSuchLink, or LinkDeleted."""

    def delete(self, code: str, by: str, reason: str) -> Link:
        """Delete a link for good (reason: one of DELETE_REASONS): it answers 410 from
        now on and its code is never given to another link. Raises NoSuchLink, or
        LinkDeleted if it already was."""

    def history(self, code: str) -> list[StateChange]:
        """Every change of the link's state, oldest first."""

    def owned(self, owner: str, limit: int, after: tuple[str, str] | None = None
              ) -> list[Link]:
        """Up to limit links whose owner is owner (an API key's id), newest first (by
        created_at, then code, both descending); after: the (created_at, code) of the
        last link of the previous page."""

    def close(self) -> None:
        """Release connections and threads; the store is not used afterwards."""


def is_postgres_url(url: str) -> bool:
    return urlsplit(url).scheme in POSTGRES_SCHEMES


def data_paths(setting: Callable[[str], object]) -> tuple[Path, Path, Path]:
    """DATA_DIR, URLS_FILE and UPLOAD_DIR, read with ``setting`` (``os.environ.get``, or
    the app's settings): DATA_DIR is ./data unless set, and the others are urls.json and
    uploads in it unless set. A setting left empty is not set. The app and every
    operator tool find the files this one way."""
    data_dir = Path(str(setting("DATA_DIR") or "./data"))
    return (data_dir, Path(str(setting("URLS_FILE") or data_dir / "urls.json")),
            Path(str(setting("UPLOAD_DIR") or data_dir / "uploads")))


def open_url(url: str, timeout: float = 5.0) -> LinkStore:
    """The store at ``file:///path/urls.json`` or ``postgresql://...``.

    timeout bounds every wait: for the file's lock, or for the database.
    """
    parts = urlsplit(url)
    if parts.scheme == "file" and parts.path and parts.netloc in ("", "localhost"):
        from linkstore.jsonfile import FileStore
        return FileStore(Path(unquote(parts.path)), lock_timeout=timeout)
    if parts.scheme in POSTGRES_SCHEMES:
        from linkstore.postgres import PostgresStore
        return PostgresStore(url, timeout=timeout)
    raise ValueError("expected file:///path/to/urls.json or "
                     f"postgresql://user:password@host:5432/dbname, not {redacted(url)!r}")


def redacted(url: str) -> str:
    """The URL without its password, fit for a log line or an error message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()
