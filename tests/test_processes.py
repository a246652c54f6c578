"""ops.processes: a stopped server leaves no process of its group behind."""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from ops.processes import (Graceful, group_leaders_below, group_members, members, running,
                           spawn, stop)

# A leader that exits on SIGTERM, with a child that ignores SIGTERM and SIGQUIT (as an
# nginx worker outlives a master killed with SIGKILL). The child may leave the leader's
# process group first (argv[2]: "stay", "setpgid" or "setsid"). The child writes its
# pid once it has left and ignores the signals: written by the parent, a test could
# see it before the child's setsid (CI once did).
LEADER = """
import os, signal, sys, time
if os.fork() == 0:
    if sys.argv[2] == "setpgid":
        os.setpgid(0, 0)
    elif sys.argv[2] == "setsid":
        os.setsid()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    open(sys.argv[1], "w").write(str(os.getpid()))
    while True:
        time.sleep(1)
while True:
    time.sleep(1)
"""


def start_leader_with_stubborn_child(tmp_path: Path, child: str = "stay") -> tuple[int, int]:
    pid_file = tmp_path / "child.pid"
    leader = spawn([sys.executable, "-c", LEADER, str(pid_file), child])
    deadline = time.monotonic() + 10
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline, "the leader never forked its child"
        time.sleep(0.02)
    return leader.pid, int(pid_file.read_text())


def test_a_spawned_server_leads_its_own_process_group(tmp_path: Path) -> None:
    leader, child = start_leader_with_stubborn_child(tmp_path)
    try:
        assert os.getpgid(leader) == leader != os.getpgrp()
        assert sorted(group_members(leader)) == sorted([leader, child])
    finally:
        stop(leader, graceful=())


def test_stop_kills_members_that_ignore_the_graceful_signal(tmp_path: Path) -> None:
    leader, child = start_leader_with_stubborn_child(tmp_path)
    stop(leader, graceful=(Graceful(signal.SIGTERM, 0.5),))
    assert group_members(leader) == []
    assert not running(child)


def test_killing_only_the_leader_would_leave_the_child_running(tmp_path: Path) -> None:
    """Why stop() kills the group: the pattern issue 15 found in the slow-client test."""
    leader, child = start_leader_with_stubborn_child(tmp_path)
    try:
        os.kill(leader, signal.SIGKILL)
        time.sleep(0.2)
        assert group_members(leader) == [child]
    finally:
        stop(leader, graceful=())
    assert group_members(leader) == []


def test_a_graceful_step_may_be_a_command_and_stop_returns_once_it_worked(
        tmp_path: Path) -> None:
    proc = spawn([sys.executable, "-c", "import time; time.sleep(300)"])
    calls = []

    def ask() -> None:
        calls.append(time.monotonic())
        proc.terminate()

    started = time.monotonic()
    stop(proc, graceful=(Graceful(ask, 10.0),))
    assert calls and proc.returncode == -signal.SIGTERM
    assert time.monotonic() - started < 5  # returned when the group was gone, not at 10 s


@pytest.mark.parametrize("escape", ["setpgid", "setsid"])
def test_stop_kills_a_child_that_left_the_group_even_after_its_parent_exited(
        tmp_path: Path, escape: str) -> None:
    leader, child = start_leader_with_stubborn_child(tmp_path, escape)
    assert os.getpgid(child) != leader
    assert members(leader) == sorted([leader, child])
    stop(leader, graceful=(Graceful(signal.SIGTERM, 0.5),))  # the leader exits, the child not
    assert not running(child)


def test_the_group_is_killed_even_when_a_graceful_step_fails(tmp_path: Path) -> None:
    leader, child = start_leader_with_stubborn_child(tmp_path)

    def broken() -> None:
        raise OSError("the stop command is missing")

    with pytest.raises(OSError, match="stop command"):
        stop(leader, graceful=(Graceful(broken, 10.0),))
    assert members(leader) == []
    assert not running(child) and not running(leader)


def test_the_servers_a_process_started_are_the_group_leaders_below_it(tmp_path: Path) -> None:
    leader, child = start_leader_with_stubborn_child(tmp_path)
    try:
        assert leader in group_leaders_below(os.getpid())
        assert child not in group_leaders_below(os.getpid())  # a member, not a server
    finally:
        stop(leader, graceful=())
    assert leader not in group_leaders_below(os.getpid())
