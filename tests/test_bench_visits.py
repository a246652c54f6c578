"""bench.visits runs end to end on a tiny size, and every counted run counts exactly what
wrk sent. Speed is never asserted here: that is the benchmark's job."""
from __future__ import annotations

import json
import shutil
import subprocess  # nosec B404
import sys
from pathlib import Path

import pytest

from ops.pgserver import PostgresServer
from tests.servers import REPO

pytestmark = pytest.mark.alone  # load generators, and exact counts after timed runs


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed "
                    "(apt-get install wrk); the benchmark cannot run without it")
def test_the_quick_visits_benchmark_counts_every_request_it_sent(tmp_path: Path) -> None:
    """On the worker class that ships (gthread); bench.visit_parts's test runs sync."""
    done = subprocess.run(  # nosec B603
        [sys.executable, "-m", "bench.visits", "--quick", "--sizes", "300", "--duration", "2",
         "--connections", "4", "--worker-class", "gthread", "--threads", "2",
         "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "visits.json").read_text())
    counted = [run for run in results["runs"] if run["counted_people"] is not None]
    assert counted and all(run["exact"] for run in counted), counted
    assert all(run["errors"] == 0 and run["sent_people"] > 0 for run in results["runs"])
    assert {(run["contender"], run["visits"]) for run in results["runs"]} >= {
        ("file", "off"), ("file", "on"), ("file, steady load", "off"),
        ("file, steady load", "on")}
    steady = [run for run in results["runs"] if run["contender"] == "file, steady load"]
    assert all(run["pace_ms"] == 5 for run in steady)
    # paced by each connection's 5 ms wait after an answer: 4 connections, 800/s at most
    assert steady and max(run["rps"] for run in steady) <= 800
    text = (tmp_path / "visits.md").read_text()
    assert "| file | 300 |" in text and "| file, steady load | 300 |" in text
    assert "each wrk connection waits 5 ms after each answer" in text
    # the steady load's rate beside the saturated runs', so a busy machine shows
    share = next(row for row in results["summary"] if row["contender"] == "file, steady load")
    assert share["share_off"] > 0 and share["share_on"] > 0
    assert f"Steady load, file at 300 links: {share['rps_off']:,.0f} redirects/s off" in text
    assert "gunicorn: 2 gthread workers x 2 threads, wrk: 4 connections" in text
    assert "| target | measured | 90 % interval (bootstrap of the rounds) | met |" in text
    assert all(len(t["interval"]) == 2 for name, t in results["targets"].items()
               if "on / off" in name)
    assert not any("file, steady load: redirects/s" in name for name in results["targets"])


def test_the_flush_benchmark_runs_and_all_three_schemas_count_alike(
        tmp_path: Path, postgres: PostgresServer) -> None:
    """bench.pg_details starts a server of its own; `postgres` only makes a machine
    without PostgreSQL skip here (or fail, with REQUIRE_POSTGRES=1)."""
    done = subprocess.run(  # nosec B603
        [sys.executable, "-m", "bench.pg_details", "--links", "100", "--rounds", "2",
         "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    text = (tmp_path / "pg_details.md").read_text()
    assert "| new rows |" in text and "| onto them |" in text
    assert "All three counted the same details" in text


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed "
                    "(apt-get install wrk); the benchmark cannot run without it")
def test_the_parts_benchmark_runs_every_variant_and_the_cut_ones_start_no_writer(
        tmp_path: Path) -> None:
    """bench.visit_parts, one short round on the file: every variant answered without an
    error, and only "on" ran visit writers (one a worker): the cut ones hand nothing on."""
    done = subprocess.run(  # nosec B603
        [sys.executable, "-m", "bench.visit_parts", "--links", "300", "--rounds", "1",
         "--duration", "2", "--backends", "file", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    text = (tmp_path / "visit_parts.md").read_text()
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| file | ")]
    summary = {row[1]: row for row in rows if len(row) == 10}
    assert set(summary) == {"off", "on", "on, recorded, dropped", "on, sent to /dev/null"}
    assert all(row[8] == "0" and float(row[2].replace(",", "")) > 0
               for row in summary.values()), summary
    assert {name: row[9] for name, row in summary.items()} == {
        "off": "0 |", "on": "2 |", "on, recorded, dropped": "0 |",
        "on, sent to /dev/null": "0 |"}
