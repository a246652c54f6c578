"""Where ops.release deploys to: an Elastic Beanstalk environment, or a local rehearsal.

Both implement the `Target` interface that ops.release drives, so the release logic
that runs in production is the same code the local rehearsal exercises:

- `EBTarget`: reads state through the Elastic Beanstalk, CloudWatch, S3 and SSM APIs
  (boto3) and deploys with the `eb` CLI, exactly as an operator would.
- `LocalTarget`: an "environment" in a directory on this machine. Each version is a
  copy of a source tree under `versions/<label>/`; deploying one stops the running
  gunicorn and starts a new one from that copy on the same loopback port, with a data
  directory shared by every version (like the EFS mount on Elastic Beanstalk). Its
  health comes from `/healthz` and its 5xx rate from gunicorn's access log.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess  # nosec B404
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol

Key = tuple[str, str]  # an option setting: (namespace, option name)

# Published every 60 s by the ConfigDocument in .ebextensions/01-health.config.
FIVE_XX_METRIC, TOTAL_METRIC = "ApplicationRequests5xx", "ApplicationRequestsTotal"
# The tag ops.release puts on an application version that passed verification; its
# value is when (ISO 8601 UTC), so the newest verified version can be found.
VERIFIED_TAG = "shortener:verified-at"
VERIFIED_SEARCH = 50  # how many of the newest application versions are looked at
# The instance script (.ebextensions/backup.config) that runs python -m ops.backup.
BACKUP_SCRIPT = "/usr/local/bin/shortener-backup"
# eb gets its own --timeout in whole minutes, and is killed if it outlives it by this
# much (a hung upload): its own timeout normally ends it first.
DEPLOY_KILL_GRACE = 90.0


def deploy_limit(timeout: float) -> float:
    """How long one `eb deploy` may run when ops.release allows it `timeout` seconds."""
    return max(1, math.ceil(timeout / 60)) * 60 + DEPLOY_KILL_GRACE


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

    # Added for Elastic Beanstalk's safeguards. `BasicTarget` has the answers of a
    # target that has none of these (a local rehearsal).

    def effective_settings(self) -> dict[Key, str | None] | None:
        """The option settings the environment runs; None: it has no such settings."""

    def version_config(self, label: str) -> dict[str, str] | None:
        """{name: text} of the .ebextensions/*.config in version `label`'s bundle;
        None when it cannot be known."""

    def apply_settings(self, settings: Mapping[Key, str], removed: Collection[Key]) -> None:
        """Start a configuration update that sets `settings` and removes `removed`."""

    def abort_update(self) -> None:
        """Abort the update in progress (Elastic Beanstalk reverts to what ran before)."""

    def set_verified(self, label: str, verified: bool) -> None:
        """Record (or withdraw) that version `label` passed verification."""

    def newest_verified(self, exclude: Collection[str]) -> str | None:
        """The most recently verified version not in `exclude`, if any."""

    def version_lifecycle(self) -> str | None:
        """The application version lifecycle policy in force; None: there is none."""

    def snapshot(self, label: str, timeout: float) -> str | None:
        """Snapshot the link store before deploying `label`; return where it is."""


class BasicTarget:
    """The safeguards' answers for a target without them: no settings to compare, no
    tags (the running version is the last good one), no snapshot."""

    def state(self) -> EnvState:
        raise NotImplementedError

    def effective_settings(self) -> dict[Key, str | None] | None:
        return None

    def version_config(self, label: str) -> dict[str, str] | None:
        return None

    def apply_settings(self, settings: Mapping[Key, str], removed: Collection[Key]) -> None:
        raise TargetError("this target has no configuration settings to update")

    def abort_update(self) -> None:
        return None

    def set_verified(self, label: str, verified: bool) -> None:
        return None

    def newest_verified(self, exclude: Collection[str]) -> str | None:
        version = self.state().version
        return version if version not in exclude else None

    def version_lifecycle(self) -> str | None:
        return "not applicable to this target"

    def snapshot(self, label: str, timeout: float) -> str | None:
        return None


# --- Elastic Beanstalk -------------------------------------------------------------


class EBTarget:
    """An Elastic Beanstalk environment, driven through boto3 and the eb CLI."""

    def __init__(self, environment: str, eb_client: Any, cloudwatch: Any,
                 eb_command: str = "eb", url: str | None = None, *, s3: Any = None,
                 ssm: Any = None, poll_interval: float = 5.0) -> None:
        self.name = environment
        self.eb = eb_client
        self.cloudwatch = cloudwatch
        self.s3 = s3
        self.ssm = ssm
        self.eb_command = eb_command
        self.url_override = url.rstrip("/") if url else None
        self.poll_interval = poll_interval
        self.application: str | None = None

    def _describe(self) -> dict[str, Any]:
        envs = self.eb.describe_environments(
            EnvironmentNames=[self.name], IncludeDeleted=False)["Environments"]
        if not envs:
            raise TargetError(f"Elastic Beanstalk environment {self.name!r} does not exist "
                              "(check the name and the AWS region)")
        env: dict[str, Any] = envs[0]
        return env

    def _app(self) -> str:
        """The environment's application (read once: it never changes)."""
        if self.application is None:
            self.application = str(self._describe()["ApplicationName"])
        return self.application

    def _version(self, label: str) -> dict[str, Any] | None:
        versions = self.eb.describe_application_versions(
            ApplicationName=self._app(), VersionLabels=[label])["ApplicationVersions"]
        return dict(versions[0]) if versions else None

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
        return self._version(label) is not None

    def deploy(self, label: str, new: bool, timeout: float) -> str:
        """`eb deploy ENV --label L` for a new version, `--version L` to reuse one.

        awsebcli 3.27.5 exits 4 on a failed deploy and also when its own --timeout
        runs out while the update goes on (TimeoutError, ebcli/operations/commonops.py
        wait_for_success_events; every EBCLIException exits 4 in ebcli/core/ebrun.py).
        Either way the caller verifies the environment and aborts a lingering update."""
        flag = "--label" if new else "--version"
        minutes = max(1, math.ceil(timeout / 60))
        cmd = [self.eb_command, "deploy", self.name, flag, label, "--timeout", str(minutes)]
        return run_command(cmd, deploy_limit(timeout))

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

    # --- safeguards ------------------------------------------------------------------

    def effective_settings(self) -> dict[Key, str | None]:
        resp = self.eb.describe_configuration_settings(
            ApplicationName=self._app(), EnvironmentName=self.name)
        options = resp["ConfigurationSettings"][0]["OptionSettings"]
        return {(o["Namespace"], o["OptionName"]): o.get("Value") for o in options}

    def version_config(self, label: str) -> dict[str, str] | None:
        version = self._version(label)
        bundle = (version or {}).get("SourceBundle")
        if not bundle or self.s3 is None:
            return None
        body = self.s3.get_object(Bucket=bundle["S3Bucket"], Key=bundle["S3Key"])["Body"]
        with zipfile.ZipFile(io.BytesIO(body.read())) as archive:
            return {Path(name).name: archive.read(name).decode()
                    for name in archive.namelist()
                    if re.fullmatch(r"\.ebextensions/[^/]+\.config", name)}

    def apply_settings(self, settings: Mapping[Key, str], removed: Collection[Key]) -> None:
        self.eb.update_environment(
            EnvironmentName=self.name,
            OptionSettings=[{"Namespace": ns, "OptionName": name, "Value": value}
                            for (ns, name), value in settings.items()],
            OptionsToRemove=[{"Namespace": ns, "OptionName": name} for ns, name in removed])

    def abort_update(self) -> None:
        self.eb.abort_environment_update(EnvironmentName=self.name)

    def set_verified(self, label: str, verified: bool) -> None:
        version = self._version(label)
        if version is None:
            return
        arn = version["ApplicationVersionArn"]
        if verified:
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            self.eb.update_tags_for_resource(
                ResourceArn=arn, TagsToAdd=[{"Key": VERIFIED_TAG, "Value": stamp}])
        else:
            self.eb.update_tags_for_resource(ResourceArn=arn, TagsToRemove=[VERIFIED_TAG])

    def newest_verified(self, exclude: Collection[str]) -> str | None:
        versions = self.eb.describe_application_versions(
            ApplicationName=self._app(), MaxRecords=VERIFIED_SEARCH)["ApplicationVersions"]
        best: tuple[str, str] | None = None
        for version in versions:
            if version["VersionLabel"] in exclude:
                continue
            tags = self.eb.list_tags_for_resource(
                ResourceArn=version["ApplicationVersionArn"])["ResourceTags"]
            when = next((t["Value"] for t in tags if t["Key"] == VERIFIED_TAG), None)
            if when and (best is None or when > best[0]):
                best = (when, version["VersionLabel"])
        return best[1] if best else None

    def version_lifecycle(self) -> str | None:
        [app] = self.eb.describe_applications(ApplicationNames=[self._app()])["Applications"]
        config = app.get("ResourceLifecycleConfig", {}).get("VersionLifecycleConfig", {})
        count, age = config.get("MaxCountRule", {}), config.get("MaxAgeRule", {})
        if count.get("Enabled"):
            return f"keeps the newest {count['MaxCount']} versions"
        if age.get("Enabled"):
            return f"deletes versions older than {age['MaxAgeInDays']} days"
        return None

    def snapshot(self, label: str, timeout: float) -> str:
        """Run python -m ops.backup (through BACKUP_SCRIPT) on one instance with SSM Run
        Command: the link store is on EFS, which only the instances mount."""
        if self.ssm is None:
            raise TargetError("no SSM client: cannot snapshot the link store")
        instances = self.eb.describe_environment_resources(
            EnvironmentName=self.name)["EnvironmentResources"]["Instances"]
        if not instances:
            raise TargetError(f"{self.name} has no instance to take the snapshot on")
        instance = instances[0]["Id"]
        command = self.ssm.send_command(
            InstanceIds=[instance], DocumentName="AWS-RunShellScript",
            Comment=f"pre-deploy snapshot for {label}"[:100],
            TimeoutSeconds=max(30, int(timeout)),
            Parameters={"commands": [f"{BACKUP_SCRIPT} pre-deploy/{label}"]})["Command"]
        result = self._wait_for_command(command["CommandId"], instance, timeout)
        output = str(result.get("StandardOutputContent", "")
                     + result.get("StandardErrorContent", ""))
        found: list[str] = re.findall(r"snapshot (s3://\S+)", output)
        if result["Status"] != "Success" or not found:
            raise TargetError(f"the pre-deploy snapshot on {instance} ended "
                              f"{result['Status']}: {output.strip()[-500:]}")
        return found[-1]

    def _wait_for_command(self, command_id: str, instance: str,
                          timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                result: dict[str, Any] = self.ssm.get_command_invocation(
                    CommandId=command_id, InstanceId=instance)
            except self.ssm.exceptions.InvocationDoesNotExist:
                result = {"Status": "Pending"}  # not registered yet, right after sending
            if result["Status"] not in ("Pending", "InProgress", "Delayed"):
                return result
            if time.monotonic() >= deadline:
                raise TargetError(f"the pre-deploy snapshot on {instance} did not finish "
                                  f"within {timeout:.0f} s")
            time.sleep(self.poll_interval)


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


class LocalTarget(BasicTarget):
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
