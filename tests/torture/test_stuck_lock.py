"""A process that takes the store's lock and never lets go (a hung backup, a stopped
debugger): creates give up after LOCK_TIMEOUT with 503 instead of hanging, redirects
never wait for the lock, and creates work again once the process is gone."""
from __future__ import annotations

import subprocess  # nosec B404: the stuck process is a real process
import sys
import time
from pathlib import Path

import requests

from ops import processes
from tests.servers import GunicornServer
from tests.torture.conftest import Record, create, resolve

LOCK_TIMEOUT_S = 1.0
HOLDER = ("import fcntl, sys, time\n"
          "f = open(sys.argv[1], 'a')\n"
          "fcntl.flock(f, fcntl.LOCK_EX)\n"
          "print('locked', flush=True)\n"
          "time.sleep(120)\n")


def test_a_stuck_lock_holder_gets_503_after_a_bounded_wait(tmp_path: Path,
                                                           record_figure: Record) -> None:
    server = GunicornServer(tmp_path / "data", workers=2,
                            env={"LOCK_TIMEOUT": str(LOCK_TIMEOUT_S)})
    server.start()
    holder = None
    try:
        first = create(server.url, "https://example.com/before-the-lock").json()
        holder = processes.spawn([sys.executable, "-c", HOLDER, str(server.urls_file) + ".lock"],
                                 stdout=subprocess.PIPE)
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        waits = []
        for n in range(3):
            started = time.monotonic()
            response = create(server.url, f"https://example.com/while-locked/{n}", timeout=30)
            waits.append(time.monotonic() - started)
            assert response.status_code == 503
            assert "locked by another process" in response.json()["error"]
        started = time.monotonic()
        assert resolve(server.url, first["code"]) == first["url"]
        redirect_s = time.monotonic() - started
        processes.stop(holder, graceful=())  # kill -9: the lock goes with the process
        assert create(server.url, "https://example.com/after-the-lock").status_code == 201
        assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
    finally:
        if holder:
            processes.stop(holder, graceful=())
        server.stop()
    assert max(waits) < 10 * LOCK_TIMEOUT_S + 5, "a create waited far past LOCK_TIMEOUT"
    record_figure("lock_timeout_s", LOCK_TIMEOUT_S)
    record_figure("create_503_after_s", [round(wait, 2) for wait in waits])
    record_figure("redirect_while_locked_s", round(redirect_s, 3))
