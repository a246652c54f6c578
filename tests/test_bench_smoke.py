"""The benchmark runs end to end on a tiny size, and its parts read what they claim to.

Speed is never asserted here (that is bench/'s job); only that every contender was
measured, redirected correctly, and that the outputs were written.
"""
from __future__ import annotations

import json
import shutil
import subprocess  # nosec B404
import sys
from pathlib import Path

import pytest

from bench.data import write_links
from bench.loadgen import LoadError, parse_wrk
from ops.pgserver import bindir

pytestmark = pytest.mark.alone  # load generators

REPO = Path(__file__).resolve().parent.parent


def test_generated_links_are_the_apps_format_and_the_sample_matches_them(
        tmp_path: Path) -> None:
    urls_file = tmp_path / "urls.json"
    sample = write_links(urls_file, 2500)
    links = json.loads(urls_file.read_text())
    assert len(links) == 2500
    assert len(sample) == 1000
    for link in sample:
        assert links[link.code]["url"] == link.url
        assert links[link.code]["created_at"]


def test_wrk_output_without_the_scripts_summary_is_an_error() -> None:
    with pytest.raises(LoadError, match="no summary"):
        parse_wrk("Running 1s test @ http://127.0.0.1:1\n  0 requests in 1.00s\n")


def test_wrk_summary_line_becomes_rates_and_milliseconds() -> None:
    load = parse_wrk('WRK_JSON {"requests": 5000, "duration_us": 2000000, "p50_us": 1500, '
                     '"p99_us": 9000, "max_us": 12000, "mean_us": 2000.0, '
                     '"connect_errors": 0, "read_errors": 1, "write_errors": 0, '
                     '"timeouts": 2, "bad_status": 3}\n')
    assert (load.rps, load.p50_ms, load.p99_ms, load.errors, load.bad_status) == (
        2500.0, 1.5, 9.0, 3, 3)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed "
                    "(apt-get install wrk); the benchmark cannot run without it")
def test_quick_benchmark_measures_every_contender_and_writes_its_results(
        tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run(  # nosec B603
        [sys.executable, "-m", "bench", "--quick", "--sizes", "200", "--duration", "1",
         "--connections", "4", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    measured = {row["contender"] for row in results["rows"]}
    expected = {"this app", "this app + gunicorn.conf.py", "original app", "flask floor",
                "bare wsgi"}
    if shutil.which("nginx") or Path("/usr/sbin/nginx").exists():
        expected |= {"nginx return 302", "this app via nginx", "this app via nginx 302 cache"}
    if bindir() is not None:
        expected |= {"this app on PostgreSQL", "this app on PostgreSQL, random codes"}
    assert measured == expected
    assert all(row["rps"] > 0 and row["errors"] + row["bad_status"] == 0
               for row in results["rows"])
    for app in results["app"]:
        assert app["links"] == 200 and app["creates"] >= 1 and app["visible_misses"] == 0
    assert len(results["app"]) == (2 if bindir() is not None else 1)
    assert "| this app | 200 |" in (out / "results.md").read_text()
    assert "| this app | 200 |" in done.stdout
