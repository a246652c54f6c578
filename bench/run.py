"""Measure redirects side by side: this app on the JSON file and on PostgreSQL, the
original app, Flask, bare WSGI and nginx.

Usage: python -m bench [--sizes 1000,10000] [--duration 10] [--connections 16]
       [--workers 2] [--out bench/results] [--quick] [--app-dir DIR] [--no-postgres]

Everything runs on 127.0.0.1 in one temporary directory, each contender under the same
gunicorn settings, driven by wrk; PostgreSQL is a throwaway server in that directory.
Prints Markdown tables and writes results.json, results.md and redirects.png into --out.
See docs/performance.md.
"""
import argparse
import datetime
import os
import platform
import secrets
import shutil
import subprocess  # nosec B404
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import postgres, probe, report, servers
from bench.data import Link, random_links, sample_of, write_links
from bench.loadgen import Load, LoadError, run_wrk, wrk_path
from bench.report import AppFigures, Results, Row
from ops.pgserver import PostgresServer, ServerUnavailable

FULL_SIZES = [1_000, 10_000, 100_000, 1_000_000, 10_000_000]
QUICK_SIZES = [1_000]
FILE_MAX = 2_000_000  # above this only PostgreSQL is measured: a file of 1.5 GB and more
RANDOM_CODES = 100_000  # distinct codes for the cache-miss run
NGINX_RETURN = "location / { return 302 https://example.com/; }"
PROXY = """
    location / {
        proxy_pass http://127.0.0.1:%d;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        %s
    }
"""
# The redirect cache exactly as deployed on Elastic Beanstalk (.platform/nginx), with its
# cache directory moved into the run's temporary directory.
NGINX_CONF = Path(__file__).resolve().parent.parent / ".platform" / "nginx" / "conf.d"
CACHE_HTTP = (NGINX_CONF / "redirect_cache.conf").read_text().replace(
    "/var/cache/nginx/redirects", "%s/cache")
CACHE_LOCATION = (NGINX_CONF / "elasticbeanstalk" / "redirect_cache.conf").read_text()


@dataclass(frozen=True)
class Settings:
    """The run's options, bounded: every loop below stops by count and by time."""

    sizes: list[int]
    duration: float
    connections: int
    workers: int
    out: Path
    app_dir: Path
    creates: int
    create_budget_s: float
    streak: int
    startup_timeout_s: float
    postgres: bool


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", help="comma-separated link counts (default "
                        "1000,10000,100000,1000000,10000000; with --quick 1000); the JSON "
                        "file is measured up to 2,000,000, PostgreSQL at every size")
    parser.add_argument("--duration", type=float, help="seconds per wrk run, 1-60 "
                        "(default 10; with --quick 2)")
    parser.add_argument("--connections", type=int, default=16,
                        help="wrk connections, 1-256 (default 16)")
    parser.add_argument("--workers", type=int, default=2,
                        help="gunicorn sync workers (and nginx workers), 1-16 (default 2)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"),
                        help="directory for results.json, results.md, redirects.png "
                        "(default bench/results)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, short runs, few creates: checks the harness works")
    parser.add_argument("--app-dir", type=Path, default=servers.REPO,
                        help="directory holding the application.py to measure "
                        "(default: this repository; point it at a copy to try a change)")
    parser.add_argument("--no-postgres", action="store_true",
                        help="leave out the PostgreSQL contender (it runs whenever "
                        "PostgreSQL's binaries are installed)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else (
        QUICK_SIZES if args.quick else FULL_SIZES)
    duration = args.duration if args.duration is not None else (2.0 if args.quick else 10.0)
    if not all(1 <= s <= 10_000_000 for s in sizes):
        parser.error("--sizes must each be between 1 and 10,000,000")
    if not 1 <= duration <= 60 or not 1 <= args.connections <= 256 \
            or not 1 <= args.workers <= 16:
        parser.error("--duration 1-60, --connections 1-256, --workers 1-16")
    return Settings(
        sizes=sizes, duration=duration, connections=args.connections, workers=args.workers,
        out=args.out, app_dir=args.app_dir.resolve(), creates=3 if args.quick else 100,
        create_budget_s=5.0 if args.quick else 30.0, streak=4 * args.workers,
        startup_timeout_s=120.0, postgres=postgres.available() and not args.no_postgres)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.5))
    return ordered[min(rank, len(ordered)) - 1]


def app_version(app_dir: Path) -> str:
    """Which application.py was measured: its commit, and whether it differs from it."""
    try:
        head = subprocess.run(  # nosec B603 B607
            ["git", "-C", str(app_dir), "log", "-1", "--format=%h", "--", "application.py",
             "linkstore"],
            capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(  # nosec B603 B607
            ["git", "-C", str(app_dir), "status", "--porcelain", "--", "application.py",
             "linkstore"],
            capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"{app_dir}/application.py and linkstore/ (not in git)"
    return (f"application.py and linkstore/ at {head or 'no commit'}"
            f"{' with uncommitted changes' if dirty else ''}")


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def worker_memory(server: servers.Server) -> tuple[float | None, float | None]:
    """The largest RSS and PSS among the server's worker processes, in MiB."""
    pids = servers.worker_pids(server.process.pid)
    if not pids:
        return None, None
    figures = [servers.memory_mib(pid) for pid in pids]
    return max(f[0] for f in figures), max(f[1] for f in figures)


def make_row(name: str, links: int, load: Load, floor_rps: float,
             memory: tuple[float | None, float | None], load_avg: float) -> Row:
    return Row(
        contender=name, links=links, rps=load.rps, p50_ms=load.p50_ms, p99_ms=load.p99_ms,
        max_ms=load.max_ms, errors=load.errors, bad_status=load.bad_status,
        vs_floor=round(load.rps / floor_rps, 3) if floor_rps else 0.0,
        floor_rps=floor_rps, rss_mib=memory[0], pss_mib=memory[1], load1=load_avg)


def rebase_on_floor(rows: list[Row]) -> None:
    """State every row against the mean of the Flask floor runs around it.

    The floor is measured before and after each block, so a neighbour's load that comes
    or goes during the block shifts the ratio less than a single floor run would.
    """
    floors = [r.rps for r in rows if r.contender == "flask floor"]
    floor_rps = round(sum(floors) / len(floors), 1)
    for row in rows:
        row.floor_rps = floor_rps
        row.vs_floor = round(row.rps / floor_rps, 3) if floor_rps else 0.0


class Bench:
    """One benchmark run: a temporary directory, the settings, and the results so far."""

    def __init__(self, settings: Settings, tmp: Path,
                 database: PostgresServer | None) -> None:
        self.s, self.tmp, self.database = settings, tmp, database
        self.results = Results(
            settings={"sizes": settings.sizes, "duration": settings.duration,
                      "connections": settings.connections, "workers": settings.workers,
                      "worker_class": "sync", "streak": settings.streak,
                      "app_dir": str(settings.app_dir)},
            machine={"cpus": os.cpu_count(), "python": platform.python_version(),
                     "platform": platform.platform(), "wrk": wrk_path(),
                     "nginx": str(servers.NGINX) if servers.nginx_available() else None,
                     "postgresql": str(database.bin) if database else None,
                     "app": app_version(settings.app_dir),
                     "load_before": [round(x, 2) for x in os.getloadavg()],
                     "load_after": None,
                     "started_at": datetime.datetime.now(datetime.UTC).isoformat(
                         timespec="seconds")})

    def log(self, message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')} load {load1():.2f}] {message}",
              file=sys.stderr, flush=True)

    def gunicorn(self, name: str, target: str, cwd: Path,
                 env: dict[str, str] | None = None) -> servers.Server:
        server = servers.start_gunicorn(
            name, target, self.s.workers, cwd, self.tmp / f"{name.replace(' ', '-')}.log", env)
        try:
            servers.wait_until_listening(server, self.s.startup_timeout_s)
        except servers.ServerError:
            server.stop()
            raise
        return server

    def load(self, server: servers.Server, paths: Path) -> Load:
        return run_wrk(server.base_url, paths, self.s.duration, self.s.connections)

    def measure(self, server: servers.Server, links: int, paths: Path, floor_rps: float,
                check: Callable[[], object]) -> Row:
        """Check correctness, put the server under load, record memory; stop it."""
        try:
            check()
            load_avg = load1()
            result = self.load(server, paths)
            memory = worker_memory(server)
        finally:
            server.stop()
        row = make_row(server.name, links, result, floor_rps or result.rps, memory, load_avg)
        self.results.rows.append(row)
        self.log(f"{server.name} @ {links:,}: {row.rps:,.0f}/s p99 {row.p99_ms} ms "
                 f"x{row.vs_floor} rss {row.rss_mib} MiB")
        return row

    def constant(self, name: str, target: str, links: int, paths: Path,
                 floor_rps: float) -> Row:
        """Measure a contender that redirects every code to the same place."""
        server = self.gunicorn(name, target, self.tmp)
        return self.measure(server, links, paths, floor_rps,
                            lambda: probe.get(server.port, "/anything"))

    def floor(self, links: int, paths: Path) -> float:
        row = self.constant("flask floor", "bench.contenders.flask_floor:app", links, paths, 0)
        return row.rps

    def app_env(self, data_dir: Path) -> dict[str, str]:
        return {"DATA_DIR": str(data_dir), "CREATE_RATE_LIMIT": "off",
                "SECRET_KEY": secrets.token_hex(16), "APP_VERSION": "bench",
                "PYTHONPATH": f"{self.s.app_dir}{os.pathsep}{servers.REPO}"}

    def size(self, count: int) -> None:
        """Every contender that stores links, at `count` links."""
        base = self.tmp / f"links-{count}"
        base.mkdir()
        sample = sample_of(count)
        paths = base / "paths.txt"
        paths.write_text("".join(f"/{link.code}\n" for link in sample))

        first = len(self.results.rows)
        floor_rps = self.floor(count, paths)
        if count <= FILE_MAX:
            self.log(f"writing {count:,} links")
            write_links(base / "app" / "urls.json", count)
            (base / "original").mkdir()
            os.link(base / "app" / "urls.json", base / "original" / "urls.json")
            self.app("this app", count, self.app_env(base / "app"), sample, paths, floor_rps)
            server = self.gunicorn("original app", "bench.contenders.original:app",
                                   base / "original")
            self.measure(server, count, paths, floor_rps,
                         lambda: probe.check_redirects(server.port, sample[:3]))
            if count == max(size for size in self.s.sizes if size <= FILE_MAX):
                self.as_deployed(count, base / "app", sample, paths, floor_rps)
                self.behind_nginx(count, base / "app", sample, paths, floor_rps)
        if self.database is not None:
            self.on_postgres(self.database, count, base, sample, paths, floor_rps)
        self.floor(count, paths)
        rebase_on_floor(self.results.rows[first:])
        shutil.rmtree(base)

    def on_postgres(self, database: PostgresServer, count: int, base: Path,
                    sample: list[Link], paths: Path, floor_rps: float) -> None:
        """This app on PostgreSQL: the hot set, then uniformly random codes (mostly cache
        misses), creates and the mixed run. The database is dropped afterwards."""
        self.log(f"loading {count:,} links into PostgreSQL")
        url, seconds = postgres.load(database, count)
        self.results.notes.append(f"PostgreSQL: {count:,} links loaded with COPY in "
                                  f"{seconds:.1f} s")
        random_paths = base / "random-paths.txt"
        random_paths.write_text("".join(f"/{link.code}\n"
                                        for link in random_links(count, RANDOM_CODES)))
        env = self.app_env(base / "postgres") | {"DATABASE_URL": url}
        try:
            self.app("this app on PostgreSQL", count, env, sample, paths, floor_rps,
                     random_paths)
        finally:
            database.drop_database(f"links_{count}")

    def as_deployed(self, count: int, data_dir: Path, sample: list[Link], paths: Path,
                    floor_rps: float) -> None:
        """This app with the repository's gunicorn.conf.py as well (its access log is on),
        keeping only the worker count and class of the other rows."""
        config = servers.REPO / "gunicorn.conf.py"
        if not config.exists():
            return
        name = "this app + gunicorn.conf.py"
        server = servers.start_gunicorn(
            name, "application:application", self.s.workers, self.tmp,
            self.tmp / "as-deployed.log", self.app_env(data_dir), [f"--config={config}"])
        servers.wait_until_listening(server, self.s.startup_timeout_s)
        self.measure(server, count, paths, floor_rps,
                     lambda: probe.until_served_everywhere(
                         server.port, sample[0], self.s.streak, self.s.startup_timeout_s))

    def behind_nginx(self, count: int, data_dir: Path, sample: list[Link], paths: Path,
                     floor_rps: float) -> None:
        """This app behind nginx as Elastic Beanstalk runs it: plain, then caching 302s."""
        if not servers.nginx_available():
            self.results.notes.append("nginx is not installed: no rows behind nginx")
            return
        upstream = self.gunicorn("this app upstream", "application:application", self.tmp,
                                 self.app_env(data_dir))
        try:
            probe.until_served_everywhere(upstream.port, sample[0], self.s.streak,
                                          self.s.startup_timeout_s)
            for name, cache in (("this app via nginx", False),
                                ("this app via nginx 302 cache", True)):
                workdir = self.tmp / name.replace(" ", "-")
                proxy = servers.start_nginx(
                    name, workdir, PROXY % (upstream.port, CACHE_LOCATION if cache else ""),
                    self.s.workers, CACHE_HTTP % workdir if cache else "")
                servers.wait_until_listening(proxy, 10)
                self.measure(proxy, count, paths, floor_rps,
                             lambda: self.check_through_proxy(proxy, sample))
        finally:
            upstream.stop()

    def check_through_proxy(self, proxy: servers.Server, sample: list[Link]) -> None:
        """Every sampled link redirects correctly twice (the second time from the cache, which
        also warms it: the run measures hot redirects), and a code that answered 404 works
        as soon as it is created (404s are not cached)."""
        probe.check_redirects(proxy.port, sample)
        probe.check_redirects(proxy.port, sample)
        code = f"bench-{proxy.port}"
        status, _ = probe.get(proxy.port, f"/{code}")
        if status != 404:
            raise probe.ProbeError(f"/{code} answered {status} before it existed")
        url = f"https://created.example.com/{code}"
        probe.create(proxy.port, url, code)
        probe.until_served_everywhere(proxy.port, Link(code, url), self.s.streak, 30)

    def app(self, name: str, count: int, env: dict[str, str], sample: list[Link],
            paths: Path, floor_rps: float, random_paths: Path | None = None) -> None:
        """This app on one store: start-up, redirects, memory, creates, visibility, the
        mixed run. With random_paths (PostgreSQL), the hot set is served once before it
        is measured, and uniformly random codes are measured as well."""
        server = self.gunicorn(name, "application:application", self.tmp, env)
        try:
            probe.until_served_everywhere(server.port, sample[0], self.s.streak,
                                          self.s.startup_timeout_s)
            startup = time.monotonic() - server.started_at
            probe.check_redirects(server.port, sample[:50])
            if random_paths is not None:
                run_wrk(server.base_url, paths, 2, self.s.connections)  # fill the caches
            pure = self.load_row(name, server, count, paths, floor_rps)
            if random_paths is not None:
                self.load_row(f"{name}, random codes", server, count, random_paths,
                              floor_rps)
            creates, visible, misses = self.creates(server)
            with probe.CreateTicker(server.port, 1.0, int(self.s.duration) + 5) as ticker:
                mixed = self.load(server, paths)
        finally:
            server.stop()
        self.results.app.append(AppFigures(
            links=count, startup_s=round(startup, 3), creates=len(creates),
            create_p50_ms=round(percentile(creates, 50) * 1000, 2),
            create_p99_ms=round(percentile(creates, 99) * 1000, 2),
            visible_p50_ms=round(percentile(visible, 50) * 1000, 2),
            visible_max_ms=round(max(visible, default=0.0) * 1000, 2), visible_misses=misses,
            pure_p99_ms=pure.p99_ms, mixed_rps=mixed.rps, mixed_p50_ms=mixed.p50_ms,
            mixed_p99_ms=mixed.p99_ms,
            mixed_vs_pure_p99=round(mixed.p99_ms / pure.p99_ms, 2) if pure.p99_ms else 0.0,
            mixed_creates=len(ticker.seconds),
            mixed_create_p50_ms=round(percentile(ticker.seconds, 50) * 1000, 2),
            mixed_create_p99_ms=round(percentile(ticker.seconds, 99) * 1000, 2),
            mixed_create_failures=len(ticker.failures), contender=name))
        self.log(f"{name} @ {count:,}: start-up {startup:.2f} s, mixed {mixed.rps:,.0f}/s "
                 f"p99 {mixed.p99_ms} ms, {len(ticker.seconds)} creates, "
                 f"{len(ticker.failures)} failed")

    def load_row(self, name: str, server: servers.Server, count: int, paths: Path,
                 floor_rps: float) -> Load:
        """One wrk run against a server that keeps running; its row, with memory after."""
        load_avg = load1()
        result = self.load(server, paths)
        row = make_row(name, count, result, floor_rps, worker_memory(server), load_avg)
        self.results.rows.append(row)
        self.log(f"{name} @ {count:,}: {row.rps:,.0f}/s p99 {row.p99_ms} ms "
                 f"rss {row.rss_mib} MiB")
        return result

    def creates(self, server: servers.Server) -> tuple[list[float], list[float], int]:
        """Create links one at a time; after each, time until every worker serves it."""
        creates: list[float] = []
        visible: list[float] = []
        misses = 0
        deadline = time.monotonic() + self.s.create_budget_s
        for number in range(self.s.creates):
            if time.monotonic() > deadline:
                break
            url = f"https://created.example.com/{number}"
            code, seconds = probe.create(server.port, url)
            creates.append(seconds)
            seen = probe.until_served_everywhere(server.port, Link(code, url), self.s.streak,
                                                 self.s.startup_timeout_s)
            visible.append(seen.seconds)
            misses += seen.misses
        return creates, visible, misses

    def constants(self, paths: Path) -> None:
        """Contenders that store nothing: the bare WSGI floor and nginx answering itself."""
        first = len(self.results.rows)
        floor_rps = self.floor(0, paths)
        self.constant("bare wsgi", "bench.contenders.bare_wsgi:app", 0, paths, floor_rps)
        if servers.nginx_available():
            server = servers.start_nginx("nginx return 302", self.tmp / "nginx-return",
                                         NGINX_RETURN, self.s.workers)
            servers.wait_until_listening(server, 10)
            self.measure(server, 0, paths, floor_rps, lambda: probe.get(server.port, "/x"))
        else:
            self.results.notes.append("nginx is not installed: its row is missing")
        self.floor(0, paths)
        rebase_on_floor(self.results.rows[first:])


def target(measured: float | None, limit: float, at_least: bool) -> dict[str, object]:
    """One target judged on a measured figure (None: not measured in this run)."""
    met = None if measured is None else (measured >= limit if at_least else measured <= limit)
    return {"target": f"{'>=' if at_least else '<='} {limit:g}", "measured": measured,
            "met": met}


def targets(results: Results) -> dict[str, dict[str, object]]:
    """The performance issues' targets, judged on this run's own figures."""
    def row(contender: str, links: int) -> Row | None:
        return next((r for r in results.rows
                     if r.contender == contender and r.links == links), None)

    def figures(contender: str, links: int) -> AppFigures | None:
        return next((f for f in results.app
                     if f.contender == contender and f.links == links), None)

    file_big, file_mixed = row("this app", 1_000_000), figures("this app", 100_000)
    judged = {
        "file: redirects/s at 1,000,000 links vs Flask floor": target(
            file_big.vs_floor if file_big else None, 0.9, True),
        "file: mixed-run p99 / pure p99 at 100,000 links": target(
            file_mixed.mixed_vs_pure_p99 if file_mixed else None, 2, False),
        "file: RSS per worker at 1,000,000 links (MiB)": target(
            file_big.rss_mib if file_big else None, 400, False),
    }
    pg = "this app on PostgreSQL"
    for links in (1_000_000, 10_000_000):
        hot, app = row(pg, links), figures(pg, links)
        judged |= {
            f"PostgreSQL: hot-set redirects/s at {links:,} links vs Flask floor": target(
                hot.vs_floor if hot else None, 1.0, True),
            f"PostgreSQL: create p99 at {links:,} links (ms)": target(
                app.create_p99_ms if app else None, 10, False),
            f"PostgreSQL: mixed-run p99 / pure p99 at {links:,} links": target(
                app.mixed_vs_pure_p99 if app else None, 1.5, False),
        }
    memory = [r.rss_mib for r in results.rows if r.contender.startswith(pg)
              and r.links == 10_000_000 and r.rss_mib is not None]
    judged["PostgreSQL: RSS per worker at 10,000,000 links (MiB)"] = target(
        max(memory) if memory else None, 80, False)
    return judged


def run(settings: Settings) -> Results:
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    database = postgres.start() if settings.postgres else None
    try:
        bench = Bench(settings, tmp, database)
        if database is None:
            bench.results.notes.append("PostgreSQL is not installed or --no-postgres: "
                                       "no PostgreSQL rows")
        sample_paths = tmp / "paths.txt"
        sample_paths.write_text("".join(f"/{Link(str(i), '').code}\n" for i in range(1000)))
        for count in settings.sizes:
            bench.size(count)
        bench.constants(sample_paths)
        bench.results.machine["load_after"] = [round(x, 2) for x in os.getloadavg()]
        bench.results.targets = targets(bench.results)
        return bench.results
    finally:
        if database is not None:
            database.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    try:
        wrk_path()
        results = run(settings)
    except (LoadError, servers.ServerError, probe.ProbeError, ServerUnavailable) as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    settings.out.mkdir(parents=True, exist_ok=True)
    text = report.markdown(results)
    (settings.out / "results.md").write_text(text)
    report.write_json(results, settings.out / "results.json")
    charted = report.write_chart(results, settings.out / "redirects.png")
    print(text)
    chart = "redirects.png" if charted else "no chart (pip install -r bench/requirements.txt)"
    print(f"wrote {settings.out}: results.json, results.md, {chart}")
    return 0
