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

import visits
from linkstore import LinkStore, open_url
from linkstore.visits_file import FileVisits
from ops import processes
from tests.helpers import everything_stored

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
        return processes.children({self.pid})

    def writer_pids(self) -> list[int]:
        """The visit writers (visits.Recorder's children) of the running workers."""
        return processes.children(set(self.worker_pids()))

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


class Site:
    """The app on one backend (the JSON file, or PostgreSQL at database_url): its
    gunicorn servers, and what its stores hold, read as another process would."""

    def __init__(self, tmp_path: Path, database_url: str | None) -> None:
        self.data_dir = tmp_path / "data"
        self.database_url = database_url
        self.access_log = tmp_path / "access.log"

    def server(self, **env: str) -> GunicornServer:
        """3 sync workers, so that concurrent clients reach several of them (gunicorn
        runs gthread whenever threads > 1); visits are stored only when it stops
        (VISITS_FLUSH_SECONDS=3600), unless env says otherwise; the access log says
        which worker answered what."""
        settings = {"GUNICORN_WORKER_CLASS": "sync", "GUNICORN_THREADS": "1",
                    "VISITS_FLUSH_SECONDS": "3600", "TRUSTED_PROXY_HOPS": "1",
                    "GUNICORN_CMD_ARGS": f"--access-logfile {self.access_log} "
                                         "--access-logformat '%(p)s %(U)s %(s)s'"}
        if self.database_url:
            settings["DATABASE_URL"] = self.database_url
        return GunicornServer(self.data_dir, workers=3, env=settings | env)

    def environment(self) -> dict[str, str]:
        """Where an operator's tool finds this site's links: DATABASE_URL, or DATA_DIR."""
        if self.database_url:
            return {"DATABASE_URL": self.database_url}
        return {"DATA_DIR": str(self.data_dir)}

    def links(self) -> LinkStore:
        return open_url(self.database_url or (self.data_dir / "urls.json").as_uri())

    def stats(self, code: str) -> visits.Stats:
        links = self.links()
        try:
            return visits.open_store(links).stats(code)
        finally:
            links.close()

    def stored(self) -> bytes:
        """Every byte kept: the data directory's files, and every row of the database.
        The file store's logs are folded first, so that its totals are searched too."""
        if not self.database_url:
            FileVisits(self.data_dir / "visits").fold()
        return everything_stored(self.data_dir, self.database_url)

    def served_by(self, path: str) -> set[str]:
        """The pids of the workers that answered path."""
        return {line.split()[0] for line in self.access_log.read_text().splitlines()
                if line.split()[1] == path}


def create_link(server: GunicornServer, code: str, session: requests.Session | None = None
                ) -> None:
    response = (session or requests).post(f"{server.url}/api/links", timeout=10, json={
        "url": f"https://example.com/{code}", "code": code})
    assert response.status_code == 201, response.text


def follow(server: GunicornServer, code: str, method: str = "GET", **headers: str) -> None:
    """Follow a short link with these headers (underscores in their names become dashes)."""
    response = requests.request(method, f"{server.url}/{code}", allow_redirects=False,
                                timeout=10, headers={name.replace("_", "-"): value
                                                     for name, value in headers.items()})
    assert response.status_code == 302
