""".ci/left-running, the last step of .ci/run: it fails the run, listing them with ps, when
processes outlive it, and passes otherwise."""
from __future__ import annotations

import os
import subprocess  # nosec B404: runs the check
import sys
import time
import uuid
from pathlib import Path

import pytest

from ops.processes import members, spawn, stop
from tests.servers import REPO

pytestmark = pytest.mark.alone  # .ci/left-running scans the whole machine

SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)"]


def start_run() -> subprocess.Popen[bytes]:
    """A process standing for .ci/run: what starts after it (on a later clock tick of
    /proc's 10 ms ones) is the run's, if it carries its mark or works in the checkout."""
    time.sleep(0.05)
    run = spawn(SLEEPER)
    time.sleep(0.05)
    return run


def left_running(run: int, mark: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHORTENER_CI_RUN": mark}
    return subprocess.run(  # nosec B603
        [str(REPO / ".ci" / "left-running"), str(run)], env=env, capture_output=True,
        text=True, timeout=60, check=False)


def test_a_process_carrying_the_runs_mark_fails_the_run_and_is_killed(tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    run = start_run()
    leaked = spawn([*SLEEPER, "leaked"], cwd=tmp_path,
                   env={**os.environ, "SHORTENER_CI_RUN": mark})
    try:
        done = left_running(run.pid, mark)
        assert done.returncode == 1
        assert str(leaked.pid) in done.stderr and "time.sleep(300) leaked" in done.stderr
        assert leaked.wait(timeout=10) == -9
    finally:
        stop(leaked)
        stop(run)


def test_a_process_working_in_the_checkout_fails_the_run(tmp_path: Path) -> None:
    run = start_run()
    stray = spawn([*SLEEPER, "stray"], cwd=REPO / "ops")
    try:
        done = left_running(run.pid, uuid.uuid4().hex)
        assert done.returncode == 1 and "time.sleep(300) stray" in done.stderr
        assert members(stray.pid) == [stray.pid]  # reported, not killed: it may be yours
    finally:
        stop(stray)
        stop(run)


def test_processes_that_are_not_the_runs_pass(tmp_path: Path) -> None:
    before = spawn([*SLEEPER, "before"], cwd=REPO)  # a developer's, older than the run
    run = start_run()
    other = spawn([*SLEEPER, "other"], cwd=tmp_path)  # someone else's, elsewhere
    try:
        done = left_running(run.pid, uuid.uuid4().hex)
        assert done.returncode == 0, done.stderr
        assert done.stdout == "nothing left running from this run\n"
    finally:
        for process in (other, run, before):
            stop(process)
