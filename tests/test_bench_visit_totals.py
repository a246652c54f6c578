"""bench.visit_totals runs end to end on a small size, and this release's totals files and
the release before's read the same counts before and after a fold (the script fails if
not). What it measures is never asserted here: that is the benchmark's job."""
from __future__ import annotations

import subprocess  # nosec B404
import sys
from pathlib import Path

from tests.servers import REPO


def test_the_totals_benchmark_compares_both_layouts_on_the_same_counts(tmp_path: Path) -> None:
    done = subprocess.run(  # nosec B603
        [sys.executable, "-m", "bench.visit_totals", "--links", "2000", "--days", "2",
         "--rounds", "1", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    text = (tmp_path / "visit_totals.md").read_text()
    assert "at 2,000 visited links, 2 days each" in text
    for row in ("| a link's stats (its page) |", "| the totals of 20 links",
                "| a fold of 1,000 links' flushes |"):
        assert row in text
    assert "Both read the same counts, before and after each fold." in text
