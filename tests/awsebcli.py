"""The real eb CLI (awsebcli 3.27.5, installed in .venv-eb by `make eb-venv`) with its AWS
calls answered by botocore's Stubber: see tests/fakes/stubbed_aws_eb.py.

`EBCLI` makes a project directory like the deploy job's checkout (a git repository with
`.elasticbeanstalk/config.yml`, as `eb init` writes it) and an executable that ops.release
runs as its eb command. Each time it is run, it answers from the next queued scenario, so
a release that deploys and then rolls back meets two `eb deploy` runs, each with the AWS
answers the test gave it. The builders below say what Elastic Beanstalk answers to the
calls eb 3.27.5 makes for `eb deploy` (found by running it, and checked by Stubber
against the service models).
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess  # nosec B404 - runs git and the real eb
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EB_PYTHON = REPO / ".venv-eb" / "bin" / "python"
RUNNER = REPO / "tests" / "fakes" / "stubbed_aws_eb.py"
APP, REGION = "shortener", "eu-west-1"
PLATFORM_BRANCH = "Python 3.11 running on 64bit Amazon Linux 2023"
PLATFORM_ARN = f"arn:aws:elasticbeanstalk:{REGION}::platform/{PLATFORM_BRANCH}/4.3.0"
BUCKET = "elasticbeanstalk-eu-west-1-123456789012"
DEPLOY_REQUEST = "request-deploy"
Answer = dict[str, Any]

# ebcli/resources/strings.py `responses`: the event messages eb waits for.
STARTING = "Environment update is starting."
SUCCEEDED = "Environment update completed successfully."        # env.updatesuccess
FAILED = "Failed to deploy application."                        # event.faileddeploy


def answer(operation: str, response: dict[str, Any], service: str = "elasticbeanstalk",
           **extra: Any) -> Answer:
    return {"service": service, "operation": operation, "response": response, **extra}


def environment(name: str, status: str, version: str | None, cname: str = "") -> Answer:
    env: dict[str, Any] = {
        "EnvironmentName": name, "EnvironmentId": "e-0123456789", "ApplicationName": APP,
        "SolutionStackName": "64bit Amazon Linux 2023 v4.3.0 running Python 3.11",
        "PlatformArn": PLATFORM_ARN, "CNAME": cname or f"{name}.{REGION}.elasticbeanstalk.com",
        "Status": status, "Health": "Green", "HealthStatus": "Ok",
        "Tier": {"Name": "WebServer", "Type": "Standard", "Version": "1.0"},
        "AbortableOperationInProgress": status == "Updating"}
    if version is not None:
        env["VersionLabel"] = version
    return answer("describe_environments", {"Environments": [env]})


def platform_checks() -> list[Answer]:
    """eb deploy first warns about a retired platform: it reads the platform and branch."""
    return [
        answer("describe_platform_version", {"PlatformDescription": {
            "PlatformArn": PLATFORM_ARN, "PlatformStatus": "Ready",
            "PlatformBranchName": PLATFORM_BRANCH, "PlatformLifecycleState": "Recommended",
            "PlatformBranchLifecycleState": "Supported"}}),
        answer("list_platform_branches", {"PlatformBranchSummaryList": [{
            "PlatformName": "Python", "BranchName": PLATFORM_BRANCH,
            "LifecycleState": "Supported"}]}),
    ]


def events(env: str, *messages: str, severity: str = "INFO") -> Answer:
    return answer("describe_events", {"Events": [
        {"EventDate": "2026-11-27T05:00:00+00:00", "Message": message, "ApplicationName": APP,
         "EnvironmentName": env, "RequestId": DEPLOY_REQUEST, "Severity": severity}
        for message in reversed(messages)]})


def outcome_events(env: str, outcome: str, timeout_minutes: int = 1) -> list[Answer]:
    """What DescribeEvents says while eb waits: the update starts, then succeeds, fails,
    or nothing more is heard until eb's --timeout (a poll every 5 s: sleep_time)."""
    if outcome == "ok":
        return [events(env, STARTING), events(env, SUCCEEDED)]
    if outcome == "fail":
        return [events(env, STARTING), events(env, FAILED, severity="ERROR")]
    assert outcome == "timeout"
    return [events(env, STARTING)] + [events(env) for _ in range(timeout_minutes * 60 // 5)]


def deploy_existing(env: str, running: str, outcome: str | None = "ok") -> list[Answer]:
    """`eb deploy ENV --version V`: the environment, the platform, the update, events
    (none with --nohang: outcome None)."""
    return [environment(env, "Ready", running), *platform_checks(),
            answer("update_environment", {"EnvironmentName": env, "Status": "Updating"},
                   request_id=DEPLOY_REQUEST),
            *(outcome_events(env, outcome) if outcome else [])]


def deploy_new(env: str, running: str, label: str,
               outcome: str | None = "ok") -> list[Answer]:
    """`eb deploy ENV --label L`: also bundles git HEAD, uploads it to the EB bucket and
    creates the application version before the update (then no events with --nohang:
    outcome None)."""
    return [environment(env, "Ready", running), *platform_checks(),
            answer("describe_application_versions", {"ApplicationVersions": []}),
            answer("create_storage_location", {"S3Bucket": BUCKET}),
            answer("list_objects", {"Contents": []}, service="s3"),
            answer("put_object", {}, service="s3"),
            answer("create_application_version", {"ApplicationVersion": {
                "ApplicationName": APP, "VersionLabel": label, "Status": "UNPROCESSED"}}),
            answer("update_environment", {"EnvironmentName": env, "Status": "Updating"},
                   request_id=DEPLOY_REQUEST),
            *(outcome_events(env, outcome) if outcome else [])]


def deploy_started(env: str, running: str, label: str, new: bool = True) -> list[Answer]:
    """`eb deploy ENV --label L --nohang` (or --version): the same calls until the update
    starts, and no wait for its events."""
    return deploy_new(env, running, label, None) if new else deploy_existing(env, running, None)


class EBCLI:
    """The eb command ops.release runs: the real CLI, one queued scenario per run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.project = root / "checkout"
        self.runs = 0
        self.scenarios = 0
        make_project(self.project)
        self.command = root / "eb"
        self.command.write_text(
            "#!/bin/sh\n"
            f"n=$(( $(cat {root}/eb-runs 2>/dev/null || echo 0) + 1 ))\n"
            f"echo $n > {root}/eb-runs\n"
            f"cd {shlex.quote(str(self.project))} && exec {EB_PYTHON} {RUNNER} "
            f'{root}/eb-$n.json "$@"\n')
        self.command.chmod(0o755)

    def queue(self, responses: list[Answer]) -> None:
        self.scenarios += 1
        scenario = {"responses": responses, "log": str(self.root / f"eb-{self.scenarios}.log")}
        (self.root / f"eb-{self.scenarios}.json").write_text(json.dumps(scenario))

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run eb directly (not through ops.release)."""
        return subprocess.run([str(self.command), *args], capture_output=True, text=True,  # nosec
                              timeout=120, check=False)

    def log(self, run: int) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.root / f"eb-{run}.log").read_text())
        return loaded

    @property
    def argvs(self) -> list[list[str]]:
        """The arguments of every eb run so far."""
        runs = int((self.root / "eb-runs").read_text()) if (self.root / "eb-runs").exists() else 0
        return [self.log(n)["argv"] for n in range(1, runs + 1)]

    def operations(self, run: int) -> list[str]:
        return [call["operation"] for call in self.log(run)["calls"]]


def make_project(path: Path) -> None:
    """A checkout as the deploy job has it after `eb init`: a git repository (eb bundles
    HEAD with git archive) and .elasticbeanstalk/config.yml."""
    (path / ".elasticbeanstalk").mkdir(parents=True)
    (path / "application.py").write_text("application = None\n")
    (path / ".elasticbeanstalk" / "config.yml").write_text(
        "branch-defaults:\n  main:\n    environment: null\n"
        f"global:\n  application_name: {APP}\n  default_platform: {PLATFORM_BRANCH}\n"
        f"  default_region: {REGION}\n  profile: null\n  sc: git\n"
        "  workspace_type: Application\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "application.py"],
                ["git", "commit", "-q", "-m", "release"]):
        subprocess.run(cmd, cwd=path, env=env, check=True)  # nosec B603 B607
