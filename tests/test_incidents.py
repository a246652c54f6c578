"""The incident database: every record valid, every regression test real, the index current."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from ops import incident
from ops.release import Report, Step

ROOT = Path(__file__).resolve().parent.parent
RECORDS = incident.load_all()


def test_there_is_at_least_the_original_incident() -> None:
    first = RECORDS[0].header
    assert first["id"] == "INC-0001"
    assert first["duration_minutes"] == 13
    assert "json.loads" in first["root_cause"] and "application.py" in first["root_cause"]
    assert "eb logs" in first["detection"]["how"]


@pytest.mark.parametrize("record", RECORDS, ids=[r.path.name for r in RECORDS])
def test_every_incident_matches_the_schema_and_the_rules(record: incident.Incident) -> None:
    assert incident.schema_problems(record) == []
    assert incident.rule_problems(record) == []


def test_ids_are_unique() -> None:
    ids = [record.header["id"] for record in RECORDS]
    assert len(ids) == len(set(ids))


def test_every_listed_regression_test_exists_and_is_collected() -> None:
    assert incident.missing_tests(RECORDS) == []


def test_the_original_incident_is_guarded_by_the_gate_and_the_store_tests() -> None:
    tests = RECORDS[0].header["regression_tests"]
    assert any(t.startswith("tests/test_gate.py::") and "json_loads" in t for t in tests)
    assert any(t.startswith("tests/test_gate.py::") and "route_decorator" in t for t in tests)
    assert any(t.startswith("tests/test_store.py::") for t in tests)


def test_the_index_matches_the_files() -> None:
    expected = incident.render_index(RECORDS)
    assert (ROOT / "incidents" / "README.md").read_text(encoding="utf-8") == expected


def test_a_record_with_a_bad_header_is_reported(tmp_path: Path) -> None:
    broken = tmp_path / "INC-0002-broken.md"
    text = RECORDS[0].path.read_text().replace("severity: SEV1", "severity: catastrophic")
    broken.write_text(text.replace("id: INC-0001", "id: INC-0002"))
    [record] = incident.load_all(tmp_path)
    problems = incident.schema_problems(record)
    assert len(problems) == 1 and problems[0].startswith("INC-0002-broken.md: severity:")


def test_a_missing_regression_test_and_a_stale_index_fail_check(tmp_path: Path) -> None:
    shutil.copy(RECORDS[0].path, tmp_path / RECORDS[0].path.name)
    text = (tmp_path / RECORDS[0].path.name).read_text()
    (tmp_path / RECORDS[0].path.name).write_text(text.replace(
        "  - tests/test_gate.py::test_the_unmodified_copy_passes_mypy_strict\n",
        "  - tests/test_gate.py::test_that_was_renamed_away\n"))
    problems = incident.check(tmp_path)
    assert any("out of date" in p for p in problems)
    assert any("tests/test_gate.py::test_that_was_renamed_away is not collected" in p
               for p in problems)
    incident.write_index(tmp_path)
    assert not any("out of date" in p for p in incident.check(tmp_path, collect=False))


def test_a_resolved_incident_with_a_todo_left_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "INC-0001-todo.md"
    path.write_text(RECORDS[0].path.read_text().replace(
        "## Timeline", "## Timeline\n\n- TODO: check the deploy time"))
    [record] = incident.load_all(tmp_path)
    assert incident.rule_problems(record) == [
        "INC-0001-todo.md: status is 'resolved' but a TODO is left"]


def rollback_report(tmp_path: Path) -> Path:
    """A report built with ops.release's own Report type, as it writes one on a rollback."""
    report = Report(
        environment="shortener-prod", version="a1b2c3d", last_good_version="9f8e7d6",
        started_at="2026-11-27T05:12:00+00:00", finished_at="2026-11-27T05:19:30+00:00",
        outcome="rolled_back", failed_step="smoke",
        error="POST /api/links answered 500: the JSON object must be str, bytes or bytearray",
        steps=[Step("ready-before", True, 2.0, "Ready/Green on 9f8e7d6"),
               Step("deploy", True, 180.5, "eb deploy --label a1b2c3d"),
               Step("smoke", False, 1.5, "POST /api/links answered 500"),
               Step("rollback:deploy", True, 170.0, "eb deploy --version 9f8e7d6")],
        rollback={"version": "9f8e7d6", "ok": True, "seconds": 260.0})
    path = tmp_path / "release-report.json"
    path.write_text(report.to_json())
    example = ROOT / "docs" / "release-report.example.json"
    if example.exists():  # the documented format has every key this draft relies on
        assert set(json.loads(example.read_text())) >= set(asdict(report))
    return path


def test_a_draft_from_a_release_report_is_valid_and_indexed(tmp_path: Path) -> None:
    shutil.copy(RECORDS[0].path, tmp_path / RECORDS[0].path.name)
    report = rollback_report(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "ops.incident", "--dir", str(tmp_path), "new",
         "--from-release-report", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    [draft] = [r for r in incident.load_all(tmp_path) if r.header["id"] == "INC-0002"]
    header = draft.header
    assert draft.path.name.startswith("INC-0002-release-a1b2c3d-to-shortener-prod")
    assert (header["status"], header["severity"], header["date"]) == (
        "draft", "SEV2", "2026-11-27")
    assert header["duration_minutes"] == 8  # 7.5 minutes, rounded up
    assert header["detection"]["minutes_to_detect"] == 3.1  # steps before the rollback
    assert "9f8e7d6" in header["resolution"] and "260.0 s" in header["resolution"]
    assert "| smoke | FAILED | 1.5 |" in draft.body
    assert incident.schema_problems(draft) == []
    assert incident.check(tmp_path, collect=False) == []  # index refreshed, drafts may TODO


def report_ending(outcome: str) -> dict[str, Any]:
    """A report as ops.release writes one for each way a release can end."""
    steps = [Step("wait-ready", True, 2.0, "Ready on 9f8e7d6"),
             Step("canary", outcome in ("deployed", ""), 30.0, "canary watched")]
    report = Report(environment="shortener-prod", version="a1b2c3d",
                    last_good_version="9f8e7d6", started_at="2026-11-27T05:12:00+00:00",
                    finished_at="" if outcome == "" else "2026-11-27T05:19:30+00:00",
                    outcome=outcome, steps=steps, backup="s3://b/shortener/pre-deploy/x/1")
    if outcome in ("rolled_back", "rollback_failed", "interfered"):
        report.failed_step, report.error = "canary", "a1b2c3d failed 3 of the 40 requests"
        report.rollback = {"version": "9f8e7d6", "ok": outcome == "rolled_back",
                           "seconds": 12.0, **({} if outcome == "rolled_back" else
                                               {"error": "rollback:wait-ready: not ours"})}
    if outcome == "refused":
        report.failed_step, report.error = "health-before", "production is Red/Severe"
    return asdict(report)


# outcome: the draft's severity and what its title and resolution say
DRAFTS = {
    "rolled_back": ("SEV2", "rolled back at canary", "rolled shortener-prod back to 9f8e7d6"),
    "rollback_failed": ("SEV1", "rollback failed at canary", "rollback to 9f8e7d6 FAILED"),
    "refused": ("SEV3", "refused at health-before", "refused to deploy"),
    "interfered": ("SEV2", "stopped by someone else's deploy at canary",
                   "another deploy changed shortener-prod"),
    "": ("SEV2", "did not finish (stopped after canary)", "never finished"),
}


@pytest.mark.parametrize("outcome", list(DRAFTS))
def test_a_draft_tells_each_way_a_release_can_end_as_it_was(outcome: str) -> None:
    header, _ = incident.parse(incident.draft_from_report(
        report_ending(outcome), "INC-0002", "report.json"), "draft")
    severity, title, resolution = DRAFTS[outcome]
    assert header["severity"] == severity
    assert header["title"] == f"Release a1b2c3d to shortener-prod: {title}"
    assert resolution in header["resolution"]
    assert outcome == "refused" or "refused" not in header["resolution"]
    record = incident.Incident(Path("INC-0002-draft.md"), header, "")
    assert incident.schema_problems(record) == []


def test_every_outcome_ops_release_writes_has_its_draft_or_is_no_incident() -> None:
    from ops.release import EXIT_CODES

    assert set(EXIT_CODES) - {"deployed"} | {""} == set(DRAFTS) == set(incident.SEVERITY)
    with pytest.raises(ValueError, match="no incident to draft"):
        incident.draft_from_report(report_ending("deployed"), "INC-0002", "report.json")


def test_the_command_line_check_passes_on_the_repository() -> None:
    result = subprocess.run([sys.executable, "-m", "ops.incident", "check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout
    assert "0 problem(s)" in result.stdout
