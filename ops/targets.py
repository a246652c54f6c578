"""Where ops.release deploys to: an Elastic Beanstalk environment, or a local rehearsal.

Both implement the `Target` interface that ops.release drives, so the release logic
that runs in production is the same code the local rehearsal exercises:

- `EBTarget`: reads state through the Elastic Beanstalk, CloudWatch, S3 and SSM APIs
  (boto3) and deploys with the `eb` CLI, exactly as an operator would.
- `ops.local.LocalTarget`: an environment on this machine, real nginx in front of a
  gunicorn per version, deploying as Elastic Beanstalk's traffic splitting does.

A deployment runs while ops.release watches it (`start_deployment`, `deployment`,
`canary_metrics`, `abort`): the new version gets a share of the traffic (the canary)
beside the last good one (the baseline) until the target promotes it, or until
ops.release sees it fail and aborts, which moves every request back to the baseline and
restarts nothing.
"""
from __future__ import annotations

import io
import json
import math
import re
import subprocess  # nosec B404
import time
import zipfile
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol

Key = tuple[str, str]  # an option setting: (namespace, option name)

# Published every 60 s by the ConfigDocument in .ebextensions/01-health.config.
FIVE_XX_METRIC, TOTAL_METRIC = "ApplicationRequests5xx", "ApplicationRequestsTotal"
# The tag ops.release puts on an application version that passed verification; its
# value is when (ISO 8601 UTC), so the newest verified version can be found.
VERIFIED_TAG = "shortener:verified-at"
VERIFIED_SEARCH = 50  # how many of the newest application versions are looked at
# The instance scripts (.ebextensions/backup.config) that run python -m ops.backup,
# python -m ops.smoke --full against the instance itself, and python -m ops.recover.
BACKUP_SCRIPT = "/usr/local/bin/shortener-backup"
SMOKE_SCRIPT = "/usr/local/bin/shortener-smoke"
RECOVER_SCRIPT = "/usr/local/bin/shortener-recover"
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


Phase = Literal["launching", "canary", "promoting", "complete", "aborted", "failed"]
IN_PROGRESS = ("launching", "canary", "promoting")


@dataclass(frozen=True)
class Deployment:
    """A deployment as the target reports it. Phases: `launching` (the new version starts
    and is checked; no traffic), `canary` (it gets `share` % of requests), `promoting`
    (all traffic moves to it), `complete`; or `failed` (the target gave up and moved
    traffic back to the baseline) or `aborted` (abort() did)."""

    label: str
    baseline: str | None  # the version serving when it started: traffic goes back there
    phase: Phase
    share: int            # % of requests the new version gets now
    detail: str
    started_at: float     # time.time()
    updated_at: float

    @property
    def in_progress(self) -> bool:
        return self.phase in IN_PROGRESS


@dataclass(frozen=True)
class VersionStats:
    """What one version served over a window. `healthy`: True when its health checks
    pass, False when they fail, None when it does not run (or is not judged yet)."""

    label: str | None
    healthy: bool | None
    health_detail: str = ""
    requests: int = 0
    server_errors: int = 0      # answered 5xx
    connection_errors: int = 0  # never answered: refused, reset, timed out (a 502/504)
    p50: float | None = None    # seconds
    p99: float | None = None

    @property
    def failed(self) -> int:
        return self.server_errors + self.connection_errors

    @property
    def error_rate(self) -> float:
        return self.failed / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class CanaryMetrics:
    window: float  # seconds the figures cover
    canary: VersionStats
    baseline: VersionStats


NOT_RUNNING = VersionStats(None, None, "not running")


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

    def set_verified(self, label: str, verified: bool) -> None:
        """Record (or withdraw) that version `label` passed verification."""

    def newest_verified(self, exclude: Collection[str]) -> str | None:
        """The most recently verified version not in `exclude`, if any."""

    def version_lifecycle(self) -> str | None:
        """The application version lifecycle policy in force; None: there is none."""

    def snapshot(self, label: str, timeout: float) -> str | None:
        """Snapshot the link store before deploying `label`; return where it is."""

    def recover(self, snapshot: str, timeout: float) -> str:
        """Put `snapshot` back as the link store, then re-create through the serving
        version every link the store held beyond it (python -m ops.recover); return
        what was done. TargetError when it cannot, or not every link came back."""

    # Progressive delivery: the deployment runs while ops.release watches it.

    def start_deployment(self, label: str, new: bool, timeout: float) -> Deployment:
        """Start deploying `label` (creating it from source when `new`) and return as
        soon as it runs; `timeout` bounds only the start (an upload). TargetError when
        it cannot start."""

    def deployment(self) -> Deployment | None:
        """The deployment start_deployment began, as it is now (None: none began)."""

    def canary_metrics(self, window: float) -> CanaryMetrics:
        """The canary's and the baseline's requests, errors, latency and health over
        about the last `window` seconds (a target may have a window of its own)."""

    def abort(self, reason: str) -> Deployment:
        """Move every request back to the baseline and stop the new version, restarting
        nothing; a deployment that already ended is returned as it is. TargetError once
        it is promoting (then deploy the last good version)."""

    def smoke_canary(self, timeout: float) -> str:
        """python -m ops.smoke --full against the canary alone (`timeout` per request);
        its last line, or TargetError if it fails."""


class BasicTarget:
    """The answers of a target without Elastic Beanstalk's safeguards: no settings to
    compare, no tags (the running version is the last good one), no snapshot; and,
    unless it overrides them, no progressive delivery: a deployment is over when
    start_deployment returns, and there is never a canary."""

    _deployment: Deployment | None = None

    def state(self) -> EnvState:
        raise NotImplementedError

    def deploy(self, label: str, new: bool, timeout: float) -> str:
        raise NotImplementedError

    def start_deployment(self, label: str, new: bool, timeout: float) -> Deployment:
        baseline, started = self.state().version, time.time()
        phase: Phase
        try:
            phase, share, detail = "complete", 100, self.deploy(label, new, timeout)
        except TargetError as err:
            phase, share, detail = "failed", 0, str(err)
        self._deployment = Deployment(label, baseline, phase, share, detail, started,
                                      time.time())
        return self._deployment

    def deployment(self) -> Deployment | None:
        return self._deployment

    def canary_metrics(self, window: float) -> CanaryMetrics:
        return CanaryMetrics(window, NOT_RUNNING, NOT_RUNNING)

    def abort(self, reason: str) -> Deployment:
        if self._deployment is None:
            raise TargetError("no deployment has been started on this target")
        return self._deployment

    def smoke_canary(self, timeout: float) -> str:
        raise TargetError("this target never runs a canary")

    def recover(self, snapshot: str, timeout: float) -> str:
        raise TargetError("this target cannot restore a snapshot")

    def effective_settings(self) -> dict[Key, str | None] | None:
        return None

    def version_config(self, label: str) -> dict[str, str] | None:
        return None

    def apply_settings(self, settings: Mapping[Key, str], removed: Collection[Key]) -> None:
        raise TargetError("this target has no configuration settings to update")

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
        self._deployment: Deployment | None = None
        self._abort_reason: str | None = None
        self._unread: CanaryMetrics | None = None  # read by deployment(), not yet returned
        self._canaries: list[str] = []  # the instances it saw serving the new version

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
        """`eb deploy ENV --label L` for a new version, `--version L` to reuse one; return
        when the update has ended (the rollback's redeploy of the last good version).

        awsebcli 3.27.5 exits 4 on a failed deploy and also when its own --timeout
        runs out while the update goes on (TimeoutError, ebcli/operations/commonops.py
        wait_for_success_events; every EBCLIException exits 4 in ebcli/core/ebrun.py).
        Either way the caller verifies the environment."""
        minutes = max(1, math.ceil(timeout / 60))
        cmd = [self.eb_command, "deploy", self.name, *version_flag(label, new),
               "--timeout", str(minutes)]
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

    # --- progressive delivery -----------------------------------------------------------
    # What the deployment policy does is Elastic Beanstalk's (TrafficSplitting, see
    # docs/deploying.md): it launches the new instances, gives them NewVersionPercent %
    # of requests for EvaluationTime minutes, then everything; or moves traffic back and
    # terminates them when they fail their health checks or the update is aborted
    # ("Deployment policies and settings", How traffic-splitting deployments work).
    # No API names the phase (aws/elastic-beanstalk-roadmap#220 asks for one), so it is
    # read from the environment's status and which version each instance runs.

    def start_deployment(self, label: str, new: bool, timeout: float) -> Deployment:
        """`eb deploy ENV --label L --nohang` (or `--version L`): eb bundles and uploads a
        new version, calls UpdateEnvironment and returns without waiting for the update
        (--nohang sets its timeout to 0, so commonops.wait_for_success_events returns at
        once: ebcli/controllers/deploy.py, awsebcli 3.27.5)."""
        baseline, started = self.state().version, time.time()
        output = run_command([self.eb_command, "deploy", self.name,
                              *version_flag(label, new), "--nohang"], deploy_limit(timeout))
        self._abort_reason = None
        self._deployment = Deployment(label, baseline, "launching", 0,
                                      last_line(output) or f"eb deploy of {label} started",
                                      started, time.time())
        return self._deployment

    def deployment(self) -> Deployment | None:
        """While the environment is Updating: `canary` once an instance runs the new
        version and its health is Ok (the share is what it served of the last 10 s),
        `launching` before. Ready on the new version: `complete` (even after an abort
        that came too late); Ready on another: `aborted` when we aborted, else `failed`
        (with the newest ERROR event)."""
        current = self._deployment
        if current is None or not current.in_progress:
            return current
        env, now = self._describe(), time.time()
        if env["Status"] != "Ready":
            instances = self._instances()
            canary = [i for i in instances if deployed_label(i) == current.label]
            self._canaries = [i["InstanceId"] for i in canary
                              if i.get("HealthStatus") in SERVING]
            serving = bool(self._canaries)
            stats = self._unread = self._stats(instances, current)
            total = stats.canary.requests + stats.baseline.requests
            share = round(100 * stats.canary.requests / total) if total else 0
            detail = f"aborting: {self._abort_reason}" if self._abort_reason else (
                f"{len(canary)} instance(s) on {current.label}, {share} % of requests "
                f"in the last {stats.window:g} s")
            self._deployment = replace(current, phase="canary" if serving else "launching",
                                       share=share if serving else 0, detail=detail,
                                       updated_at=now)
        elif env.get("VersionLabel") == current.label:
            late = f" (the abort came too late: {self._abort_reason})" if self._abort_reason \
                else ""
            self._deployment = replace(current, phase="complete", share=100, updated_at=now,
                                       detail=f"{self.name} is Ready on {current.label}{late}")
        else:
            ended: Phase = "aborted" if self._abort_reason else "failed"
            self._deployment = replace(current, phase=ended, share=0, updated_at=now,
                                       detail=self._ended_because(current, env))
        return self._deployment

    def _ended_because(self, current: Deployment, env: Mapping[str, Any]) -> str:
        back = f"traffic is back on {env.get('VersionLabel')}"
        if self._abort_reason:
            return f"aborted: {self._abort_reason}; {back}"
        events = self.eb.describe_events(
            EnvironmentName=self.name, Severity="ERROR", MaxRecords=10,
            StartTime=datetime.fromtimestamp(current.started_at, tz=timezone.utc))["Events"]
        why = events[0]["Message"] if events else "no ERROR event was recorded"
        return f"Elastic Beanstalk ended the update: {why}; {back}"

    def canary_metrics(self, window: float) -> CanaryMetrics:
        """DescribeInstancesHealth: per instance, the requests, 5xx and latency of the
        last 10 s (ApplicationMetrics.Duration; RequestCount and Status5xx are counts, as
        ebcli/display/data_poller.py reads them), grouped by the version each instance
        runs (Deployment.VersionLabel). `window` is the API's, not ours. Requests the load
        balancer answered itself (502/504) are not in instance metrics. The figures the
        last deployment() call read are used once rather than asked for again."""
        current = self._deployment
        if current is None:
            raise TargetError("no deployment has been started by this process")
        stats, self._unread = self._unread, None
        return stats or self._stats(self._instances(), current)

    def _instances(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        token: dict[str, str] = {}
        while True:
            resp = self.eb.describe_instances_health(
                EnvironmentName=self.name, **token,
                AttributeNames=["HealthStatus", "Causes", "ApplicationMetrics", "Deployment"])
            found += resp.get("InstanceHealthList", [])
            if not resp.get("NextToken"):
                return found
            token = {"NextToken": resp["NextToken"]}

    def _stats(self, instances: list[dict[str, Any]], current: Deployment) -> CanaryMetrics:
        canary = [i for i in instances if deployed_label(i) == current.label]
        baseline = [i for i in instances if deployed_label(i) != current.label]
        window = max((i.get("ApplicationMetrics", {}).get("Duration", 10) for i in instances),
                     default=10)
        return CanaryMetrics(float(window), instance_stats(current.label, canary),
                             instance_stats(current.baseline, baseline))

    def abort(self, reason: str) -> Deployment:
        """AbortEnvironmentUpdate: during a traffic-splitting deployment Elastic Beanstalk
        "moves traffic back to the old instances and terminates the new ones" (Deployment
        policies and settings); the environment is Ready on the old version afterwards.
        What it does once the promotion has begun is not documented: the caller waits
        for Ready and checks which version runs."""
        current = self._deployment
        if current is None:
            raise TargetError("no deployment has been started by this process")
        if not current.in_progress:
            return current
        self.eb.abort_environment_update(EnvironmentName=self.name)
        self._abort_reason = reason
        self._deployment = replace(current, detail=f"aborting: {reason}",
                                   updated_at=time.time())
        return self._deployment

    def smoke_canary(self, timeout: float) -> str:
        """python -m ops.smoke --full on a canary instance, against its own nginx
        (SMOKE_SCRIPT, through SSM Run Command): a request from outside cannot choose
        the canary, because the load balancer picks a version for each request. The
        instance is one deployment() last saw serving the new version."""
        current = self._deployment
        if current is None or not self._canaries:
            raise TargetError("no instance has been seen serving the new version")
        instance = self._canaries[0]
        output = self._run_on(instance, f"{SMOKE_SCRIPT} {timeout:g}",
                              f"smoke test of {current.label}", smoke_seconds(timeout))
        return f"{instance}: {last_line(output)}"

    def recover(self, snapshot: str, timeout: float) -> str:
        """python -m ops.recover on one instance (RECOVER_SCRIPT, through SSM): the link
        store is on EFS, which only the instances mount."""
        instances = self.eb.describe_environment_resources(
            EnvironmentName=self.name)["EnvironmentResources"]["Instances"]
        if not instances:
            raise TargetError(f"{self.name} has no instance to restore the snapshot on")
        output = self._run_on(instances[0]["Id"], f"{RECOVER_SCRIPT} {snapshot}",
                              f"restore of {snapshot}"[:100], timeout)
        return summary_of_recovery(output)

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
        instances = self.eb.describe_environment_resources(
            EnvironmentName=self.name)["EnvironmentResources"]["Instances"]
        if not instances:
            raise TargetError(f"{self.name} has no instance to take the snapshot on")
        output = self._run_on(instances[0]["Id"], f"{BACKUP_SCRIPT} pre-deploy/{label}",
                              f"pre-deploy snapshot for {label}", timeout)
        found: list[str] = re.findall(r"snapshot (s3://\S+)", output)
        if not found:
            raise TargetError(f"the pre-deploy snapshot named no snapshot: {output[-500:]}")
        return found[-1]

    def _run_on(self, instance: str, command: str, what: str, timeout: float) -> str:
        """Run a shell command on an instance with SSM Run Command; return its output,
        or raise TargetError saying how it ended."""
        if self.ssm is None:
            raise TargetError(f"no SSM client: cannot run the {what} on an instance")
        sent = self.ssm.send_command(
            InstanceIds=[instance], DocumentName="AWS-RunShellScript", Comment=what[:100],
            TimeoutSeconds=max(30, int(timeout)),
            Parameters={"commands": [command]})["Command"]
        result = self._wait_for_command(sent["CommandId"], instance, what, timeout)
        output = str(result.get("StandardOutputContent", "")
                     + result.get("StandardErrorContent", ""))
        if result["Status"] != "Success":
            raise TargetError(f"the {what} on {instance} ended {result['Status']}: "
                              f"{output.strip()[-500:]}")
        return output

    def _wait_for_command(self, command_id: str, instance: str, what: str,
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
                raise TargetError(f"the {what} on {instance} did not finish "
                                  f"within {timeout:.0f} s")
            time.sleep(self.poll_interval)


def version_flag(label: str, new: bool) -> list[str]:
    """eb deploy's way to name the version: a new one is bundled under --label."""
    return ["--label" if new else "--version", label]


def deployed_label(instance: Mapping[str, Any]) -> str | None:
    label = instance.get("Deployment", {}).get("VersionLabel")
    return str(label) if label is not None else None


# Enhanced health statuses: Ok, Info, Warning are serving; Degraded and Severe failing;
# Pending, Unknown, NoData not known yet (health-enhanced-status.html).
FAILING, SERVING = ("Degraded", "Severe"), ("Ok", "Info", "Warning")


def instance_stats(label: str | None, instances: Iterable[Mapping[str, Any]]) -> VersionStats:
    """One version's figures from its instances' health: counts add up; the latency is
    each instance's p99 (and p50) weighted by the requests it served, an approximation
    (percentiles do not add); healthy is False when one instance is failing."""
    instances = list(instances)
    if not instances:
        return VersionStats(label, None, "no instance runs it")
    statuses = [str(i.get("HealthStatus", "Unknown")) for i in instances]
    healthy = False if any(s in FAILING for s in statuses) else (
        True if all(s in SERVING for s in statuses) else None)
    causes = "; ".join(c for i in instances for c in i.get("Causes", []))
    metrics = [i.get("ApplicationMetrics", {}) for i in instances]
    counts = [int(m.get("RequestCount", 0)) for m in metrics]
    total = sum(counts)

    def weighted(key: str) -> float | None:
        pairs = [(m["Latency"][key], n) for m, n in zip(metrics, counts)
                 if n and key in m.get("Latency", {})]
        weight = sum(n for _, n in pairs)
        return sum(v * n for v, n in pairs) / weight if weight else None

    return VersionStats(label, healthy, causes or ", ".join(sorted(set(statuses))), total,
                        sum(int(m.get("StatusCodes", {}).get("Status5xx", 0)) for m in metrics),
                        0, weighted("P50"), weighted("P99"))


def smoke_seconds(timeout: float) -> float:
    """How long python -m ops.smoke --full may take with `timeout` per request."""
    return timeout * 20 + 30


def last_line(output: str) -> str:
    lines = output.strip().splitlines()
    return lines[-1] if lines else ""


def summary_of_recovery(output: str) -> str:
    """The last line python -m ops.recover prints is its JSON summary."""
    try:
        summary = json.loads(last_line(output))
    except ValueError:
        raise TargetError(f"python -m ops.recover printed no summary: {output[-500:]}") from None
    return str(summary.get("summary", summary))


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
