"""Where ops.release deploys to: an Elastic Beanstalk environment, or a local rehearsal.

Both implement the `Target` interface that ops.release drives, so the release logic
that runs in production is the same code the local rehearsal exercises:

- `EBTarget`: reads state through the Elastic Beanstalk, CloudWatch, S3 and SSM APIs
  (boto3) and deploys with the `eb` CLI, exactly as an operator would.
- `ops.local.LocalTarget`: an environment on this machine, real nginx in front of a
  gunicorn per version, deploying as Elastic Beanstalk's traffic splitting does.
"""
from __future__ import annotations

import io
import math
import re
import subprocess  # nosec B404
import time
import zipfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

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


def _round_up(when: datetime, seconds: int) -> datetime:
    """The first multiple of `seconds` (since the epoch) at or after `when`."""
    return datetime.fromtimestamp(math.ceil(when.timestamp() / seconds) * seconds,
                                  tz=timezone.utc)
