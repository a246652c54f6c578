"""Snapshots of the link store that restore: snapshot, verify, list, restore.

A snapshot is a directory (local, or under ``s3://bucket/prefix``) named by its UTC time:

    20261127T051200123456Z/urls.json        every link, in the app's JSON file format
    20261127T051200123456Z/urls.json.state  the links' states: taken down, deleted, visits used
    20261127T051200123456Z/urls.json.audit  who changed which link's state, when and why
    20261127T051200123456Z/uploads/<name>   every uploaded file
    20261127T051200123456Z/manifest.json    counts, sizes and SHA-256 of every file

The links are always carried as the file backend's set of files (``SIDECARS``), so a
takedown survives a restore, with its history, and any snapshot restores into either
backend. The manifest is written last, so a snapshot without one is incomplete and is
ignored. Only the newest ``--keep`` complete snapshots are kept.

With the JSON file backend, the links file and its sidecars are read together under the
store's own lock (the ``flock`` protocol of ``linkstore.jsonfile``, imported from
there), so the set is one the app wrote whole. With PostgreSQL (``DATABASE_URL`` or
``--database-url``) the ``TABLES`` are read in one transaction, a consistent view, and
written as the same set. Uploads are copied afterwards: the app writes a file before it
adds the link to it.

``restore`` to the file replaces the set atomically under the lock (each sidecar, then
the links file), keeps each file it replaces beside it (``urls.json.replaced-<time>``,
``urls.json.state.replaced-<time>``, ...), brings back missing uploads, and refuses,
unless ``--force``, to replace a live file that holds links the snapshot lacks.
``restore`` to PostgreSQL adds the snapshot's links the database lacks, with their
states and their history, and never overwrites or deletes one; rolling a database back
in time is what RDS's own point-in-time restore is for (docs/database.md).

Exit status: 0 done, 1 the snapshot is invalid or the action was refused or failed,
2 bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, Sequence

import psycopg

from linkstore import Link, StateChange, StoreUnavailable, data_paths, open_url, redacted
from linkstore.jsonfile import (FileStore, State, dump_links, exclusive_lock, state_of,
                                states_problem, write_atomically)
from linkstore.jsonfile import parse_links as parse_links_file
from linkstore.postgres import RECORD_CHANGE, SELECT_ALL, iso, to_link
from ops.error_hunt import parse_since
from ops.store import CopyError
from ops.store import copy as store_copy

MANIFEST = "manifest.json"
LINKS = "urls.json"
# What a snapshot carries besides the uploads, in ONE place. The file backend's files
# beside urls.json that hold data (not .lock or .journal, which the store rebuilds):
SIDECARS = (".state", ".audit")  # linkstore.jsonfile: the links' states; their history
# The PostgreSQL tables a snapshot reads, in one transaction, into that set: links into
# urls.json and urls.json.state, link_events into urls.json.audit (copy_database), and
# a restore writes back (add_to_database). Every other table is named in NOT_CARRIED
# with why; tests/test_backup_lifecycle.py fails for a table in neither.
TABLES = ("links", "link_events")
NOT_CARRIED = {"schema_migrations": "the migrations apply themselves",
               "link_counts": "derived from links by a trigger",
               "link_changes": "the workers' cache-eviction log",
               "visit_": "visit counts are not links (RDS's own backups keep them)",
               # Not carried yet (README, "Backups"): a restore must never bring back a key
               # revoked since the snapshot, nor replace reports that came after it.
               "api_keys": "keys: RDS's own backups keep them; a snapshot must not revive "
                           "a revoked key",
               "link_reports": "visitors' reports: RDS's own backups keep them"}
STATE, AUDIT = (LINKS + suffix for suffix in SIDECARS)
SELECT_EVENTS = ("SELECT code, action, changed_by, changed_at, reason, note FROM link_events"
                 " ORDER BY id")
UPLOADS = "uploads"
FORMAT = 1
CHUNK = 1 << 20
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class BackupError(Exception):
    """An action that cannot go ahead; the message says why and what to do."""


# ---- the store's files and lock -------------------------------------------------------

@dataclass(frozen=True)
class Live:
    """Where the running app keeps its data (same defaults and variables as the app)."""

    urls_file: Path
    upload_dir: Path
    lock_timeout: float
    database_url: str = ""  # set: the links are in PostgreSQL, not in urls_file

    @property
    def lock_path(self) -> Path:
        return self.urls_file.with_name(self.urls_file.name + ".lock")

    def file(self, name: str) -> Path:
        """The live file that is ``name`` (urls.json or a sidecar) in a snapshot."""
        return self.urls_file.with_name(self.urls_file.name + name.removeprefix(LINKS))

    @classmethod
    def from_env(cls, urls_file: str | None, upload_dir: str | None,
                 lock_timeout: float, database_url: str | None = None) -> Live:
        _, live_file, live_uploads = data_paths(os.environ.get)
        return cls(
            Path(urls_file) if urls_file else live_file,
            Path(upload_dir) if upload_dir else live_uploads,
            lock_timeout,
            database_url if database_url is not None else os.environ.get("DATABASE_URL", ""),
        )


@contextlib.contextmanager
def store_lock(live: Live) -> Iterator[None]:
    """Hold the app's exclusive lock on the links file (see the module docstring)."""
    live.lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with exclusive_lock(live.lock_path, live.lock_timeout):
            yield
    except StoreUnavailable as error:
        if "locked by another process" not in str(error):
            raise BackupError(str(error)) from None
        raise BackupError(
            f"{live.lock_path} stayed locked for {live.lock_timeout:g} s; the app "
            "may be stuck writing. Try again, or raise --lock-timeout.") from None


def parse_links(data: bytes, what: str) -> dict[str, dict[str, str]]:
    """A links file's records, or BackupError saying what is wrong (the app's own check)."""
    try:
        return parse_links_file(data, what)
    except StoreUnavailable as error:
        raise BackupError(str(error)) from None


def parse_sidecar(name: str, data: bytes, what: str) -> int:
    """How many entries a sidecar holds (states, or recorded changes), or BackupError
    saying what is wrong: the checks the store makes when it reads them."""
    try:
        if name == STATE:
            states = json.loads(data)
            problem = states_problem(states)
            if problem:
                raise BackupError(f"{what} has the wrong shape: {problem}")
            return len(states)
        lines = data.decode().splitlines()
        for line in lines:
            StateChange(**json.loads(line))
        return len(lines)
    except (UnicodeDecodeError, ValueError, TypeError) as error:
        raise BackupError(f"{what} cannot be read: {error}") from None


def put_atomically(path: Path, source: Path | bytes) -> None:
    """Write path whole or not at all (linkstore's write_atomically), from bytes or a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(source, bytes):
        write_atomically(path, [source])
        return
    with open(source, "rb") as src:
        write_atomically(path, iter(lambda: src.read(CHUNK), b""))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ---- where snapshots live -------------------------------------------------------------

class Destination(Protocol):
    """A place that holds snapshots: a local directory or an S3 prefix."""

    url: str

    def put_bytes(self, key: str, data: bytes) -> None: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def get_file(self, key: str, path: Path) -> None: ...
    def snapshot_names(self) -> list[str]: ...
    def begin(self, name: str) -> None: ...
    def commit(self, name: str) -> None: ...
    def delete(self, name: str) -> None: ...


class LocalDestination:
    """Snapshots in a directory; each is built in a hidden directory, then renamed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)
        self.building: dict[str, Path] = {}

    def path(self, key: str) -> Path:
        name, _, rest = key.partition("/")
        return self.building.get(name, self.root / name) / rest

    def put_bytes(self, key: str, data: bytes) -> None:
        put_atomically(self.path(key), data)

    def put_file(self, key: str, path: Path) -> None:
        put_atomically(self.path(key), path)

    def get_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def get_file(self, key: str, path: Path) -> None:
        shutil.copyfile(self.path(key), path)

    def snapshot_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if not p.name.startswith(".") and (p / MANIFEST).is_file())

    def begin(self, name: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.building[name] = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{name}."))

    def commit(self, name: str) -> None:
        os.replace(self.building.pop(name), self.root / name)

    def delete(self, name: str) -> None:
        shutil.rmtree(self.root / name)


class S3Destination:
    """Snapshots under s3://bucket/prefix; the manifest, uploaded last, marks them whole."""

    def __init__(self, url: str) -> None:
        import boto3  # only S3 destinations need it

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise BackupError(f"{url}: expected s3://bucket/prefix")
        self.url, self.bucket, self.prefix = url, bucket, prefix.strip("/")
        self.s3 = boto3.client("s3")

    def key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self.key(key), Body=data,
                           ServerSideEncryption="AES256")

    def put_file(self, key: str, path: Path) -> None:
        self.s3.upload_file(str(path), self.bucket, self.key(key),
                            ExtraArgs={"ServerSideEncryption": "AES256"})

    def get_bytes(self, key: str) -> bytes:
        body: bytes = self.s3.get_object(Bucket=self.bucket, Key=self.key(key))["Body"].read()
        return body

    def get_file(self, key: str, path: Path) -> None:
        self.s3.download_file(self.bucket, self.key(key), str(path))

    def keys(self, under: str) -> Iterator[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.key(under))
        for page in pages:
            yield from (item["Key"] for item in page.get("Contents", []))

    def snapshot_names(self) -> list[str]:
        start = len(self.key(""))
        return sorted(key[start:-len(MANIFEST) - 1] for key in self.keys("")
                      if key.endswith(f"/{MANIFEST}") and key[start:].count("/") == 1)

    def begin(self, name: str) -> None:
        """Nothing to prepare: until its manifest exists a snapshot does not count."""

    def commit(self, name: str) -> None:
        """Nothing to do: the manifest was the last object written."""

    def delete(self, name: str) -> None:
        # The manifest goes first, so a deletion cut short leaves an incomplete snapshot.
        self.s3.delete_object(Bucket=self.bucket, Key=self.key(f"{name}/{MANIFEST}"))
        keys = [{"Key": key} for key in self.keys(f"{name}/")]
        for start in range(0, len(keys), 1000):
            self.s3.delete_objects(Bucket=self.bucket,
                                   Delete={"Objects": keys[start:start + 1000]})


def destination(url: str) -> Destination:
    if url.startswith("s3://"):
        return S3Destination(url)
    return LocalDestination(Path(url))


def split_snapshot(url: str) -> tuple[Destination, str]:
    """`DEST/NAME` names one snapshot; `DEST` alone means its newest one."""
    stripped = url.rstrip("/")
    parent, _, name = stripped.rpartition("/")
    if parent and name and (not url.startswith("s3://") or parent != "s3:/"):
        place = destination(parent)
        if name in place.snapshot_names():
            return place, name
    place = destination(stripped)
    names = place.snapshot_names()
    if not names:
        raise BackupError(f"no complete snapshot at {url}")
    return place, names[-1]


# ---- snapshot -------------------------------------------------------------------------

def snapshot_name(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%S%fZ")


def copy_live_links(live: Live, scratch: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Write the live links as the file backend's set (urls.json and SIDECARS) into
    scratch; return where they came from, and how many links, file links, states and
    recorded changes there are."""
    if live.database_url:
        return copy_database(live, scratch)
    with store_lock(live):
        try:
            data, present = live.urls_file.read_bytes(), True
        except FileNotFoundError:
            data, present = b"{}", False
        sidecars = {}
        for name in (STATE, AUDIT):
            with contextlib.suppress(FileNotFoundError):
                sidecars[name] = live.file(name).read_bytes()
    links = parse_links(data, f"the live link file {live.urls_file}")
    counts = {"links": len(links),
              "file_links": sum(1 for record in links.values() if "file" in record)}
    put_atomically(scratch / LINKS, data)
    for name, content in sidecars.items():
        counts[name] = parse_sidecar(name, content, f"the live {live.file(name)}")
        put_atomically(scratch / name, content)
    return {"urls_file": str(live.urls_file), "urls_file_present": present}, counts


def copy_database(live: Live, scratch: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The TABLES, read in one transaction (a consistent view), written as the file set."""
    store = open_url(live.database_url, timeout=60.0)  # brings the schema up to date
    try:
        problem = store.problem()
    finally:
        store.close()
    if problem:
        raise BackupError(problem)
    counted = Counted()
    try:
        with psycopg.connect(live.database_url, connect_timeout=60) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.transaction():
                with conn.cursor(name="snapshot_links") as cursor:
                    cursor.itersize = 5_000
                    cursor.execute(SELECT_ALL)
                    write_atomically(scratch / LINKS, dump_links(
                        counted.links(to_link(row) for row in cursor)))
                changes = [StateChange(code, action, by, iso(at) or "", reason, note)
                           for code, action, by, at, reason, note
                           in conn.execute(SELECT_EVENTS)]
    except (psycopg.Error, StoreUnavailable) as error:
        raise BackupError(f"cannot read {redacted(live.database_url)}: {error}") from None
    write_atomically(scratch / STATE, [json.dumps(counted.states, ensure_ascii=False).encode()])
    write_atomically(scratch / AUDIT, [
        "".join(json.dumps(asdict(change), ensure_ascii=False) + "\n"
                for change in changes).encode()])
    return {"database": redacted(live.database_url)}, {
        "links": counted.links_seen, "file_links": counted.files,
        STATE: len(counted.states), AUDIT: len(changes)}


class Counted:
    """Counts the links (and file links) that pass through it, and keeps their states."""

    def __init__(self) -> None:
        self.links_seen = self.files = 0
        self.states: dict[str, State] = {}

    def links(self, links: Iterable[Link]) -> Iterator[Link]:
        for link in links:
            self.links_seen += 1
            self.files += link.file is not None
            if state := state_of(link):
                self.states[link.code] = state
            yield link


def take_snapshot(live: Live, place: Destination, keep: int,
                  now: datetime | None = None) -> dict[str, Any]:
    """Copy the store to place, write the manifest, prune to `keep`; return the manifest."""
    started = now or datetime.now(timezone.utc)
    name = snapshot_name(started)
    with tempfile.TemporaryDirectory(prefix="snapshot-") as scratch:
        source, counts = copy_live_links(live, Path(scratch))
        place.begin(name)
        files: dict[str, dict[str, Any]] = {}
        for key in (LINKS, STATE, AUDIT):
            copy = Path(scratch) / key
            if copy.exists():
                files[key] = {"size": copy.stat().st_size, "sha256": sha256_file(copy)}
                place.put_file(f"{name}/{key}", copy)
    uploads = sorted(p for p in live.upload_dir.iterdir() if p.is_file()
                     and not p.name.startswith(".")) if live.upload_dir.is_dir() else []
    for upload in uploads:
        key = f"{UPLOADS}/{upload.name}"
        files[key] = {"size": upload.stat().st_size, "sha256": sha256_file(upload)}
        place.put_file(f"{name}/{key}", upload)
    manifest = {
        "format": FORMAT,
        "name": name,
        "created_at": started.isoformat(),
        "host": socket.gethostname(),
        "source": {**source, "upload_dir": str(live.upload_dir)},
        "links": counts["links"],
        "file_links": counts["file_links"],
        "link_states": counts.get(STATE, 0),
        "state_changes": counts.get(AUDIT, 0),
        "uploads": len(uploads),
        "bytes": sum(int(entry["size"]) for entry in files.values()),
        "files": files,
    }
    place.put_bytes(f"{name}/{MANIFEST}", json.dumps(manifest, indent=2).encode())
    place.commit(name)
    for old in place.snapshot_names()[:-keep]:
        place.delete(old)
    return manifest


# ---- verify ---------------------------------------------------------------------------

def load_manifest(place: Destination, name: str) -> dict[str, Any]:
    try:
        manifest = json.loads(place.get_bytes(f"{name}/{MANIFEST}"))
    except (OSError, ValueError) as error:
        raise BackupError(f"{place.url}/{name}: unreadable manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{place.url}/{name}: not a format-{FORMAT} manifest")
    return manifest


def safe_key(key: str) -> bool:
    """urls.json, a sidecar or uploads/<plain name>: a manifest must not point a restore
    elsewhere."""
    name = key.removeprefix(f"{UPLOADS}/")
    return key in (LINKS, STATE, AUDIT) or (
        name != key and "/" not in name and "\\" not in name and not name.startswith("."))


def verify(place: Destination, name: str, scratch: Path) -> list[str]:
    """Check every file against the manifest and that the link file parses.

    Returns the problems found (empty: the snapshot is good). Files are fetched into
    scratch so that S3 snapshots are checked byte for byte too.
    """
    manifest = load_manifest(place, name)
    problems: list[str] = []
    for key, expected in manifest["files"].items():
        if not safe_key(key):
            problems.append(f"{key!r}: not a file a snapshot may hold")
            continue
        local = scratch / key.replace("/", "__")
        try:
            place.get_file(f"{name}/{key}", local)
        except Exception as error:  # OSError locally, botocore's ClientError on S3
            problems.append(f"{key}: cannot be read ({error})")
            continue
        if local.stat().st_size != expected["size"] or sha256_file(local) != expected["sha256"]:
            problems.append(f"{key}: size or SHA-256 differs from the manifest")
    links_copy = scratch / LINKS
    if LINKS not in manifest["files"] or not links_copy.exists():
        return problems + [f"{LINKS} is missing"]
    try:
        links = parse_links(links_copy.read_bytes(), f"the snapshot's {LINKS}")
    except BackupError as error:
        return problems + [str(error)]
    if len(links) != manifest["links"]:
        problems.append(f"{LINKS} holds {len(links)} links, the manifest says "
                        f"{manifest['links']}")
    for key, counted in ((STATE, "link_states"), (AUDIT, "state_changes")):
        if key in manifest["files"] and (scratch / key).exists():
            try:
                entries = parse_sidecar(key, (scratch / key).read_bytes(),
                                        f"the snapshot's {key}")
            except BackupError as error:
                problems.append(str(error))
                continue
            if entries != manifest.get(counted, entries):
                problems.append(f"{key} holds {entries} entries, the manifest says "
                                f"{manifest[counted]}")
    for code, record in links.items():
        if "file" in record and f"{UPLOADS}/{record['file']}" not in manifest["files"]:
            problems.append(f"link {code!r} needs {UPLOADS}/{record['file']}, not in the snapshot")
    return problems


# ---- restore --------------------------------------------------------------------------

def restore(live: Live, place: Destination, name: str, force: bool,
            now: datetime | None = None) -> dict[str, Any]:
    """Put a verified snapshot back; return what was done."""
    with tempfile.TemporaryDirectory(prefix="restore-") as scratch_dir:
        scratch = Path(scratch_dir)
        problems = verify(place, name, scratch)
        if problems:
            raise BackupError(f"{place.url}/{name} does not verify, so it is not restored: "
                              + "; ".join(problems))
        snapshot_bytes = (scratch / LINKS).read_bytes()
        wanted = parse_links(snapshot_bytes, "the snapshot")
        manifest = load_manifest(place, name)
        if live.database_url and force:
            raise BackupError("--force applies to the links file only: a restore into "
                              "PostgreSQL never overwrites or deletes a link (for a database "
                              "rolled back in time, use RDS point-in-time restore)")
        restored_uploads = restore_uploads(live, manifest, scratch)
        done: dict[str, Any] = {"snapshot": f"{place.url}/{name}", "links": len(wanted),
                                "uploads_restored": restored_uploads}
        if live.database_url:
            return done | add_to_database(live, scratch)
        with store_lock(live):
            # A snapshot from before the sidecars were carried leaves the live ones alone:
            # the takedowns it does not know of stay taken down.
            sidecars = (STATE, AUDIT) if "link_states" in manifest else ()
            kept = replace_links(live, scratch, sidecars, snapshot_bytes, wanted, force,
                                 now or datetime.now(timezone.utc))
    return done | kept


def add_to_database(live: Live, scratch: Path) -> dict[str, int]:
    """Copy the snapshot's links into PostgreSQL with ``ops.store``'s checked copy: only
    what the database lacks is added, with its state, and a differing link stops it
    before any write. Then the history of the links it added."""
    snapshot = FileStore(scratch / LINKS)  # with the urls.json.state beside it
    database = open_url(live.database_url, timeout=60.0)
    try:
        before = {link.code for link in database.links()}
        added = store_copy(snapshot, database).added
        changes = [asdict(change) for change in snapshot_history(scratch)
                   if change.code not in before]
        with psycopg.connect(live.database_url, connect_timeout=60) as conn:
            conn.cursor().executemany(RECORD_CHANGE, [
                (c["code"], c["action"], c["by"], c["at"], c["reason"], c["note"])
                for c in changes])
    except (CopyError, StoreUnavailable, psycopg.Error) as error:
        raise BackupError(f"not restored into {redacted(live.database_url)}: {error}") from None
    finally:
        database.close()
    return {"links_added": added, "state_changes_added": len(changes)}


def snapshot_history(scratch: Path) -> list[StateChange]:
    try:
        lines = (scratch / AUDIT).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [StateChange(**json.loads(line)) for line in lines]


def restore_uploads(live: Live, manifest: dict[str, Any], scratch: Path) -> int:
    """Copy back uploads that are missing; an existing upload is never overwritten."""
    count = 0
    for key in manifest["files"]:
        if not key.startswith(f"{UPLOADS}/"):
            continue
        target = live.upload_dir / key.removeprefix(f"{UPLOADS}/")
        if not target.exists():
            put_atomically(target, scratch / key.replace("/", "__"))
            count += 1
    return count


def replace_links(live: Live, scratch: Path, sidecars: Sequence[str], data: bytes,
                  wanted: dict[str, Any], force: bool, now: datetime) -> dict[str, Any]:
    """Swap the live set for the snapshot's (lock held): each sidecar, then the links
    file; keep each file replaced beside it, and say where. A sidecar the snapshot lacks
    is moved aside: the links it described are gone with it."""
    try:
        current = live.urls_file.read_bytes()
    except FileNotFoundError:
        current = None
    if current is not None and not force:
        try:
            newer = sorted(set(parse_links(current, "the live file")) - set(wanted))
        except BackupError:
            newer = []  # an unreadable live file is what a restore is for
        if newer:
            shown = ", ".join(newer[:10]) + (" ..." if len(newer) > 10 else "")
            raise BackupError(
                f"{live.urls_file} holds {len(newer)} link(s) the snapshot lacks ({shown}); "
                "restoring would lose them. Pick a newer snapshot, or pass --force (the "
                "current file is kept beside it either way).")
    kept: dict[str, str | None] = {}
    for name in (*sidecars, LINKS):
        path, kept[name] = live.file(name), None
        with contextlib.suppress(FileNotFoundError):
            kept_path = path.with_name(f"{path.name}.replaced-{snapshot_name(now)}")
            put_atomically(kept_path, path.read_bytes())
            kept[name] = str(kept_path)
            if not (scratch / name).exists():
                path.unlink()
        if name == LINKS:
            put_atomically(path, data)
        elif (scratch / name).exists():
            put_atomically(path, scratch / name)
    return {"replaced_file_kept_as": kept[LINKS],
            "replaced_sidecars_kept_as": {name: kept[name] for name in sidecars}}


# ---- command line ---------------------------------------------------------------------

def default_destination() -> str | None:
    """BACKUP_DEST, else s3://$BACKUP_BUCKET/$BACKUP_PREFIX (as .ebextensions sets them)."""
    if os.environ.get("BACKUP_DEST"):
        return os.environ["BACKUP_DEST"]
    bucket = os.environ.get("BACKUP_BUCKET")
    if bucket:
        return f"s3://{bucket}/{os.environ.get('BACKUP_PREFIX', 'shortener').strip('/')}"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ops.backup",
        description="Snapshot, verify, list and restore the link store (the links, from "
                    "urls.json or PostgreSQL, and the uploads). DEST is a directory or "
                    "s3://bucket/prefix; by default $BACKUP_DEST, else "
                    "s3://$BACKUP_BUCKET/$BACKUP_PREFIX.",
        epilog="Exit status: 0 done, 1 invalid snapshot or refused/failed action, 2 bad "
               "arguments. Example: python -m ops.backup restore s3://my-bucket/shortener",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def store_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--urls-file", help="the live link file (default $URLS_FILE, "
                                                 "else $DATA_DIR/urls.json, DATA_DIR=./data)")
        command.add_argument("--upload-dir", help="the live upload directory (default "
                                                  "$UPLOAD_DIR, else $DATA_DIR/uploads)")
        command.add_argument("--lock-timeout", type=float, default=30.0, metavar="SECONDS",
                             help="how long to wait for the store's lock (default 30)")
        command.add_argument("--database-url", metavar="URL",
                             help="the links are in this PostgreSQL database, not in the "
                                  "file (default $DATABASE_URL; '' for the file)")

    snap = sub.add_parser("snapshot", help="copy the store (under its lock) to DEST")
    snap.add_argument("dest", nargs="?", default=default_destination(), metavar="DEST",
                      help="directory or s3://bucket/prefix to write the snapshot under")
    snap.add_argument("--keep", type=int, default=48, metavar="N",
                      help="keep the newest N complete snapshots, delete older (default 48)")
    store_options(snap)

    check = sub.add_parser("verify", help="check a snapshot against its manifest")
    check.add_argument("snapshot", metavar="SNAPSHOT",
                       help="DEST/NAME, or DEST for its newest snapshot")
    check.add_argument("--max-age", type=parse_since, metavar="SPAN",
                       help="also fail if the snapshot was taken before this: a span back "
                            "from now (90m, 2h, 1d) or an ISO time; for a probe that alerts "
                            "when scheduled snapshots stop")

    listing = sub.add_parser("list", help="list the complete snapshots under DEST")
    listing.add_argument("dest", nargs="?", default=default_destination(), metavar="DEST",
                         help="directory or s3://bucket/prefix")

    back = sub.add_parser("restore", help="put a snapshot back as the live store")
    back.add_argument("snapshot", metavar="SNAPSHOT",
                      help="DEST/NAME, or DEST for its newest snapshot")
    back.add_argument("--force", action="store_true",
                      help="replace the live file even if it holds links the snapshot lacks")
    store_options(back)
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.command in ("snapshot", "list") and not args.dest:
        raise BackupError("no DEST given and neither BACKUP_DEST nor BACKUP_BUCKET is set")
    if args.command == "snapshot":
        if args.keep < 1:
            raise BackupError("--keep must be at least 1")
        live = Live.from_env(args.urls_file, args.upload_dir, args.lock_timeout,
                             args.database_url)
        return take_snapshot(live, destination(args.dest), args.keep)
    if args.command == "list":
        place = destination(args.dest)
        return {"dest": place.url, "snapshots": [
            {key: value for key, value in load_manifest(place, name).items() if key != "files"}
            for name in place.snapshot_names()]}
    place, name = split_snapshot(args.snapshot)
    if args.command == "verify":
        with tempfile.TemporaryDirectory(prefix="verify-") as scratch:
            problems = verify(place, name, Path(scratch))
        taken = datetime.fromisoformat(load_manifest(place, name)["created_at"])
        if args.max_age and taken < args.max_age:
            problems.append(f"it was taken at {taken.isoformat()}, before "
                            f"{args.max_age.isoformat()}: are scheduled snapshots running?")
        if problems:
            raise BackupError(f"{place.url}/{name} failed verification: " + "; ".join(problems))
        return {"snapshot": f"{place.url}/{name}", "ok": True}
    live = Live.from_env(args.urls_file, args.upload_dir, args.lock_timeout,
                         args.database_url)
    return restore(live, place, name, args.force)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except BackupError as error:
        print(f"backup {args.command}: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(result, indent=2))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
