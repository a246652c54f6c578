"""ops.error_hunt on log fixtures written in the formats an EB Python instance produces."""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from ops import error_hunt

LOGS = Path(__file__).parent / "fixtures" / "logs"
BUNDLE = LOGS / "bundle"
TAIL = LOGS / "eb-logs-tail.txt"
ORIGINAL_BUG = "TypeError: the JSON object must be str, bytes or bytearray, not TextIOWrapper"
AWK_PIPELINE = "awk '/error/ {print NR\":\"$0}' | sort -u -k2,2 | sort -n -t':' -k1,1"
ROOT = Path(__file__).resolve().parent.parent


def run(*argv: str, stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    code = error_hunt.main(list(argv), stdin=io.StringIO(stdin), stdout=out)
    return code, out.getvalue()


def report(*argv: str, stdin: str = "") -> tuple[int, dict[str, Any]]:
    code, text = run("--json", *argv, stdin=stdin)
    document: dict[str, Any] = json.loads(text)
    return code, document


def by_signature(document: dict[str, Any], fragment: str) -> dict[str, Any]:
    matches = [g for g in document["groups"] if fragment in g["signature"]]
    assert len(matches) == 1, [g["signature"] for g in document["groups"]]
    found: dict[str, Any] = matches[0]
    return found


def test_the_original_bug_is_one_group_with_every_occurrence_and_a_whole_traceback() -> None:
    code, document = report(str(BUNDLE))
    assert code == error_hunt.EXIT_FOUND
    bug = by_signature(document, ORIGINAL_BUG)
    # Two POST /your-url and one redirect via Flask's logger, one via gunicorn's.
    assert bug["count"] == 4
    assert bug["first"] == {"time": "2026-11-20T09:43:02.118000+00:00",
                            "source": "bundle/var/log/web.stdout.log", "line": 7}
    assert bug["last"]["line"] == 53
    example = bug["example"].splitlines()
    assert "ERROR in app: Exception on /your-url [POST]" in example[0]
    assert "urls = json.loads(urls_file)" in bug["example"]
    assert example[-1].endswith(ORIGINAL_BUG)
    assert len(example) == 20


def test_signatures_ignore_pids_ids_addresses_and_numbers() -> None:
    first = error_hunt.normalize(
        "Worker (pid:2717) at 0x7f3a2c1b9e80 req 0b6f1c2e-8d7a-4f5e-9c3b-2a1d0e9f8c7b "
        "from 172.31.24.3:51234 trace 5f2b9c8e1d7a6b4c")
    second = error_hunt.normalize(
        "Worker (pid:31) at 0x55d1 req 9e4c0a1b-2c3d-4e5f-8a9b-0c1d2e3f4a5b "
        "from 10.0.0.9:80 trace 0a1b2c3d4e5f6a7b")
    assert first == second
    assert "2717" not in first and "0x" not in first


def test_groups_come_in_order_of_first_appearance_with_first_and_last_line() -> None:
    _, document = report(str(BUNDLE / "var" / "log" / "web.stdout.log"))
    signatures = [g["signature"] for g in document["groups"]]
    assert signatures == [
        f"{ORIGINAL_BUG} at json/__init__.py:loads",
        "CRITICAL WORKER TIMEOUT (pid:<n>)",
        "ERROR Worker (pid:<n>) was sent SIGKILL! Perhaps out of memory?",
        "ERROR shortener: link store unusable: /var/app/data/urls.json is not valid JSON "
        "(Expecting ',' delimiter: line <n> column <n> (char <n>)). Serving the last good "
        "copy (<n> links) and refusing new links. Restore the last good copy with "
        "`python -m ops.backup restore` (see README, Operating).",
    ]
    store = document["groups"][3]
    assert (store["count"], store["first"]["line"], store["last"]["line"]) == (2, 67, 68)


def test_access_log_reports_5xx_responses_by_status_and_route_only() -> None:
    _, document = report(str(BUNDLE / "var" / "log" / "nginx" / "access.log"))
    counts = {g["signature"]: g["count"] for g in document["groups"]}
    assert counts == {
        "HTTP 502 GET /healthz": 1,
        "HTTP 502 POST /your-url": 2,
        "HTTP 500 POST /your-url": 3,
        "HTTP 500 GET /<code>": 1,
        "HTTP 503 GET /<code>": 1,
    }


def test_nginx_errors_group_across_clients_and_warnings_are_not_errors() -> None:
    _, document = report(str(BUNDLE / "var" / "log" / "nginx" / "error.log"))
    refused = by_signature(document, "connect() failed")
    assert refused["count"] == 2
    assert "client: 172.31.40.17" not in refused["example"]  # the first one is the example
    assert document["records"] == 3
    assert not any("types_hash" in g["example"] for g in document["groups"])


def test_eb_engine_error_keeps_its_command_output_and_info_lines_are_not_errors() -> None:
    _, document = report(str(BUNDLE / "var" / "log" / "eb-engine.log"))
    assert document["records"] == 1
    only = document["groups"][0]
    assert only["kind"] == "eb-engine"
    assert only["example"].endswith("ERROR: No matching distribution found for Flask==9.9.9")


def test_rotated_gz_log_is_read_and_a_chained_traceback_is_one_record() -> None:
    _, document = report(str(BUNDLE / "var" / "log" / "rotated"))
    boot = by_signature(document, "RuntimeError: MAX_UPLOAD_MB")
    assert boot["count"] == 1
    assert "ValueError: invalid literal" in boot["example"]
    assert "The above exception was the direct cause" in boot["example"]
    assert boot["first"]["time"] == "2026-11-19T22:10:03+00:00"


def test_plain_gunicorn_error_log() -> None:
    _, document = report(str(LOGS / "gunicorn-error.log"))
    counts = {g["signature"]: g["count"] for g in document["groups"]}
    assert counts == {
        "CRITICAL WORKER TIMEOUT (pid:<n>)": 2,
        "SystemExit: <n> at base.py:handle_abort": 1,
        "ERROR Worker (pid:<n>) was sent SIGKILL! Perhaps out of memory?": 2,
    }


def test_a_zip_bundle_reads_like_the_unpacked_directory(tmp_path: Path) -> None:
    bundle = Path(shutil.make_archive(str(tmp_path / "logs"), "zip", BUNDLE))
    assert zipfile.is_zipfile(bundle)
    _, from_zip = report(str(bundle))
    _, from_directory = report(str(BUNDLE))
    assert from_zip["sources"] == from_directory["sources"] == 5
    assert ([(g["signature"], g["count"]) for g in from_zip["groups"]]
            == [(g["signature"], g["count"]) for g in from_directory["groups"]])
    assert by_signature(from_zip, ORIGINAL_BUG)["first"]["source"] == (
        "logs.zip:var/log/web.stdout.log")


def test_standard_input_from_eb_logs_is_split_into_its_files() -> None:
    """A real process reading a pipe, as in `eb logs | python -m ops.error_hunt -`."""
    result = subprocess.run(
        [sys.executable, "-m", "ops.error_hunt", "-", "--json"], cwd=ROOT,
        input=TAIL.read_text(), capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == error_hunt.EXIT_FOUND, result.stderr
    document = json.loads(result.stdout)
    assert document["sources"] == 4
    bug = by_signature(document, ORIGINAL_BUG)
    assert bug["first"]["source"] == "i-0a1b2c3d4e5f60718:/var/log/web.stdout.log"
    assert TAIL.read_text().splitlines()[bug["first"]["line"] - 1].endswith(
        "ERROR in app: Exception on /your-url [POST]")


def test_since_keeps_only_later_records() -> None:
    _, document = report(str(BUNDLE), "--since", "2026-11-20T09:45:00")
    times = [g["first"]["time"] for g in document["groups"]]
    assert times and all(t >= "2026-11-20T09:45" for t in times)
    assert by_signature(document, ORIGINAL_BUG)["count"] == 1  # only the 09:47:30 one
    assert not any("MAX_UPLOAD_MB" in g["signature"] for g in document["groups"])


def test_since_accepts_spans_back_from_now() -> None:
    now = datetime(2026, 11, 27, 5, 0, tzinfo=timezone.utc)
    assert error_hunt.parse_since("90m", now) == datetime(2026, 11, 27, 3, 30,
                                                          tzinfo=timezone.utc)
    assert error_hunt.parse_since("2026-11-27T06:00+01:00").hour == 6
    with pytest.raises(argparse.ArgumentTypeError, match="ISO time"):
        error_hunt.parse_since("yesterday")


def test_a_clean_log_exits_zero_and_says_so(tmp_path: Path) -> None:
    clean = tmp_path / "web.stdout.log"
    clean.write_text(
        "Nov 20 09:41:57 ip-172-31-7-41 web[2714]: [2026-11-20 09:41:57 +0000] [2714] "
        "[INFO] Starting gunicorn 27.0.1\n")
    code, text = run(str(clean))
    assert code == error_hunt.EXIT_CLEAN
    assert "no errors" in text


def test_a_missing_input_exits_two(tmp_path: Path) -> None:
    code, _ = run(str(tmp_path / "nope.log"))
    assert code == error_hunt.EXIT_USAGE


def test_readable_report_shows_count_place_and_full_example() -> None:
    code, text = run(str(BUNDLE / "var" / "log" / "web.stdout.log"))
    assert code == error_hunt.EXIT_FOUND
    assert "#1  x4  [flask]" in text
    assert "first: 2026-11-20T09:43:02.118000+00:00  " in text
    assert "web.stdout.log:7\n" in text
    assert f"| Nov 20 09:43:02 ip-172-31-7-41 web[2716]: {ORIGINAL_BUG}" in text


@pytest.mark.skipif(shutil.which("awk") is None, reason="needs awk")
def test_the_reports_awk_pipeline_misses_what_error_hunt_finds() -> None:
    awk = subprocess.run(
        ["sh", "-c", AWK_PIPELINE], input=TAIL.read_text(), capture_output=True,
        text=True, timeout=30, check=True).stdout
    _, document = report("-", stdin=TAIL.read_text())
    hunted = "\n".join(g["example"] for g in document["groups"])
    # The original bug's message: TypeError has a capital E, so /error/ never matched it.
    assert ORIGINAL_BUG not in awk and ORIGINAL_BUG in hunted
    # Uppercase levels and HTTP 5xx are invisible to it.
    for missed in ("[CRITICAL] WORKER TIMEOUT", "ERROR shortener: link store unusable",
                   '"POST /your-url HTTP/1.1" 500'):
        assert missed not in awk and missed in hunted
    # `sort -u -k2,2` keeps one line per second word: every web.stdout.log line on
    # "Nov 20" collapses into one, whatever it says.
    assert sum(" web[" in line for line in awk.splitlines()) <= 1
    # ... and it reports lines that only mention the word.
    assert "no-error-here" in awk and "no-error-here" not in hunted
    assert "/error-budget" in awk and "/error-budget" not in hunted


def test_the_apps_own_error_lines_are_found_as_it_really_writes_them(tmp_path: Path) -> None:
    """The real app, over a corrupt link file, logging to stderr as it does on EB."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "urls.json").write_text('{"abc": {"url": "https://example.org/"')
    script = ("from application import create_app\n"
              f"client = create_app({{'DATA_DIR': {str(data)!r}, 'SECRET_KEY': 'x'}})"
              ".test_client()\n"
              "assert client.get('/healthz').status_code == 503\n"
              "assert client.post('/api/links', json={'url': 'https://a.example'})"
              ".status_code == 503\n")
    run_app = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                             text=True, timeout=60, check=True)
    code, document = report("-", stdin=run_app.stderr)
    assert code == error_hunt.EXIT_FOUND
    kinds = {g["kind"] for g in document["groups"]}
    assert kinds == {"app"}
    unusable = by_signature(document, "link store unusable")
    assert "is not valid JSON" in unusable["signature"]
    assert "python -m ops.backup restore" in unusable["example"]
