"""ops.release against Elastic Beanstalk's API and CLI, through fakes faithful to them.

The AWS API is botocore's Stubber on real boto3 clients (responses shaped and validated
against the service models); the eb CLI is tests/fakes/eb on PATH (real arguments,
output and exit codes). Everything past the AWS boundary is real: the public URL the
stubbed environment reports (its CNAME) is a real gunicorn serving application.py, the
smoke test is the real `python -m ops.smoke`, and alerts go to a real HTTP listener.
"""
from __future__ import annotations

import http.server
import json
import os
import subprocess  # nosec B404 - runs the fake eb
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.stub import ANY, Stubber

from ops.release import (EXIT_DEPLOYED, EXIT_REFUSED, EXIT_ROLLBACK_FAILED, EXIT_ROLLED_BACK,
                         Options, build_parser, execute)
from ops.targets import EBTarget
from tests.servers import GunicornServer

FAKES = Path(__file__).parent / "fakes"
ENV, APP = "shortener-prod", "shortener"
OLD, NEW = "v-old-1111111", "v-new-2222222"


# --- real servers standing in for the environment's instances -----------------------
# They share one data directory, as every instance shares the EFS mount on EB.


@pytest.fixture(scope="module")
def efs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("efs")


def start_server(root: Path, version: str, workers: int = 2, **env: str) -> GunicornServer:
    srv = GunicornServer(root / "data", workers=workers, env={"APP_VERSION": version, **env})
    srv.start()
    return srv


@pytest.fixture(scope="module")
def old_server(efs: Path) -> Iterator[GunicornServer]:
    srv = start_server(efs, OLD)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def new_server(efs: Path) -> Iterator[GunicornServer]:
    srv = start_server(efs, NEW)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def broken_create_server(efs: Path) -> Iterator[GunicornServer]:
    """The new version, healthy on /healthz, whose creates are refused (limit used up)."""
    srv = start_server(efs, NEW,
                       workers=1, CREATE_RATE_LIMIT="1/hour")
    requests.post(f"{srv.url}/api/links", json={"url": "https://example.com/"}, timeout=5)
    yield srv
    srv.stop()


# --- the fake eb CLI and the stubbed API ---------------------------------------------


class FakeEB:
    """The state file of tests/fakes/eb: what each deploy does, and what was called."""

    def __init__(self, path: Path, versions: list[str], plan: list[str]) -> None:
        self.path = path
        path.write_text(json.dumps({"versions": versions, "plan": plan, "calls": []}))

    @property
    def calls(self) -> list[list[str]]:
        calls: list[list[str]] = json.loads(self.path.read_text())["calls"]
        return calls


class AWS:
    """Stubbed Elastic Beanstalk and CloudWatch clients, with helpers that queue the
    responses an environment gives as it goes through a release."""

    def __init__(self) -> None:
        session = boto3.session.Session(region_name="eu-west-1", aws_access_key_id="fake",
                                        aws_secret_access_key="fake")
        self.eb = session.client("elasticbeanstalk")
        self.cw = session.client("cloudwatch")
        self.eb_stub, self.cw_stub = Stubber(self.eb), Stubber(self.cw)
        self.eb_stub.activate()
        self.cw_stub.activate()

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

    def version_lookup(self, exists: bool, label: str, server: GunicornServer) -> None:
        self.env("Ready", OLD, server)
        versions = [{"ApplicationName": APP, "VersionLabel": label}] if exists else []
        self.eb_stub.add_response("describe_application_versions",
                                  {"ApplicationVersions": versions},
                                  {"ApplicationName": APP, "VersionLabels": [label]})

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

    def verified(self, version: str, server: GunicornServer, errors: int = 0) -> None:
        """The responses of a verification that passes: Ready on version, Green/Ok,
        then the URL lookups of /healthz and the smoke test, then the 5xx watch."""
        self.env("Ready", version, server)
        self.health("Green", "Ok")
        self.env("Ready", version, server)
        self.env("Ready", version, server)
        self.requests(errors, 400)

    def done(self) -> None:
        self.eb_stub.assert_no_pending_responses()
        self.cw_stub.assert_no_pending_responses()


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
def fake_eb_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{FAKES}:{os.environ['PATH']}")


def fake_eb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plan: list[str],
            versions: tuple[str, ...] = (OLD,)) -> FakeEB:
    fake = FakeEB(tmp_path / "fake-eb.json", list(versions), plan)
    monkeypatch.setenv("FAKE_EB_STATE", str(fake.path))
    return fake


def release(aws: AWS, tmp_path: Path, label: str = NEW, **opts: Any) -> tuple[int, dict[str, Any]]:
    settings: dict[str, Any] = dict(ready_timeout=30, deploy_timeout=30, verify_timeout=30,
                                    watch=0.02, watch_interval=0.01, poll_interval=0,
                                    min_requests=20)
    options = Options(**{**settings, **opts})
    target = EBTarget(ENV, aws.eb, aws.cw, eb_command="eb")
    code = execute(target, label, options, tmp_path / "report.json")
    report: dict[str, Any] = json.loads((tmp_path / "report.json").read_text())
    return code, report


def deploy_call(flag: str, label: str) -> list[str]:
    return ["deploy", ENV, flag, label, "--timeout", "1"]


def start_of_release(aws: AWS, server: GunicornServer, exists: bool = False) -> None:
    aws.env("Ready", OLD, server)
    aws.health("Green", "Ok")
    aws.env("Ready", OLD, server)   # the URL whose /healthz counts the links before
    aws.version_lookup(exists, NEW, server)


pytestmark = pytest.mark.usefixtures("fake_eb_path")


# --- the scenarios ---------------------------------------------------------------------


def test_a_good_version_is_deployed_verified_and_reported(
        aws: AWS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        old_server: GunicornServer, new_server: GunicornServer, alerts: AlertSink) -> None:
    eb = fake_eb(tmp_path, monkeypatch, ["ok"])
    start_of_release(aws, old_server)
    aws.verified(NEW, new_server)
    aws.requests(1, 400)

    code, report = release(aws, tmp_path)

    assert code == EXIT_DEPLOYED
    assert report["outcome"] == "deployed" and report["rollback"] is None
    assert report["last_good_version"] == OLD and report["version"] == NEW
    assert eb.calls == [deploy_call("--label", NEW)]
    assert [s["name"] for s in report["steps"]] == [
        "wait-ready", "health-before", "links-before", "check-version", "deploy",
        "ready-after", "health", "healthz-version", "smoke", "watch-5xx"]
    assert all(s["ok"] and s["seconds"] >= 0 for s in report["steps"])
    assert alerts.payloads == []
    aws.done()


def test_a_failed_eb_deploy_is_rolled_back_to_the_last_good_version(
        aws: AWS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        old_server: GunicornServer, alerts: AlertSink) -> None:
    eb = fake_eb(tmp_path, monkeypatch, ["fail", "ok"])
    start_of_release(aws, old_server)
    aws.env("Ready", NEW, old_server)   # rollback: wait until Ready
    aws.env("Ready", NEW, old_server)   # rollback: still on the failed version
    aws.verified(OLD, old_server)
    aws.requests(0, 400)

    code, report = release(aws, tmp_path)

    assert code == EXIT_ROLLED_BACK
    assert report["outcome"] == "rolled_back" and report["failed_step"] == "deploy"
    assert "exited with code 4" in report["error"]
    assert "Failed to deploy application" in report["error"]
    assert eb.calls == [deploy_call("--label", NEW), deploy_call("--version", OLD)]
    assert report["rollback"]["version"] == OLD and report["rollback"]["ok"] is True
    assert len(alerts.payloads) == 1
    text = alerts.payloads[0]["text"]
    assert "rolled back" in text and NEW in text and OLD in text
    aws.done()


def test_health_going_red_after_the_deploy_triggers_a_rollback(
        aws: AWS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        old_server: GunicornServer, new_server: GunicornServer) -> None:
    eb = fake_eb(tmp_path, monkeypatch, ["ok", "ok"])
    start_of_release(aws, old_server)
    aws.env("Ready", NEW, new_server)
    aws.health("Yellow", "Warning")
    aws.health("Red", "Severe", ["100.0 % of the requests are failing with HTTP 5xx."])
    aws.env("Ready", NEW, old_server)
    aws.env("Ready", NEW, old_server)
    aws.verified(OLD, old_server)
    aws.requests(0, 400)

    code, report = release(aws, tmp_path)

    assert code == EXIT_ROLLED_BACK
    assert report["failed_step"] == "health"
    assert "Red/Severe" in report["error"] and "HTTP 5xx" in report["error"]
    assert eb.calls[-1] == deploy_call("--version", OLD)
    assert report["rollback"]["ok"] is True
    aws.done()


def test_a_failing_smoke_test_triggers_a_rollback(
        aws: AWS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        old_server: GunicornServer, broken_create_server: GunicornServer) -> None:
    eb = fake_eb(tmp_path, monkeypatch, ["ok", "ok"])
    start_of_release(aws, old_server)
    aws.env("Ready", NEW, broken_create_server)
    aws.health("Green", "Ok")
    aws.env("Ready", NEW, broken_create_server)
    aws.env("Ready", NEW, broken_create_server)
    aws.env("Ready", NEW, old_server)
    aws.env("Ready", NEW, old_server)
    aws.verified(OLD, old_server)
    aws.requests(0, 400)

    code, report = release(aws, tmp_path)

    assert code == EXIT_ROLLED_BACK
    assert report["failed_step"] == "smoke"
    assert "POST /api/links: expected HTTP 201, got 429" in report["error"]
    assert eb.calls == [deploy_call("--label", NEW), deploy_call("--version", OLD)]
    aws.done()


def test_a_5xx_rate_rising_in_the_watch_window_triggers_a_rollback(
        aws: AWS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        old_server: GunicornServer, new_server: GunicornServer) -> None:
    eb = fake_eb(tmp_path, monkeypatch, ["ok", "ok"])
    start_of_release(aws, old_server)
    aws.verified(NEW, new_server, errors=2)   # first sample: 0.5 %, under 1 %
    aws.requests(60, 400)                      # second sample: 15 %
    aws.env("Ready", NEW, old_server)
    aws.env("Ready", NEW, old_server)
    aws.verified(OLD, old_server)
    aws.requests(0, 400)

    code, report = release(aws, tmp_path)

    assert code == EXIT_ROLLED_BACK
    assert report["failed_step"] == "watch-5xx"
    assert "5xx rate 15.0% (60/400) is over 1.0%" in report["error"]
    assert eb.calls[-1] == deploy_call("--version", OLD)
    aws.done()


def test_an_eb_deploy_that_hangs_is_killed_at_the_timeout_and_rolled_back(
        aws: AWS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        old_server: GunicornServer) -> None:
    eb = fake_eb(tmp_path, monkeypatch, ["hang", "ok"])
    start_of_release(aws, old_server)
    aws.env("Updating", NEW, old_server)   # EB goes on after eb was killed...
    aws.env("Ready", NEW, old_server)      # ...and the rollback waits for it
    aws.env("Ready", NEW, old_server)
    aws.verified(OLD, old_server)
    aws.requests(0, 400)

    code, report = release(aws, tmp_path, deploy_timeout=1.5)

    assert code == EXIT_ROLLED_BACK
    assert report["failed_step"] == "deploy"
    assert "did not finish within 2 s and was killed" in report["error"]
    assert eb.calls[-1] == deploy_call("--version", OLD)
    aws.done()


def test_an_eb_cli_timeout_with_exit_0_is_not_trusted(
        aws: AWS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        old_server: GunicornServer) -> None:
    """The real eb logs 'timed out' and exits 0 while the deploy goes on: verification,
    not the exit code, decides, and a deploy that never settles is rolled back."""
    eb = fake_eb(tmp_path, monkeypatch, ["timeout", "ok"])
    start_of_release(aws, old_server)
    aws.env("Updating", NEW, old_server)   # ready-after: times out (ready_timeout 0)
    aws.env("Ready", NEW, old_server)      # rollback: Ready at last
    aws.env("Ready", NEW, old_server)
    aws.verified(OLD, old_server)
    aws.requests(0, 400)

    code, report = release(aws, tmp_path, ready_timeout=0)

    assert code == EXIT_ROLLED_BACK
    assert report["failed_step"] == "ready-after"
    assert "timed out after 0 s waiting for the environment to be Ready" in report["error"]
    assert eb.calls[-1] == deploy_call("--version", OLD)
    aws.done()


def test_an_aws_api_error_during_verification_triggers_a_rollback(
        aws: AWS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        old_server: GunicornServer) -> None:
    eb = fake_eb(tmp_path, monkeypatch, ["ok", "ok"])
    start_of_release(aws, old_server)
    aws.env("Ready", NEW, old_server)
    aws.eb_stub.add_client_error("describe_environment_health", "Throttling",
                                 "Rate exceeded", 400)
    aws.env("Ready", NEW, old_server)
    aws.env("Ready", NEW, old_server)
    aws.verified(OLD, old_server)
    aws.requests(0, 400)

    code, report = release(aws, tmp_path)

    assert code == EXIT_ROLLED_BACK
    assert report["failed_step"] == "health"
    assert report["error"].startswith("ClientError: An error occurred (Throttling)")
    assert eb.calls[-1] == deploy_call("--version", OLD)
    aws.done()


def test_a_label_that_already_exists_is_redeployed_with_version(
        aws: AWS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        old_server: GunicornServer, new_server: GunicornServer) -> None:
    eb = fake_eb(tmp_path, monkeypatch, ["ok"], versions=(OLD, NEW))
    start_of_release(aws, old_server, exists=True)
    aws.verified(NEW, new_server)
    aws.requests(0, 400)

    code, report = release(aws, tmp_path)

    assert code == EXIT_DEPLOYED
    assert eb.calls == [deploy_call("--version", NEW)]
    assert report["steps"][3] == {"name": "check-version", "ok": True,
                                  "seconds": report["steps"][3]["seconds"], "detail": "exists"}
    aws.done()


def test_a_busy_environment_is_waited_for_instead_of_failing_with_invalid_state(
        aws: AWS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        old_server: GunicornServer, new_server: GunicornServer) -> None:
    eb = fake_eb(tmp_path, monkeypatch, ["ok"])
    aws.env("Updating", OLD, old_server)   # the previous push is still deploying
    aws.env("Updating", OLD, old_server)
    start_of_release(aws, old_server)
    aws.verified(NEW, new_server)
    aws.requests(0, 400)

    code, report = release(aws, tmp_path)

    assert code == EXIT_DEPLOYED
    assert eb.calls == [deploy_call("--label", NEW)]
    assert report["steps"][0]["name"] == "wait-ready"
    assert report["steps"][0]["detail"] == f"Ready on {OLD}"
    aws.done()


def test_a_busy_environment_that_never_settles_is_refused_without_deploying(
        aws: AWS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        old_server: GunicornServer, alerts: AlertSink) -> None:
    eb = fake_eb(tmp_path, monkeypatch, [])
    aws.env("Updating", OLD, old_server)

    code, report = release(aws, tmp_path, ready_timeout=0)

    assert code == EXIT_REFUSED
    assert report["outcome"] == "refused" and report["failed_step"] == "wait-ready"
    assert eb.calls == []
    assert "REFUSED" in alerts.payloads[0]["text"]
    aws.done()


def test_an_unhealthy_environment_is_refused_before_the_deploy(
        aws: AWS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        old_server: GunicornServer) -> None:
    eb = fake_eb(tmp_path, monkeypatch, [])
    aws.env("Ready", OLD, old_server)
    aws.health("Red", "Severe", ["Following services are not running: web."])

    code, report = release(aws, tmp_path)

    assert code == EXIT_REFUSED
    assert report["failed_step"] == "health-before"
    assert "Red/Severe" in report["error"] and "--allow-unhealthy" in report["error"]
    assert report["rollback"] is None and eb.calls == []
    aws.done()


def test_a_failed_rollback_is_reported_loudly_with_its_own_exit_code(
        aws: AWS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        old_server: GunicornServer, alerts: AlertSink,
        capsys: pytest.CaptureFixture[str]) -> None:
    eb = fake_eb(tmp_path, monkeypatch, ["fail", "fail"])
    start_of_release(aws, old_server)
    aws.env("Ready", NEW, old_server)
    aws.env("Ready", NEW, old_server)

    code, report = release(aws, tmp_path)

    assert code == EXIT_ROLLBACK_FAILED
    assert report["outcome"] == "rollback_failed" and report["failed_step"] == "deploy"
    assert report["rollback"]["ok"] is False
    assert "exited with code 4" in report["rollback"]["error"]
    assert eb.calls == [deploy_call("--label", NEW), deploy_call("--version", OLD)]
    out = capsys.readouterr()
    assert "ROLLBACK FAILED" in out.err and "::error title=ROLLBACK FAILED::" in out.out
    assert alerts.payloads[0]["text"].startswith("<!channel> :fire: ROLLBACK FAILED")
    aws.done()


def test_a_failed_first_deploy_has_nothing_to_roll_back_to_and_says_so(
        aws: AWS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        old_server: GunicornServer) -> None:
    eb = fake_eb(tmp_path, monkeypatch, ["fail"], versions=())
    aws.env("Ready", None, old_server)
    aws.health("Green", "Ok")
    aws.env("Ready", None, old_server)
    aws.version_lookup(False, NEW, old_server)

    code, report = release(aws, tmp_path)

    assert code == EXIT_ROLLBACK_FAILED
    assert report["last_good_version"] is None and report["failed_step"] == "deploy"
    assert report["rollback"]["error"].startswith("no earlier version is known")
    assert eb.calls == [deploy_call("--label", NEW)]
    aws.done()


def test_the_fake_eb_rejects_an_unknown_version_like_the_real_cli(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_eb(tmp_path, monkeypatch, [])
    done = subprocess.run(["eb", "deploy", ENV, "--version", "nope"],  # nosec B603 B607
                          capture_output=True, text=True, check=False)
    assert done.returncode == 4
    assert "No Application Version named 'nope' found." in done.stderr


def test_every_command_line_option_is_documented_in_help() -> None:
    parser = build_parser()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 20
    for action in options:
        assert action.help and len(action.help) > 10, action.option_strings
    done = subprocess.run([sys.executable, "-m", "ops.release", "--help"],  # nosec B603
                          capture_output=True, text=True, check=True, cwd=FAKES.parent.parent)
    for action in options:
        assert action.option_strings[-1] in done.stdout
    assert "4 ROLLBACK FAILED" in done.stdout


def test_the_documented_release_report_example_has_the_format_ops_release_writes() -> None:
    from dataclasses import fields

    from ops.release import EXIT_CODES, Report, Step

    docs = FAKES.parent.parent / "docs"
    example = json.loads((docs / "release-report.example.json").read_text())
    assert set(example) == {f.name for f in fields(Report)}
    assert example["outcome"] in EXIT_CODES
    assert all(set(step) == {f.name for f in fields(Step)} for step in example["steps"])
    assert {"version", "ok", "seconds"} <= set(example["rollback"])
    guide = (docs / "deploying.md").read_text()
    for key in example:
        assert f"`{key}`" in guide, f"docs/deploying.md does not explain {key}"
