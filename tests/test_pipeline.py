"""The GitHub Actions workflows keep their safety properties.

zizmor and check-jsonschema (make workflows) lint them; these tests pin down what the
pipeline promises: tests gate every deploy, only main deploys, a running deploy is never
cancelled, AWS access is by OIDC only, every action is pinned, and no secret is echoed.
"""
from __future__ import annotations

import re
import shutil
import subprocess  # nosec B404 - runs zizmor on a deliberately broken copy
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / ".github" / "workflows"
SHA_PIN = re.compile(r"^\s*(?:-\s*)?uses:\s*([\w.-]+/[\w./-]+)@([0-9a-f]{40}) # v\d+(\.\d+)*\s*$")


def workflow(name: str) -> dict[str, Any]:
    raw: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    raw["on"] = raw.pop(True, raw.get("on"))  # YAML 1.1 reads `on:` as True
    return {str(key): value for key, value in raw.items()}


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps", []))


def uses(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in steps(job) if s.get("uses", "").startswith(action + "@")]


def release_jobs(deploy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: job for name, job in deploy["jobs"].items()
            if any("ops.release" in s.get("run", "") for s in steps(job))}


def ancestors(jobs: dict[str, Any], name: str) -> set[str]:
    needs = jobs[name].get("needs", [])
    direct = {needs} if isinstance(needs, str) else set(needs)
    return direct.union(*(ancestors(jobs, n) for n in direct)) if direct else set()


ALL = sorted(p.name for p in WORKFLOWS.glob("*.yml"))


def test_the_three_workflows_exist() -> None:
    assert ALL == ["ci.yml", "deploy.yml", "probe.yml"]


def test_ci_runs_the_whole_suite_with_browsers_on_every_supported_python() -> None:
    ci = workflow("ci.yml")
    assert {"pull_request", "push", "workflow_call"} <= set(ci["on"])
    test = ci["jobs"]["test"]
    assert test["strategy"]["matrix"]["python"] == ["3.11", "3.12", "3.13"]
    [setup] = uses(test, "actions/setup-python")
    assert setup["with"]["python-version"] == "${{ matrix.python }}"
    [run] = [s for s in steps(test) if s.get("run") == "bash .ci/run"]
    assert run["env"]["REQUIRE_BROWSER"] == "1"
    [upload] = uses(test, "actions/upload-artifact")
    assert upload["with"]["path"].rstrip("/") == "test-output" and upload["if"] == "always()"


def test_the_eb_platform_is_the_python_ci_tests_on() -> None:
    deploy = (WORKFLOWS / "deploy.yml").read_text()
    assert "'python-3.11'" in deploy
    example = (REPO / ".elasticbeanstalk" / "config.yml.example").read_text()
    assert "Python 3.11 running on" in example


def test_deploy_runs_only_for_pushes_to_main() -> None:
    deploy = workflow("deploy.yml")
    assert deploy["on"] == {"push": {"branches": ["main"]}}
    for name, job in release_jobs(deploy).items():
        assert "github.ref == 'refs/heads/main'" in job["if"], name


def test_every_release_job_needs_the_ci_job_which_is_the_ci_workflow() -> None:
    deploy = workflow("deploy.yml")
    jobs = deploy["jobs"]
    assert jobs["ci"]["uses"] == "./.github/workflows/ci.yml"
    releases = release_jobs(deploy)
    assert set(releases) == {"staging", "production"}
    for name, job in releases.items():
        assert "ci" in ancestors(jobs, name), f"{name} does not wait for CI"
    production = jobs["production"]
    assert "needs.ci.result == 'success'" in production["if"]
    assert "!cancelled()" in production["if"], "a failed CI must not be overridden by always()"
    assert "always()" not in production["if"]


def test_production_runs_in_its_environment_one_at_a_time_never_cancelled() -> None:
    jobs = workflow("deploy.yml")["jobs"]
    assert jobs["production"]["environment"]["name"] == "production"
    assert jobs["staging"]["environment"]["name"] == "staging"
    for name in ("staging", "production"):
        concurrency = jobs[name]["concurrency"]
        assert concurrency["group"] == f"deploy-{name}"
        assert concurrency["cancel-in-progress"] is False
    assert "vars.STAGING_EB_ENVIRONMENT != ''" in jobs["staging"]["if"]


def test_no_workflow_cancels_a_deploy_in_progress() -> None:
    for name in ALL:
        text = (WORKFLOWS / name).read_text()
        if "ops.release" in text:
            assert "cancel-in-progress: true" not in text, name


def test_aws_access_is_by_oidc_role_only() -> None:
    deploy = workflow("deploy.yml")
    assert deploy["permissions"] == {}
    for name, job in release_jobs(deploy).items():
        assert job["permissions"] == {"id-token": "write", "contents": "read"}, name
        [creds] = uses(job, "aws-actions/configure-aws-credentials")
        assert creds["with"]["role-to-assume"] == "${{ vars.AWS_DEPLOY_ROLE_ARN }}"
        assert not {"aws-access-key-id", "aws-secret-access-key"} & set(creds["with"])
    for name in ALL:
        text = (WORKFLOWS / name).read_text()
        assert "AWS_ACCESS_KEY_ID" not in text and "AWS_SECRET_ACCESS_KEY" not in text
        assert "secrets.AWS" not in text


def test_release_jobs_install_the_deploy_requirements_and_call_ops_release() -> None:
    for name, job in release_jobs(workflow("deploy.yml")).items():
        runs = " ".join(s.get("run", "") for s in steps(job))
        assert "-r requirements.txt -r requirements-deploy.txt" in runs, name
        assert '--label "$GITHUB_SHA"' in runs, name


@pytest.mark.parametrize("name", ALL)
def test_every_action_is_pinned_to_a_full_commit_sha_with_its_version(name: str) -> None:
    lines = [ln for ln in (WORKFLOWS / name).read_text().splitlines()
             if re.match(r"^\s*(-\s*)?uses:", ln) and "./.github/" not in ln]
    assert lines
    for line in lines:
        assert SHA_PIN.match(line), f"not pinned to a SHA with a version comment: {line}"


def test_each_action_is_pinned_to_the_same_sha_everywhere() -> None:
    pins: dict[str, set[str]] = {}
    for name in ALL:
        for line in (WORKFLOWS / name).read_text().splitlines():
            match = SHA_PIN.match(line)
            if match:
                pins.setdefault(match.group(1), set()).add(match.group(2))
    assert {"actions/checkout", "actions/setup-python", "actions/upload-artifact",
            "aws-actions/configure-aws-credentials"} <= set(pins)
    assert all(len(shas) == 1 for shas in pins.values()), pins


@pytest.mark.parametrize("name", ALL)
def test_no_secret_or_expression_is_expanded_inside_a_shell_script(name: str) -> None:
    """Secrets and ${{ }} values reach scripts only through env: (no template injection,
    nothing for the log to echo), and no script traces or dumps its environment."""
    for job in workflow(name)["jobs"].values():
        for step in steps(job):
            script = step.get("run", "")
            assert "${{" not in script, script
            assert not re.search(r"\bset -x\b|\bprintenv\b|^\s*env\s*$", script, re.M), script
            secret_vars = {k for k, v in {**job.get("env", {}), **step.get("env", {})}.items()
                           if "secrets." in str(v)}
            for var in secret_vars:
                assert not re.search(rf"echo[^\n]*\${var}\b|echo[^\n]*\${{{var}}}", script)


@pytest.mark.parametrize("name", ALL)
def test_every_job_has_a_timeout_and_checkouts_keep_no_credentials(name: str) -> None:
    for job_name, job in workflow(name)["jobs"].items():
        if "uses" in job:  # a reusable workflow call: its own jobs are checked
            continue
        assert 0 < job["timeout-minutes"] <= 75, job_name
        for checkout in uses(job, "actions/checkout"):
            assert checkout["with"]["persist-credentials"] is False


def test_the_probe_smoke_tests_production_every_5_minutes_and_alerts() -> None:
    probe = workflow("probe.yml")
    assert probe["on"]["schedule"] == [{"cron": "*/5 * * * *"}]
    job = probe["jobs"]["probe"]
    assert any("python -m ops.smoke" in s.get("run", "") for s in steps(job))
    [alert] = [s for s in steps(job) if "ops.alert" in s.get("run", "")]
    assert alert["if"] == "failure()"
    assert alert["env"]["ALERT_WEBHOOK_URL"] == "${{ secrets.ALERT_WEBHOOK_URL }}"
    assert probe["permissions"] == {"contents": "read"}


def test_codeowners_and_the_pr_checklist_cover_the_incident() -> None:
    owners = (REPO / ".github" / "CODEOWNERS").read_text()
    for path in ("/.github/", "/.ebextensions/", "/ops/", "/application.py"):
        assert re.search(rf"^{re.escape(path)}\s+@", owners, re.M), path
    template = (REPO / ".github" / "pull_request_template.md").read_text()
    assert template.count("- [ ]") >= 6
    for must in ("mypy --strict", "json.loads", "fails without this change", "roll"):
        assert must in template


def test_zizmor_catches_an_unpinned_action(tmp_path: Path) -> None:
    """The linter in `make workflows` is not a formality: a tag instead of a SHA fails."""
    broken = tmp_path / ".github" / "workflows"
    shutil.copytree(WORKFLOWS, broken)
    text = (broken / "deploy.yml").read_text()
    (broken / "deploy.yml").write_text(re.sub(
        r"actions/checkout@[0-9a-f]{40} # v[\d.]+", "actions/checkout@v4", text))
    zizmor = Path(sys.executable).parent / "zizmor"
    done = subprocess.run([str(zizmor), "--offline", "--min-severity", "medium",  # nosec
                           str(broken / "deploy.yml")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode != 0
    assert "unpinned-uses" in done.stdout + done.stderr
