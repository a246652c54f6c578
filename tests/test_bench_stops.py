"""`make bench` (python -m bench) leaves nothing running, however it ends: Ctrl-C, SIGTERM,
SIGHUP, or a contender that fails to start."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess  # nosec B404: runs the benchmark
import sys
import time
from pathlib import Path

import pytest

from ops import processes
from tests.servers import REPO, unavailable


@pytest.fixture(autouse=True)
def wrk() -> None:
    if shutil.which("wrk") is None:
        unavailable("wrk", "wrk is not installed (apt-get install wrk); the bench needs it")


def start_bench(out: Path, *args: str) -> subprocess.Popen[bytes]:
    """The benchmark in a process group of its own, as a shell runs a foreground job."""
    log = out.parent / "bench.log"
    with log.open("ab") as stream:
        return processes.spawn(
            [sys.executable, "-m", "bench", "--quick", "--sizes", "200", "--duration", "1",
             "--connections", "2", "--out", str(out), *args], cwd=REPO, stdout=stream)


def watch(bench: subprocess.Popen[bytes], until: float) -> set[int]:
    """Every server the bench started until it exited, or until the first one if `until`
    is 0; polled, so a server that came and went within 20 ms may be missed."""
    seen: set[int] = set()
    deadline = time.monotonic() + 240
    while bench.poll() is None and time.monotonic() < deadline:
        seen.update(processes.group_leaders_below(bench.pid))
        if seen and not until:
            return seen
        time.sleep(0.02)
    return seen


def assert_all_gone(leaders: set[int]) -> None:
    left = {leader: processes.members(leader) for leader in leaders}
    assert not any(left.values()), f"still running after the bench ended: {left}"


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=lambda how: how.name)
def test_a_stopped_bench_stops_every_server_it_started(tmp_path: Path,
                                                       how: signal.Signals) -> None:
    bench = start_bench(tmp_path / "out")
    try:
        leaders = watch(bench, until=0)
        assert leaders, (tmp_path / "bench.log").read_text()
        os.killpg(bench.pid, how)  # Ctrl-C reaches the whole foreground job
        assert bench.wait(timeout=120) == 128 + how
        assert_all_gone(leaders)
    finally:
        processes.stop(bench)


def test_a_bench_whose_contender_fails_stops_every_server_it_started(tmp_path: Path) -> None:
    broken = tmp_path / "broken-app"
    broken.mkdir()
    (broken / "application.py").write_text("raise RuntimeError('this app cannot start')\n")
    bench = start_bench(tmp_path / "out", "--app-dir", str(broken))
    try:
        leaders = watch(bench, until=float("inf"))
        assert bench.wait(timeout=120) == 1
        assert "bench: this app exited" in (tmp_path / "bench.log").read_text()
        assert len(leaders) >= 2  # the Flask floor was measured before this app failed
        assert_all_gone(leaders)
    finally:
        processes.stop(bench)


def test_a_server_whose_start_was_interrupted_is_stopped_too(tmp_path: Path) -> None:
    """Ctrl-C while Popen starts a server: the server runs, but Popen never returned it,
    so the bench has no Server for it. stopped_at_exit stops it all the same."""
    script = ("import sys\n"
              "from bench.servers import stopped_at_exit\n"
              "from ops.processes import spawn\n"
              "with stopped_at_exit():\n"
              "    lost = spawn([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
              "    print(lost.pid, flush=True)\n"
              "    raise KeyboardInterrupt\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,  # nosec
                          text=True, timeout=60, check=False)
    assert "KeyboardInterrupt" in done.stderr
    lost = int(done.stdout)
    assert processes.members(lost) == []
