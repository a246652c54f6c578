"""Drive a server with wrk (Debian: `apt-get install wrk`) and read its figures.

A Lua script (redirects.lua) cycles through the sampled codes and prints wrk's summary
as one JSON line, so nothing depends on wrk's human-readable layout.
"""
import json
import shutil
# runs wrk, a fixed local program, with argument lists
import subprocess  # nosec B404
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

SCRIPT = Path(__file__).with_name("redirects.lua")
MARKER = "WRK_JSON "


class LoadError(RuntimeError):
    """wrk is missing, failed, or printed no summary."""


@dataclass(frozen=True)
class Load:
    """What one wrk run measured. Latencies in milliseconds."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    bad_status: int
    sent: dict[str, int] = field(default_factory=dict)  # what another script counted it sent


def wrk_path() -> str:
    """The wrk executable, or a LoadError that says how to install it."""
    found = shutil.which("wrk")
    if found is None:
        raise LoadError("wrk is not installed: run `apt-get install wrk` (Debian/Ubuntu)")
    return found


def run_wrk(base_url: str, paths_file: Path, duration: float, connections: int,
            threads: int = 2, script: Path = SCRIPT, script_args: Sequence[str] = ()) -> Load:
    """Run wrk against base_url for `duration` seconds; requests cycle through paths_file.
    Another script (bench/visits.lua) takes script_args after the paths file."""
    seconds = max(1, round(duration))
    command = [
        wrk_path(), f"--threads={min(threads, connections)}", f"--connections={connections}",
        f"--duration={seconds}s", f"--timeout={max(2, seconds)}s", f"--script={script}",
        base_url, "--", str(paths_file), *script_args,
    ]
    # fixed executable, no shell
    done = subprocess.run(  # nosec B603
        command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise LoadError(f"wrk exited {done.returncode}: {done.stderr.strip()}")
    return parse_wrk(done.stdout)


def parse_wrk(stdout: str) -> Load:
    """Read the JSON line that redirects.lua prints at the end of a run."""
    lines = [line for line in stdout.splitlines() if line.startswith(MARKER)]
    if not lines:
        raise LoadError(f"wrk printed no summary line: {stdout.strip()[-500:]}")
    raw = json.loads(lines[-1][len(MARKER):])
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))
    return Load(
        requests=raw["requests"], seconds=round(seconds, 3),
        rps=round(raw["requests"] / seconds, 1) if seconds else 0.0,
        p50_ms=raw["p50_us"] / 1000, p99_ms=raw["p99_us"] / 1000, max_ms=raw["max_us"] / 1000,
        errors=errors, bad_status=raw["bad_status"],
        sent={key: raw[key] for key in ("people", "bots", "probes") if key in raw},
    )
