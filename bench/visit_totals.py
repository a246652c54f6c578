"""What the file backend's visit totals cost a read and a fold once many links have been
visited: this release's totals files (a link a line, in order of code; a read finds its
lines by binary search, a fold parses only the lines it adds to) beside the release
before's (each shard parsed whole for a read, and parsed, added to and written whole by
a fold: ``WholeShards``), on the same counts, side by side in one run.

Usage: python -m bench.visit_totals [--links 100000] [--days 3] [--rounds 3]
       [--out bench/results]

The counts: `--links` links, each visited on each of `--days` days (3 visits in a few
browsers, one visitor), folded day by day as a server's writers would. The same
directory is copied, its totals set out as the release before wrote them. Then, round
after round, on each: the stats of one link (as its `/<code>+` page reads them, 50
links), the totals of 20 (the home page's list), and a fold of a minute's flushes of
1,000 links on a fresh copy of each. Times are CPU seconds of this process, medians of
the rounds. Both must read the same counts before and after the fold, or the run fails.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from bench.pg_details import VISITS
from linkstore.jsonfile import write_atomically
from linkstore.visits_file import FileVisits, LinkTotals, Manifest
from visits import Batch, Day, Tally, add_days, today

READS, LISTED, FOLDED = 50, 20, 1000


class WholeShards(FileVisits):
    """The release before's totals (commit b57d602): a shard's file is one line of JSON,
    parsed whole to read one link of it, and parsed, added to, and written whole by a
    fold. Only for this comparison."""

    def _find(self, manifest: Manifest, shard: str, codes: Iterable[str]
              ) -> dict[str, LinkTotals]:
        links = self._whole(manifest, shard)
        return {code: links[code] for code in codes if code in links}

    def _write_totals(self, manifest: Manifest, shard: str, name: str,
                      adding: Mapping[str, list[tuple[Day, Tally]]], closed: Day,
                      closing: bool) -> Day | None:
        links = self._whole(manifest, shard)
        for code, tallies in adding.items():
            for day, tally in tallies:
                links.setdefault(code, LinkTotals()).add(day, tally, closed)
        for totals in links.values():
            totals.close(closed)
        write_atomically(self.dir / name, [json.dumps(
            {code: totals.to_json() for code, totals in links.items()},
            separators=(",", ":")).encode()])
        return min((day for totals in links.values() for day in totals.open), default=None)

    def _one_line(self, name: str) -> bool:
        return False  # as that release wrote them: nothing to set out

    def _whole(self, manifest: Manifest, shard: str) -> dict[str, LinkTotals]:
        name = manifest.totals.get(shard)
        return {} if name is None else {
            code: LinkTotals.from_json(totals)
            for code, totals in json.loads((self.dir / name).read_bytes()).items()}


def visited(directory: Path, links: int, days: int, chosen: random.Random) -> None:
    """Every link visited on each day, folded day by day, as a server's writers would."""
    store = FileVisits(directory)
    for back in reversed(range(days)):
        day = add_days(today(), -back)
        batch = Batch()
        for index in range(links):
            tally = batch.tally(f"link{index:07d}", day)
            for visit in chosen.choices(VISITS, k=3):
                tally.count(visit)
            tally.visitors.add(chosen.getrandbits(63))
        for part in store.parts(batch):
            store.add(part)
        store.fold(now=time.time())


def as_the_release_before_wrote_them(directory: Path) -> None:
    """Each totals file as one line of JSON, in no particular order."""
    for path in (directory / "totals").glob("*.json"):
        links = json.loads(path.read_bytes())
        path.write_bytes(json.dumps(dict(reversed(links.items())),
                                    separators=(",", ":")).encode())


def cpu(work: Callable[[], object]) -> tuple[float, object]:
    started = time.process_time()
    result = work()
    return time.process_time() - started, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--links", type=int, default=100_000, help="links visited")
    parser.add_argument("--days", type=int, default=3, help="days each was visited")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    chosen = random.Random(14)  # nosec B311: a benchmark's mix, not a secret
    base = Path(tempfile.mkdtemp(prefix="bench-visit-totals-"))
    times: dict[tuple[str, str], list[float]] = {}
    try:
        lines_dir, whole_dir = base / "lines" / "visits", base / "whole" / "visits"
        lines_dir.parent.mkdir()
        visited(lines_dir, args.links, args.days, chosen)
        shutil.copytree(lines_dir, whole_dir)
        as_the_release_before_wrote_them(whole_dir)
        size = sum(path.stat().st_size for path in (lines_dir / "totals").glob("*.json"))
        codes = [f"link{index:07d}" for index in range(args.links)]
        for round_ in range(args.rounds):
            read, listed = chosen.sample(codes, READS), chosen.sample(codes, LISTED)
            flushed = Batch()
            for code in chosen.sample(codes, min(FOLDED, args.links)):
                flushed.tally(code, today()).count(VISITS[0])
            counted: dict[str, object] = {}
            for kind, store_class, directory in (("lines", FileVisits, lines_dir),
                                                 ("whole", WholeShards, whole_dir)):
                store = store_class(directory)
                seconds, stats = cpu(lambda: [store.stats(code) for code in read])
                times.setdefault((kind, "read"), []).append(seconds / READS)
                seconds, totals = cpu(lambda: store.totals(listed))
                times.setdefault((kind, "list"), []).append(seconds)
                copy = base / f"{kind}-{round_}" / "visits"
                shutil.copytree(directory, copy)
                folding = store_class(copy)
                for part in folding.parts(flushed):
                    folding.add(part)
                seconds, _ = cpu(lambda: folding.fold(now=time.time()))
                times.setdefault((kind, "fold"), []).append(seconds)
                after = FileVisits(copy).totals([code for code, _ in flushed.tallies])
                counted[kind] = (stats, totals, after)
                shutil.rmtree(copy.parent)
            if counted["lines"] != counted["whole"]:
                print("bench.visit_totals: the two read different counts", file=sys.stderr)
                return 1
    finally:
        shutil.rmtree(base, ignore_errors=True)
    rows = [("a link's stats (its page)", "read"),
            (f"the totals of {LISTED} links (the home page's list)", "list"),
            (f"a fold of {FOLDED:,} links' flushes", "fold")]
    days = f"{args.days} day{'s' * (args.days != 1)}"
    lines = [f"# The file backend's visit totals at {args.links:,} visited links, {days} "
             f"each ({size / 1e6:.1f} MB of totals): CPU, median of {args.rounds} rounds",
             "", "| what | whole shards (the release before) | a link a line | "
             "whole ÷ a link a line |", "|---|---:|---:|---:|"]
    for label, key in rows:
        whole, line = (statistics.median(times[kind, key]) * 1000 for kind in ("whole", "lines"))
        lines.append(f"| {label} | {whole:,.1f} ms | {line:,.2f} ms | "
                     f"{whole / max(line, 1e-6):,.0f} |")
    text = "\n".join(lines) + "\n\nBoth read the same counts, before and after each fold.\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "visit_totals.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
