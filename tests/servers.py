"""Real gunicorn on a free loopback port, for tests that need real processes and HTTP."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess  # nosec B404: tests start the real server
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent


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
            self.process = subprocess.Popen(  # nosec B603
                [*self.launcher, sys.executable, "-m", "gunicorn",
                 "--config", str(REPO / "gunicorn.conf.py"), "--bind", f"127.0.0.1:{self.port}",
                 "--workers", str(self.workers), "application:application"],
                cwd=self.app_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
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
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.pid:
                pids.append(int(stat.parent.name))
        return pids

    def wait_for_workers(self, count: int | None = None, timeout: float = 30.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.worker_pids()
            if len(pids) >= (count or self.workers):
                return pids
            time.sleep(0.05)
        raise RuntimeError(f"only {len(self.worker_pids())} workers after {timeout} s")

    def stop(self) -> None:
        """Graceful stop (SIGTERM), then SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """kill -9 of the master and every worker at once, as a crash would."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
