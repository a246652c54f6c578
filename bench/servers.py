"""Start and stop the servers under test: gunicorn for each WSGI contender, and nginx.

Every server listens on 127.0.0.1 only, on a port the OS reports free, logs into the run's
temporary directory, and is started and stopped with ops.processes: in a process group of
its own, stopped gracefully (gunicorn: TERM; nginx: QUIT, then TERM), then the whole group
killed. ``stop_all`` stops whatever is still running, however the run ends.
"""
import contextlib
import getpass
import http.client
import os
import signal
import socket
import subprocess  # nosec B404
import sys
import time
from collections.abc import Iterator, Sequence
from types import FrameType
from dataclasses import dataclass, field
from pathlib import Path

from ops import processes

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
NGINX = Path("/usr/sbin/nginx")


class ServerError(RuntimeError):
    """A server did not come up; the message includes the end of its log."""


@dataclass
class Server:
    """A running server process and where it listens."""

    name: str
    process: "subprocess.Popen[bytes]"
    port: int
    log: Path
    started_at: float = field(default_factory=time.monotonic)
    graceful: Sequence[processes.Graceful] = processes.TERM

    def __post_init__(self) -> None:
        RUNNING.append(self)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stop(self) -> None:
        """Stop gracefully, then kill whatever is left; return when nothing of it runs."""
        processes.stop(self.process, self.graceful)
        if self in RUNNING:
            RUNNING.remove(self)

    def log_tail(self) -> str:
        """The last lines of the server's log, for error messages."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-15:])


RUNNING: list[Server] = []  # started and not stopped yet


def stop_all() -> None:
    """Stop every server still running, the newest first (nginx before its upstream), then
    any other process group started from here: a Ctrl-C that lands while Popen is still
    starting a server leaves a running server and no Server to stop."""
    while RUNNING:
        RUNNING[-1].stop()
    for leader in processes.group_leaders_below(os.getpid()):
        processes.stop(leader)


@contextlib.contextmanager
def stopped_at_exit() -> Iterator[None]:
    """However the run inside ends (done, failed, Ctrl-C, SIGTERM or SIGHUP), stop every
    server it started. Further signals are ignored while they stop, which is bounded."""
    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    ending = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.getsignal(sig) for sig in ending}
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    try:
        yield
    finally:
        for sig in ending:
            signal.signal(sig, signal.SIG_IGN)
        try:
            stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def start_gunicorn(name: str, target: str, workers: int, cwd: Path, log: Path,
                   env: dict[str, str] | None = None, extra: list[str] | None = None) -> Server:
    """Start `gunicorn target` with `workers` sync workers on a free loopback port.

    The working directory is `cwd` (a temporary directory), so no gunicorn.conf.py is
    picked up: every contender runs under exactly these settings.
    """
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", f"--workers={workers}", "--worker-class=sync",
        f"--bind={HOST}:{port}", "--timeout=120", *(extra or []), target,
    ]
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    with log.open("ab") as out:
        process = processes.spawn(command, cwd=cwd, env=environment, stdout=out)
    return Server(name, process, port, log)


def nginx_available() -> bool:
    return NGINX.exists()


def start_nginx(name: str, workdir: Path, server_block: str, workers: int,
                http_extra: str = "") -> Server:
    """Run nginx in the foreground with a config in `workdir` and the given server body."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "nginx.conf"
    config.write_text(f"""
daemon off;
user {getpass.getuser()};
worker_processes {workers};
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    {http_extra}
    server {{
        listen {HOST}:{port};
        {server_block}
    }}
}}
""")
    log = workdir / "stdout.log"
    with log.open("ab") as out:
        process = processes.spawn([str(NGINX), "-p", str(workdir), "-c", str(config)],
                                  stdout=out)
    return Server(name, process, port, workdir / "error.log", graceful=processes.NGINX)


def wait_until_listening(server: Server, timeout: float) -> float:
    """Wait until the server answers any HTTP request; return seconds since it started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServerError(f"{server.name} exited {server.process.returncode}:\n"
                              f"{server.log_tail()}")
        try:
            connection = http.client.HTTPConnection(HOST, server.port, timeout=timeout)
            connection.request("GET", "/healthz")
            connection.getresponse().read()
            connection.close()
            return time.monotonic() - server.started_at
        except OSError:
            time.sleep(0.02)
    raise ServerError(f"{server.name} did not answer within {timeout} s:\n{server.log_tail()}")


def worker_pids(master_pid: int) -> list[int]:
    """The pids of a process's children (gunicorn's workers, nginx's workers)."""
    return processes.children({master_pid})


def memory_mib(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of one process in MiB. PSS splits pages shared after fork between sharers."""
    rss = pss = 0.0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            value = int(rest.split()[0]) / 1024
            rss, pss = (value, pss) if key == "Rss" else (rss, value)
    return round(rss, 1), round(pss, 1)
