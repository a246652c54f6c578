"""Where ops.release deploys to: an Elastic Beanstalk environment, or a local rehearsal.

Both implement the small `Target` interface that ops.release drives, so the release
logic that runs in production is the same code the local rehearsal exercises:

- `EBTarget`: reads state through the Elastic Beanstalk and CloudWatch APIs (boto3)
  and deploys with the `eb` CLI, exactly as an operator would.
- `ops.local.LocalTarget`: an environment on this machine, real nginx in front of a
  gunicorn per version, deploying as Elastic Beanstalk's traffic splitting does.
"""
from __future__ import annotations

import math
import subprocess  # nosec B404
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol


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


def _round_up(when: datetime, seconds: int) -> datetime:
    """The first multiple of `seconds` (since the epoch) at or after `when`."""
    return datetime.fromtimestamp(math.ceil(when.timestamp() / seconds) * seconds,
                                  tz=timezone.utc)
