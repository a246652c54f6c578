"""The link store: one interface (``LinkStore``), two backends, no Flask.

- ``linkstore.jsonfile.FileStore``: one JSON file in the original app's format, the
  default. Nothing to install; every worker follows the file through a journal.
- ``linkstore.postgres.PostgresStore``: PostgreSQL (Amazon RDS in production), for a
  site that has outgrown one file. Each worker caches the links it has served.

The web app, the operator tools and the tests use only what is in this module, so
everything above the store is the same for both. ``open_url`` picks the backend from a
URL: ``file:///path/urls.json`` or ``postgresql://user:password@host:5432/dbname``.

How a change of a link's state (disabled, expired, deleted: later work) reaches every
worker, and within what bound, is each backend's business; docs/database.md states it.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

POSTGRES_SCHEMES = ("postgresql", "postgres")


class StoreUnavailable(Exception):
    """The store cannot serve this now; the message says why and what to do."""


class CodeTaken(Exception):
    """The short name already holds a link; an existing link is never overwritten."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True, slots=True)
class Link:
    """One short link: its code and where it leads.

    Exactly one of ``url`` (a redirect) and ``file`` (an uploaded file, by the name the
    app stored it under) is set. New optional fields go at the end, with a default, so
    every backend and caller keeps working while they learn about them.
    """

    code: str
    url: str | None = None
    file: str | None = None
    name: str | None = None  # an upload's own file name, used as the download name
    created_at: str | None = None  # ISO 8601 text, kept exactly as it was written
    extra: Mapping[str, str] | None = None  # other fields of a links file, kept as they are

    def record(self) -> dict[str, str]:
        """The link as the JSON file holds it: the original app's ``{"url": ...}`` or
        ``{"file": ...}``, then the optional fields that are set."""
        fields = {"url": self.url, "file": self.file, "name": self.name,
                  "created_at": self.created_at}
        return {key: value for key, value in fields.items() if value is not None} | dict(
            self.extra or {})

    @classmethod
    def from_record(cls, code: str, record: Mapping[str, str]) -> Link:
        """The link a JSON record describes (already checked by ``shape_problem``)."""
        known = ("url", "file", "name", "created_at")
        extra = {key: value for key, value in record.items() if key not in known}
        return cls(code, record.get("url"), record.get("file"), record.get("name"),
                   record.get("created_at"), extra or None)


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

    def close(self) -> None:
        """Release connections and threads; the store is not used afterwards."""


def is_postgres_url(url: str) -> bool:
    return urlsplit(url).scheme in POSTGRES_SCHEMES


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
