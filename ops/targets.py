"""Where ops.release deploys to: an Elastic Beanstalk environment, or a local rehearsal.

Both implement the small `Target` interface that ops.release drives, so the release
logic that runs in production is the same code the local rehearsal exercises:

- `EBTarget`: reads state through the Elastic Beanstalk and CloudWatch APIs (boto3)
  and deploys with the `eb` CLI, exactly as an operator would.
- `LocalTarget`: an "environment" in a directory on this machine. Each version is a
  copy of a source tree under `versions/<label>/`; deploying one stops the running
  gunicorn and starts a new one from that copy on the same loopback port, with a data
  directory shared by every version (like the EFS mount on Elastic Beanstalk). Its
  health comes from `/healthz` and its 5xx rate from gunicorn's access log.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import signal
import socket
import subprocess  # nosec B404
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol


# Published every 60 s by the ConfigDocument in .ebextensions/01-health.config.
FIVE_XX_METRIC, TOTAL_METRIC = "ApplicationRequests5xx", "ApplicationRequestsTotal"


class TargetError(Exception):
    """An operation on the target failed; the message says what and why."""


@dataclass(frozen=True)
class EnvState:
    """What describe_environments says: lifecycle status and the version it runs."""

    status: str  # Launching | Updating | Ready | Terminating | Terminated
    version: str | None
    url: str


@dataclass(frozen=True)
class Health:
    """What describe_environment_health says. `status` is the enhanced-health status
    (Ok, Info, Warning, Degraded, Severe, NoData, Pending, Unknown, Suspended)."""

    color: str  # Green | Yellow | Red | Grey
    status: str
    causes: tuple[str, ...] = ()

    @property
    def good(self) -> bool:
        return self.color == "Green" and self.status in ("Ok", "Info", "")


class Target(Protocol):
    name: str

    def state(self) -> EnvState: ...

    def health(self) -> Health: ...

    def version_exists(self, label: str) -> bool: ...

    def deploy(self, label: str, new: bool, timeout: float) -> str:
        """Deploy `label` (creating it from source when `new`); return the tool's output.
        Raise TargetError when the deploy is reported as failed."""

    def request_counts(self, start: datetime, end: datetime) -> tuple[int, int]:
        """(5xx responses, all responses) served between start and end."""


# --- Elastic Beanstalk -------------------------------------------------------------


class EBTarget:
    """An Elastic Beanstalk environment, driven through boto3 and the eb CLI."""

    def __init__(self, environment: str, eb_client: Any, cloudwatch: Any,
                 eb_command: str = "eb", url: str | None = None) -> None:
        self.name = environment
        self.eb = eb_client
        self.cloudwatch = cloudwatch
        self.eb_command = eb_command
        self.url_override = url.rstrip("/") if url else None

    def _describe(self) -> dict[str, Any]:
        envs = self.eb.describe_environments(
            EnvironmentNames=[self.name], IncludeDeleted=False)["Environments"]
        if not envs:
            raise TargetError(f"Elastic Beanstalk environment {self.name!r} does not exist "
                              "(check the name and the AWS region)")
        env: dict[str, Any] = envs[0]
        return env

    def state(self) -> EnvState:
        env = self._describe()
        url = self.url_override or f"http://{env.get('CNAME', '')}"
        return EnvState(env["Status"], env.get("VersionLabel"), url)

    def health(self) -> Health:
        resp = self.eb.describe_environment_health(
            EnvironmentName=self.name, AttributeNames=["Color", "HealthStatus", "Causes"])
        return Health(resp.get("Color", "Grey"), resp.get("HealthStatus", ""),
                      tuple(resp.get("Causes", [])))

    def version_exists(self, label: str) -> bool:
        app = self._describe()["ApplicationName"]
        versions = self.eb.describe_application_versions(
            ApplicationName=app, VersionLabels=[label])["ApplicationVersions"]
        return bool(versions)

    def deploy(self, label: str, new: bool, timeout: float) -> str:
        """`eb deploy ENV --label L` for a new version, `--version L` to reuse one.

        The eb CLI exits 4 on a failed deploy, but exits 0 when its own --timeout runs
        out while the deploy goes on: callers must verify, never trust the exit code.
        eb is killed after `timeout` seconds (its own --timeout is rounded up to minutes)."""
        flag = "--label" if new else "--version"
        minutes = max(1, math.ceil(timeout / 60))
        cmd = [self.eb_command, "deploy", self.name, flag, label, "--timeout", str(minutes)]
        return run_command(cmd, timeout)

    def request_counts(self, start: datetime, end: datetime) -> tuple[int, int]:
        return (self._metric_sum(FIVE_XX_METRIC, start, end),
                self._metric_sum(TOTAL_METRIC, start, end))

    def _metric_sum(self, metric: str, start: datetime, end: datetime) -> int:
        """Sum of an enhanced-health metric over [start, end].

        CloudWatch rounds StartTime down to the minute, which would count the minute in
        which the previous version still served; so start at the next whole minute."""
        start = _round_up(start, 60)
        resp = self.cloudwatch.get_metric_statistics(
            Namespace="AWS/ElasticBeanstalk", MetricName=metric,
            Dimensions=[{"Name": "EnvironmentName", "Value": self.name}],
            StartTime=start, EndTime=end, Period=60, Statistics=["Sum"])
        return int(sum(point["Sum"] for point in resp["Datapoints"]))


def run_command(cmd: list[str], timeout: float) -> str:
    """Run cmd; return its combined output, raise TargetError on failure or timeout."""
    try:
        done = subprocess.run(  # nosec B603
            cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise TargetError(f"{' '.join(cmd)} did not finish within {timeout:.0f} s "
                          "and was killed") from err
    except OSError as err:
        raise TargetError(f"could not run {cmd[0]!r}: {err}") from err
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        last = "\n".join(output.splitlines()[-5:])
        raise TargetError(f"{' '.join(cmd)} exited with code {done.returncode}: {last}")
    return output


# --- Local rehearsal ---------------------------------------------------------------

# What a deploy copies from the source tree into versions/<label>/ (like `eb deploy`,
# which bundles the committed tree and leaves local state behind).
IGNORED = shutil.ignore_patterns(".git", ".venv", "data", "test-output", "node_modules",
                                 "__pycache__", ".mypy_cache", ".pytest_cache", "*.pyc")
ACCESS_LOG_FORMAT = '%(t)s %(s)s "%(r)s"'


class LocalTarget:
    """A release directory served by real gunicorn on 127.0.0.1:<port>.

    Layout under `root`: versions/<label>/ (one copy per version), data/ (shared by
    all versions), logs/access.log and logs/<label>.log, state.json (running version,
    pid, port) and deploy.lock (held while a deploy runs; the environment reports
    "Updating" meanwhile, as Elastic Beanstalk does)."""

    def __init__(self, root: Path, port: int, source: Path | None = None,
                 workers: int = 2, env: Mapping[str, str] | None = None) -> None:
        self.root = root.resolve()
        self.port = port
        self.source = source
        self.workers = workers
        self.extra_env = dict(os.environ if env is None else env)
        self.name = f"local:{self.root}"
        for sub in ("versions", "data", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def _read_state(self) -> dict[str, Any]:
        path = self.root / "state.json"
        if not path.exists():
            return {}
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded

    def _busy(self) -> bool:
        with open(self.root / "deploy.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(lock, fcntl.LOCK_UN)
        return False

    def state(self) -> EnvState:
        status = "Updating" if self._busy() else "Ready"
        return EnvState(status, self._read_state().get("version"), self.url)

    def health(self) -> Health:
        """Green/Ok when /healthz answers 200, Red/Severe otherwise, Grey/NoData when
        nothing runs: what Elastic Beanstalk's health check on /healthz would report."""
        if not self._read_state():
            return Health("Grey", "NoData", ("no version deployed",))
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=5):  # nosec B310
                return Health("Green", "Ok")
        except urllib.error.HTTPError as err:
            return Health("Red", "Severe", (f"/healthz answered HTTP {err.code}",))
        except (urllib.error.URLError, OSError) as err:
            return Health("Red", "Severe", (f"/healthz unreachable: {err}",))

    def version_exists(self, label: str) -> bool:
        return (self.root / "versions" / label).is_dir()

    def deploy(self, label: str, new: bool, timeout: float) -> str:
        with self._deploy_lock():
            version_dir = self.root / "versions" / label
            if new and not version_dir.exists():
                if self.source is None:
                    raise TargetError("no source directory given to create a new version")
                shutil.copytree(self.source, version_dir, ignore=IGNORED)
            elif not version_dir.exists():
                raise TargetError(f"No Application Version named {label!r} found.")
            self.stop()
            pid = self._start(label, version_dir)
            (self.root / "state.json").write_text(
                json.dumps({"version": label, "pid": pid, "port": self.port}))
            self._wait_listening(pid, label, timeout)
        return f"deployed {label} (gunicorn pid {pid}) on {self.url}"

    @contextlib.contextmanager
    def _deploy_lock(self) -> Iterator[None]:
        with open(self.root / "deploy.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise TargetError(f"Environment named {self.name} is in an invalid state "
                                  "for this operation. Must be Ready.") from None
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _start(self, label: str, version_dir: Path) -> int:
        env = dict(self.extra_env, DATA_DIR=str(self.data_dir), APP_VERSION=label,
                   PYTHONDONTWRITEBYTECODE="1")
        cmd = [sys.executable, "-m", "gunicorn", "--workers", str(self.workers),
               "--bind", f"127.0.0.1:{self.port}",
               "--access-logfile", str(self.root / "logs" / "access.log"),
               "--access-logformat", ACCESS_LOG_FORMAT, "application:application"]
        with open(self.root / "logs" / f"{label}.log", "ab") as log:
            proc = subprocess.Popen(  # nosec B603
                cmd, cwd=version_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        return proc.pid

    def _wait_listening(self, pid: int, label: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                raise TargetError(f"gunicorn for {label} exited during start; see "
                                  f"{self.root / 'logs' / (label + '.log')}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            time.sleep(0.05)
        raise TargetError(f"gunicorn for {label} did not listen on {self.url} "
                          f"within {timeout:.0f} s")

    def stop(self) -> None:
        """Stop the running gunicorn (TERM, then KILL after 10 s), if any."""
        pid = self._read_state().get("pid")
        if not isinstance(pid, int) or not _alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    def request_counts(self, start: datetime, end: datetime) -> tuple[int, int]:
        """Count access-log lines in [start, end]. Log times have 1 s resolution, so
        counting starts at the next whole second: the second in which the previous
        version still served is not blamed on this one."""
        log = self.root / "logs" / "access.log"
        if not log.exists():
            return 0, 0
        low = _round_up(start, 1)
        errors = total = 0
        for line in log.read_text(errors="replace").splitlines():
            parsed = _parse_access_line(line)
            if parsed is None or not low <= parsed[0] <= end + timedelta(seconds=1):
                continue
            total += 1
            errors += parsed[1] >= 500
        return errors, total


def _round_up(when: datetime, seconds: int) -> datetime:
    """The first multiple of `seconds` (since the epoch) at or after `when`."""
    return datetime.fromtimestamp(math.ceil(when.timestamp() / seconds) * seconds,
                                  tz=timezone.utc)


def _parse_access_line(line: str) -> tuple[datetime, int] | None:
    """'[27/Nov/2026:05:12:00 +0000] 500 "GET / HTTP/1.1"' -> (time, 500)."""
    try:
        stamp, rest = line[1:].split("] ", 1)
        when = datetime.strptime(stamp, "%d/%b/%Y:%H:%M:%S %z").astimezone(timezone.utc)
        return when, int(rest.split(" ", 1)[0])
    except ValueError:
        return None


def _alive(pid: int) -> bool:
    """True while pid runs; reaps it when it is our own exited child."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
