"""Start servers in a process group of their own, and stop the whole group.

Every server this repository starts (gunicorn, nginx, Redis, PostgreSQL, Chromium), from
a test, a benchmark, a rehearsal or ``ops.release --target local``, goes through
``spawn`` and ``stop``, so that nothing it forked outlives it. Killing only the leader
is not enough: nginx's and gunicorn's workers are re-parented to init and keep running,
holding memory and sockets.

``stop`` asks politely first, in the way the server documents (``Graceful`` steps: a
signal to the leader, or a command such as ``pg_ctl stop -m fast``), waits for every
member to exit, then sends SIGKILL to every member left, and returns only when none is
alive. A member is a process of the leader's process group or session, or a descendant
of one (a child that left with ``setsid`` while its parent still runs). A process that
double-forked away from a parent that has already exited cannot be traced to the
server and is not a member; the test suite's leak check (tests/leakcheck.py) catches
those. Linux only: processes are found in /proc.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess  # nosec B404: callers pass argument lists, never a shell
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

# What ``stop`` does before SIGKILL: a signal for the group's leader, or a function to
# call (it should return once the server has been asked to stop); then up to `wait`
# seconds for every member to exit.


@dataclass(frozen=True)
class Graceful:
    action: signal.Signals | Callable[[], object]
    wait: float


TERM = (Graceful(signal.SIGTERM, 15.0),)  # gunicorn, Redis, Chromium
NGINX = (Graceful(signal.SIGQUIT, 10.0), Graceful(signal.SIGTERM, 5.0))

File = int | IO[Any] | None
POLL_S = 0.02


def spawn(cmd: Sequence[str], *, cwd: Path | str | None = None,
          env: Mapping[str, str] | None = None, stdout: File = subprocess.DEVNULL,
          stderr: File = subprocess.STDOUT) -> subprocess.Popen[bytes]:
    """Start cmd as the leader of a new session (and so of a new process group)."""
    return subprocess.Popen(  # nosec B603: an argument list, no shell
        list(cmd), cwd=cwd, env=None if env is None else dict(env), stdin=subprocess.DEVNULL,
        stdout=stdout, stderr=stderr, start_new_session=True)


@dataclass(frozen=True)
class Process:
    """One process, as /proc/<pid>/stat describes it."""

    pid: int
    ppid: int
    pgrp: int
    session: int
    started: int  # clock ticks after boot: tells a process from a later one with its pid
    zombie: bool  # exited, waiting for its parent to collect its status
    nice: int  # its nice value, -20 to 19


EXITED = ("Z", "X")  # the states of /proc/<pid>/stat of a process that has exited


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name, its state first (so
    fields[11:15] are utime, stime, cutime and cstime); None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def running(pid: int) -> bool:
    """pid is a live process: listed in /proc, and not a zombie waiting to be reaped."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] not in EXITED


def process_table() -> dict[int, Process]:
    """Every process on the machine, by pid."""
    table = {}
    # os.listdir, not Path.glob("[0-9]*/stat"): glob stats each match, and a process
    # that exits in between raises ProcessLookupError there (a stop failed so, once).
    for name in os.listdir("/proc"):
        fields = stat_fields(name) if name.isdigit() else None
        if fields is None:
            continue  # not a process, or it exited while we looked
        pid = int(name)
        table[pid] = Process(pid=pid, ppid=int(fields[1]), pgrp=int(fields[2]),
                             session=int(fields[3]), started=int(fields[19]),
                             zombie=fields[0] in EXITED, nice=int(fields[16]))
    return table


def children(parents: Collection[int], table: Mapping[int, Process] | None = None
             ) -> list[int]:
    """The live children of parents (a gunicorn master's workers, their visit writers),
    sorted; from table if given, else from /proc now."""
    return sorted(p.pid for p in (process_table() if table is None else table).values()
                  if p.ppid in parents and not p.zombie)


def descendants(roots: Iterable[int], table: Mapping[int, Process]) -> set[int]:
    """The children of roots, their children, and so on (roots excluded)."""
    children: dict[int, list[int]] = {}
    for process in table.values():
        children.setdefault(process.ppid, []).append(process.pid)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def group_leaders_below(ancestor: int) -> list[int]:
    """The live descendants of ancestor that lead a process group: the servers it started
    with ``spawn`` (or that a library such as Playwright started for it)."""
    table = process_table()
    return sorted(pid for pid in descendants([ancestor], table)
                  if table[pid].pgrp == pid and not table[pid].zombie)


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes whose process group is pgid."""
    return sorted(p.pid for p in process_table().values() if p.pgrp == pgid and not p.zombie)


def members(leader: int, table: Mapping[int, Process] | None = None) -> list[int]:
    """The live processes of the server started as leader: its process group, its
    session, and the descendants of both."""
    table = process_table() if table is None else table
    own = {p.pid for p in table.values() if leader in (p.pgrp, p.session)}
    return sorted(pid for pid in own | descendants(own, table) if not table[pid].zombie)


def stop(process: subprocess.Popen[bytes] | int, graceful: Sequence[Graceful] = TERM,
         kill_wait: float = 10.0) -> None:
    """Stop a server started by ``spawn`` (a Popen, or the leader's pid): each graceful
    step in turn, then SIGKILL to every member; return once none is alive.

    SIGKILL follows even when a graceful step raises. Raises RuntimeError if members
    survive SIGKILL for kill_wait seconds (a process in uninterruptible sleep), naming
    them, rather than pretending they are gone.
    """
    server = _Server(process)
    try:
        for step in graceful:
            if server.gone():
                return
            if isinstance(step.action, signal.Signals):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(server.pid, step.action)
            else:
                step.action()
            if server.wait_gone(step.wait):
                return
    finally:
        server.kill(kill_wait)


class _Server:
    """A server being stopped: its leader, and every member seen since the stop began
    (a member whose parent exits first is re-parented and would no longer be found)."""

    def __init__(self, process: subprocess.Popen[bytes] | int) -> None:
        self.pid = process if isinstance(process, int) else process.pid
        self.popen = None if isinstance(process, int) else process
        self.seen: dict[int, int] = {}  # pid: start time
        self.alive()

    def alive(self) -> list[int]:
        """The members alive now, the leader included."""
        table = process_table()
        for pid in members(self.pid, table):
            self.seen[pid] = table[pid].started
        self._reap(table)
        alive = [pid for pid, started in self.seen.items()
                 if pid in table and table[pid].started == started and not table[pid].zombie]
        if self.popen is not None and self.popen.poll() is None and self.pid not in alive:
            alive.append(self.pid)
        return sorted(alive)

    def _reap(self, table: Mapping[int, Process]) -> None:
        """Collect members that died as our children (re-parented to us, a child
        subreaper, or the leader itself), so that none lingers as a zombie. A Popen
        leader is left to its Popen."""
        for pid in self.seen:
            process = table.get(pid)
            if process and process.zombie and process.ppid == os.getpid() \
                    and not (self.popen and pid == self.pid):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
        if self.popen is not None:
            self.popen.poll()

    def gone(self) -> bool:
        return not self.alive()

    def wait_gone(self, timeout: float) -> bool:
        """Wait until no member is alive; True when that happened within timeout."""
        deadline = time.monotonic() + timeout
        while not self.gone():
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True

    def kill(self, timeout: float) -> None:
        """SIGKILL every member until none is left (a member may fork while we kill)."""
        deadline = time.monotonic() + timeout
        while alive := self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            for pid in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() >= deadline:
                raise RuntimeError(f"process group {self.pid} survived SIGKILL: {alive}")
            time.sleep(POLL_S)
