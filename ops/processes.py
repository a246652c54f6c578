"""Start servers in a process group of their own, and stop the whole group.

Every server this repository starts (gunicorn, nginx, Redis, PostgreSQL, Chromium), from
a test, a benchmark, a rehearsal or ``ops.release --target local``, goes through
``spawn`` and ``stop``, so that nothing it forked outlives it. Killing only the leader
is not enough: nginx's and gunicorn's workers are re-parented to init and keep running,
holding memory and sockets.

``stop`` asks politely first, in the way the server documents (``Graceful`` steps: a
signal to the leader, or a command such as ``pg_ctl stop -m fast``), waits for the whole
group to exit, then sends SIGKILL to every member left, and returns only when no member
of the group is alive. Linux only: members are found in /proc.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess  # nosec B404: callers pass argument lists, never a shell
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

# What ``stop`` does before SIGKILL: a signal for the group's leader, or a function to
# call (it should return once the server has been asked to stop); then up to `wait`
# seconds for the whole group to exit.


@dataclass(frozen=True)
class Graceful:
    action: signal.Signals | Callable[[], object]
    wait: float


TERM = (Graceful(signal.SIGTERM, 15.0),)  # gunicorn, Redis, Chromium
NGINX = (Graceful(signal.SIGQUIT, 10.0), Graceful(signal.SIGTERM, 5.0))

File = int | IO[Any] | None


def spawn(cmd: Sequence[str], *, cwd: Path | str | None = None,
          env: Mapping[str, str] | None = None, stdout: File = subprocess.DEVNULL,
          stderr: File = subprocess.STDOUT) -> subprocess.Popen[bytes]:
    """Start cmd as the leader of a new session (and so of a new process group)."""
    return subprocess.Popen(  # nosec B603: an argument list, no shell
        list(cmd), cwd=cwd, env=None if env is None else dict(env), stdin=subprocess.DEVNULL,
        stdout=stdout, stderr=stderr, start_new_session=True)


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes whose process group is pgid."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state_and_rest = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process exited while we looked
        state, pgrp = state_and_rest[0], int(state_and_rest[2])
        if pgrp == pgid and state not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def stop(process: subprocess.Popen[bytes] | int, graceful: Sequence[Graceful] = TERM,
         kill_wait: float = 10.0) -> None:
    """Stop a group started by ``spawn`` (a Popen, or the leader's pid): each graceful
    step in turn, then SIGKILL to every member; return once none is alive.

    Raises RuntimeError if members survive SIGKILL for kill_wait seconds (a process in
    uninterruptible sleep), naming them, rather than pretending they are gone.
    """
    pid = process if isinstance(process, int) else process.pid
    popen = None if isinstance(process, int) else process
    for step in graceful:
        if not _alive(pid, popen) and not group_members(pid):
            break
        if isinstance(step.action, signal.Signals):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, step.action)
        else:
            step.action()
        if _wait_gone(pid, popen, step.wait):
            return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    if not _wait_gone(pid, popen, kill_wait):
        raise RuntimeError(f"process group {pid} survived SIGKILL: {group_members(pid)}")


def _wait_gone(pid: int, popen: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    """Wait until the leader has exited (reaped, when it is our child) and no member of
    its group is left; True when that happened within timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if not _alive(pid, popen) and not group_members(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _alive(pid: int, popen: subprocess.Popen[bytes] | None) -> bool:
    if popen is not None:
        return popen.poll() is None
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)  # our own child: reap it
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
