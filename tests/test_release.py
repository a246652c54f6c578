"""ops.release against Elastic Beanstalk: the real eb CLI, and the AWS API through Stubber.

ops.release's own AWS calls go to real boto3 clients with botocore's Stubber attached
(every call and answer checked against the service models, in order). `eb deploy` is the
real awsebcli 3.27.5 (tests/awsebcli.py), whose own AWS calls are stubbed the same way in
its process: its exit codes are its own. Everything past the AWS boundary is real: the
public URL the stubbed environment reports (its CNAME) is a real gunicorn serving
application.py, the smoke test is the real `python -m ops.smoke`, and alerts go to a real
HTTP listener.
"""
from __future__ import annotations

import http.server
import io
import json
import os
import re
import signal
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from ops import ebsettings, release as release_module
from ops.release import (EXIT_DEPLOYED, EXIT_INTERFERED, EXIT_REFUSED, EXIT_ROLLBACK_FAILED,
                         EXIT_ROLLED_BACK, Options, execute, interrupted_alert)
from ops.targets import (BACKUP_SCRIPT, RECOVER_SCRIPT, SMOKE_SCRIPT, VERIFIED_TAG, BasicTarget,
                         EBTarget, EnvState, TargetError)
from tests.awsebcli import EB_PYTHON, EBCLI, deploy_existing, deploy_started
from tests.servers import GunicornServer

REPO = Path(__file__).resolve().parent.parent
ENV, APP = "shortener-prod", "shortener"
OLD, NEW, OTHER = "v-old-1111111", "v-new-2222222", "v-someone-else"
COMMAND_ID = "0f3b2c5e-1234-4c56-8d9a-0123456789ab"  # SSM ids are UUIDs
ARN = "arn:aws:elasticbeanstalk:eu-west-1:123456789012:applicationversion/shortener/"

pytestmark = pytest.mark.skipif(not EB_PYTHON.exists() and os.environ.get("CI") != "true",
                                reason="run `make eb-venv` (make test does it; in CI a "
                                       "missing .venv-eb fails)")


# --- real servers standing in for the environment's instances -----------------------
# They share one data directory, as every instance shares the EFS mount on EB.


@pytest.fixture(scope="module")
def efs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("efs")


@pytest.fixture(scope="module")
def old_server(efs: Path) -> Iterator[GunicornServer]:
    with GunicornServer(efs / "data", workers=2, env={"APP_VERSION": OLD}) as srv:
        yield srv


@pytest.fixture(scope="module")
def new_server(efs: Path) -> Iterator[GunicornServer]:
    with GunicornServer(efs / "data", workers=2, env={"APP_VERSION": NEW}) as srv:
        yield srv


@pytest.fixture(scope="module")
def broken_create_server(efs: Path) -> Iterator[GunicornServer]:
    """The new version, healthy on /healthz, whose creates are refused (limit used up)."""
    with GunicornServer(efs / "data", workers=1,
                        env={"APP_VERSION": NEW, "CREATE_RATE_LIMIT": "1/hour"}) as srv:
        requests.post(f"{srv.url}/api/links", json={"url": "https://example.com/"}, timeout=5)
        yield srv


@pytest.fixture(scope="module")
def unreadable_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    """The old version on a store a newer version rewrote in a shape it cannot read (a
    created_at that is a number): its /healthz answers 503 and names the store."""
    data = tmp_path_factory.mktemp("rewritten") / "data"
    data.mkdir()
    (data / "urls.json").write_text(json.dumps(
        {"abc": {"url": "https://example.com/", "created_at": 1795000000}}))
    with GunicornServer(data, workers=1, env={"APP_VERSION": OLD}) as srv:
        yield srv


# --- the stubbed API, in the order ops.release calls it -------------------------------


def bundle(configs: dict[str, str]) -> bytes:
    """A source bundle as S3 holds it: a zip with .ebextensions/*.config."""
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr("application.py", "application = None\n")
        for name, text in configs.items():
            archive.writestr(f".ebextensions/{name}", text)
    return data.getvalue()


REPO_CONFIGS = ebsettings.read_configs(REPO / ".ebextensions")
DECLARED = ebsettings.option_settings(REPO_CONFIGS)
INSTANCE_ATTRIBUTES = ["HealthStatus", "Causes", "ApplicationMetrics", "Deployment"]
OLD_ID, CANARY_ID = "i-0aaaaaaaaaaaaaaa1", "i-0bbbbbbbbbbbbbbb2"


def instance(instance_id: str, label: str, health: str = "Ok", requests: int = 0,
             errors: int = 0, p99: float = 0.040, causes: tuple[str, ...] = ()
             ) -> dict[str, Any]:
    """One instance as DescribeInstancesHealth reports it: the version it runs, its
    health, and what it served in the last 10 s (counts; latency in seconds)."""
    return {"InstanceId": instance_id, "HealthStatus": health, "Causes": list(causes),
            "Deployment": {"VersionLabel": label, "DeploymentId": 7, "Status": "Deployed"},
            "ApplicationMetrics": {
                "Duration": 10, "RequestCount": requests,
                "StatusCodes": {"Status2xx": requests - errors, "Status3xx": 0,
                                "Status4xx": 0, "Status5xx": errors},
                "Latency": {"P99": p99, "P50": p99 / 4}}}


def baseline(**figures: Any) -> dict[str, Any]:
    return instance(OLD_ID, OLD, **figures)


def canary(**figures: Any) -> dict[str, Any]:
    return instance(CANARY_ID, NEW, **figures)


class AWS:
    """Stubbed Elastic Beanstalk, CloudWatch, S3 and SSM clients, with helpers that queue
    the answers an environment gives as it goes through a release."""

    def __init__(self) -> None:
        session = boto3.session.Session(region_name="eu-west-1", aws_access_key_id="fake",
                                        aws_secret_access_key="fake")
        self.eb, self.cw = session.client("elasticbeanstalk"), session.client("cloudwatch")
        self.s3, self.ssm = session.client("s3"), session.client("ssm")
        self.stubs = [Stubber(c) for c in (self.eb, self.cw, self.s3, self.ssm)]
        self.eb_stub, self.cw_stub, self.s3_stub, self.ssm_stub = self.stubs
        for stub in self.stubs:
            stub.activate()

    def target(self, url: str | None = None) -> EBTarget:
        return EBTarget(ENV, self.eb, self.cw, eb_command="eb", url=url, s3=self.s3,
                        ssm=self.ssm, poll_interval=0)

    def env(self, status: str, version: str | None, server: GunicornServer) -> None:
        env = {"EnvironmentName": ENV, "ApplicationName": APP, "Status": status,
               "Health": "Green", "HealthStatus": "Ok",
               "CNAME": server.url.removeprefix("http://")}
        if version is not None:
            env["VersionLabel"] = version
        self.eb_stub.add_response("describe_environments", {"Environments": [env]},
                                  {"EnvironmentNames": [ENV], "IncludeDeleted": False})

    def health(self, color: str, status: str, causes: list[str] | None = None) -> None:
        self.eb_stub.add_response(
            "describe_environment_health",
            {"EnvironmentName": ENV, "Color": color, "HealthStatus": status,
             "Causes": causes or []},
            {"EnvironmentName": ENV, "AttributeNames": ["Color", "HealthStatus", "Causes"]})

    def version(self, label: str, exists: bool) -> None:
        found = [{"ApplicationName": APP, "VersionLabel": label,
                  "ApplicationVersionArn": ARN + label,
                  "SourceBundle": {"S3Bucket": "eb-bucket", "S3Key": f"{APP}/{label}.zip"}}]
        self.eb_stub.add_response("describe_application_versions",
                                  {"ApplicationVersions": found if exists else []},
                                  {"ApplicationName": APP, "VersionLabels": [label]})

    def verified_versions(self, tagged: dict[str, str | None]) -> None:
        """The newest versions, each with its verified-at tag (None: not verified)."""
        self.eb_stub.add_response("describe_application_versions", {"ApplicationVersions": [
            {"ApplicationName": APP, "VersionLabel": label, "ApplicationVersionArn": ARN + label}
            for label in tagged]}, {"ApplicationName": APP, "MaxRecords": 50})
        for label, when in tagged.items():
            if label == NEW:
                continue  # the release's own label is never a rollback target
            tags = [{"Key": VERIFIED_TAG, "Value": when}] if when else []
            self.eb_stub.add_response("list_tags_for_resource",
                                      {"ResourceArn": ARN + label, "ResourceTags": tags},
                                      {"ResourceArn": ARN + label})

    def bundle_of(self, label: str, configs: dict[str, str]) -> None:
        self.version(label, True)
        data = bundle(configs)
        self.s3_stub.add_response(
            "get_object", {"Body": StreamingBody(io.BytesIO(data), len(data))},
            {"Bucket": "eb-bucket", "Key": f"{APP}/{label}.zip"})

    def settings(self, overrides: dict[ebsettings.Key, str] | None = None) -> None:
        values = {**{k: DECLARED[k] for k in ebsettings.WATCHED}, **(overrides or {})}
        self.eb_stub.add_response("describe_configuration_settings", {"ConfigurationSettings": [
            {"ApplicationName": APP, "EnvironmentName": ENV, "OptionSettings": [
                {"Namespace": ns, "OptionName": name, "Value": value}
                for (ns, name), value in values.items()]}]},
            {"ApplicationName": APP, "EnvironmentName": ENV})

    def lifecycle(self, max_count: int | None = 200) -> None:
        rule = {"Enabled": max_count is not None, "MaxCount": max_count or 200}
        self.eb_stub.add_response("describe_applications", {"Applications": [
            {"ApplicationName": APP, "ResourceLifecycleConfig": {
                "VersionLifecycleConfig": {"MaxCountRule": rule}}}]},
            {"ApplicationNames": [APP]})

    def requests(self, errors: int, total: int) -> None:
        for metric, value in (("ApplicationRequests5xx", errors),
                              ("ApplicationRequestsTotal", total)):
            self.cw_stub.add_response(
                "get_metric_statistics",
                {"Label": metric, "Datapoints": [
                    {"Timestamp": datetime.now(timezone.utc), "Sum": float(value)}]},
                {"Namespace": "AWS/ElasticBeanstalk", "MetricName": metric,
                 "Dimensions": [{"Name": "EnvironmentName", "Value": ENV}],
                 "StartTime": ANY, "EndTime": ANY, "Period": 60, "Statistics": ["Sum"]})

    def tag(self, label: str, verified: bool) -> None:
        self.version(label, True)
        change = {"TagsToAdd": [{"Key": VERIFIED_TAG, "Value": ANY}]} if verified \
            else {"TagsToRemove": [VERIFIED_TAG]}
        self.eb_stub.add_response("update_tags_for_resource", {},
                                  {"ResourceArn": ARN + label, **change})

    # --- whole phases ---------------------------------------------------------------

    def prepare(self, server: GunicornServer, running: str | None = OLD, exists: bool = False,
                tagged: dict[str, str | None] | None = None,
                last_good_configs: dict[str, str] | None = REPO_CONFIGS,
                overrides: dict[ebsettings.Key, str] | None = None,
                lifecycle: int | None = 200) -> None:
        """wait-ready, health-before, links-before, check-version, last-good,
        config-change, settings, lifecycle: a release of NEW over `running`."""
        self.env("Ready", running, server)
        self.health("Green", "Ok")
        self.env("Ready", running, server)
        self.env("Ready", running, server)  # the application's name, read once
        self.version(NEW, exists)
        tags: dict[str, str | None] = {OLD: "2026-11-27T05:00:00+00:00"}
        if tagged is not None:
            tags = tagged
        self.verified_versions(tags)
        if last_good_configs is not None and any(tags.values()):
            self.bundle_of(OLD, last_good_configs)
        self.settings(overrides)
        self.lifecycle(lifecycle)

    def verified(self, version: str, server: GunicornServer, errors: int = 0,
                 second: tuple[int, int] = (0, 400)) -> None:
        """A verification that passes: Ready on version, Green/Ok, the URL lookups of
        /healthz and the smoke test, then two 5xx samples."""
        self.env("Ready", version, server)
        self.health("Green", "Ok")
        self.env("Ready", version, server)
        self.env("Ready", version, server)
        self.requests(errors, 400)
        self.requests(*second)

    # --- the deployment, as Elastic Beanstalk reports it while it runs ------------------

    def started(self, eb: EBCLI, server: GunicornServer, running: str | None = OLD,
                exists: bool = False) -> None:
        """deploy: the version running now (the baseline), then `eb deploy --nohang`."""
        self.env("Ready", running, server)
        eb.queue(deploy_started(ENV, running or OLD, NEW, new=not exists))

    def instances(self, *instances: dict[str, Any]) -> None:
        self.eb_stub.add_response(
            "describe_instances_health", {"InstanceHealthList": list(instances)},
            {"EnvironmentName": ENV, "AttributeNames": INSTANCE_ATTRIBUTES})

    def samples(self, server: GunicornServer, *samples: list[dict[str, Any]]) -> None:
        """One watch sample each: the environment Updating, and its instances."""
        for instances in samples:
            self.env("Updating", OLD, server)
            self.instances(*instances)

    def canary_smoke(self, status: str = "Success",
                     output: str = "full smoke test passed against http://127.0.0.1 in 1.2 s"
                     ) -> None:
        """SSM Run Command: python -m ops.smoke --full on the canary instance."""
        invocation = {"CommandId": COMMAND_ID, "InstanceId": CANARY_ID}
        self.ssm_stub.add_response("send_command", {"Command": {"CommandId": COMMAND_ID}}, {
            "InstanceIds": [CANARY_ID], "DocumentName": "AWS-RunShellScript",
            "Comment": f"smoke test of {NEW}", "TimeoutSeconds": 230,
            "Parameters": {"commands": [f"{SMOKE_SCRIPT} 10"]}})
        self.ssm_stub.add_response("get_command_invocation", {
            "Status": status, "StandardOutputContent": output + "\n",
            "StandardErrorContent": ""}, invocation)

    def deployed(self, eb: EBCLI, old: GunicornServer, new: GunicornServer,
                 exists: bool = False) -> None:
        """A deployment Elastic Beanstalk completes: launching, a canary that serves as
        well as the baseline (its smoke test passes), then Ready on NEW."""
        self.started(eb, old, exists=exists)
        self.samples(old, [baseline(), canary(health="Pending")],
                     [baseline(requests=90), canary(requests=10)])
        self.canary_smoke()
        self.env("Ready", NEW, new)

    def back_on_old(self, server: GunicornServer, new_exists: bool = True) -> None:
        """After the deployment ended with traffic on OLD: NEW loses its tag,
        rollback:wait-ready, rollback:deploy (nothing: OLD serves), rollback:data (OLD
        reads the store), and OLD is verified."""
        self.version(NEW, new_exists)
        if new_exists:
            self.eb_stub.add_response("update_tags_for_resource", {},
                                      {"ResourceArn": ARN + NEW, "TagsToRemove": [VERIFIED_TAG]})
        self.env("Ready", OLD, server)
        self.env("Ready", OLD, server)
        self.env("Ready", OLD, server)
        self.verified(OLD, server)

    def aborted(self, server: GunicornServer) -> None:
        """abort: the deployment still runs, AbortEnvironmentUpdate, then Elastic
        Beanstalk has moved traffic back and is Ready on OLD."""
        self.samples(server, [baseline(), canary(health="Severe")])
        self.eb_stub.add_response("abort_environment_update", {}, {"EnvironmentName": ENV})
        self.env("Ready", OLD, server)

    def run_command(self, command: str, comment: str, timeout: int, output: str) -> None:
        """SSM Run Command on the environment's first instance, which succeeds after it
        was not registered yet, then in progress."""
        self.eb_stub.add_response("describe_environment_resources", {"EnvironmentResources": {
            "EnvironmentName": ENV, "Instances": [{"Id": OLD_ID}]}}, {"EnvironmentName": ENV})
        self.ssm_stub.add_response("send_command", {"Command": {"CommandId": COMMAND_ID}}, {
            "InstanceIds": [OLD_ID], "DocumentName": "AWS-RunShellScript", "Comment": comment,
            "TimeoutSeconds": timeout, "Parameters": {"commands": [command]}})
        invocation = {"CommandId": COMMAND_ID, "InstanceId": OLD_ID}
        self.ssm_stub.add_client_error("get_command_invocation", "InvocationDoesNotExist", "",
                                       400, expected_params=invocation)
        self.ssm_stub.add_response("get_command_invocation", {"Status": "InProgress"},
                                   invocation)
        self.ssm_stub.add_response("get_command_invocation", {
            "Status": "Success", "StandardErrorContent": "",
            "StandardOutputContent": output + "\n"}, invocation)

    def snapshot_taken(self, snapshot: str) -> None:
        """backup: python -m ops.backup on an instance, which names the snapshot."""
        self.run_command(f"{BACKUP_SCRIPT} pre-deploy/{NEW}", f"pre-deploy snapshot for {NEW}",
                         600, f"2026-11-27 05:00:00,000 INFO backup: snapshot {snapshot}")

    def redeployed_last_good(self, eb: EBCLI, server: GunicornServer,
                             outcome: str = "ok") -> None:
        """After NEW failed its verification and stayed live: NEW loses its tag,
        rollback:wait-ready, rollback:deploy runs `eb deploy --version OLD`, and OLD
        is verified (when that deploy succeeds)."""
        self.tag(NEW, verified=False)
        self.env("Ready", NEW, server)
        self.env("Ready", NEW, server)
        eb.queue(deploy_existing(ENV, NEW, outcome))
        if outcome == "ok":
            self.env("Ready", OLD, server)   # rollback:data
            self.verified(OLD, server)

    def done(self) -> None:
        for stub in self.stubs:
            stub.assert_no_pending_responses()


class AlertSink:
    """A real HTTP listener on loopback that records the webhook payloads it gets."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers["Content-Length"])
                sink.payloads.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def aws() -> AWS:
    return AWS()


@pytest.fixture
def alerts(monkeypatch: pytest.MonkeyPatch) -> Iterator[AlertSink]:
    sink = AlertSink()
    monkeypatch.setenv("ALERT_WEBHOOK_URL", sink.url)
    yield sink
    sink.close()


@pytest.fixture
def eb(tmp_path: Path) -> EBCLI:
    return EBCLI(tmp_path / "eb")


def release(aws: AWS, eb: EBCLI, tmp_path: Path, label: str = NEW,
            **opts: Any) -> tuple[int, dict[str, Any]]:
    settings: dict[str, Any] = dict(ready_timeout=30, deploy_timeout=30, verify_timeout=30,
                                    watch=0.02, watch_interval=0.01, canary_interval=0.01,
                                    poll_interval=0, min_requests=20)
    target = aws.target()
    target.eb_command = str(eb.command)
    code = execute(target, label, Options(**{**settings, **opts}), tmp_path / "report.json")
    report: dict[str, Any] = json.loads((tmp_path / "report.json").read_text())
    return code, report


def deploy_args(flag: str, label: str) -> list[str]:
    """`eb deploy`, waited for (the rollback's redeploy)."""
    return ["deploy", ENV, flag, label, "--timeout", "1"]


def started_args(flag: str = "--label", label: str = NEW) -> list[str]:
    """`eb deploy --nohang`: a deployment ops.release then watches."""
    return ["deploy", ENV, flag, label, "--nohang"]


def names(report: dict[str, Any]) -> list[str]:
    return [step["name"] for step in report["steps"]]


PREPARE = ["wait-ready", "health-before", "links-before", "check-version", "last-good",
           "config-change", "settings", "lifecycle"]
VERIFY = ["ready-after", "health", "healthz-version", "smoke", "watch-5xx"]


# --- the scenarios ---------------------------------------------------------------------


def test_a_good_version_is_deployed_verified_tagged_and_reported(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer,
        new_server: GunicornServer, alerts: AlertSink) -> None:
    aws.prepare(old_server)
    aws.deployed(eb, old_server, new_server)
    aws.verified(NEW, new_server, second=(1, 400))
    aws.tag(NEW, verified=True)

    code, report = release(aws, eb, tmp_path)

    assert code == EXIT_DEPLOYED
    assert report["outcome"] == "deployed" and report["rollback"] is None
    assert report["last_good_version"] == OLD and report["last_good_verified"] is True
    assert eb.argvs == [started_args()]
    assert names(report) == PREPARE + ["deploy", "canary", *VERIFY, "mark-verified"]
    assert report["canary"]["samples"] == 2 and report["canary"]["requests"] == 10
    assert report["canary"]["smoke"] == f"{CANARY_ID}: full smoke test passed against " \
                                        "http://127.0.0.1 in 1.2 s"
    assert report["watch"] == {"requests": 400, "errors": 1, "judged_on": "counted responses"}
    assert all(s["ok"] and s["seconds"] >= 0 for s in report["steps"])
    assert alerts.payloads == []
    aws.done()


def test_a_canary_whose_5xx_rate_is_over_the_limit_is_aborted_not_redeployed(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer,
        alerts: AlertSink) -> None:
    """Class C: traffic goes back by AbortEnvironmentUpdate; nothing is deployed again."""
    aws.prepare(old_server)
    aws.started(eb, old_server)
    aws.samples(old_server, [baseline(requests=180), canary(requests=12, errors=0)],
                [baseline(requests=180), canary(requests=12, errors=3)])
    aws.canary_smoke()
    aws.aborted(old_server)
    aws.back_on_old(old_server)

    code, report = release(aws, eb, tmp_path)

    assert code == EXIT_ROLLED_BACK and report["failed_step"] == "canary"
    assert f"{NEW} failed 3 of the 24 requests it answered (12.5% 5xx" in report["error"]
    abort = next(step for step in report["steps"] if step["name"] == "abort")
    assert abort["ok"] and abort["detail"].startswith("aborted after ")
    assert f"traffic is back on {OLD}" in abort["detail"]
    assert eb.argvs == [started_args()]
    assert report["rollback"]["ok"] is True
    assert "rolled back" in alerts.payloads[0]["text"]
    aws.done()


def test_a_canary_slower_than_the_baseline_in_two_samples_in_a_row_is_aborted(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer) -> None:
    """Class D: no error at all, only latency; one slow sample is not enough."""
    aws.prepare(old_server)
    aws.started(eb, old_server)
    aws.samples(old_server,
                [baseline(requests=90, p99=0.05), canary(requests=10, p99=0.4)],
                [baseline(requests=90, p99=0.05), canary(requests=10, p99=0.06)],
                [baseline(requests=90, p99=0.05), canary(requests=10, p99=0.4)],
                [baseline(requests=90, p99=0.05), canary(requests=10, p99=0.5)])
    aws.canary_smoke()
    aws.aborted(old_server)
    aws.back_on_old(old_server)

    code, report = release(aws, eb, tmp_path)

    assert code == EXIT_ROLLED_BACK and report["failed_step"] == "canary"
    assert "p99 latency was over --max-p99-ratio 3 times the baseline's in 2 samples in a " \
           "row (last: 500 ms against 50 ms)" in report["error"]
    assert report["canary"]["p99_ms"] == [[400.0, 50.0], [60.0, 50.0], [400.0, 50.0],
                                          [500.0, 50.0]]
    aws.done()


def test_an_abort_that_comes_after_the_promotion_began_ends_in_a_redeploy(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer,
        new_server: GunicornServer) -> None:
    """What Elastic Beanstalk does with an abort once it promotes is not documented: if
    the new version ends up serving everything, the last good one is deployed again."""
    aws.prepare(old_server)
    aws.started(eb, old_server)
    aws.samples(old_server, [baseline(requests=90), canary(requests=20, errors=5)])
    aws.canary_smoke()
    aws.samples(old_server, [baseline(), canary()])                  # abort: still running
    aws.eb_stub.add_response("abort_environment_update", {}, {"EnvironmentName": ENV})
    aws.env("Ready", NEW, new_server)                                # ... promoted anyway
    aws.redeployed_last_good(eb, old_server)

    code, report = release(aws, eb, tmp_path)

    assert code == EXIT_ROLLED_BACK and report["failed_step"] == "canary"
    abort = next(step for step in report["steps"] if step["name"] == "abort")
    assert abort["detail"].startswith("complete after ") and "came too late" in abort["detail"]
    assert eb.argvs == [started_args(), deploy_args("--version", OLD)]
    aws.done()


def test_a_canary_that_fails_its_full_smoke_test_is_rolled_back(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer,
        new_server: GunicornServer) -> None:
    """Here the deployment completes before the smoke test's answer arrives: it still
    fails the release (an answer that arrives while the canary serves aborts it)."""
    aws.prepare(old_server)
    aws.started(eb, old_server)
    aws.samples(old_server, [baseline(), canary()])
    aws.canary_smoke("Failed", "FAIL  POST /your-url (url form): expected HTTP 200, got 500")
    aws.env("Ready", NEW, new_server)
    aws.redeployed_last_good(eb, old_server)

    code, report = release(aws, eb, tmp_path)

    assert code == EXIT_ROLLED_BACK and report["failed_step"] == "canary"
    assert "python -m ops.smoke --full against the canary failed" in report["error"]
    assert "POST /your-url (url form): expected HTTP 200, got 500" in report["error"]
    assert eb.argvs == [started_args(), deploy_args("--version", OLD)]
    aws.done()


def test_a_deployment_elastic_beanstalk_gives_up_is_rolled_back_without_a_redeploy(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer,
        alerts: AlertSink) -> None:
    """The new instances failed their health checks: EB moved traffic back itself and is
    Ready on OLD; the newest ERROR event says why."""
    aws.prepare(old_server)
    aws.started(eb, old_server)
    aws.samples(old_server, [baseline(), canary(health="Severe")])
    aws.env("Ready", OLD, old_server)
    aws.eb_stub.add_response("describe_events", {"Events": [
        {"Message": "Failed to deploy application.", "Severity": "ERROR",
         "EnvironmentName": ENV}]},
        {"EnvironmentName": ENV, "Severity": "ERROR", "MaxRecords": 10, "StartTime": ANY})
    aws.back_on_old(old_server)

    code, report = release(aws, eb, tmp_path)

    assert code == EXIT_ROLLED_BACK
    assert report["outcome"] == "rolled_back" and report["failed_step"] == "canary"
    assert (f"the deployment of {NEW} failed (Elastic Beanstalk ended the update: Failed to "
            f"deploy application.; traffic is back on {OLD})") in report["error"]
    assert eb.argvs == [started_args()]  # EB itself moved traffic back: no redeploy
    assert report["rollback"] == {"version": OLD, "ok": True,
                                  "seconds": report["rollback"]["seconds"]}
    assert "rollback:unverify" in names(report)
    text = alerts.payloads[0]["text"]
    assert "rolled back" in text and NEW in text and OLD in text
    aws.done()


def test_a_deployment_not_over_within_the_deploy_timeout_is_aborted_before_the_rollback(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer) -> None:
    aws.prepare(old_server)
    aws.started(eb, old_server)
    aws.samples(old_server, [baseline(), canary(health="Pending")])
    aws.aborted(old_server)
    aws.back_on_old(old_server)

    code, report = release(aws, eb, tmp_path, deploy_timeout=0)

    assert code == EXIT_ROLLED_BACK and report["failed_step"] == "canary"
    assert "was not over within --deploy-timeout 0 s (last seen: launching" in report["error"]
    abort = next(step for step in report["steps"] if step["name"] == "abort")
    assert abort["ok"] and "aborted after" in abort["detail"]
    aws.done()


def test_a_baseline_that_cannot_read_the_store_is_restored_from_the_snapshot(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer,
        unreadable_server: GunicornServer) -> None:
    """Class E: the old version fails its health check while the new one runs; after the
    abort its /healthz says the store check fails, so the pre-deploy snapshot is
    restored and the links written since created again, on an instance through SSM."""
    snapshot = f"s3://backups/shortener/pre-deploy/{NEW}/20261127T050000000000Z"
    aws.prepare(old_server)
    aws.snapshot_taken(snapshot)
    aws.started(eb, old_server)
    aws.samples(old_server, [baseline(health="Severe", causes=("ELB health is failing",)),
                             canary(health="Pending")])
    aws.aborted(old_server)
    aws.version(NEW, True)
    aws.eb_stub.add_response("update_tags_for_resource", {},
                             {"ResourceArn": ARN + NEW, "TagsToRemove": [VERIFIED_TAG]})
    aws.env("Ready", OLD, old_server)
    aws.env("Ready", OLD, old_server)
    aws.env("Ready", OLD, unreadable_server)       # rollback:data: /healthz says why
    summary = (f"restored {snapshot} (40 links); created again 6 of the 6 link(s) "
               "written since")
    aws.run_command(f"{RECOVER_SCRIPT} {snapshot}", f"restore of {snapshot}"[:100], 600,
                    f'{{"ok": true, "summary": "{summary}"}}')
    aws.verified(OLD, old_server)

    code, report = release(aws, eb, tmp_path, backup=True, backup_timeout=600)

    assert code == EXIT_ROLLED_BACK and report["failed_step"] == "canary"
    assert f"{OLD} (the last good version) fails its health check" in report["error"]
    assert "ELB health is failing" in report["error"]
    assert report["backup"] == snapshot and report["recovery"] == summary
    data = next(step for step in report["steps"] if step["name"] == "rollback:data")
    assert "the store check says" in data["detail"] and summary in data["detail"]
    aws.done()


def test_health_going_red_after_the_deploy_triggers_a_redeploy_of_the_last_good(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer,
        new_server: GunicornServer) -> None:
    aws.prepare(old_server)
    aws.deployed(eb, old_server, new_server)
    aws.env("Ready", NEW, new_server)
    aws.health("Yellow", "Warning")
    aws.health("Red", "Severe", ["100.0 % of the requests are failing with HTTP 5xx."])
    aws.redeployed_last_good(eb, old_server)

    code, report = release(aws, eb, tmp_path)

    assert code == EXIT_ROLLED_BACK
    assert report["failed_step"] == "health"
    assert "Red/Severe" in report["error"] and "HTTP 5xx" in report["error"]
    assert eb.argvs == [started_args(), deploy_args("--version", OLD)]
    assert report["rollback"]["ok"] is True
    aws.done()


def test_a_failing_smoke_test_triggers_a_rollback(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer,
        broken_create_server: GunicornServer) -> None:
    aws.prepare(old_server)
    aws.deployed(eb, old_server, broken_create_server)
    aws.env("Ready", NEW, broken_create_server)
    aws.health("Green", "Ok")
    aws.env("Ready", NEW, broken_create_server)
    aws.env("Ready", NEW, broken_create_server)
    aws.redeployed_last_good(eb, old_server)

    code, report = release(aws, eb, tmp_path)

    assert code == EXIT_ROLLED_BACK
    assert report["failed_step"] == "smoke"
    assert "POST /api/links: expected HTTP 201, got 429" in report["error"]
    aws.done()


def test_a_5xx_rate_rising_in_the_watch_window_triggers_a_rollback(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer,
        new_server: GunicornServer) -> None:
    aws.prepare(old_server)
    aws.deployed(eb, old_server, new_server)
    aws.verified(NEW, new_server, errors=2, second=(60, 400))   # 0.5 %, then 15 %
    aws.redeployed_last_good(eb, old_server)

    code, report = release(aws, eb, tmp_path)

    assert code == EXIT_ROLLED_BACK
    assert report["failed_step"] == "watch-5xx"
    assert "5xx rate 15.0% (60/400) is over 1.0%" in report["error"]
    aws.done()


def test_without_enough_traffic_the_watch_judges_on_its_own_requests(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer,
        new_server: GunicornServer) -> None:
    aws.prepare(old_server)
    aws.deployed(eb, old_server, new_server)
    aws.verified(NEW, new_server, second=(0, 3))   # only 3 requests counted: no evidence
    aws.env("Ready", NEW, new_server)              # the URL our own traffic goes to
    aws.tag(NEW, verified=True)

    code, report = release(aws, eb, tmp_path)

    assert code == EXIT_DEPLOYED
    assert report["watch"] == {"requests": 3, "errors": 0, "judged_on": "own traffic",
                               "own_requests": 20, "own_errors": 0}
    aws.done()


def test_without_traffic_a_watch_that_cannot_reach_the_site_fails_closed(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer,
        new_server: GunicornServer) -> None:
    closed = GunicornServer(tmp_path / "nothing")  # a free port nothing listens on
    aws.prepare(old_server)
    aws.deployed(eb, old_server, new_server)
    aws.verified(NEW, new_server, second=(0, 0))
    aws.env("Ready", NEW, closed)
    aws.redeployed_last_good(eb, old_server)

    code, report = release(aws, eb, tmp_path)

    assert code == EXIT_ROLLED_BACK
    assert report["failed_step"] == "watch-5xx"
    assert "judged on our own 20 requests (only 0 were counted)" in report["error"]
    aws.done()


def test_an_aws_api_error_during_verification_triggers_a_rollback(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer,
        new_server: GunicornServer) -> None:
    aws.prepare(old_server)
    aws.deployed(eb, old_server, new_server)
    aws.env("Ready", NEW, new_server)
    aws.eb_stub.add_client_error("describe_environment_health", "Throttling",
                                 "Rate exceeded", 400)
    aws.redeployed_last_good(eb, old_server)

    code, report = release(aws, eb, tmp_path)

    assert code == EXIT_ROLLED_BACK
    assert report["failed_step"] == "health"
    assert report["error"].startswith("ClientError: An error occurred (Throttling)")
    aws.done()


def test_a_label_that_already_exists_is_redeployed_with_version(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer,
        new_server: GunicornServer) -> None:
    aws.prepare(old_server, exists=True, tagged={NEW: None, OLD: "2026-11-27T05:00:00+00:00"})
    aws.deployed(eb, old_server, new_server, exists=True)
    aws.verified(NEW, new_server)
    aws.tag(NEW, verified=True)

    code, report = release(aws, eb, tmp_path)

    assert code == EXIT_DEPLOYED
    assert eb.argvs == [started_args("--version", NEW)]
    assert report["steps"][3]["detail"] == "exists"
    aws.done()


def test_releasing_the_label_that_is_live_only_verifies_it(
        aws: AWS, eb: EBCLI, tmp_path: Path, new_server: GunicornServer) -> None:
    aws.prepare(new_server, running=NEW, exists=True,
                tagged={NEW: "2026-11-27T06:00:00+00:00", OLD: "2026-11-27T05:00:00+00:00"})
    aws.verified(NEW, new_server)
    aws.tag(NEW, verified=True)

    code, report = release(aws, eb, tmp_path)

    assert code == EXIT_DEPLOYED
    assert eb.argvs == []
    deploy = next(s for s in report["steps"] if s["name"] == "deploy")
    assert deploy["detail"] == f"skipped: {NEW} is already live; verifying it"
    assert report["last_good_version"] == OLD  # never the live label itself
    aws.done()


def test_fix_forward_of_a_chosen_label_refuses_a_version_that_does_not_exist(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer) -> None:
    """--existing-only: eb deploy --label would bundle the checkout under that name."""
    aws.env("Ready", OLD, old_server)
    aws.health("Red", "Severe")
    aws.env("Ready", OLD, old_server)
    aws.env("Ready", OLD, old_server)
    aws.version(NEW, False)

    code, report = release(aws, eb, tmp_path, allow_unhealthy=True, existing_only=True)

    assert code == EXIT_REFUSED and report["failed_step"] == "check-version"
    assert "no application version" in report["error"] and eb.argvs == []
    aws.done()


def test_the_rollback_target_is_the_newest_verified_version_not_what_runs(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer) -> None:
    """A manual `eb deploy` of OTHER is running: it was never verified, so a failed
    release goes back to OLD, which was."""
    aws.prepare(old_server, running=OTHER, last_good_configs=REPO_CONFIGS,
                tagged={OTHER: None, "v-older": "2026-11-20T05:00:00+00:00",
                        OLD: "2026-11-27T05:00:00+00:00"})
    aws.started(eb, old_server, running=OTHER)
    aws.env("Ready", OTHER, old_server)      # Elastic Beanstalk gave the deployment up
    aws.eb_stub.add_response("describe_events", {"Events": []})
    aws.version(NEW, True)
    aws.eb_stub.add_response("update_tags_for_resource", {},
                             {"ResourceArn": ARN + NEW, "TagsToRemove": [VERIFIED_TAG]})
    aws.env("Ready", OTHER, old_server)
    aws.env("Ready", OTHER, old_server)
    eb.queue(deploy_existing(ENV, OTHER))
    aws.env("Ready", OLD, old_server)
    aws.verified(OLD, old_server)

    code, report = release(aws, eb, tmp_path)

    assert code == EXIT_ROLLED_BACK
    assert report["last_good_version"] == OLD and report["last_good_verified"]
    assert eb.argvs == [started_args(), deploy_args("--version", OLD)]
    aws.done()


def test_someone_elses_deploy_during_the_release_stops_it_with_exit_5(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer,
        alerts: AlertSink) -> None:
    aws.prepare(old_server)
    aws.started(eb, old_server)
    aws.env("Ready", OTHER, old_server)   # the deployment ended on a version not ours
    aws.eb_stub.add_response("describe_events", {"Events": []})
    aws.version(NEW, True)
    aws.eb_stub.add_response("update_tags_for_resource", {},
                             {"ResourceArn": ARN + NEW, "TagsToRemove": [VERIFIED_TAG]})
    aws.env("Ready", OTHER, old_server)   # rollback:wait-ready finds it

    code, report = release(aws, eb, tmp_path)

    assert code == EXIT_INTERFERED
    assert report["outcome"] == "interfered" and report["failed_step"] == "canary"
    assert "someone else deployed" in report["rollback"]["error"]
    assert eb.argvs == [started_args()]  # nothing deployed over it
    assert "STOPPED" in alerts.payloads[0]["text"]
    aws.done()


def test_an_override_of_a_declared_setting_refuses_the_release_and_says_how_to_fix(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer) -> None:
    """`eb create` sets RollingUpdateType=Health through the API (ebcli/objects/
    requests.py, add_client_defaults), and that wins over .ebextensions."""
    rolling = ("aws:autoscaling:updatepolicy:rollingupdate", "RollingUpdateType")
    aws.prepare(old_server, overrides={rolling: "Health"})

    code, report = release(aws, eb, tmp_path)

    assert code == EXIT_REFUSED and report["failed_step"] == "settings"
    assert (f"RollingUpdateType is 'Health' in {ENV}, but the repository declares "
            f"{DECLARED[rolling]!r}") in report["error"]
    assert ("--options-to-remove 'Namespace=aws:autoscaling:updatepolicy:rollingupdate,"
            "OptionName=RollingUpdateType'") in report["error"]
    assert eb.argvs == []


def test_the_settings_check_reads_the_declared_values_from_the_repository(
        tmp_path: Path) -> None:
    """Not hard-coded: whatever .ebextensions says is what is required."""
    configs = dict(REPO_CONFIGS)
    policy = ("aws:elasticbeanstalk:command", "DeploymentPolicy")
    configs["02-deploy.config"] = configs["02-deploy.config"].replace(
        f"DeploymentPolicy: {DECLARED[policy]}", "DeploymentPolicy: Immutable")
    declared = ebsettings.option_settings(configs)
    assert declared[policy] == "Immutable"
    effective = {**{k: DECLARED.get(k) for k in ebsettings.WATCHED}, policy: "TrafficSplitting"}
    [problem] = ebsettings.setting_differences(declared, effective, ENV)
    assert "DeploymentPolicy is 'TrafficSplitting'" in problem and "'Immutable'" in problem


def test_a_release_that_changes_option_settings_applies_them_first_then_deploys(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer,
        new_server: GunicornServer) -> None:
    """An Immutable deploy cannot carry .ebextensions option changes: ops.release finds
    them against the last good bundle and applies them as their own update."""
    old_configs = dict(REPO_CONFIGS)
    old_configs["06-app.config"] = old_configs["06-app.config"].replace(
        'LOCK_TIMEOUT: "5"', 'LOCK_TIMEOUT: "9"')
    lock = ("aws:elasticbeanstalk:application:environment", "LOCK_TIMEOUT")
    aws.prepare(old_server, last_good_configs=old_configs)
    aws.eb_stub.add_response("update_environment", {"EnvironmentName": ENV}, {
        "EnvironmentName": ENV, "OptionsToRemove": [],
        "OptionSettings": [{"Namespace": lock[0], "OptionName": lock[1], "Value": "5"}]})
    aws.env("Updating", OLD, old_server)
    aws.env("Ready", OLD, old_server)
    aws.health("Green", "Ok")
    aws.deployed(eb, old_server, new_server)
    aws.verified(NEW, new_server)
    aws.tag(NEW, verified=True)

    code, report = release(aws, eb, tmp_path)

    assert code == EXIT_DEPLOYED
    assert names(report)[len(PREPARE):len(PREPARE) + 2] == ["config-update", "deploy"]
    assert report["config_change"] == f"{lock[0]} LOCK_TIMEOUT -> '5'"
    aws.done()


def test_a_configuration_change_is_undone_when_the_release_is_rolled_back(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer,
        new_server: GunicornServer) -> None:
    old_configs = dict(REPO_CONFIGS)
    old_configs["06-app.config"] = old_configs["06-app.config"].replace(
        'LOCK_TIMEOUT: "5"', 'LOCK_TIMEOUT: "9"')
    lock = {"Namespace": "aws:elasticbeanstalk:application:environment",
            "OptionName": "LOCK_TIMEOUT"}
    aws.prepare(old_server, last_good_configs=old_configs)
    aws.eb_stub.add_response("update_environment", {}, {
        "EnvironmentName": ENV, "OptionSettings": [{**lock, "Value": "5"}],
        "OptionsToRemove": []})
    aws.env("Ready", OLD, old_server)
    aws.health("Green", "Ok")
    aws.deployed(eb, old_server, new_server)
    aws.env("Ready", NEW, new_server)
    aws.health("Red", "Severe", ["Following services are not running: web."])
    aws.tag(NEW, verified=False)
    aws.eb_stub.add_response("update_environment", {}, {   # rollback:config
        "EnvironmentName": ENV, "OptionSettings": [{**lock, "Value": "9"}],
        "OptionsToRemove": []})
    aws.env("Ready", NEW, old_server)
    aws.env("Ready", NEW, old_server)
    aws.env("Ready", NEW, old_server)
    eb.queue(deploy_existing(ENV, NEW))
    aws.env("Ready", OLD, old_server)      # rollback:data
    aws.verified(OLD, old_server)

    code, report = release(aws, eb, tmp_path)

    assert code == EXIT_ROLLED_BACK and report["failed_step"] == "health"
    restored = next(s for s in report["steps"] if s["name"] == "rollback:config")
    assert restored["ok"] and restored["detail"] == "1 setting(s) restored, 0 removed"
    aws.done()


def test_a_release_that_changes_resources_under_immutable_is_refused(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer) -> None:
    old_configs = {name: text for name, text in REPO_CONFIGS.items()
                   if "Resources:" not in text}
    aws.prepare(old_server, last_good_configs=old_configs)

    code, report = release(aws, eb, tmp_path)

    assert code == EXIT_REFUSED and report["failed_step"] == "config-change"
    assert "changes .ebextensions Resources" in report["error"]
    assert "Releasing a configuration change" in report["error"]
    assert eb.argvs == []


def test_the_pre_deploy_snapshot_is_taken_on_an_instance_and_named_in_the_report(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer,
        new_server: GunicornServer) -> None:
    snapshot = f"s3://backups/shortener/pre-deploy/{NEW}/20261127T050000000000Z"
    aws.prepare(old_server)
    aws.snapshot_taken(snapshot)
    aws.deployed(eb, old_server, new_server)
    aws.verified(NEW, new_server)
    aws.tag(NEW, verified=True)

    code, report = release(aws, eb, tmp_path, backup=True, backup_timeout=600)

    assert code == EXIT_DEPLOYED
    assert report["backup"] == snapshot and names(report)[len(PREPARE)] == "backup"
    aws.done()


def test_a_failed_snapshot_refuses_the_release(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer) -> None:
    aws.prepare(old_server)
    aws.eb_stub.add_response("describe_environment_resources", {"EnvironmentResources": {
        "EnvironmentName": ENV, "Instances": [{"Id": OLD_ID}]}})
    aws.ssm_stub.add_response("send_command", {"Command": {"CommandId": COMMAND_ID}})
    aws.ssm_stub.add_response("get_command_invocation", {
        "Status": "Failed", "StandardOutputContent": "ERROR backup: BACKUP_BUCKET is not set"})

    code, report = release(aws, eb, tmp_path, backup=True)

    assert code == EXIT_REFUSED and report["failed_step"] == "backup"
    assert "BACKUP_BUCKET is not set" in report["error"] and eb.argvs == []
    aws.done()


def test_a_missing_version_lifecycle_policy_is_a_warning_in_the_report(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer,
        new_server: GunicornServer) -> None:
    aws.prepare(old_server, lifecycle=None)
    aws.deployed(eb, old_server, new_server)
    aws.verified(NEW, new_server)
    aws.tag(NEW, verified=True)

    code, report = release(aws, eb, tmp_path)

    assert code == EXIT_DEPLOYED
    assert any("1,000 versions" in warning for warning in report["warnings"])
    aws.done()


def test_a_busy_environment_that_never_settles_is_refused_without_deploying(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer,
        alerts: AlertSink) -> None:
    aws.env("Updating", OLD, old_server)

    code, report = release(aws, eb, tmp_path, ready_timeout=0)

    assert code == EXIT_REFUSED
    assert report["outcome"] == "refused" and report["failed_step"] == "wait-ready"
    assert eb.argvs == [] and "REFUSED" in alerts.payloads[0]["text"]
    aws.done()


def test_an_unhealthy_environment_is_refused_before_the_deploy(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer) -> None:
    aws.env("Ready", OLD, old_server)
    aws.health("Red", "Severe", ["Following services are not running: web."])

    code, report = release(aws, eb, tmp_path)

    assert code == EXIT_REFUSED and report["failed_step"] == "health-before"
    assert "Red/Severe" in report["error"] and "--allow-unhealthy" in report["error"]
    assert report["rollback"] is None and eb.argvs == []
    aws.done()


def test_a_failed_rollback_is_reported_loudly_with_its_own_exit_code(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer,
        new_server: GunicornServer, alerts: AlertSink,
        capsys: pytest.CaptureFixture[str]) -> None:
    aws.prepare(old_server)
    aws.deployed(eb, old_server, new_server)
    aws.env("Ready", NEW, new_server)
    aws.health("Red", "Severe", ["Following services are not running: web."])
    aws.redeployed_last_good(eb, old_server, outcome="fail")

    code, report = release(aws, eb, tmp_path)

    assert code == EXIT_ROLLBACK_FAILED
    assert report["outcome"] == "rollback_failed" and report["rollback"]["ok"] is False
    assert "exited with code 4" in report["rollback"]["error"]
    out = capsys.readouterr()
    assert "ROLLBACK FAILED" in out.err and "::error title=ROLLBACK FAILED::" in out.out
    assert alerts.payloads[0]["text"].startswith("<!channel> :fire: ROLLBACK FAILED")
    aws.done()


def test_a_failed_first_deploy_with_nothing_healthy_before_says_it_cannot_roll_back(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer) -> None:
    aws.env("Ready", None, old_server)
    aws.health("Red", "Severe")
    aws.env("Ready", None, old_server)
    aws.env("Ready", None, old_server)
    aws.version(NEW, False)
    aws.verified_versions({})
    aws.settings()
    aws.lifecycle()
    aws.started(eb, old_server, running=None)
    aws.env("Ready", None, old_server)       # Elastic Beanstalk gave the deployment up
    aws.eb_stub.add_response("describe_events", {"Events": []})

    code, report = release(aws, eb, tmp_path, allow_unhealthy=True)

    assert code == EXIT_ROLLBACK_FAILED
    assert report["last_good_version"] is None and report["failed_step"] == "canary"
    assert report["rollback"]["error"].startswith("no earlier version is known")
    aws.done()


def test_the_report_is_on_disk_after_every_step_even_if_the_job_dies_midway(
        aws: AWS, eb: EBCLI, tmp_path: Path, old_server: GunicornServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancelled job's runner sends SIGTERM and then kills: the report must already
    say how far the release got."""
    def killed(self: object) -> str:
        raise KeyboardInterrupt("the runner stopped the job")
    monkeypatch.setattr(release_module.Release, "check_lifecycle", killed)
    aws.prepare(old_server)

    with pytest.raises(KeyboardInterrupt):
        release(aws, eb, tmp_path)

    report = json.loads((tmp_path / "report.json").read_text())
    assert names(report) == PREPARE[:-1] and report["finished_at"] == ""
    assert not list(tmp_path.glob(".report.json.*")), "a temporary file was left behind"


def test_an_interrupted_job_alert_names_the_last_step_the_state_and_the_run(
        aws: AWS, tmp_path: Path, old_server: GunicornServer, alerts: AlertSink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_RUN_URL", "https://github.com/o/r/actions/runs/7")
    (tmp_path / "report.json").write_text(json.dumps(
        {"version": NEW, "outcome": "", "steps": [{"name": "deploy"}]}))
    aws.env("Updating", NEW, old_server)
    aws.health("Grey", "Pending")

    text = interrupted_alert(tmp_path / "report.json", aws.target()) or ""

    assert f"release {NEW} stopped after step 'deploy' (unfinished)" in text
    assert f"{ENV} is Updating on {NEW}, Grey/Pending" in text
    assert "https://github.com/o/r/actions/runs/7" in text
    no_report = interrupted_alert(tmp_path / "missing.json", None)
    assert no_report and "no release report: the job ended before ops.release started" \
        in no_report
    aws.done()


def test_a_release_that_finished_and_alerted_by_itself_is_not_alerted_twice(
        tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text(json.dumps(
        {"version": NEW, "outcome": "rolled_back", "finished_at": "2026-11-27T05:10:00+00:00",
         "alert_sent": True, "steps": [{"name": "rollback:watch-5xx"}]}))
    assert interrupted_alert(tmp_path / "report.json", None) is None


# --- the command line and the documents agree with the code ---------------------------


def test_every_command_line_option_is_documented_in_help() -> None:
    parser = release_module.build_parser()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 20
    for action in options:
        assert action.help and len(action.help) > 10, action.option_strings
    text = parser.format_help()
    for action in options:
        assert action.option_strings[-1] in text
    assert str(REPO) not in text, "--help must not show this machine's checkout path"


def test_the_exit_codes_agree_in_the_code_the_help_the_docs_and_the_readme() -> None:
    doc = release_module.__doc__ or ""
    help_text = release_module.build_parser().format_help()
    guide = (REPO / "docs" / "deploying.md").read_text()
    readme = (REPO / "README.md").read_text()
    outcomes = {code: outcome for outcome, code in release_module.EXIT_CODES.items()}
    assert set(release_module.EXIT_MEANINGS) == {*outcomes, release_module.EXIT_USAGE}
    for code, meaning in release_module.EXIT_MEANINGS.items():
        words = meaning.split(" (")[0]
        assert re.search(rf"^  {code}  {re.escape(words)}\b", doc, re.M), (code, "docstring")
        assert f"  {code}  {meaning}" in help_text, (code, "--help")
        row = rf"^\| {code} \| " + (rf"`{outcomes[code]}`" if code in outcomes else "")
        assert re.search(row, guide, re.M), (code, "docs/deploying.md")
        assert f"{code} {words}" in readme, (code, "README.md")


def test_the_documented_release_report_example_has_the_format_ops_release_writes() -> None:
    from dataclasses import fields

    from ops.release import EXIT_CODES, Report, Step

    docs = REPO / "docs"
    example = json.loads((docs / "release-report.example.json").read_text())
    assert set(example) == {f.name for f in fields(Report)}
    assert example["outcome"] in EXIT_CODES
    assert all(set(step) == {f.name for f in fields(Step)} for step in example["steps"])
    assert {"version", "ok", "seconds"} <= set(example["rollback"])
    guide = (docs / "deploying.md").read_text()
    for key in example:
        assert f"`{key}`" in guide, f"docs/deploying.md does not explain {key}"


def test_a_release_killed_with_sigkill_leaves_a_report_of_the_steps_it_finished(
        tmp_path: Path) -> None:
    """The real thing: `python -m ops.release` killed -9 in its watch window (as a
    runner that loses patience does) still leaves a whole, parseable report."""
    from ops.local import LocalTarget, stop_environment
    from ops.processes import spawn, stop
    from ops.rehearse import committed_tree
    from tests.servers import free_port

    environment = LocalTarget(tmp_path / "env", free_port())
    report_path = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "ops.release", "--target", "local", "--local-dir",
           str(environment.root), "--port", str(environment.port), "--source",
           str(committed_tree(tmp_path / "app")), "--label", "v1", "--report", str(report_path),
           "--allow-unhealthy", "--poll-interval", "0.2", "--watch", "60",
           "--watch-interval", "30"]
    env = {**os.environ, "CREATE_RATE_LIMIT": "off", "SECRET_KEY": "k", "ALERT_WEBHOOK_URL": ""}
    proc = spawn(cmd, cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 120
        while "smoke" not in report_names(report_path):
            assert proc.poll() is None and time.monotonic() < deadline, "never reached smoke"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop(proc)
        stop_environment(environment.root)

    report = json.loads(report_path.read_text())
    assert names(report)[-2:] == ["healthz-version", "smoke"]
    assert report["outcome"] == "" and report["finished_at"] == ""
    assert report["started_at"] and report["version"] == "v1"


def report_names(path: Path) -> list[str]:
    """The steps the report lists; it may not exist yet, but is never half-written."""
    try:
        return names(json.loads(path.read_text()))
    except FileNotFoundError:
        return []


# --- a target without progressive delivery ---------------------------------------------


class AllAtOnce(BasicTarget):
    """A target that deploys all at once (BasicTarget's defaults): `deploy` blocks."""

    def __init__(self, fails: bool) -> None:
        self.fails = fails

    def state(self) -> EnvState:
        return EnvState("Ready", OLD, "http://127.0.0.1:9")

    def deploy(self, label: str, new: bool, timeout: float) -> str:
        if self.fails:
            raise TargetError(f"{label} did not start")
        return f"{label} deployed"


@pytest.mark.parametrize("fails", [False, True])
def test_a_target_without_a_canary_reports_its_deployment_over_when_it_starts(
        fails: bool) -> None:
    """ops.release then goes straight from `canary` to verifying (or rolling back)."""
    target = AllAtOnce(fails)
    started = target.start_deployment(NEW, True, 60)
    assert not started.in_progress and started.baseline == OLD
    assert (started.phase, started.detail) == (("failed", f"{NEW} did not start") if fails
                                               else ("complete", f"{NEW} deployed"))
    assert target.deployment() == target.abort("too late") == started
    assert target.canary_metrics(10).canary.healthy is None
