"""Compare gunicorn configurations of one app by alternating them, round after round.

Usage: python -m bench.alternate [--links 100000] [--rounds 2] [--duration 5]
       NAME=APP_DIR[=GUNICORN_ARGS] ...

Each round starts every configuration in turn on the same data and drives it with wrk,
so a neighbour's load hits all of them alike; the summary is each one's median. For
example, docs/performance.md compared worker classes with:

    python -m bench.alternate sync2=. "sync3=.=--workers=3" \\
        "gthread2x4=.=--worker-class=gthread,--threads=4"

APP_DIR holds the application.py to run; GUNICORN_ARGS (comma-separated) are added to
the bench's own gunicorn command (2 sync workers unless they say otherwise).
"""
import argparse
import os
import secrets
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench import probe, servers
from bench.data import write_links
from bench.loadgen import LoadError, run_wrk


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.alternate", description=__doc__.split("\n\n")[0] if __doc__
        else None)
    parser.add_argument("configs", nargs="+", metavar="NAME=APP_DIR[=GUNICORN_ARGS]",
                        help="a name, the directory of application.py, optional gunicorn "
                        "arguments separated by commas")
    parser.add_argument("--links", type=int, default=100_000,
                        help="links in urls.json, 1-2,000,000 (default 100000)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, 1-10 (default 2)")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds per wrk run, 1-60 (default 5)")
    args = parser.parse_args(argv)
    if not (1 <= args.links <= 2_000_000 and 1 <= args.rounds <= 10
            and 1 <= args.duration <= 60):
        parser.error("--links 1-2,000,000, --rounds 1-10, --duration 1-60")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configs = [spec.split("=", 2) for spec in args.configs]
    tmp = Path(tempfile.mkdtemp(prefix="bench-alternate-"))
    rates: dict[str, list[float]] = {spec[0]: [] for spec in configs}
    try:
        sample = write_links(tmp / "base" / "urls.json", args.links)
        paths = tmp / "paths.txt"
        paths.write_text("".join(f"/{link.code}\n" for link in sample))
        for number in range(args.rounds):
            for name, app_dir, *extra in configs:
                data = tmp / f"{name}-{number}"
                data.mkdir()
                os.link(tmp / "base" / "urls.json", data / "urls.json")
                env = {"DATA_DIR": str(data), "CREATE_RATE_LIMIT": "off",
                       "SECRET_KEY": secrets.token_hex(16), "APP_VERSION": "bench",
                       "PYTHONPATH": f"{Path(app_dir).resolve()}{os.pathsep}{servers.REPO}"}
                server = servers.start_gunicorn(
                    name, "application:application", 2, tmp, tmp / f"{name}.log", env,
                    extra[0].split(",") if extra and extra[0] else [])
                try:
                    servers.wait_until_listening(server, 120)
                    probe.until_served_everywhere(server.port, sample[0], 8, 120)
                    load = run_wrk(server.base_url, paths, args.duration, 16)
                finally:
                    server.stop()
                rates[name].append(load.rps)
                print(f"{name} round {number + 1}: {load.rps:,.0f}/s p50 {load.p50_ms} ms "
                      f"p99 {load.p99_ms} ms, errors {load.errors + load.bad_status}, "
                      f"load {os.getloadavg()[0]:.2f}", flush=True)
    except (LoadError, servers.ServerError, probe.ProbeError) as error:
        print(f"bench.alternate: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for name, values in rates.items():
        print(f"{name}: median {statistics.median(values):,.0f}/s over {len(values)} rounds")
    return 0


if __name__ == "__main__":
    with servers.stopped_at_exit():
        raise SystemExit(main())
