"""Which part of counting visits costs a saturated server its tail: bench.visits's load
against VISITS=off, VISITS=on, and VISITS=on with the pipeline cut short after one of
its parts, side by side, round after round (each round in a rotated order).

Usage: python -m bench.visit_parts [--links 100000] [--rounds 6] [--duration 10]
       [--backends postgresql,file] [--out bench/results]

The parts, each a patch of every worker's ``visits.Recorder`` made by this module (the
app's code is unchanged; gunicorn serves ``bench.visit_parts_app:application``, the app
with the patch that BENCH_VISIT_PART names):

- "recorded, dropped": each redirect is recorded as always (``Recorder.record``), and
  each hand-off empties the queue instead of sending it: no frames, no visit writer.
- "sent to /dev/null": each hand-off frames the hits and writes them as always, to a
  stand-in writer whose pipe is /dev/null: no visit writer.
- "on": the hand-off sends them to the worker's visit writer, which counts and stores.

The first two count nothing, on purpose, so no counts are checked here (bench.visits
checks them). docs/visits.md, "Where the tail comes from", has the method and figures.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import postgres
from bench.data import sample_of, write_links
from bench.loadgen import LoadError, wrk_path
from bench.servers import ServerError, stopped_at_exit
from bench.visits import VisitsBench, load1, parse_args as visits_args, run_env, writers_cpu
from ops.pgserver import ServerUnavailable

PART_VARIABLE = "BENCH_VISIT_PART"  # read by bench.visit_parts_app, in each worker
VARIANTS = {  # name: the environment that makes it
    "off": {"VISITS": "off"},
    "on": {"VISITS": "on"},
    "on, recorded, dropped": {"VISITS": "on", PART_VARIABLE: "dropped"},
    "on, sent to /dev/null": {"VISITS": "on", PART_VARIABLE: "dev-null"},
}


@dataclass
class Round:
    backend: str
    variant: str
    number: int
    rps: float
    p99_ms: float
    errors: int
    load1: float
    writers: int  # visit writers running at the end of the run: one a worker when "on"


class PartsBench(VisitsBench):
    target = "bench.visit_parts_app:application"

    def backend(self, name: str, links: int, base: Path) -> list[Round]:
        """Every variant, round after round, on one backend."""
        sample = sample_of(links)
        paths = base / "paths.txt"
        paths.write_text("".join(f"/{link.code}\n" for link in sample))
        url = postgres.load(self.database, links)[0] if self.database else ""
        rounds, quota, names = [], 0, list(VARIANTS)
        for number in range(self.args.rounds):
            turn = number % len(names)
            for variant in names[turn:] + names[:turn]:
                run = f"{name}-{variant.replace('/', '').replace(',', '').replace(' ', '-')}"
                env = run_env(base, f"{run}-{number}", url)
                server = self.gunicorn(run, env | VARIANTS[variant])
                try:
                    warm = self.warm(server, sample, paths, counting=variant == "on")
                    quota = quota or self.quota(warm.rps)
                    before = load1()
                    load = self.load(server.base_url, paths, quota)
                    writers = len(writers_cpu(server.process.pid))
                finally:
                    server.stop()
                rounds.append(Round(name, variant, number + 1, load.rps, load.p99_ms,
                                    load.errors + load.bad_status, before, writers))
                self.log(f"{name} {variant} round {number + 1}: {load.rps:,.0f}/s, "
                         f"p99 {load.p99_ms:.2f} ms")
        if self.database:
            self.database.drop_database(f"links_{links}")
        return rounds


def markdown(rounds: list[Round], links: int, started: str) -> str:
    """Per backend and variant: medians, and each against VISITS=off (the ratio of the
    medians, and the spread of the same ratio round by round)."""
    lines = [f"Counting's parts, measured {started}, {links:,} links, saturated "
             "(bench.visits's load)", "",
             "| backend | variant | redirects/s | ÷ off | round by round | p99 ms | ÷ off "
             "| round by round | errors | visit writers |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for backend in dict.fromkeys(r.backend for r in rounds):
        mine = [r for r in rounds if r.backend == backend]
        off = {r.number: r for r in mine if r.variant == "off"}
        rps_off = statistics.median(r.rps for r in off.values())
        p99_off = statistics.median(r.p99_ms for r in off.values())
        for variant in VARIANTS:
            group = [r for r in mine if r.variant == variant]
            rps, p99 = (statistics.median(r.rps for r in group),
                        statistics.median(r.p99_ms for r in group))
            by_round = [(r.rps / off[r.number].rps, r.p99_ms / off[r.number].p99_ms)
                        for r in group]
            lines.append(
                f"| {backend} | {variant} | {rps:,.0f} | {rps / rps_off:.3f} | "
                f"{min(a for a, _ in by_round):.2f}-{max(a for a, _ in by_round):.2f} | "
                f"{p99:.2f} | {p99 / p99_off:.3f} | "
                f"{min(b for _, b in by_round):.2f}-{max(b for _, b in by_round):.2f} | "
                f"{sum(r.errors for r in group)} | {max(r.writers for r in group)} |")
    lines += ["", "| backend | variant | round | redirects/s | p99 ms | errors | load |",
              "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.backend} | {r.variant} | {r.number} | {r.rps:,.0f} | {r.p99_ms} | "
              f"{r.errors} | {r.load1} |" for r in rounds]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.visit_parts",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--links", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=6, help="1-10")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds a run, 2-60")
    parser.add_argument("--backends", default="postgresql,file",
                        help="postgresql, file, or both (comma-separated)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    args.backends = args.backends.split(",")
    if not set(args.backends) <= {"postgresql", "file"} or not args.backends:
        parser.error("--backends: postgresql, file, or both")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = visits_args(["--sizes", str(args.links), "--rounds", str(args.rounds),
                            "--duration", str(args.duration)])
    tmp = Path(tempfile.mkdtemp(prefix="bench-visit-parts-"))
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    rounds: list[Round] = []
    database = None
    try:
        wrk_path()
        base = tmp / "links"
        write_links(base / "urls.json", args.links)
        for backend in args.backends:
            database = postgres.start() if backend == "postgresql" else None
            try:
                bench = PartsBench(settings, tmp, database)
                rounds += bench.backend(backend, args.links, base)
            finally:
                if database is not None:
                    database.close()
    except (LoadError, ServerError, ServerUnavailable) as error:
        print(f"bench.visit_parts: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = markdown(rounds, args.links, started)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "visit_parts.md").write_text(text)
    print(text)
    print(f"wrote {args.out}/visit_parts.md")
    return 0


if __name__ == "__main__":
    with stopped_at_exit():
        raise SystemExit(main())
