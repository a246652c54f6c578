"""What the real `eb deploy` (awsebcli 3.27.5) does, as ops.release relies on it.

These run the CLI's own code from .venv-eb (requirements-deploy.txt); only AWS is
botocore's Stubber (tests/fakes/stubbed_aws_eb.py). So the exit codes and the order of
API calls below are awsebcli's, read from its behaviour, not from our notes:

- ebcli/core/ebrun.py, run_app: every EBCLIException ends in `app.close(code=4)`;
- ebcli/operations/commonops.py, wait_for_success_events: an error event raises
  ServiceError (`_raise_if_error_event`), and when --timeout runs out it raises
  TimeoutError (ebcli/objects/exceptions.py: an EBCLIException), so a timed-out deploy
  exits 4, not 0;
- ebcli/operations/deployops.py, deploy: UpdateEnvironment, then DescribeEvents every
  5 s (sleep_time) for --timeout minutes.
"""
from __future__ import annotations

import os
import subprocess  # nosec B404 - runs the deploy venv's python
from pathlib import Path

import pytest

from tests.awsebcli import (EB_PYTHON, EBCLI, REPO, deploy_existing, deploy_new, deploy_started,
                            environment)

ENV = "shortener-prod"

pytestmark = pytest.mark.skipif(not EB_PYTHON.exists() and os.environ.get("CI") != "true",
                                reason="run `make eb-venv` (make test does it; in CI a "
                                       "missing .venv-eb fails)")


@pytest.fixture
def eb(tmp_path: Path) -> EBCLI:
    return EBCLI(tmp_path)


def test_a_successful_deploy_of_an_existing_version_exits_0(eb: EBCLI) -> None:
    eb.queue(deploy_existing(ENV, running="v1"))
    done = eb.run("deploy", ENV, "--version", "v2", "--timeout", "1")
    assert done.returncode == 0, done.stderr
    assert "Environment update completed successfully." in done.stdout
    assert eb.operations(1) == ["DescribeEnvironments", "DescribePlatformVersion",
                                "ListPlatformBranches", "UpdateEnvironment",
                                "DescribeEvents", "DescribeEvents"]
    update = eb.log(1)["calls"][3]["params"]
    assert update == {"EnvironmentName": ENV, "VersionLabel": "v2"}
    assert eb.log(1)["unused_responses"] == {"elasticbeanstalk": 0}


def test_a_new_label_is_bundled_from_git_uploaded_and_created_before_the_update(
        eb: EBCLI) -> None:
    eb.queue(deploy_new(ENV, running="v1", label="v2"))
    done = eb.run("deploy", ENV, "--label", "v2", "--timeout", "1")
    assert done.returncode == 0, done.stderr
    operations = eb.operations(1)
    assert operations.index("PutObject") < operations.index("CreateApplicationVersion") \
        < operations.index("UpdateEnvironment")
    upload = next(c for c in eb.log(1)["calls"] if c["operation"] == "PutObject")
    assert upload["params"]["Key"] == "shortener/v2.zip"


@pytest.mark.parametrize("flag", ["--label", "--version"])
def test_nohang_returns_once_the_update_has_started_without_waiting_for_events(
        eb: EBCLI, flag: str) -> None:
    """What ops.release starts a deployment with: eb uploads (a new label), calls
    UpdateEnvironment and exits 0; the deployment's progress is ops.release's to watch
    (ebcli/controllers/deploy.py sets the timeout to 0 for --nohang)."""
    eb.queue(deploy_started(ENV, running="v1", label="v2", new=flag == "--label"))
    done = eb.run("deploy", ENV, flag, "v2", "--nohang")
    assert done.returncode == 0, done.stdout + done.stderr
    operations = eb.operations(1)
    assert operations[-1] == "UpdateEnvironment" and "DescribeEvents" not in operations
    assert eb.log(1)["calls"][-1]["params"] == {"EnvironmentName": ENV, "VersionLabel": "v2"}
    assert set(eb.log(1)["unused_responses"].values()) == {0}


def test_a_failed_deploy_exits_4_with_the_service_error(eb: EBCLI) -> None:
    eb.queue(deploy_existing(ENV, running="v1", outcome="fail"))
    done = eb.run("deploy", ENV, "--version", "v2", "--timeout", "1")
    assert done.returncode == 4
    assert "ServiceError - Failed to deploy application." in done.stdout + done.stderr


def test_a_deploy_that_outlasts_the_eb_timeout_exits_4_not_0(eb: EBCLI) -> None:
    """The fake eb this replaces exited 0 here; the real one raises TimeoutError."""
    eb.queue(deploy_existing(ENV, running="v1", outcome="timeout"))
    done = eb.run("deploy", ENV, "--version", "v2", "--timeout", "1")
    assert done.returncode == 4
    assert "TimeoutError - The EB CLI timed out after 1 minute(s)" in done.stdout + done.stderr
    log = eb.log(1)
    assert log["calls"][-1]["operation"] == "DescribeEvents"
    assert eb.operations(1).count("DescribeEvents") == 1 + 60 // 5
    assert log["virtual_seconds"] >= 60


def test_a_deploy_into_an_environment_that_is_busy_exits_4_with_invalid_state(
        eb: EBCLI) -> None:
    """Someone else's update is running: UpdateEnvironment is refused by the service,
    and eb exits 4 (ebcli/lib/elasticbeanstalk.py, update_env_application_version, does
    not turn this error into InvalidStateError's exit 3)."""
    eb.queue([environment(ENV, "Updating", "v9"), *deploy_existing(ENV, "v9")[1:3],
              {"service": "elasticbeanstalk", "operation": "update_environment",
               "error": {"code": "InvalidParameterValue",
                         "message": f"Environment named {ENV} is in an invalid state for "
                                    "this operation. Must be Ready."}}])
    done = eb.run("deploy", ENV, "--version", "v2", "--timeout", "1")
    assert done.returncode == 4
    assert "is in an invalid state for this operation. Must be Ready." in done.stdout + done.stderr


def test_the_release_job_can_run_ops_release_from_the_deploy_venv() -> None:
    """release.yml runs `.venv-eb/bin/python -m ops.release`: everything it imports,
    boto3 for the eb target included, must be in requirements-deploy.txt."""
    done = subprocess.run(  # nosec B603
        [str(EB_PYTHON), "-c", "import boto3, ops.release; print(ops.release.EXIT_INTERFERED)"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout) == (0, "5\n"), done.stderr
