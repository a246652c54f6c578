"""The incident database: check it, index it, and draft new records.

Each incident is `incidents/INC-NNNN-slug.md`: a YAML header between `---` lines (the
schema is `incidents/schema.json`) and a Markdown body. Commands:

    python -m ops.incident check            validate every file; collect its regression tests
    python -m ops.incident index            regenerate incidents/README.md
    python -m ops.incident new --title T    start a draft from the template
    python -m ops.incident new --from-release-report FILE
                                            draft one from an ops.release report: rolled
                                            back, rollback failed, refused, interfered, or
                                            never finished (a deployed release is no incident)

`check` also refuses what a schema cannot express: an id that does not match its file
name or is used twice, a regression test pytest cannot collect, and a TODO left in, or no
regression test for, an incident that is no longer a draft.

Exit status: 0 fine, 1 problems found, 2 bad arguments or unreadable input.
"""

from __future__ import annotations

import argparse
import json
import re
# subprocess runs only `pytest --collect-only` on this repository's own tests.
import subprocess  # nosec B404
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import yaml
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
INCIDENTS = ROOT / "incidents"
SCHEMA = INCIDENTS / "schema.json"
TEMPLATE = INCIDENTS / "TEMPLATE.md"
INDEX = INCIDENTS / "README.md"
FILE_NAME = re.compile(r"^(INC-\d{4})-[a-z0-9-]+\.md$")
EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


class HeaderLoader(yaml.SafeLoader):
    """YAML without implicit timestamps: dates stay strings, as the JSON schema expects."""


HeaderLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@dataclass
class Incident:
    path: Path
    header: dict[str, Any]
    body: str


def parse(text: str, name: str) -> tuple[dict[str, Any], str]:
    """Split a record into its YAML header and Markdown body."""
    match = re.match(r"\A---\n(.*?)\n---\n?(.*)\Z", text, re.DOTALL)
    if not match:
        raise ValueError(f"{name}: no YAML header between '---' lines at the top")
    # HeaderLoader is a SafeLoader: no arbitrary objects.
    header = yaml.load(match[1], Loader=HeaderLoader)  # nosec B506
    if not isinstance(header, dict):
        raise ValueError(f"{name}: the header is not a YAML mapping")
    return header, match[2]


def load_all(directory: Path = INCIDENTS) -> list[Incident]:
    incidents = []
    for path in sorted(directory.glob("INC-*.md")):
        header, body = parse(path.read_text(encoding="utf-8"), path.name)
        incidents.append(Incident(path, header, body))
    return incidents


# ---- check ----------------------------------------------------------------------------

def schema_problems(incident: Incident) -> list[str]:
    schema = json.loads(SCHEMA.read_text())
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return [f"{incident.path.name}: {'/'.join(map(str, e.absolute_path)) or 'header'}: "
            f"{e.message}" for e in validator.iter_errors(incident.header)]


def rule_problems(incident: Incident) -> list[str]:
    """What the schema cannot say about one record."""
    name, header = incident.path.name, incident.header
    problems = []
    match = FILE_NAME.match(name)
    if not match or match[1] != header.get("id"):
        problems.append(f"{name}: the file name must be <id>-<slug>.md with id "
                        f"{header.get('id')!r}, slug in lowercase letters, digits and '-'")
    if header.get("status") != "draft":
        if "TODO" in json.dumps(header) or "TODO" in incident.body:
            problems.append(f"{name}: status is {header.get('status')!r} but a TODO is left")
        if not header.get("regression_tests"):
            problems.append(f"{name}: a non-draft incident needs at least one regression test")
    if header.get("status") == "closed":
        unfinished = [item["what"] for item in header.get("action_items", [])
                      if item.get("state") not in ("done", "dropped")]
        if unfinished:
            problems.append(f"{name}: closed, but action items are not done: {unfinished}")
    return problems


def collected_tests(node_ids: Sequence[str], root: Path = ROOT) -> tuple[set[str], str]:
    """The node ids pytest collects for the given ones (parametrized cases included)."""
    if not node_ids:
        return set(), ""
    result = subprocess.run(  # nosec B603
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *sorted(set(node_ids))], cwd=root, capture_output=True, text=True, timeout=300,
        check=False)
    return {line.strip() for line in result.stdout.splitlines() if "::" in line}, result.stdout


def missing_tests(incidents: Sequence[Incident], root: Path = ROOT) -> list[str]:
    """Regression tests that pytest cannot collect: deleted, renamed or never written."""
    wanted = {test: incident.path.name for incident in incidents
              for test in incident.header.get("regression_tests", [])}
    found, output = collected_tests(list(wanted), root)
    problems = []
    for test, name in sorted(wanted.items()):
        if not any(item == test or item.startswith(test + "[") for item in found):
            problems.append(f"{name}: regression test {test} is not collected by pytest")
    if problems and "error" in output.lower():
        problems.append("pytest said:\n" + output[-2000:])
    return problems


def check(directory: Path = INCIDENTS, collect: bool = True) -> list[str]:
    incidents = load_all(directory)
    problems = [p for incident in incidents
                for p in schema_problems(incident) + rule_problems(incident)]
    ids = [incident.header.get("id") for incident in incidents]
    problems += [f"id {i} is used by more than one file" for i in sorted(
        {i for i in ids if ids.count(i) > 1}, key=str)]
    index = directory / INDEX.name
    if not index.exists() or index.read_text(encoding="utf-8") != render_index(incidents):
        problems.append(f"{index} is out of date: run python -m ops.incident index")
    if collect:
        problems += missing_tests(incidents)
    return problems


# ---- index ----------------------------------------------------------------------------

INDEX_HEAD = """# Incident database

One file per incident, newest id last. Each has a YAML header (schema:
[`schema.json`](schema.json)) and a Markdown body; start a new one from
[`TEMPLATE.md`](TEMPLATE.md) with `python -m ops.incident new --title "..."`, or from a
rollback with `python -m ops.incident new --from-release-report report.json`.

`tests/test_incidents.py` checks that every file matches the schema, that every listed
regression test exists and is collected by pytest, and that this index is current. This
file is generated: edit the incident files, then run `python -m ops.incident index`.

| id | date | title | severity | minutes | status | regression tests | open actions |
| --- | --- | --- | --- | --- | --- | --- | --- |
"""


def cell(value: Any) -> str:
    return "unknown" if value is None else str(value).replace("|", "\\|")


def render_index(incidents: Sequence[Incident]) -> str:
    rows = []
    for incident in incidents:
        header = incident.header
        open_items = sum(1 for item in header.get("action_items", [])
                         if item.get("state") in ("open", "in-progress"))
        rows.append(
            f"| [{cell(header.get('id'))}]({incident.path.name}) | {cell(header.get('date'))} "
            f"| {cell(header.get('title'))} | {cell(header.get('severity'))} "
            f"| {cell(header.get('duration_minutes'))} | {cell(header.get('status'))} "
            f"| {len(header.get('regression_tests', []))} | {open_items} |")
    return INDEX_HEAD + "\n".join(rows) + "\n"


def write_index(directory: Path = INCIDENTS) -> Path:
    path = directory / INDEX.name
    path.write_text(render_index(load_all(directory)), encoding="utf-8")
    return path


# ---- new ------------------------------------------------------------------------------

def next_id(directory: Path) -> str:
    numbers = [int(m[1][4:]) for p in directory.glob("INC-*.md") if (m := FILE_NAME.match(p.name))]
    return f"INC-{max(numbers, default=0) + 1:04d}"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:50].strip("-") or "incident"


def minutes_between(start: str, end: str) -> int | None:
    try:
        seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return None
    return max(0, -int(-seconds // 60))  # round up: never report less than it was


# Every outcome of an ops.release report ("" is a release that never finished: its job
# was killed or cancelled), as the severity a draft starts with and how it is told.
SEVERITY = {"rollback_failed": "SEV1", "interfered": "SEV2", "": "SEV2",
            "rolled_back": "SEV2", "refused": "SEV3"}


def what_happened(report: dict[str, Any]) -> str:
    """The outcome in words, for a title: what the release ended as, and where."""
    outcome, failed = report.get("outcome") or "", report.get("failed_step") or "?"
    if outcome == "":
        steps = report.get("steps") or [{}]
        return f"did not finish (stopped after {steps[-1].get('name', 'no step')})"
    if outcome == "interfered":
        return f"stopped by someone else's deploy at {failed}"
    return f"{outcome.replace('_', ' ')} at {failed}"


def resolution_of(report: dict[str, Any]) -> str:
    """What ended it, as far as the report knows; a TODO where a person must say."""
    outcome, environment = report.get("outcome") or "", report.get("environment", "?")
    rollback = report.get("rollback") or {}
    if outcome == "rolled_back":
        text = (f"ops.release rolled {environment} back to {rollback.get('version')} "
                f"automatically and verified it in {rollback.get('seconds')} s.")
        if report.get("failed_step") == "canary":
            text += " The new version was aborted during its canary: traffic moved back."
        if report.get("recovery"):
            text += (f" It could not read the store the release left, so the pre-deploy "
                     f"snapshot was restored: {report['recovery']}.")
        return text
    if outcome == "rollback_failed":
        return (f"TODO: the automatic rollback to {rollback.get('version')} FAILED "
                f"({rollback.get('error')}); say who restored service, how and when.")
    if outcome == "refused":
        return f"ops.release refused to deploy: {report.get('error')}. Nothing changed."
    if outcome == "interfered":
        return (f"TODO: ops.release stopped because another deploy changed {environment} "
                f"during the release ({rollback.get('error') or report.get('error')}), and "
                "deployed nothing over it. Say whose deploy it was and what serves now.")
    return (f"TODO: the release never finished (its job was killed or cancelled); say what "
            f"{environment} served afterwards, who checked, and how.")


def draft_from_report(report: dict[str, Any], incident_id: str, source: str) -> str:
    """A draft record from an ops.release report; a person fills in the TODOs. A release
    that deployed has nothing to record: ValueError."""
    outcome = report.get("outcome") or ""
    if outcome == "deployed":
        raise ValueError(f"{source}: the release deployed and passed verification: there is "
                         "no incident to draft")
    if outcome not in SEVERITY:
        raise ValueError(f"{source}: unknown outcome {outcome!r}")
    failed = report.get("failed_step") or "?"
    version, environment = report.get("version", "?"), report.get("environment", "?")
    detected = sum(step.get("seconds", 0) for step in report.get("steps", [])
                   if not step.get("name", "").startswith("rollback:"))
    error = report.get("error") or "TODO: the report names no error"
    header = {
        "id": incident_id,
        "title": f"Release {version} to {environment}: {what_happened(report)}"[:140],
        "date": (report.get("started_at") or "")[:10] or None,
        "duration_minutes": minutes_between(report.get("started_at", ""),
                                            report.get("finished_at", "")),
        "severity": SEVERITY[outcome],
        "status": "draft",
        "detection": {"how": f"ops.release step {failed!r} failed: {error}" if outcome else
                      "TODO: the release job ended without finishing; who noticed, how",
                      "minutes_to_detect": round(detected / 60, 1)},
        "root_cause": "TODO: why the step failed, precise enough to write a test for",
        "five_whys": [{"why": f"Why did the release {what_happened(report)}?",
                       "because": f"{error} (TODO: go on from here)"}]
        + [{"why": "TODO", "because": "TODO"} for _ in range(4)],
        "resolution": resolution_of(report),
        "action_items": [{"what": "TODO: the change that stops this from recurring",
                          "owner": "developer", "state": "open"}],
        "regression_tests": [],
        "release_report": source,
    }
    steps = "\n".join(
        f"| {s.get('name')} | {'ok' if s.get('ok') else 'FAILED'} | {s.get('seconds')} "
        f"| {cell(s.get('detail'))} |" for s in report.get("steps", []))
    body = (f"\n## Release report\n\nFrom `{source}`: {report.get('started_at')} to "
            f"{report.get('finished_at') or 'unfinished'}, last good version "
            f"{report.get('last_good_version')}, pre-deploy snapshot "
            f"{report.get('backup') or 'none'}. `duration_minutes` is the whole release, an "
            "upper bound on user impact: correct it from the 5xx rate and the smoke results."
            f"\n\n| step | result | seconds | detail |\n| --- | --- | --- | --- |\n{steps}\n"
            "\n## Timeline (UTC)\n\n- TODO\n")
    return "---\n" + yaml.safe_dump(header, sort_keys=False, width=88) + "---\n" + body


def new_incident(directory: Path, title: str | None, report_path: Path | None) -> Path:
    incident_id = next_id(directory)
    if report_path is not None:
        report = json.loads(report_path.read_text())
        text = draft_from_report(report, incident_id, str(report_path))
        title = parse(text, "draft")[0]["title"]
    else:
        text = TEMPLATE.read_text().replace("INC-NNNN", incident_id)
        text = re.sub(r'^title: ".*"$', lambda _: f"title: {json.dumps(title)}", text,
                      count=1, flags=re.MULTILINE)
    path = directory / f"{incident_id}-{slug(title or 'incident')}.md"
    path.write_text(text, encoding="utf-8")
    write_index(directory)
    return path


# ---- command line ---------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ops.incident",
        description="Check, index and draft records in the incident database (incidents/).",
        epilog="Exit status: 0 fine, 1 problems found, 2 bad arguments or unreadable input.")
    parser.add_argument("--dir", type=Path, default=INCIDENTS, metavar="DIR",
                        help="the incident directory (default: incidents/ in this repository)")
    sub = parser.add_subparsers(dest="command", required=True)
    check_cmd = sub.add_parser("check", help="validate every incident file")
    check_cmd.add_argument("--no-collect", action="store_true",
                           help="skip asking pytest whether each regression test exists")
    sub.add_parser("index", help="regenerate incidents/README.md from the files")
    new = sub.add_parser("new", help="write a draft incident file and refresh the index")
    source = new.add_mutually_exclusive_group(required=True)
    source.add_argument("--title", help="start from the template with this title")
    source.add_argument("--from-release-report", type=Path, metavar="FILE",
                        help="draft from the JSON report of a release that did not "
                             "deploy (rolled back, rollback failed, refused, interfered, "
                             "unfinished)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "index":
            print(f"wrote {write_index(args.dir)}")
        elif args.command == "new":
            path = new_incident(args.dir, args.title, args.from_release_report)
            print(f"wrote {path}; fill in the TODOs, then: python -m ops.incident check")
        else:
            problems = check(args.dir, collect=not args.no_collect)
            for problem in problems:
                print(problem)
            count = len(list(args.dir.glob("INC-*.md")))
            print(f"{count} incident file(s), {len(problems)} problem(s)")
            return EXIT_PROBLEMS if problems else EXIT_OK
    except (OSError, ValueError, yaml.YAMLError) as error:
        print(f"incident {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
