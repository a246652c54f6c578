"""Real gunicorn on a free loopback port, for tests that need real processes and HTTP.

Every server a test starts is started with ops.processes.spawn and stopped with
ops.processes.stop, so that none outlives its test (tests/leakcheck.py checks).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess  # nosec B404: tests start the real server
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest
import requests

from ops import processes

REPO = Path(__file__).resolve().parent.parent


def unavailable(server: str, reason: str) -> NoReturn:
    """Skip a test whose server (nginx, redis, ...) this machine lacks, or fail it when the
    run requires that server (REQUIRE_NGINX=1 and the like: .ci/run sets them)."""
    variable = f"REQUIRE_{server.upper()}"
    if os.environ.get(variable) == "1":
        pytest.fail(f"{variable}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def links_on_disk(urls_file: Path) -> dict[str, Any]:
    """The links file as a fresh reader sees it ({} before the first link)."""
    if not urls_file.exists():
        return {}
    with open(urls_file, encoding="utf-8") as f:
        return json.load(f)  # type: ignore[no-any-return]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GunicornServer:
    """The app under real gunicorn, started from app_dir (the repository by default)."""

    def __init__(self, data_dir: Path, workers: int = 3, env: Mapping[str, str] | None = None,
                 app_dir: Path = REPO, launcher: Sequence[str] = ()) -> None:
        """launcher: a command the server runs under, e.g. setpriv with its options."""
        self.data_dir = data_dir
        self.launcher = list(launcher)
        self.workers = workers
        self.app_dir = app_dir
        self.extra_env = dict(env or {})
        self.port = free_port()
        self.log_path = data_dir.parent / f"gunicorn-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def urls_file(self) -> Path:
        return self.data_dir / "urls.json"

    @property
    def pid(self) -> int:
        assert self.process is not None, "the server is not running"
        return self.process.pid

    def start(self, timeout: float = 30.0) -> float:
        """Start gunicorn and wait until /healthz answers; return the seconds it took."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "DATA_DIR": str(self.data_dir), "SECRET_KEY": "test-secret",
               "CREATE_RATE_LIMIT": "off", "GUNICORN_ACCESSLOG": "", **self.extra_env}
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = processes.spawn(
                [*self.launcher, sys.executable, "-m", "gunicorn",
                 "--config", str(REPO / "gunicorn.conf.py"), "--bind", f"127.0.0.1:{self.port}",
                 "--workers", str(self.workers), "application:application"],
                cwd=self.app_dir, env=env, stdout=log)
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                self.kill()  # a worker it forked may still run
                raise RuntimeError(
                    f"gunicorn exited with {self.process.returncode}:\n{self.log()}")
            try:
                requests.get(f"{self.url}/healthz", timeout=1)
                return time.monotonic() - started
            except requests.RequestException:  # not listening yet, or still booting
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"gunicorn did not answer within {timeout} s:\n{self.log()}")

    def __enter__(self) -> GunicornServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def worker_pids(self) -> list[int]:
        """The worker processes of the running master, from /proc."""
        return sorted(p.pid for p in processes.process_table().values()
                      if p.ppid == self.pid and not p.zombie)

    def wait_for_workers(self, count: int | None = None, timeout: float = 30.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.worker_pids()
            if len(pids) >= (count or self.workers):
                return pids
            time.sleep(0.05)
        raise RuntimeError(f"only {len(self.worker_pids())} workers after {timeout} s")

    def stop(self) -> None:
        """Graceful stop (SIGTERM: requests in flight finish), then SIGKILL to whatever is
        left of the server; returns when no process of it is alive."""
        if self.process is not None:
            processes.stop(self.process)

    def kill(self) -> None:
        """kill -9 of the master and every worker at once, as a crash would."""
        if self.process is not None:
            processes.stop(self.process, graceful=())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
