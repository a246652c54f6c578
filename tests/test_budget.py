"""One invariant keeps a slow release from ending in ExpiredToken halfway through its
rollback (exit 4 with nobody able to act from the pipeline):

    the role's maximum session (docs/deploying.md, --max-session-duration)
      >= the credentials' lifetime (release.yml, role-duration-seconds)
      >= the job's timeout (release.yml, timeout-minutes)
      >= the worst case of ops.release as the job runs it, plus the steps before it.

The worst case is ops.release's own sum of every wait, forward and rollback
(ops.release.worst_case_seconds), computed with the options the workflow passes. A test
below raises each duration option in turn and checks that the worst case grows with it,
so a wait added later without being counted fails here.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import yaml

from ops.release import Options, build_parser, options_from, worst_case_seconds

REPO = Path(__file__).resolve().parent.parent
SETUP_ALLOWANCE = 15 * 60  # checkout, make eb-venv, credentials, eb init: before ops.release
# Options that are not durations (or are per-sample spacing, counted through `watch`).
NOT_A_WAIT = {"max_5xx_rate", "max_p99_ratio", "poll_interval", "watch_interval",
              "allow_unhealthy", "backup", "existing_only", "full_smoke"}


def release_job() -> dict[str, Any]:
    job: dict[str, Any] = yaml.safe_load(
        (REPO / ".github" / "workflows" / "release.yml").read_text())["jobs"]["release"]
    return job


def step(job: dict[str, Any], predicate: str) -> dict[str, Any]:
    return next(s for s in job["steps"] if predicate in str(s.get("run", s.get("uses"))))


def options_as_the_workflow_runs_them(job: dict[str, Any]) -> Options:
    """Parse the release step's command line with ops.release's own parser."""
    command = " ".join(step(job, "-m ops.release --environment")["run"].split())
    args = shlex.split(command.split("-m ops.release", 1)[1].replace("$RELEASE_FLAGS", ""))
    return options_from(build_parser().parse_args(args + ["--backup", "--full-smoke"]))


def test_credentials_outlast_the_job_which_outlasts_the_worst_release() -> None:
    job = release_job()
    worst = worst_case_seconds(options_as_the_workflow_runs_them(job))
    timeout = job["timeout-minutes"] * 60
    credentials = step(job, "configure-aws-credentials")["with"]["role-duration-seconds"]
    guide = (REPO / "docs" / "deploying.md").read_text()
    [max_session] = re.findall(r"--max-session-duration (\d+)", guide)
    assert int(max_session) >= credentials >= timeout >= worst + SETUP_ALLOWANCE, (
        f"role {max_session} s, credentials {credentials} s, job {timeout} s, "
        f"release worst case {worst:.0f} s + {SETUP_ALLOWANCE} s of setup")
    assert int(max_session) <= 43200, "IAM roles allow at most 12 hours"
    assert job["timeout-minutes"] <= 360, "GitHub-hosted jobs run at most 6 hours"


def test_every_wait_of_ops_release_counts_in_its_worst_case() -> None:
    base = Options()
    for option in fields(Options):
        if option.name in NOT_A_WAIT:
            continue
        longer = replace(base, **{option.name: getattr(base, option.name) + 1000})
        assert worst_case_seconds(longer) >= worst_case_seconds(base) + 1000, (
            f"--{option.name.replace('_', '-')} is a wait that worst_case_seconds ignores")


def test_the_worst_case_is_forward_and_rollback_not_just_one_deploy() -> None:
    o = Options()
    assert worst_case_seconds(o) > 2 * (o.deploy_timeout + o.ready_timeout + o.watch)


def test_the_canary_evaluation_and_the_data_restore_count_in_the_worst_case() -> None:
    """The canary is watched inside --deploy-timeout (EB's EvaluationTime must fit in
    it, tests/test_ebconfig.py); the restore of a snapshot has its own limit."""
    o = Options()
    assert worst_case_seconds(replace(o, restore_timeout=o.restore_timeout + 500)) == \
        worst_case_seconds(o) + 500
    assert worst_case_seconds(replace(o, canary_interval=o.canary_interval + 50)) == \
        worst_case_seconds(o) + 50
