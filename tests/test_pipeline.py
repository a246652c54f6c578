"""The GitHub Actions workflows keep their safety properties.

zizmor and check-jsonschema (make workflows) lint them; these tests pin down what the
pipeline promises: tests gate every deploy, only main deploys, a running deploy is never
cancelled, AWS access is by OIDC only, every action is pinned, and no secret is echoed.
"""
from __future__ import annotations

import itertools
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


def release_callers() -> dict[str, dict[str, Any]]:
    """Every job, in any workflow, that releases: each calls release.yml."""
    return {f"{name}:{job_name}": job for name in ALL
            for job_name, job in workflow(name)["jobs"].items()
            if job.get("uses") == "./.github/workflows/release.yml"}


def release_job() -> dict[str, Any]:
    job: dict[str, Any] = workflow("release.yml")["jobs"]["release"]
    return job


def ancestors(jobs: dict[str, Any], name: str) -> set[str]:
    needs = jobs[name].get("needs", [])
    direct = {needs} if isinstance(needs, str) else set(needs)
    return direct.union(*(ancestors(jobs, n) for n in direct)) if direct else set()


ALL = sorted(p.name for p in WORKFLOWS.glob("*.yml"))


def test_the_workflows_are_ci_deploy_fix_forward_probe_and_the_shared_release() -> None:
    assert ALL == ["ci.yml", "deploy.yml", "fix-forward.yml", "probe.yml", "release.yml"]


def test_ops_release_runs_only_in_the_shared_release_job() -> None:
    """So the budget, the concurrency group and the alert hold for every path."""
    for name in ALL:
        for job_name, job in workflow(name)["jobs"].items():
            if any("ops.release" in s.get("run", "") for s in steps(job)):
                assert (name, job_name) == ("release.yml", "release")
    assert set(workflow("release.yml")["on"]) == {"workflow_call"}
    assert set(release_callers()) == {"deploy.yml:staging", "deploy.yml:production",
                                      "fix-forward.yml:production"}


def test_ci_runs_the_whole_suite_with_browsers_on_every_supported_python() -> None:
    ci = workflow("ci.yml")
    assert {"pull_request", "push", "workflow_call"} <= set(ci["on"])
    test = ci["jobs"]["test"]
    assert test["strategy"]["matrix"]["python"] == ["3.11", "3.12", "3.13"]
    [setup] = uses(test, "actions/setup-python")
    assert setup["with"]["python-version"] == "${{ matrix.python }}"
    [run] = [s for s in steps(test) if s.get("run", "").endswith("bash .ci/run")]
    # as root, as on the team's CI machine, with setup-python's interpreter still on PATH
    assert run["run"] == 'sudo --preserve-env env "PATH=$PATH" bash .ci/run'
    assert run["env"]["REQUIRE_BROWSER"] == "1"
    [upload] = uses(test, "actions/upload-artifact")
    assert upload["with"]["path"].rstrip("/") == "test-output" and upload["if"] == "always()"


def test_the_release_uses_the_python_the_platform_branch_names_stated_once() -> None:
    version = (REPO / ".python-version").read_text().strip()
    assert re.fullmatch(r"3\.1[1-9]", version)
    job = release_job()
    [setup] = uses(job, "actions/setup-python")
    assert setup["with"] == {"python-version-file": ".python-version"}
    [init] = [s for s in steps(job) if " init " in s.get("run", "")]
    assert '--platform "python-$(cat .python-version)"' in init["run"]
    example = (REPO / ".elasticbeanstalk" / "config.yml.example").read_text()
    assert f"Python {version} running on" in example
    for name in ("deploy.yml", "fix-forward.yml", "probe.yml", "release.yml"):
        assert not re.search(r"\b3\.1\d\b", (WORKFLOWS / name).read_text()), name


def test_deploy_runs_only_for_pushes_to_main() -> None:
    deploy = workflow("deploy.yml")
    assert deploy["on"] == {"push": {"branches": ["main"]}}
    for name, job in release_callers().items():
        assert "github.ref == 'refs/heads/main'" in job["if"], name


def test_every_release_needs_ci_on_the_same_commit() -> None:
    deploy = workflow("deploy.yml")["jobs"]
    assert deploy["ci"]["uses"] == "./.github/workflows/ci.yml"
    for name in ("staging", "production"):
        assert "ci" in ancestors(deploy, name), f"{name} does not wait for CI"
    production = deploy["production"]
    assert "needs.ci.result == 'success'" in production["if"]
    assert "!cancelled()" in production["if"], "a failed CI must not be overridden by always()"
    assert "always()" not in production["if"]


def test_every_release_takes_a_snapshot_first() -> None:
    """The way back from a release that wrote data the old version cannot read."""
    for name, job in release_callers().items():
        assert "--backup" in job["with"]["flags"], name


def test_staging_runs_the_full_synthetic_check_before_production_is_touched() -> None:
    jobs = workflow("deploy.yml")["jobs"]
    assert "--full-smoke" in jobs["staging"]["with"]["flags"].split()
    assert "staging" in ancestors(jobs, "production")
    assert "needs.staging.result == 'success'" in jobs["production"]["if"]


def test_fix_forward_is_manual_gated_by_production_and_tested_unless_it_redeploys() -> None:
    fix = workflow("fix-forward.yml")
    assert set(fix["on"]) == {"workflow_dispatch"}
    jobs = fix["jobs"]
    assert jobs["ci"]["uses"] == "./.github/workflows/ci.yml"
    assert jobs["ci"]["if"] == "${{ inputs.label == '' }}"
    release = jobs["production"]
    assert release["with"]["environment"] == "production" and release["needs"] == ["ci"]
    assert "needs.ci.result == 'success'" in release["if"]
    assert "(inputs.label != '' && needs.ci.result == 'skipped')" in release["if"]
    flags = release["with"]["flags"]
    assert flags.count("--allow-unhealthy") == 2 and flags.count("--backup") == 2
    assert "--existing-only" in flags.split("||")[0], "a chosen label is never rebuilt"


def test_every_release_runs_in_its_environment_one_at_a_time_never_cancelled() -> None:
    job = release_job()
    assert job["environment"]["name"] == "${{ inputs.environment }}"
    assert job["concurrency"] == {"group": "deploy-${{ inputs.environment }}",
                                  "cancel-in-progress": False}
    assert {c["with"]["environment"] for c in release_callers().values()} == \
        {"staging", "production"}
    assert "vars.STAGING_EB_ENVIRONMENT != ''" in workflow("deploy.yml")["jobs"]["staging"]["if"]


def test_no_workflow_cancels_a_deploy_in_progress() -> None:
    for name in ALL:
        assert "cancel-in-progress: true" not in (WORKFLOWS / name).read_text(), name


def test_aws_access_is_by_oidc_role_only() -> None:
    for name in ("deploy.yml", "fix-forward.yml", "release.yml"):
        assert workflow(name)["permissions"] == {}
    for name, job in release_callers().items():
        assert job["permissions"] == {"id-token": "write", "contents": "read"}, name
    job = release_job()
    assert job["permissions"] == {"id-token": "write", "contents": "read"}
    [creds] = uses(job, "aws-actions/configure-aws-credentials")
    assert creds["with"]["role-to-assume"] == "${{ vars.AWS_DEPLOY_ROLE_ARN }}"
    assert not {"aws-access-key-id", "aws-secret-access-key"} & set(creds["with"])
    for name in ALL:
        text = (WORKFLOWS / name).read_text()
        assert "AWS_ACCESS_KEY_ID" not in text and "AWS_SECRET_ACCESS_KEY" not in text
        assert "secrets.AWS" not in text


def test_the_release_runs_the_pinned_eb_cli_and_ops_release_from_the_deploy_venv() -> None:
    runs = [s.get("run", "") for s in steps(release_job())]
    assert "make eb-venv PYTHON=python" in runs
    [release] = [r for r in runs if "-m ops.release" in r and "--notify" not in r]
    assert release.startswith(".venv-eb/bin/python -m ops.release")
    assert "--eb-command .venv-eb/bin/eb" in release and '--label "$LABEL"' in release
    assert release_job()["env"]["LABEL"] == "${{ inputs.label || github.sha }}"


def test_a_job_that_ends_without_finishing_alerts_with_the_run_and_the_state() -> None:
    job = release_job()
    last = steps(job)[-1]
    assert last["if"] == "failure() || cancelled()"
    assert "--notify-interrupted" in last["run"] and "ops.alert" in last["run"]
    assert job["env"]["GITHUB_RUN_URL"].endswith("/actions/runs/${{ github.run_id }}")
    assert job["env"]["ALERT_WEBHOOK_URL"] == "${{ secrets.ALERT_WEBHOOK_URL }}"
    [report] = [s for s in steps(job) if s.get("uses", "").startswith("actions/upload")]
    assert report["if"] == "always()"


@pytest.mark.parametrize("name", ALL)
def test_every_action_is_pinned_to_a_full_commit_sha_with_its_version(name: str) -> None:
    lines = [ln for ln in (WORKFLOWS / name).read_text().splitlines()
             if re.match(r"^\s*(-\s*)?uses:", ln) and "./.github/" not in ln]
    if not lines:  # a workflow of reusable-workflow calls only
        assert all("uses" in job for job in workflow(name)["jobs"].values()), name
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
        # 360: GitHub-hosted runners' limit; tests/test_budget.py says what a release needs
        assert 0 < job["timeout-minutes"] <= 360, job_name
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
    text = (broken / "release.yml").read_text()
    (broken / "release.yml").write_text(re.sub(
        r"actions/checkout@[0-9a-f]{40} # v[\d.]+", "actions/checkout@v4", text))
    zizmor = Path(sys.executable).parent / "zizmor"
    done = subprocess.run([str(zizmor), "--offline", "--min-severity", "medium",  # nosec
                           str(broken / "release.yml")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode != 0
    assert "unpinned-uses" in done.stdout + done.stderr


# --- required status checks (branch protection) -----------------------------------------


def check_names(ci: dict[str, Any], caller: str | None = None) -> list[str]:
    """The check names GitHub reports for a workflow's jobs: the job's `name` (else its
    id); for a matrix job, one check per combination, its values appended in parentheses
    in the matrix's key order ("test (3.11)", "build (14, ubuntu-latest)") unless the
    name already uses them; for a workflow run through workflow_call, each prefixed with
    the calling job's name ("CI / test (3.11)")."""
    names = []
    for job_id, job in ci["jobs"].items():
        name = str(job.get("name", job_id))
        matrix = {k: v for k, v in (job.get("strategy", {}).get("matrix") or {}).items()
                  if k not in ("include", "exclude")}
        combos = [dict(zip(matrix, values)) for values in itertools.product(*matrix.values())]
        for combo in combos or [{}]:
            shown = name
            for key, value in combo.items():
                shown = re.sub(r"\$\{\{\s*matrix\." + key + r"\s*\}\}", str(value), shown)
            if combo and shown == name:
                shown = f"{name} ({', '.join(str(v) for v in combo.values())})"
            names.append(f"{caller} / {shown}" if caller else shown)
    return names


def test_check_names_follow_githubs_rules_for_plain_and_matrix_jobs(tmp_path: Path) -> None:
    plain = {"jobs": {"test": {"name": "test"}, "lint": {}}}
    assert check_names(plain) == ["test", "lint"]
    assert check_names(plain, caller="CI") == ["CI / test", "CI / lint"]
    matrix_ci = tmp_path / "ci.yml"
    matrix_ci.write_text(yaml.safe_dump({"name": "CI", "on": ["pull_request"], "jobs": {
        "test": {"name": "test", "runs-on": "ubuntu-24.04",
                 "strategy": {"matrix": {"python": ["3.11", "3.12", "3.13"]}}},
        "build": {"strategy": {"matrix": {"node": [14], "os": ["ubuntu-latest"]}}},
        "named": {"name": "py ${{ matrix.python }}",
                  "strategy": {"matrix": {"python": ["3.12"]}}}}}, sort_keys=False))
    loaded = yaml.safe_load(matrix_ci.read_text())
    assert check_names(loaded) == ["test (3.11)", "test (3.12)", "test (3.13)",
                                   "build (14, ubuntu-latest)", "py 3.12"]
    assert check_names(loaded, caller="CI")[0] == "CI / test (3.11)"


def test_branch_protection_requires_the_checks_a_pull_request_reports() -> None:
    """A pull request runs ci.yml directly, so its checks carry no "CI / " prefix; a
    required check that never reports blocks every pull request."""
    guide = (REPO / "docs" / "deploying.md").read_text()
    [line] = [ln for ln in guide.splitlines() if "Require status checks to pass" in ln]
    required = re.findall(r"\*\*`([^`]+)`\*\*", line)
    assert required == check_names(workflow("ci.yml"))
    assert not any(name.startswith("CI / ") for name in required)
