"""Turn the benchmark's results into a Markdown table, a JSON file and a PNG chart.

matplotlib is an optional dev dependency (bench/requirements.txt); without it the run
still writes the table and the JSON and says that it skipped the chart.
"""
import importlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One contender under load at one link count (0: the contender stores no links)."""

    contender: str
    links: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    bad_status: int
    vs_floor: float
    floor_rps: float
    rss_mib: float | None
    pss_mib: float | None
    load1: float


@dataclass
class AppFigures:
    """What only this app is measured for at one link count."""

    links: int
    startup_s: float
    creates: int
    create_p50_ms: float
    create_p99_ms: float
    visible_p50_ms: float
    visible_max_ms: float
    visible_misses: int
    pure_p99_ms: float
    mixed_rps: float
    mixed_p50_ms: float
    mixed_p99_ms: float
    mixed_vs_pure_p99: float
    mixed_creates: int
    mixed_create_p50_ms: float
    mixed_create_p99_ms: float
    mixed_create_failures: int
    contender: str = "this app"


@dataclass
class Results:
    """Everything one run measured, plus how and where it was measured."""

    settings: dict[str, Any]
    machine: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    app: list[AppFigures] = field(default_factory=list)
    targets: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for a table cell; '-' when it was not measured."""
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def redirect_table(rows: list[Row]) -> str:
    """Markdown table of every contender's redirect figures."""
    lines = [
        "| contender | links | redirects/s | p50 ms | p99 ms | x Flask floor "
        "| RSS MiB/worker | PSS MiB/worker | errors | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        links = f"{r.links:,}" if r.links else "n/a"
        lines.append(
            f"| {r.contender} | {links} | {fmt(r.rps, 0)} | {fmt(r.p50_ms, 2)} "
            f"| {fmt(r.p99_ms, 2)} | {fmt(r.vs_floor, 2)} | {fmt(r.rss_mib)} | {fmt(r.pss_mib)} "
            f"| {r.errors + r.bad_status} | {r.load1:.2f} |")
    return "\n".join(lines)


def app_table(figures: list[AppFigures]) -> str:
    """Markdown table of start-up, create, visibility and mixed-load figures for this app."""
    lines = [
        "| contender | links | start-up s | create p50 / p99 ms "
        "| visible on all workers ms (p50 / max) "
        "| pure p99 ms | mixed redirects/s | mixed p99 ms | mixed / pure p99 "
        "| creates in mixed run (p50 / p99 ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for f in figures:
        lines.append(
            f"| {f.contender} | {f.links:,} | {fmt(f.startup_s, 2)} "
            f"| {fmt(f.create_p50_ms)} / {fmt(f.create_p99_ms)} "
            f"| {fmt(f.visible_p50_ms)} / {fmt(f.visible_max_ms)} | {fmt(f.pure_p99_ms, 2)} "
            f"| {fmt(f.mixed_rps, 0)} | {fmt(f.mixed_p99_ms, 2)} | {fmt(f.mixed_vs_pure_p99, 2)} "
            f"| {f.mixed_creates} ({fmt(f.mixed_create_p50_ms)} / {fmt(f.mixed_create_p99_ms)}) |")
    return "\n".join(lines)


def targets_table(targets: dict[str, Any]) -> str:
    """Markdown list of the issue's targets with the measured value and a verdict."""
    lines = []
    for name, t in targets.items():
        verdict = "met" if t["met"] else "MISSED" if t["met"] is False else "not measured"
        lines.append(f"- {name}: measured {t['measured']}, target {t['target']}: **{verdict}**")
    return "\n".join(lines)


def markdown(results: Results) -> str:
    """The whole report as Markdown: settings line, both tables, targets, notes."""
    s, m = results.settings, results.machine
    header = (
        f"{s['workers']} gunicorn sync workers, wrk {s['connections']} connections, "
        f"{s['duration']} s per run, {m['cpus']} CPUs, load average before/after "
        f"{m['load_before']} / {m['load_after']}, {m['started_at']}")
    parts = [header, redirect_table(results.rows), app_table(results.app),
             targets_table(results.targets)]
    parts += [f"- {note}" for note in results.notes]
    return "\n\n".join(parts) + "\n"


def write_json(results: Results, path: Path) -> None:
    path.write_text(json.dumps(asdict(results), indent=2) + "\n")


def pyplot() -> Any | None:
    """matplotlib.pyplot with a file-only backend, or None when matplotlib is absent."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return None
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def write_chart(results: Results, path: Path) -> bool:
    """Redirects/s of every row as bars, memory per worker against link count as lines.

    Returns False (and draws nothing) when matplotlib is not installed.
    """
    plt = pyplot()
    if plt is None:
        return False
    rows = results.rows
    names = list(dict.fromkeys(r.contender for r in rows))
    colour = {name: f"C{i % 10}" for i, name in enumerate(names)}
    figure, (speed, memory) = plt.subplots(
        1, 2, figsize=(14, max(5, 0.38 * len(rows) + 1.5)), gridspec_kw={"width_ratios": [3, 2]})
    labels = [f"{r.contender} @ {r.links:,}" if r.links else r.contender for r in rows]
    speed.barh(range(len(rows)), [r.rps for r in rows], color=[colour[r.contender] for r in rows])
    for y, r in enumerate(rows):
        speed.annotate(f" {r.rps:,.0f}/s  p99 {r.p99_ms:,.1f} ms", (max(r.rps, 1), y),
                       va="center", fontsize=7)
    speed.set_yticks(range(len(rows)), labels, fontsize=8)
    speed.invert_yaxis()
    speed.set_xscale("log")
    speed.set_xlabel("redirects per second (log scale)")
    speed.set_title("redirects per second")
    speed.grid(True, axis="x", which="both", alpha=0.3)
    for name in names:
        sized = sorted((r for r in rows if r.contender == name and r.links and r.rss_mib),
                       key=lambda r: r.links)
        if sized and not name.endswith("nginx") and "via nginx" not in name:
            memory.plot([r.links for r in sized], [r.rss_mib for r in sized], marker="o",
                        label=name, color=colour[name])
    memory.axhline(400, linestyle="dashed", color="grey", label="target: 400 MiB")
    memory.set_xscale("log")
    memory.set_xlabel("links stored (log scale)")
    memory.set_ylabel("MiB")
    memory.set_title("resident memory per gunicorn worker")
    memory.grid(True, which="both", alpha=0.3)
    memory.legend(fontsize=8)
    s, m = results.settings, results.machine
    figure.suptitle(f"{s['workers']} gunicorn sync workers, wrk {s['connections']} connections, "
                    f"{s['duration']:g} s per run, loopback, {m['cpus']} CPUs, "
                    f"load {m['load_before'][0]} before the run")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
