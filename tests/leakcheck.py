"""A pytest plugin: the run fails if it leaves a process running.

At the start of the session it notes every process alive, and makes pytest the child
subreaper of everything it starts (prctl PR_SET_CHILD_SUBREAPER): a process whose parent
dies is re-parented to pytest instead of init, so it can still be traced to this run.
At the end, once every fixture is torn down, a process that was not there at the start
and is alive is left over from this run if it descends from pytest, works in the
session's temporary directory, or works in the checkout without belonging to anything
that was already running (a developer's shell, editor or `make run` in another terminal
started before the run owns what it starts). The run then fails, naming each one's
pid, working directory and command line, and the leftovers that descend from pytest are killed
(SIGKILL) so that they do not pile up on a shared machine (one that only works in our
directories is reported, not killed: it might be a developer's own).

Processes of other runs on the same machine (another checkout, another pytest) are not
this run's: they neither descend from it nor work in its directories. Registered in
tests/conftest.py; `-p no:tests.leakcheck` turns it off.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from ops.processes import Process, descendants, process_table

CHECKOUT = Path(__file__).resolve().parent.parent
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
BEFORE = pytest.StashKey[set[tuple[int, int]]]()
TEMP_DIR = pytest.StashKey[Path]()


@dataclass(frozen=True)
class Leftover:
    pid: int
    cwd: str
    command: str
    descends: bool  # from pytest: certainly this run's, and killed at the end

    def __str__(self) -> str:
        return f"pid {self.pid} in {self.cwd}: {self.command}"


def running() -> set[tuple[int, int]]:
    """Every live process, as (pid, start time): a pid reused later is another process."""
    return {(p.pid, p.started) for p in process_table().values() if not p.zombie}


def left_running(before: Collection[tuple[int, int]], root: int,
                 directories: Iterable[Path], checkout: Path | None = None) -> list[Leftover]:
    """Live processes not in before that descend from root, work in directories, or
    work in checkout and belong to no process that was running before."""
    table = process_table()
    ours = descendants([root], table)
    leftovers = []
    for process in table.values():
        if process.zombie or (process.pid, process.started) in before:
            continue
        cwd = _cwd(process.pid)
        if process.pid in ours or any(_inside(cwd, d) for d in directories) or (
                checkout is not None and _inside(cwd, checkout)
                and not _started_by_an_older_process(process, table, before)):
            leftovers.append(Leftover(process.pid, cwd, command_line(process.pid),
                                      descends=process.pid in ours))
    return sorted(leftovers, key=lambda leftover: leftover.pid)


def _started_by_an_older_process(process: Process, table: Mapping[int, Process],
                                 before: Collection[tuple[int, int]]) -> bool:
    """An ancestor of process (init aside) was running before the session: a
    developer's shell, say, whose processes are theirs, not this run's."""
    parent = table.get(process.ppid)
    while parent is not None and parent.pid > 1:
        if (parent.pid, parent.started) in before:
            return True
        parent = table.get(parent.ppid)
    return False


def kill(leftovers: Iterable[Leftover], timeout: float = 10.0) -> None:
    """SIGKILL each leftover and wait (bounded) until it is gone, reaping our children."""
    pids = {leftover.pid for leftover in leftovers}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        table = process_table()
        for pid in pids & table.keys():
            if table[pid].zombie and table[pid].ppid == os.getpid():
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
        if not any(pid in table and not table[pid].zombie for pid in pids):
            return
        time.sleep(0.05)


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:  # pragma: no cover - not Linux
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return "?"


def command_line(pid: int) -> str:
    """The process's command line, its arguments joined by spaces; "?" once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace") or "?"


def _inside(cwd: str, directory: Path) -> bool:
    return cwd != "?" and Path(cwd).is_relative_to(directory)


def _xdist_worker(session: pytest.Session) -> bool:
    """A pytest-xdist worker (`make pytest` runs most tests in two): it does not check,
    since the other worker's processes are alive when it ends. The controller checks
    once both have gone. It knows no test's temporary directory (its session runs no
    fixture), but everything the workers started descends from it, the subreaper."""
    return hasattr(session.config, "workerinput")


def pytest_sessionstart(session: pytest.Session) -> None:
    if _xdist_worker(session):
        return  # what it starts that outlives it passes to the controller, the subreaper
    become_subreaper()
    session.stash[BEFORE] = running()


@pytest.fixture(scope="session", autouse=True)
def _note_temp_dir(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> None:
    request.session.stash[TEMP_DIR] = tmp_path_factory.getbasetemp()


@pytest.hookimpl(trylast=True)  # after the session's fixtures are torn down
def pytest_sessionfinish(session: pytest.Session) -> None:
    if _xdist_worker(session):
        return
    before = session.stash[BEFORE]
    directories = [session.stash[TEMP_DIR]] if TEMP_DIR in session.stash else []
    leftovers = left_running(before, os.getpid(), directories, checkout=CHECKOUT)
    if not leftovers:
        return
    kill(leftover for leftover in leftovers if leftover.descends)
    if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"the run left {len(leftovers)} process(es) running:",
             *(f"  {leftover}{' (killed)' if leftover.descends else ''}"
               for leftover in leftovers),
             "Stop every server with ops.processes.stop (README: Stopping what you started)."]
    if reporter is None:
        print("\n".join(lines))
        return
    reporter.write_sep("=", "processes left running", red=True)
    for line in lines:
        reporter.write_line(line, red=True)
    reporter.stats.setdefault("left running", []).extend(leftovers)
