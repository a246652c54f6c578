"""bench.visit_code runs end to end on a tiny size: both apps answer every request with
a redirect, and the counting one stores exactly what it answered, people and bots
apart. What it measures is never asserted here: that is the benchmark's job."""
from __future__ import annotations

import json
import subprocess  # nosec B404
import sys
from pathlib import Path

from tests.servers import REPO


def test_the_code_benchmark_measures_both_modes_and_counts_every_redirect(
        tmp_path: Path) -> None:
    done = subprocess.run(  # nosec B603
        [sys.executable, "-m", "bench.visit_code", "--links", "1000", "--requests", "2000",
         "--rounds", "2", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "visit_code.json").read_text())
    # the warm-up's 5,000 requests and 2 rounds of 2,000, every 10th from a bot
    assert result["people"] == [8_100, 8_100] and result["bots"] == [900, 900]
    assert result["exact"] is True
    assert len(result["off_rounds_us"]) == len(result["on_rounds_us"]) == 2
    assert all(us > 0 for us in result["off_rounds_us"] + result["on_rounds_us"])
    text = (tmp_path / "visit_code.md").read_text()
    assert "| yes (8,100 people, 900 bots) |" in text
