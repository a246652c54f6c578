"""Links in one JSON file, shared by every worker (and, on EFS, every instance).

The file is the original app's format: ``{"code": {"url": "https://..."}}`` or
``{"code": {"file": "name"}}``, plus optional fields such as ``created_at``.

Writes take an exclusive ``flock`` on ``<file>.lock``, catch up with the file, refuse a
taken code, write a temporary file (the current file's own bytes plus the new entries),
``fsync`` it, announce it in ``<file>.journal``, rename it over the file and ``fsync``
the directory: readers see the old file or the new one, never a part. Each worker keeps
the links in memory and follows the file by its identity, so a redirect costs one
``stat`` and a dict lookup, and a change on disk (a new link, a restore, an edit by
hand) is seen by every worker on its next request. A file that cannot be parsed is
never overwritten: reads keep serving the last good copy, writes raise
StoreUnavailable, and the log says how to restore it.

What changes after a link is made (its state, the visits used of a limited link) is not
written into the file: rewriting a million links for one visit would cost a copy of the
whole file per visit. It lives in a small sidecar, ``<file>.state``: one entry for each
link whose state is not the default (disabled, deleted, or visits used), replaced
atomically under the same lock and followed by every worker by its identity, as the
file is. Every change of state is appended to ``<file>.audit`` (one JSON line: who,
when, what) before the new sidecar is renamed into place, so no change is without its
record. A visit of a limited link is counted under the lock, so never more than its
limit are served, whatever the number of workers and instances.

``ops.backup`` uses the lock, ``write_atomically`` and ``parse_links`` from here, so
there is one implementation of the protocol every writer of the file follows.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from linkstore import (ACTIVE, STATES, CodeTaken, Link, NoSuchLink, StateChange, StateChanges,
                       StoreUnavailable, changed_link)

log = logging.getLogger("shortener.store")

Record = dict[str, str]
Identity = tuple[int, ...]  # see identity_from(): one version of a file
RESTORE_HINT = ("Restore the last good copy with `python -m ops.backup restore` "
                "(see README, Operating).")


class Packed(str):
    """A URL record in memory: the URL, then NUL and created_at when it has one.

    Nearly every link is one, so it is one string rather than a dict or a tuple of two
    (docs/performance.md has what that saves). A str subclass, so a bare JSON string in
    a malformed file is never taken for one.
    """

    __slots__ = ()


Stored = Record | Packed
State = dict[str, Any]  # a sidecar entry: "visits", "state", "reason", "note", "by", "at"
STATE_FIELDS = {"visits": "visits", "state": "state", "reason": "reason", "note": "note",
                "by": "changed_by", "at": "changed_at"}  # sidecar key: Link field


class FileStore(StateChanges):
    """The JSON file backend of ``linkstore.LinkStore``.

    Besides the file, every write appends its links to a journal beside it, naming the
    file it was added to (``prev``) and the file that resulted (``now``), by identity.
    A worker whose copy is the ``prev`` of the next entries catches up by applying them
    instead of parsing the whole file again. Anything else (a restored backup, an edit
    by hand, a journal cut short) breaks the chain, and the worker parses the file,
    which stays the one source of truth.
    """

    JOURNAL_MAX_BYTES = 1 << 20  # then it starts again; workers that far behind re-parse

    def __init__(self, urls_file: Path, lock_timeout: float = 5.0) -> None:
        self.path = urls_file
        self.lock_path = urls_file.with_name(urls_file.name + ".lock")
        self.journal_path = urls_file.with_name(urls_file.name + ".journal")
        self.state_path = urls_file.with_name(urls_file.name + ".state")
        self.audit_path = urls_file.with_name(urls_file.name + ".audit")
        self.lock_timeout = lock_timeout
        self.error: str | None = None  # why the file on disk cannot be used, if it cannot
        self.state_error: str | None = None  # the same for the sidecar
        self._links: dict[str, Stored] = {}
        self._identity: Identity | None = (-1,)  # the file _links came from; never read yet
        self._states: dict[str, State] = {}
        self._state_identity: Identity | None = (-1,)
        self._journal_offset = 0
        # Threads of one worker (gunicorn gthread) share _links and _identity: they change
        # together under this lock, or a create could see a new identity with old links.
        self._memory_lock = threading.Lock()

    # --- reading ---------------------------------------------------------------------

    def get(self, code: str) -> Link | None:
        self.refresh()
        stored = self._links.get(code)
        if stored is None:
            return None
        state = self._states.get(code)
        return expand(code, stored) if state is None else with_state(expand(code, stored), state)

    def current(self, code: str) -> Link | None:
        """Every read follows the file and the sidecar: nothing is kept longer."""
        return self.get(code)

    def count(self) -> int:
        self.refresh()
        return len(self._links)

    def links(self) -> Iterator[Link]:
        self.refresh()
        with self._memory_lock:
            items, states = sorted(self._links.items()), dict(self._states)
        return (with_state(expand(code, stored), states.get(code, {}))
                for code, stored in items)

    def owned(self, owner: str, limit: int, after: tuple[str, str] | None = None
              ) -> list[Link]:
        """Looks through every link in memory: the file has no index by owner."""
        self.refresh()
        with self._memory_lock:
            mine = sorted(((stored.get("created_at", ""), code)
                           for code, stored in self._links.items()
                           if isinstance(stored, dict) and stored.get("owner") == owner),
                          reverse=True)
        page = [code for created_at, code in mine
                if after is None or (created_at, code) < after][:limit]
        return [link for link in map(self.get, page) if link is not None]

    def history(self, code: str) -> list[StateChange]:
        try:
            with open(self.audit_path, encoding="utf-8") as audit:
                entries = [json.loads(line) for line in audit if line.endswith("\n")]
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise StoreUnavailable(f"cannot read {self.audit_path}: {exc}") from exc
        return [StateChange(**entry) for entry in entries if entry.get("code") == code]

    def problem(self) -> str | None:
        self.refresh()
        if self.error or self.state_error:
            return self.error or self.state_error
        try:  # the copy in memory may be fine while a restarted worker could not read it
            with open(self.path, "rb"):
                pass
        except FileNotFoundError:
            pass  # no link yet, or a vanished file, which refresh() reports
        except OSError as exc:
            return f"cannot read {self.path}: {exc.strerror}"
        return None

    def close(self) -> None:
        """Nothing to release: every file is closed after each use."""

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
            self._refresh_states()
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

    def _refresh_states(self) -> None:
        """Follow the sidecar as the file is followed: by identity, keeping the last good
        copy when the one on disk cannot be used (memory lock held)."""
        problem: str | None = None
        try:
            identity = identity_of(self.state_path)
            if identity == self._state_identity:
                return
            self._states = self._read_states(identity)
        except OSError as exc:  # stat failed: try again on the next request
            identity, problem = (-1,), f"cannot stat {self.state_path}: {exc.strerror}"
        except StoreUnavailable as exc:  # do not parse the same bad sidecar on every request
            problem = str(exc)
        self._state_identity = identity
        if problem and problem != self.state_error:
            log.error("link states unusable: %s. Serving the last good copy and refusing "
                      "changes. %s", problem, RESTORE_HINT)
        self.state_error = problem

    def _read_states(self, identity: Identity | None) -> dict[str, State]:
        if identity is None:
            if os.path.exists(self.audit_path) and os.stat(self.audit_path).st_size:
                raise StoreUnavailable(f"{self.state_path} is missing, but "
                                       f"{self.audit_path.name} shows states were changed")
            return {}
        states = load_json(self.state_path)
        problem = states_problem(states)
        if problem:
            raise StoreUnavailable(f"{self.state_path} has the wrong shape: {problem}")
        return states  # type: ignore[no-any-return]  # states_problem checked it

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
        with urls_file, reading(self.path):
            links = json.load(urls_file, object_hook=compact)
            st = os.fstat(urls_file.fileno())
        problem = shape_problem(links)
        if problem:
            raise StoreUnavailable(f"{self.path} has the wrong shape: {problem}")
        return links, identity_from(st)

    # --- writing ---------------------------------------------------------------------

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the store's exclusive cross-process lock, waiting at most lock_timeout."""
        return exclusive_lock(self.lock_path, self.lock_timeout)

    def add(self, link: Link) -> None:
        with self.locked():
            self._writable()
            if link.code in self._links:  # deleted links included: a code is never reused
                raise CodeTaken(link.code)
            self._append({link.code: link.record()})

    def add_many(self, links: Iterable[Link]) -> int:
        """See LinkStore.add_many. A link is the same as the stored one when its record
        is; the state of a new link (a copy from another store) is kept."""
        with self.locked():
            self._writable()
            new: dict[str, Record] = {}
            states: dict[str, State] = {}
            for link in links:
                present = self._links.get(link.code)
                if present is None and link.code not in new:
                    new[link.code] = link.record()
                    if state_of(link):
                        states[link.code] = state_of(link)
                elif (expand(link.code, present).record() if present is not None
                      else new[link.code]) != link.record():
                    raise CodeTaken(link.code)
            if states:
                self._write_states(self._states | states)
            if new:
                self._append(new)
            return len(new)

    # --- the state sidecar (lock held) ---------------------------------------------------

    def consume_visit(self, code: str) -> Link | None:
        with self.locked():
            self._writable()
            link = self.get(code)
            if (link is None or link.max_visits is None
                    or link.stopped(datetime.now(timezone.utc))):
                return None
            used = replace(link, visits=link.visits + 1)
            self._write_states(self._states | {code: state_of(used)})
            return used

    def change(self, change: StateChange) -> Link:
        with self.locked():
            self._writable()
            link = self.get(change.code)
            if link is None:
                raise NoSuchLink(change.code)
            changed = changed_link(link, change)
            if changed != link:
                self._write_states(self._states | {change.code: state_of(changed)},
                                   lambda: self._append_audit(change))
            return changed

    def _write_states(self, states: dict[str, State],
                      record: Callable[[], None] = lambda: None) -> None:
        """Replace the sidecar with states; record() runs before the rename, and a failure
        there leaves the sidecar as it was."""
        states = {code: state for code, state in states.items() if state}
        lines = (json.dumps({code: state}, ensure_ascii=False)[1:-1]
                 for code, state in sorted(states.items()))
        try:
            written = write_atomically(self.state_path, [
                ("{\n" + ",\n".join(lines) + "\n}\n").encode()], lambda _: record())
        except OSError as exc:
            raise StoreUnavailable(f"cannot save the link's state ({exc.strerror}); nothing "
                                   "was changed") from exc
        with self._memory_lock:
            self._states, self._state_identity = states, written

    def _append_audit(self, change: StateChange) -> None:
        line = json.dumps(asdict(change), ensure_ascii=False) + "\n"
        with open(self.audit_path, "a", encoding="utf-8") as audit:
            audit.write(line)
            audit.flush()
            os.fsync(audit.fileno())

    def _writable(self) -> None:
        """Catch up with the file (lock held); StoreUnavailable if it cannot be written."""
        self.refresh()
        if self.error or self.state_error:
            raise StoreUnavailable(f"the link store is unusable: {self.error or self.state_error}")

    def _append(self, new: dict[str, Record]) -> None:
        """Write the file with new entries added, and tell the other workers (lock held)."""
        try:
            written = write_atomically(
                self.path, self._with_entries(new),
                lambda now: self._append_journal(self._identity, now, new))
        except OSError as exc:
            raise StoreUnavailable(f"cannot save the link ({exc.strerror}); nothing was "
                                   "changed") from exc
        with self._memory_lock:
            self._links.update({code: compact(record) for code, record in new.items()})
            self._identity = written

    def _with_entries(self, new: dict[str, Record]) -> Iterator[bytes]:
        """The bytes of the current file with the new entries before its closing brace.

        The file's own bytes are copied, not re-serialized from memory: a million links
        cost a copy, not a json.dumps, and links already there stay byte for byte as
        they were. Called under the lock, after refresh, so the file is the one parsed.
        """
        entries = b",".join(json.dumps({code: record}, ensure_ascii=False)[1:-1].encode()
                            for code, record in new.items())
        if self._identity is None:
            yield b"{" + entries + b"}"
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
        yield (b"" if head.endswith(b"{") else b",") + entries + b"}"

    def _append_journal(self, prev: Identity | None, now: Identity,
                        links: dict[str, Record]) -> None:
        """Tell the other workers what changed; they re-parse the file if this fails.

        A bulk import too large for the journal is not written to it: the other workers
        parse the file instead, which is what such an import costs anyway.
        """
        line = json.dumps({"prev": prev, "now": now, "links": links}, ensure_ascii=False)
        if len(line) > self.JOURNAL_MAX_BYTES:
            return
        try:
            mode = "w" if self._journal_size() > self.JOURNAL_MAX_BYTES else "a"
            with open(self.journal_path, mode, encoding="utf-8") as journal:
                journal.write(line + "\n")
        except OSError as exc:
            log.warning("could not append to %s (%s); workers will re-read %s instead",
                        self.journal_path, exc.strerror, self.path.name)


# --- the file's format ---------------------------------------------------------------

@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Reading and parsing a file of the store: what goes wrong as StoreUnavailable."""
    try:
        yield
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreUnavailable(f"cannot read {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise StoreUnavailable(f"{path} is not valid JSON ({exc})") from exc


def load_json(path: Path) -> Any:
    """A small JSON file of the store (a sidecar), or StoreUnavailable saying why not."""
    try:
        stored = open(path, encoding="utf-8")
    except OSError as exc:
        raise StoreUnavailable(f"cannot read {path}: {exc.strerror}") from exc
    with stored, reading(path):
        return json.load(stored)


def compact(record: Record) -> Stored:
    """The in-memory form of a record (json's object_hook: also sees the outer object).

    Only plain JSON strings are packed: the outer object of a file whose codes are
    ``url`` or ``created_at`` holds records, never strings, so it stays a dict.
    """
    url, created_at = record.get("url"), record.get("created_at")
    if record.keys() <= {"url", "created_at"} and type(url) is str and "\0" not in url:
        if created_at is None:
            return Packed(url)
        if type(created_at) is str and created_at and "\0" not in created_at:
            return Packed(f"{url}\0{created_at}")
    return record


def expand(code: str, stored: Stored) -> Link:
    if isinstance(stored, dict):
        return Link.from_record(code, stored)
    url, _, created_at = stored.partition("\0")
    return Link(code, url=url, created_at=created_at or None)


def with_state(link: Link, state: State) -> Link:
    """The link with its sidecar entry applied (an empty one: the defaults)."""
    if not state:
        return link
    return replace(link, **{field: state[key] for key, field in STATE_FIELDS.items()
                            if key in state})


def state_of(link: Link) -> State:
    """A link's sidecar entry: only what differs from a new link's."""
    entry = {key: getattr(link, field) for key, field in STATE_FIELDS.items()}
    return {key: value for key, value in entry.items()
            if value is not None and value != 0 and value != ACTIVE}


def states_problem(states: object) -> str | None:
    """Say what is wrong with a parsed sidecar, or None if every entry is usable."""
    if not isinstance(states, dict):
        return f"expected a JSON object of link states, found {type(states).__name__}"
    for code, state in states.items():
        if not isinstance(state, dict) or not state.keys() <= STATE_FIELDS.keys():
            return f"the state of {code!r} is not an object of {', '.join(STATE_FIELDS)}"
        visits = state.get("visits", 0)
        if type(visits) is not int or visits < 0:
            return f"the visits of {code!r} are not a whole number"
        if state.get("state", ACTIVE) not in STATES:
            return f"the state of {code!r} is not one of {', '.join(STATES)}"
        if not all(isinstance(state.get(key, ""), str) for key in ("reason", "note", "by", "at")):
            return f"the state of {code!r} has a field that is not a string"
    return None


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
        max_visits = record.get("max_visits", "1")
        if not (max_visits.isascii() and max_visits.isdecimal() and int(max_visits) >= 1):
            return f"link {code!r} has max_visits {max_visits!r}, not a whole number from 1"
        try:
            expires = datetime.fromisoformat(record.get("expires_at", "2000-01-01T00:00Z"))
        except ValueError:
            expires = None
        if expires is None or expires.tzinfo is None:
            return f"link {code!r} has expires_at {record['expires_at']!r}, not ISO 8601 in UTC"
    return None


def parse_links(data: bytes, what: str) -> dict[str, Record]:
    """A links file's bytes as records, or StoreUnavailable saying what is wrong."""
    try:
        links = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreUnavailable(f"{what} is not valid JSON: {exc}") from None
    problem = shape_problem(links)
    if problem:
        raise StoreUnavailable(f"{what} has the wrong shape: {problem}")
    return links  # type: ignore[no-any-return]  # shape_problem checked every record


# --- files and locks, shared with ops.backup -----------------------------------------

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


@contextlib.contextmanager
def exclusive_lock(lock_path: Path, timeout: float) -> Iterator[None]:
    """Hold an exclusive ``flock`` on lock_path, waiting at most timeout seconds."""
    created = not lock_path.exists()
    try:
        lock_file = open(lock_path, "a")
    except OSError as exc:
        raise StoreUnavailable(f"cannot open the lock file {lock_path}: "
                               f"{exc.strerror}") from exc
    with lock_file:
        if created:  # a tool run as root must leave a lock file the app can open
            adopt_owner(lock_path, lock_path.parent)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreUnavailable(
                        f"the store has been locked by another process for over "
                        f"{timeout:g} s; try again shortly") from None
                time.sleep(0.005)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def adopt_owner(path: Path, like: Path) -> None:
    """Run as root (cron, sudo), give a file the owner of `like`; otherwise nothing to do."""
    if os.geteuid() == 0:
        owner = like.stat()
        os.chown(path, owner.st_uid, owner.st_gid)


def write_atomically(path: Path, chunks: Iterable[bytes],
                     announce: Callable[[Identity], None] = lambda _: None) -> Identity:
    """Write a file so that readers see the old content or the new, never a part.

    The new file keeps the mode and owner of the one it replaces (a new one: mode 0600
    and the owner of its directory), so a tool run as root leaves files the app can
    still read. Returns the new file's identity (a rename keeps inode, mtime and size);
    ``announce`` gets it before the rename, so what it records (the journal entry) is
    there before any reader can see the new file.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
            with contextlib.suppress(FileNotFoundError):
                os.fchmod(out.fileno(), stat.S_IMODE(os.stat(path).st_mode))
            adopt_owner(Path(tmp), path if path.exists() else path.parent)
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


def dump_links(links: Iterable[Link]) -> Iterator[bytes]:
    """Links as a links file, one link a line, streamed: what ``ops.backup`` writes for
    a PostgreSQL snapshot, and what FileStore reads."""
    separator = b"{\n"
    for link in links:
        yield separator + json.dumps({link.code: link.record()},
                                     ensure_ascii=False)[1:-1].encode()
        separator = b",\n"
    yield b"{}\n" if separator == b"{\n" else b"\n}\n"
