"""API keys beside the links: only their hashes, on the link store's backend.

- File: ``<file>.keys`` beside the links file, one JSON object ``{"keys": [...]}``,
  replaced atomically (``write_atomically``) under the store's lock, and read again by
  every worker whenever its identity changes: a revoked key is refused from the next
  request.
- PostgreSQL: the ``api_keys`` table (migrations/0004_reports_keys.sql), read on every
  request that carries a key (one lookup by the unique hash; no cache), so a revoked key
  is refused from the next request there too.

A key is looked up by the SHA-256 of what the client sent, then compared in constant
time (``key_matching``): a wrong key, an unknown one and a malformed one cost the same.
"""
from __future__ import annotations

import json
import threading
from dataclasses import asdict, replace
from typing import Protocol

from linkstore import ApiKey, LinkStore, StoreUnavailable, hash_token, key_matching, utc_now
from linkstore.jsonfile import FileStore, identity_of, load_json, write_atomically
from linkstore.postgres import Connection, PostgresStore, iso


class KeyExists(ValueError):
    """A key with this name is already stored (revoked keys included)."""


class NoSuchKey(LookupError):
    """No stored key has this name or id."""


class KeyStore(Protocol):
    """What the app and ``ops.links keys`` need of the stored keys."""

    def add(self, key: ApiKey) -> None:
        """Store a new key; KeyExists if its name (or, very rarely, its id) is taken."""

    def all(self) -> list[ApiKey]:
        """Every key, revoked ones too, oldest first."""

    def find(self, key: str) -> ApiKey | None:
        """The stored key that key is (it may be revoked), or None."""

    def revoke(self, name_or_id: str) -> ApiKey:
        """Revoke a key by its name or id (already revoked: unchanged); NoSuchKey."""


def open_keys(links: LinkStore) -> KeyStore:
    """The keys beside a link store: the same directory, or the same database."""
    if isinstance(links, FileStore):
        return FileKeys(links)
    if isinstance(links, PostgresStore):
        return PostgresKeys(links)
    raise TypeError(f"no key store for {type(links).__name__}")


class FileKeys:
    """The keys in ``<links file>.keys``, followed by identity like the links file."""

    def __init__(self, links: FileStore) -> None:
        self.links = links
        self.path = links.path.with_name(links.path.name + ".keys")
        self._keys: list[ApiKey] = []
        self._identity: tuple[int, ...] | None = None
        self._lock = threading.Lock()

    def all(self) -> list[ApiKey]:
        with self._lock:
            try:
                identity = identity_of(self.path)
            except OSError as exc:
                raise StoreUnavailable(f"cannot stat {self.path}: {exc.strerror}") from exc
            if identity is None:
                self._keys, self._identity = [], None
            elif identity != self._identity:
                self._keys, self._identity = self._read(), identity
            return self._keys

    def find(self, key: str) -> ApiKey | None:
        return key_matching(self.all(), key)

    def add(self, key: ApiKey) -> None:
        with self.links.locked():
            keys = self.all()
            if any(key.name == k.name or key.id == k.id for k in keys):
                raise KeyExists(f"a key named {key.name!r} exists already; choose another name")
            self._write(keys + [key])

    def revoke(self, name_or_id: str) -> ApiKey:
        with self.links.locked():
            keys = self.all()
            found = named(keys, name_or_id)
            if found.revoked_at is None:
                revoked = replace(found, revoked_at=utc_now())
                self._write([revoked if k == found else k for k in keys])
                return revoked
            return found

    def _read(self) -> list[ApiKey]:
        document = load_json(self.path)
        try:
            return [ApiKey(**entry) for entry in document["keys"]]
        except (TypeError, KeyError) as exc:
            raise StoreUnavailable(f"{self.path} has the wrong shape ({exc}); restore it "
                                   "from a backup") from None

    def _write(self, keys: list[ApiKey]) -> None:
        """Replace the file (store lock held): readers see the old keys or the new."""
        text = json.dumps({"keys": [asdict(k) for k in keys]}, indent=1, ensure_ascii=False)
        try:
            write_atomically(self.path, [text.encode() + b"\n"])
        except OSError as exc:
            raise StoreUnavailable(f"cannot save the keys ({exc.strerror}); nothing was "
                                   "changed") from exc


def named(keys: list[ApiKey], name_or_id: str) -> ApiKey:
    """The key with this name, else the one with this id; NoSuchKey."""
    for key in sorted(keys, key=lambda k: k.name != name_or_id):
        if name_or_id in (key.name, key.id):
            return key
    raise NoSuchKey(f"no API key has the name or id {name_or_id!r} (see `keys list`)")


KEY_COLUMNS = "id, name, key_hash, created_at, revoked_at"
INSERT_KEY = (f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (%s, %s, %s, %s, %s)"  # nosec B608
              " ON CONFLICT DO NOTHING")


class PostgresKeys:
    """The keys in the ``api_keys`` table, through the link store's connections."""

    def __init__(self, links: PostgresStore) -> None:
        self.links = links

    def add(self, key: ApiKey) -> None:
        def insert(conn: Connection) -> int:
            return int(conn.execute(INSERT_KEY, (key.id, key.name, key.key_hash,
                                                 key.created_at, key.revoked_at)).rowcount)
        if self.links._call(insert, retry=False) == 0:
            raise KeyExists(f"a key named {key.name!r} exists already; choose another name")

    def all(self) -> list[ApiKey]:
        return self._select("ORDER BY created_at, id", ())

    def find(self, key: str) -> ApiKey | None:
        return key_matching(self._select("WHERE key_hash = %s", (hash_token(key),)), key)

    def revoke(self, name_or_id: str) -> ApiKey:
        key = named(self.all(), name_or_id)
        self.links._call(lambda conn: conn.execute(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s",
            (key.id,)), retry=False)
        return self._select("WHERE id = %s", (key.id,))[0]

    def _select(self, where: str, params: tuple[str, ...]) -> list[ApiKey]:
        statement = f"SELECT {KEY_COLUMNS} FROM api_keys {where}"  # nosec B608
        rows = self.links._call(lambda conn: conn.execute(statement, params).fetchall(),
                                retry=True)
        return [ApiKey(id, name, key_hash, iso(created) or "", iso(revoked))
                for id, name, key_hash, created, revoked in rows]
