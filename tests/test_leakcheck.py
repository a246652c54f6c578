"""The leak check (tests/leakcheck.py) fails a run that leaves a process running, and only
such a run: each case runs pytest on a small test file of its own, in a subprocess."""
from __future__ import annotations

import os
import subprocess  # nosec B404: runs pytest, and processes to leak
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from ops.processes import process_table, spawn, stop
from tests.leakcheck import command_line, left_running, running
from tests.servers import REPO

SLEEPER = "import sys, time; time.sleep(300)"


def run_pytest(tmp_path: Path, test_source: str, *options: str
               ) -> subprocess.CompletedProcess[str]:
    """pytest with the leak check on one test file, in tmp_path, like a CI run."""
    (tmp_path / "test_case.py").write_text(textwrap.dedent(test_source))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(  # nosec B603
        [sys.executable, "-m", "pytest", "-p", "tests.leakcheck", "-p", "no:cacheprovider",
         "-q", *options, "test_case.py"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=120, check=False)


def processes_with(marker: str) -> list[int]:
    """Live processes whose command line holds marker."""
    return [process.pid for process in process_table().values()
            if not process.zombie and marker in command_line(process.pid)]


@pytest.mark.parametrize("options", [[], ["--numprocesses", "2"]],
                         ids=["one process", "two xdist workers, as make pytest runs"])
def test_a_run_that_leaks_a_process_fails_and_names_it(tmp_path: Path,
                                                       options: list[str]) -> None:
    """With xdist, the workers do not check (each would see the other's servers); the
    controller does, once they are gone, and what they started descends from it."""
    marker = f"leaked-{uuid.uuid4().hex}"
    done = run_pytest(tmp_path, f"""
        import subprocess, sys

        def test_forgets_its_server():
            subprocess.Popen([sys.executable, "-c", {SLEEPER!r}, "{marker}"])

        def test_another_for_the_other_worker():
            pass
    """, *options)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "2 passed" in done.stdout
    assert "processes left running" in done.stdout
    assert marker in done.stdout and "(killed)" in done.stdout
    assert processes_with(marker) == []  # and the check stopped it


def test_a_daemon_that_double_forked_away_is_still_traced_to_the_run(tmp_path: Path) -> None:
    """The parent exits at once and the daemon works in /, outside every directory of the
    run: only its ancestry (pytest is the child subreaper) ties it to the run."""
    marker = f"daemon-{uuid.uuid4().hex}"
    done = run_pytest(tmp_path, f"""
        import subprocess, sys

        def test_starts_a_daemon():
            subprocess.run(["setsid", "--fork", sys.executable, "-c", {SLEEPER!r},
                            "{marker}"], cwd="/", check=True)
    """)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"in /: {sys.executable}" in done.stdout and marker in done.stdout
    assert processes_with(marker) == []


def test_a_run_that_stops_what_it_starts_passes(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, f"""
        import sys
        from ops.processes import process_table, spawn, stop

        def test_stops_its_server():
            server = spawn([sys.executable, "-c", {SLEEPER!r}])
            stop(server)
    """)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "left running" not in done.stdout


def test_a_process_that_was_running_before_the_run_is_not_blamed(tmp_path: Path) -> None:
    """Say a developer's `make run`, in the checkout, while the suite runs."""
    marker = f"before-{uuid.uuid4().hex}"
    developers = spawn([sys.executable, "-c", SLEEPER, marker], cwd=REPO)
    try:
        done = run_pytest(tmp_path, "def test_nothing():\n    pass\n")
        assert done.returncode == 0, done.stdout + done.stderr
        assert processes_with(marker) == [developers.pid]
    finally:
        stop(developers)


def test_a_new_process_working_in_the_runs_directory_counts_as_the_runs(
        tmp_path: Path) -> None:
    before = running()
    stray = spawn([sys.executable, "-c", SLEEPER], cwd=tmp_path)
    try:
        no_ancestor = -1  # no process descends from it: only the directory can tell
        found = left_running(before, no_ancestor, [tmp_path])
        assert [(leftover.pid, leftover.descends) for leftover in found] == [(stray.pid, False)]
        assert left_running(before, no_ancestor, [tmp_path / "elsewhere"]) == []
    finally:
        stop(stray)


# A developer's shell, running before the suite, that starts a process in the checkout
# while the suite runs (say `make run` typed in another terminal), and keeps it.
DEVELOPER = """
import subprocess, sys, time
time.sleep(1)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", sys.argv[1]])
time.sleep(300)
"""


def test_what_a_developers_older_shell_starts_in_the_checkout_during_the_run_is_theirs(
        tmp_path: Path) -> None:
    marker = f"developer-{uuid.uuid4().hex}"
    shell = spawn([sys.executable, "-c", DEVELOPER, marker], cwd=REPO)
    try:
        done = run_pytest(tmp_path, "import time\ndef test_slow():\n    time.sleep(3)\n")
        assert len(processes_with(marker)) == 2, "the developer's process never started"
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        stop(shell)


def test_a_new_process_in_the_checkout_that_nothing_older_started_counts_as_the_runs(
        tmp_path: Path) -> None:
    """As for an escaped process adopted by init: no process that ran before the run is
    among its ancestors. Here the snapshot is taken as if this test process and all its
    ancestors had started after it, and the stray descends from no root."""
    table = process_table()
    ancestors, pid = set(), os.getpid()
    while pid in table and pid > 1:
        ancestors.add((pid, table[pid].started))
        pid = table[pid].ppid
    before = running() - ancestors
    stray = spawn([sys.executable, "-c", SLEEPER], cwd=REPO)
    try:
        no_ancestor = -1
        found = left_running(before, no_ancestor, [], checkout=REPO)
        assert (stray.pid, False) in [(leftover.pid, leftover.descends) for leftover in found]
        elsewhere = left_running(before, no_ancestor, [], checkout=tmp_path)
        assert stray.pid not in [leftover.pid for leftover in elsewhere]
    finally:
        stop(stray)
