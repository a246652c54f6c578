"""Snapshots of the link store that restore: snapshot, verify, list, restore.

A snapshot is a directory (local, or under ``s3://bucket/prefix``) named by its UTC time:

    20261127T051200123456Z/urls.json        the link file, copied under the store's lock
    20261127T051200123456Z/uploads/<name>   every uploaded file
    20261127T051200123456Z/manifest.json    counts, sizes and SHA-256 of every file

The manifest is written last, so a snapshot without one is incomplete and is ignored.
Only the newest ``--keep`` complete snapshots are kept.

The link file is read under the app's lock (an exclusive ``flock`` on
``<URLS_FILE>.lock``, the protocol every writer of the store follows), so the copy is
one the app wrote whole, never a half-written one. Uploads are copied afterwards: the
app writes a file before it adds the link to it, so every file a copied link needs is
already there.

The lock protocol is implemented here rather than imported: importing application.py
builds the app, which creates directories and a secret key, and a backup job must not.

``restore`` replaces the link file atomically under the same lock, keeps the file it
replaces beside it (``urls.json.replaced-<time>``), brings back missing uploads, and
refuses, unless ``--force``, to replace a live file that holds links the snapshot lacks.

Exit status: 0 done, 1 the snapshot is invalid or the action was refused or failed,
2 bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

from ops.error_hunt import parse_since

MANIFEST = "manifest.json"
LINKS = "urls.json"
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

    @property
    def lock_path(self) -> Path:
        return self.urls_file.with_name(self.urls_file.name + ".lock")

    @classmethod
    def from_env(cls, urls_file: str | None, upload_dir: str | None,
                 lock_timeout: float) -> Live:
        data_dir = Path(os.environ.get("DATA_DIR", "./data"))
        return cls(
            Path(urls_file or os.environ.get("URLS_FILE", str(data_dir / LINKS))),
            Path(upload_dir or os.environ.get("UPLOAD_DIR", str(data_dir / UPLOADS))),
            lock_timeout,
        )


@contextlib.contextmanager
def store_lock(live: Live) -> Iterator[None]:
    """Hold the app's exclusive lock on the link store (see the module docstring)."""
    live.lock_path.parent.mkdir(parents=True, exist_ok=True)
    created = not live.lock_path.exists()
    with open(live.lock_path, "a") as lock_file:
        if created:  # the app must be able to open it for appending, too
            adopt_owner(live.lock_path, live.lock_path.parent)
        deadline = time.monotonic() + live.lock_timeout
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BackupError(
                        f"{live.lock_path} stayed locked for {live.lock_timeout:g} s; the app "
                        "may be stuck writing. Try again, or raise --lock-timeout.") from None
                time.sleep(0.01)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def parse_links(data: bytes, what: str) -> dict[str, dict[str, Any]]:
    """The link file's content as a dict of records, or BackupError saying what is wrong."""
    try:
        links = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BackupError(f"{what} is not valid JSON: {error}") from None
    if not isinstance(links, dict) or not all(isinstance(r, dict) for r in links.values()):
        raise BackupError(f"{what} is not a JSON object of link records")
    return links


def write_atomically(path: Path, source: Path | bytes) -> None:
    """Temp file in the same directory, fsync, rename over path, fsync the directory.

    The new file keeps the mode and owner of the one it replaces (a new one: the owner of
    its directory), so a restore run as root leaves files the app can still read.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(source, bytes):
                out.write(source)
            else:
                with open(source, "rb") as src:
                    shutil.copyfileobj(src, out, CHUNK)
            out.flush()
            os.fsync(out.fileno())
        if path.exists():
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        adopt_owner(Path(tmp), path if path.exists() else path.parent)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def adopt_owner(path: Path, like: Path) -> None:
    """Run as root (cron, sudo), give a file the owner of `like`; otherwise nothing to do."""
    if os.geteuid() == 0:
        owner = like.stat()
        os.chown(path, owner.st_uid, owner.st_gid)


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
        write_atomically(self.path(key), data)

    def put_file(self, key: str, path: Path) -> None:
        write_atomically(self.path(key), path)

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


def read_links_locked(live: Live) -> tuple[bytes, bool]:
    """The link file's bytes, read under the store's lock; (b"{}", False) if absent."""
    with store_lock(live):
        try:
            return live.urls_file.read_bytes(), True
        except FileNotFoundError:
            return b"{}", False


def take_snapshot(live: Live, place: Destination, keep: int,
                  now: datetime | None = None) -> dict[str, Any]:
    """Copy the store to place, write the manifest, prune to `keep`; return the manifest."""
    started = now or datetime.now(timezone.utc)
    data, present = read_links_locked(live)
    links = parse_links(data, f"the live link file {live.urls_file}")
    name = snapshot_name(started)
    place.begin(name)
    files: dict[str, dict[str, Any]] = {
        LINKS: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
    place.put_bytes(f"{name}/{LINKS}", data)
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
        "source": {"urls_file": str(live.urls_file), "upload_dir": str(live.upload_dir),
                   "urls_file_present": present},
        "links": len(links),
        "file_links": sum(1 for record in links.values() if "file" in record),
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
    """urls.json or uploads/<plain name>: a manifest must not point a restore elsewhere."""
    name = key.removeprefix(f"{UPLOADS}/")
    return key == LINKS or (name != key and "/" not in name and "\\" not in name
                            and not name.startswith("."))


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
        restored_uploads = restore_uploads(live, manifest, scratch)
        with store_lock(live):
            kept = replace_links(live, snapshot_bytes, wanted, force,
                                 now or datetime.now(timezone.utc))
    return {"snapshot": f"{place.url}/{name}", "links": len(wanted),
            "uploads_restored": restored_uploads, "replaced_file_kept_as": kept}


def restore_uploads(live: Live, manifest: dict[str, Any], scratch: Path) -> int:
    """Copy back uploads that are missing; an existing upload is never overwritten."""
    count = 0
    for key in manifest["files"]:
        if not key.startswith(f"{UPLOADS}/"):
            continue
        target = live.upload_dir / key.removeprefix(f"{UPLOADS}/")
        if not target.exists():
            write_atomically(target, scratch / key.replace("/", "__"))
            count += 1
    return count


def replace_links(live: Live, data: bytes, wanted: dict[str, Any], force: bool,
                  now: datetime) -> str | None:
    """Swap the link file for the snapshot's (lock held); keep the old one beside it."""
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
    kept = None
    if current is not None:
        kept_path = live.urls_file.with_name(
            f"{live.urls_file.name}.replaced-{snapshot_name(now)}")
        write_atomically(kept_path, current)
        kept = str(kept_path)
    write_atomically(live.urls_file, data)
    return kept


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
        description="Snapshot, verify, list and restore the link store (urls.json and "
                    "uploads). DEST is a directory or s3://bucket/prefix; by default "
                    "$BACKUP_DEST, else s3://$BACKUP_BUCKET/$BACKUP_PREFIX.",
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
        live = Live.from_env(args.urls_file, args.upload_dir, args.lock_timeout)
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
    live = Live.from_env(args.urls_file, args.upload_dir, args.lock_timeout)
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
