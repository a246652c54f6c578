"""A throwaway PostgreSQL server for the tests and the benchmark, never for production.

``initdb`` in a new temporary directory, then ``postgres`` in the foreground on a free
127.0.0.1 port (and a Unix socket in that directory), started with
``ops.processes.spawn`` and stopped with ``ops.processes.stop``, whose graceful step is
``pg_ctl stop -m fast``. PostgreSQL refuses to run as root, so when this runs as root
(CI, this build machine) every server command runs as the ``postgres`` user through
``setpriv``. The binaries come from ``pg_config --bindir``, else the newest
``/usr/lib/postgresql/*/bin`` (Debian and Ubuntu install them there).

Connections over TCP need the superuser's password (SCRAM), as on RDS, so a
DATABASE_URL with a password is what the tests exercise.

    with PostgresServer() as server:
        url = server.create_database("links")   # postgresql://postgres:...@127.0.0.1:PORT/links
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess  # nosec B404: fixed server binaries, argument lists only
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import psycopg

from ops.processes import Graceful, spawn, stop

USER = "postgres"
# Fit for tests on a small machine: few connections, no background noise, and fsync on,
# so a crash test loses what a crashed production server would lose (nothing committed).
SETTINGS = {"max_connections": "100", "shared_buffers": "128MB", "max_wal_size": "4GB",
            "log_min_messages": "warning", "log_line_prefix": "%m [%p] ",
            "listen_addresses": "127.0.0.1"}


class ServerUnavailable(RuntimeError):
    """No PostgreSQL binaries here, or the server did not start; the message says which."""


def bindir() -> Path | None:
    """Where initdb, postgres and pg_ctl are, or None if PostgreSQL is not installed."""
    found = shutil.which("pg_config")
    if found:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([found, "--bindir"], capture_output=True, text=True,  # nosec
                                 timeout=10, check=True).stdout.strip()
            if (Path(out) / "initdb").exists():
                return Path(out)
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                        else 0)
    return candidates[-1].parent if candidates else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, on a free loopback port."""

    def __init__(self, settings: Mapping[str, str] | None = None) -> None:
        found = bindir()
        if found is None:
            raise ServerUnavailable("PostgreSQL is not installed (no pg_config, no "
                                    "/usr/lib/postgresql/*/bin/initdb): apt-get install "
                                    "postgresql")
        self.bin = found
        self.settings = {**SETTINGS, **(settings or {})}
        self.password = secrets.token_urlsafe(16)
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="pgserver-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._initdb()

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    # --- running ---------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> float:
        """Start the server and wait until it takes connections; return the seconds."""
        started = time.monotonic()
        options = [f"--{name.replace('_', '-')}={value}" for name, value in
                   {**self.settings, "port": str(self.port),
                    "unix_socket_directories": str(self.root)}.items()]
        with open(self.log_path, "ab") as log:
            self.process = spawn([*self._as_postgres(), str(self.bin / "postgres"),
                                  "-D", str(self.data), *options], stdout=log)
        deadline = started + timeout
        while True:
            if self.process.poll() is not None:
                raise ServerUnavailable(f"postgres exited with {self.process.returncode}:\n"
                                        f"{self.log_tail()}")
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return time.monotonic() - started
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerUnavailable(f"postgres did not accept connections within "
                                            f"{timeout:g} s:\n{self.log_tail()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """``pg_ctl stop -m fast`` (sessions are ended, the server shuts down cleanly),
        then SIGKILL to whatever of its process group is left."""
        if self.process is not None:
            stop(self.process, graceful=(Graceful(lambda: self._pg_ctl("fast"), 30.0),))
            self.process = None

    def crash(self) -> None:
        """``pg_ctl stop -m immediate``: every process quits at once, without a
        checkpoint, as in a crash; the next start recovers from the write-ahead log."""
        if self.process is not None:
            self._pg_ctl("immediate", wait=True)
            stop(self.process, graceful=())
            self.process = None

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop the server and delete its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # --- databases -------------------------------------------------------------------

    def execute(self, sql: str, dbname: str = "postgres") -> None:
        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            conn.execute(sql.encode())

    def create_database(self, name: str) -> str:
        """A new, empty database; return its URL."""
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # --- the parts -------------------------------------------------------------------

    def _initdb(self) -> None:
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        password_file.chmod(0o600)
        if os.geteuid() == 0:
            shutil.chown(self.root, USER, USER)
            shutil.chown(password_file, USER, USER)
        done = subprocess.run(  # nosec B603: fixed binary, argument list
            [*self._as_postgres(), str(self.bin / "initdb"), "-D", str(self.data),
             "-U", USER, f"--pwfile={password_file}", "--auth-local=trust",
             "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"],
            capture_output=True, text=True, timeout=120, check=False)
        password_file.unlink()
        if done.returncode != 0:
            shutil.rmtree(self.root, ignore_errors=True)
            raise ServerUnavailable(f"initdb failed: {done.stderr.strip()}")

    def _pg_ctl(self, mode: str, wait: bool = False) -> None:
        subprocess.run(  # nosec B603: fixed binary, argument list
            [*self._as_postgres(), str(self.bin / "pg_ctl"), "stop", "-D", str(self.data),
             "-m", mode, "-w" if wait else "-W"],
            capture_output=True, timeout=60, check=False)

    def _as_postgres(self) -> Sequence[str]:
        """PostgreSQL will not run as root: as root, run its commands as postgres."""
        if os.geteuid() != 0:
            return []
        return ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", "--"]

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
