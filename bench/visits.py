"""What counting visits costs a redirect, measured side by side, and whether it counts right.

Usage: python -m bench.visits [--sizes 100000,1000000] [--duration 10] [--rounds 7]
       [--connections 16] [--workers 2] [--worker-class sync] [--threads 8] [--pace-ms 5]
       [--out bench/results] [--quick] [--no-postgres] [--no-file]

For each size and backend (the JSON file; PostgreSQL when it is installed), the app runs
with VISITS=off and with VISITS=on in turn, `rounds` times each, alternating which goes
first, each on fresh counts, under the same gunicorn settings as `python -m bench` (sync
workers, no gunicorn.conf.py) and the same 1,000 sampled codes. `--worker-class gthread`
runs the worker class that ships instead (gunicorn.conf.py: gthread, `--threads` each),
each request on a connection of its own as behind Elastic Beanstalk's nginx (``script``);
nothing else changes. Each server is measured once every worker has booted
(bench/booted.py). wrk sends a known mix
(bench/visits.lua): people, every 10th request a bot, then the app's own probe once its
quota is sent. A 2 s warm-up with a few counted requests comes first, so that each
worker's visit writer has started (once in a worker's life) before the measured run.
After each VISITS=on run the server is stopped gracefully (each worker hands off what
it has, and its visit writer stores it) and the counts are read back from the store:
they must equal what wrk sent, warm-up and run, people and bots, exactly. The figures
are medians of the rounds; beside each ratio judged against a target, a 90 % bootstrap
interval of the rounds (``interval``) says how far this machine's noise could move it.

Each run above saturates the server (wrk sends the next request as soon as the answer
comes). At the first size each backend also runs under a steady load ("steady load"
contenders): each wrk connection waits `--pace-ms` after each answer, about 60 % of what
the 2-core reference machine can serve, as a server in service runs. There the load is
the same with counting on and off, and what counting costs shows in the p99 alone. The
report gives each steady load's rate as a share of the saturated runs' beside it: on a
busy machine the same pauses come nearer saturation, and past 0.8 it says so.

At the first size, on the file, the nginx redirect cache (.platform/nginx, as deployed)
with each way of counting: not counted (VISITS=off, the cache answers); counted from
nginx's access log (VISITS=off, every redirect logged, classified afterwards as the
app would); counted by the app (VISITS=on: counted redirects say no-store, so every one
reaches the app). docs/visits.md has the method and the figures.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import resource
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

import visitors
import visits
from bench import booted as booted_hook
from bench import postgres, probe, servers
from bench.data import Link, sample_of, write_links
from bench.loadgen import Load, LoadError, run_wrk, wrk_path
from bench.run import CACHE_HTTP, CACHE_LOCATION, PROXY
from linkstore import open_url
from linkstore.visits_file import FileVisits
from ops import processes
from ops.pgserver import PostgresServer, ServerUnavailable

SCRIPT = Path(__file__).with_name("visits.lua")
# Every request visits.lua formats, with "Connection: close" (wrk.format takes a script's
# headers instead of wrk's own, so -H would not reach them).
CLOSE_EACH = """
local format = wrk.format
function wrk.format(method, path, headers, body)
  headers = headers or {}
  headers["Connection"] = "close"
  return format(method, path, headers, body)
end
"""
SIZES = [100_000, 1_000_000]
STEADY = ", steady load"  # the contender's name under a steady load (--pace-ms)
COUNTED_SHARE = 0.6  # of a run's expected requests; the rest are probes (not counted)
WARM_QUOTA = 50  # counted requests a wrk thread sends first in the warm-up
VISIT_LOG = ("log_format visits escape=json '{\"status\":\"$status\",\"method\":"
             "\"$request_method\",\"uri\":\"$uri\",\"agent\":\"$http_user_agent\","
             "\"referer\":\"$http_referer\",\"dnt\":\"$http_dnt\",\"gpc\":\"$http_sec_gpc\"}';")


@dataclass
class Run:
    """One wrk run against one contender."""

    contender: str
    links: int
    visits: str  # "on" or "off"
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    sent_people: int
    sent_bots: int
    counted_people: int | None  # None: this contender does not count
    counted_bots: int | None
    load1: float
    warm_people: int = 0  # sent in the warm-up before the run, and counted with it
    warm_bots: int = 0
    app_cpu_us: float | None = None  # CPU per redirect: gunicorn, its final flush included
    database_cpu_us: float | None = None  # and PostgreSQL's, for the same redirects
    writers_cpu_us: float | None = None  # of app_cpu_us, the visit writers' in the run
    pace_ms: float = 0.0  # each connection's wait after an answer; 0: saturated
    stop_cpu_us: float | None = None  # of app_cpu_us, after the run: the stop, last flushes

    @property
    def exact(self) -> bool | None:
        if self.counted_people is None:
            return None
        return (self.counted_people, self.counted_bots) == (
            self.warm_people + self.sent_people, self.warm_bots + self.sent_bots)


@dataclass
class Results:
    settings: dict[str, Any]
    machine: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    targets: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.visits",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", help="comma-separated link counts (default 100000,1000000;"
                        " with --quick 1000)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run, 2-60 (default 10;"
                        " with --quick 2)")
    parser.add_argument("--rounds", type=int, help="runs of each mode per contender, 1-10 "
                        "(default 7; with --quick 1)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections, 1-256")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers, 1-16")
    parser.add_argument("--worker-class", choices=("sync", "gthread"), default="sync",
                        help="gunicorn's worker class (default sync, as python -m bench; "
                             "gthread: as gunicorn.conf.py deploys)")
    parser.add_argument("--threads", type=int, default=8,
                        help="threads a gthread worker, 1-64 (default 8: gunicorn.conf.py's)")
    parser.add_argument("--pace-ms", type=float, default=5.0,
                        help="a steady load's wait after each answer, per connection, 0-100 "
                             "ms (default 5; 0 leaves the steady-load runs out)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"),
                        help="where visits.json and visits.md go (default bench/results)")
    parser.add_argument("--quick", action="store_true", help="1,000 links, short runs")
    parser.add_argument("--no-postgres", action="store_true", help="the file only")
    parser.add_argument("--no-file", action="store_true",
                        help="PostgreSQL only (neither the file nor nginx)")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else (
        [1_000] if args.quick else SIZES)
    args.duration = args.duration or (2.0 if args.quick else 10.0)
    args.rounds = args.rounds or (1 if args.quick else 7)
    if not (all(1 <= s <= 2_000_000 for s in args.sizes) and 2 <= args.duration <= 60
            and 1 <= args.rounds <= 10 and 1 <= args.connections <= 256
            and 1 <= args.workers <= 16 and 1 <= args.threads <= 64
            and 0 <= args.pace_ms <= 100):
        parser.error("--sizes 1-2,000,000, --duration 2-60, --rounds 1-10, "
                     "--connections 1-256, --workers 1-16, --threads 1-64, --pace-ms 0-100")
    if args.no_file and (args.no_postgres or not postgres.available()):
        parser.error("--no-file leaves PostgreSQL only, and it is "
                     + ("left out too" if args.no_postgres else "not installed"))
    return args


def load1() -> float:
    return round(os.getloadavg()[0], 2)


class VisitsBench:
    """One run of the benchmark: a temporary directory, the settings, the runs so far."""

    target = "application:application"  # what gunicorn serves (bench.visit_parts: another)

    def __init__(self, args: argparse.Namespace, tmp: Path,
                 database: PostgresServer | None) -> None:
        self.args, self.tmp, self.database = args, tmp, database
        self.wrk_cpu = 0.0  # CPU seconds of the wrk runs since a server started
        self.results = Results(
            settings={k: v for k, v in vars(args).items() if k != "out"} | {
                "counted_share": COUNTED_SHARE},
            machine={"cpus": os.cpu_count(), "load_before": [round(x, 2)
                                                             for x in os.getloadavg()],
                     "started_at": datetime.datetime.now(datetime.UTC).isoformat(
                         timespec="seconds")})

    def log(self, message: str) -> None:
        print(f"[bench.visits {time.strftime('%H:%M:%S')} load {load1():.2f}] {message}",
              file=sys.stderr, flush=True)

    # --- the app on one backend, counting and not ------------------------------------------

    def size(self, count: int) -> None:
        base = self.tmp / f"links-{count}"
        sample = sample_of(count)
        paths = base / "paths.txt"
        write_links(base / "urls.json", count)
        paths.write_text("".join(f"/{link.code}\n" for link in sample))
        self.log(f"{count:,} links written")

        def file_env(run: str) -> dict[str, str]:
            return run_env(base, run)

        def in_file(env: dict[str, str]) -> tuple[int, int]:
            return counted_in(open_url(Path(env["DATA_DIR"], "urls.json").as_uri()), sample,
                              fold=True)
        steady = [self.args.pace_ms] if count == self.args.sizes[0] and self.args.pace_ms else []
        if not self.args.no_file:
            self.contender("file", count, sample, paths, file_env, in_file)
            if count == self.args.sizes[0] and servers.nginx_available():
                self.nginx(count, sample, paths, file_env)
            for pace_ms in steady:
                self.contender("file" + STEADY, count, sample, paths, file_env, in_file,
                               pace_ms)
        if self.database is not None:
            self.log(f"loading {count:,} links into PostgreSQL")
            url, _ = postgres.load(self.database, count)

            def database_env(run: str) -> dict[str, str]:
                return run_env(base, run, url)

            def in_database(env: dict[str, str]) -> tuple[int, int]:
                return counted_in(open_url(env["DATABASE_URL"]), sample)
            try:
                self.contender("postgresql", count, sample, paths, database_env, in_database)
                for pace_ms in steady:
                    self.contender("postgresql" + STEADY, count, sample, paths,
                                   database_env, in_database, pace_ms)
            finally:
                self.database.drop_database(f"links_{count}")
        shutil.rmtree(base)

    def contender(self, name: str, count: int, sample: list[Link], paths: Path,
                  env_for: Callable[[str], dict[str, str]],
                  counted: Callable[[dict[str, str]], tuple[int, int]],
                  pace_ms: float = 0.0) -> None:
        """VISITS=off and on, round after round, each measured in wall-clock time (wrk)
        and in CPU time: the server's, from just before the run until it has exited
        (its last flush included, and the whole life of the workers' visit writers,
        their start too), and the database's over the same span. Of the server's, two
        parts are shown apart: the visit writers' own CPU in the run (what counting
        costs outside the workers), and everything after the run, the stop (each
        writer's last flush and exit, with counting on). With pace_ms, under a steady
        load: each connection waits that long after each answer."""
        script, warm_script = self.script(pace_ms), self.script(0)
        most = self.args.connections * 1000 / pace_ms if pace_ms else float("inf")
        quota = 0
        for number in range(self.args.rounds):
            for mode in ("off", "on") if number % 2 == 0 else ("on", "off"):
                env = env_for(f"{name}-{mode}-{number}")
                self.wrk_cpu, reaped_before = 0.0, children_cpu()
                server = self.gunicorn(f"{name} VISITS={mode}", env | {"VISITS": mode})
                try:
                    warm = self.warm(server, sample, paths, mode == "on", warm_script)
                    quota = quota or self.quota(min(warm.rps, most))
                    before = load1()
                    app_before, database_before = cpu_of(server.process.pid), self.database_cpu()
                    writers_before = writers_cpu(server.process.pid)
                    load = self.load(server.base_url, paths, quota, script=script)
                    writers = sum(cpu - writers_before.get(pid, 0.0) for pid, cpu
                                  in writers_cpu(server.process.pid).items())
                    in_run = cpu_of(server.process.pid) - app_before
                finally:
                    server.stop()  # gracefully: every writer stores what was counted
                database = self.database_cpu() - database_before
                app = children_cpu() - reaped_before - self.wrk_cpu - app_before
                people, bots = counted(env) if mode == "on" else (None, None)
                self.record(Run(name, count, mode, number + 1, load.rps, load.p50_ms,
                                load.p99_ms, load.errors + load.bad_status,
                                load.sent["people"], load.sent["bots"], people, bots, before,
                                warm.sent["people"], warm.sent["bots"],
                                round(app / load.requests * 1e6, 1),
                                round(database / load.requests * 1e6, 1)
                                if "DATABASE_URL" in env else None,
                                round(writers / load.requests * 1e6, 1)
                                if mode == "on" else None, pace_ms,
                                round((app - in_run) / load.requests * 1e6, 1)))

    def script(self, pace_ms: float) -> Path:
        """visits.lua as a contender's runs send it: with pace_ms, a wait of that long
        after each answer (wrk calls a script's delay() before each request, and waits
        what it returns, in ms). On gthread workers every request also says
        ``Connection: close``: as behind Elastic Beanstalk's nginx, which opens a
        connection to gunicorn for each request (no upstream keep-alive). A sync worker
        closes each connection anyway. Kept open, wrk's 16 connections went to whichever
        worker accepted them, as many as all of them to one worker in some runs."""
        closing = self.args.worker_class == "gthread"
        if not closing and not pace_ms:
            return SCRIPT
        script = self.tmp / f"visits-{pace_ms:g}.lua"
        script.write_text(SCRIPT.read_text() + (CLOSE_EACH if closing else "") + (
            f"\nfunction delay()\n  return {pace_ms:g}\nend\n" if pace_ms else ""))
        return script

    def database_cpu(self) -> float:
        return cpu_of(self.database.process.pid) if self.database and self.database.process \
            else 0.0

    def gunicorn(self, name: str, env: dict[str, str]) -> servers.Server:
        """gunicorn serving the target, once every worker has booted (bench.booted)."""
        booted = Path(tempfile.mkdtemp(prefix="booted-", dir=self.tmp))
        environment = {"CREATE_RATE_LIMIT": "off", "SECRET_KEY": secrets.token_hex(16),
                       "APP_VERSION": "bench", "TRUSTED_PROXY_HOPS": "1",
                       booted_hook.DIRECTORY: str(booted)} | env
        server = servers.start_gunicorn(name, self.target, self.args.workers,
                                        self.tmp, self.tmp / f"{name.replace(' ', '-')}.log",
                                        environment, ["--config=python:bench.booted",
                                                      *self.worker_options()])
        try:
            servers.wait_until_listening(server, 120)
            self.until_workers_booted(server, booted, 120)
        except servers.ServerError:
            server.stop()
            raise
        return server

    def until_workers_booted(self, server: servers.Server, booted: Path, timeout: float
                             ) -> None:
        """Wait until each of the server's workers has loaded the app (its file in
        booted): the master answers before they all have."""
        def missing() -> str | None:
            workers = processes.children({server.process.pid})
            up = sum((booted / str(pid)).exists() for pid in workers)
            return None if up == len(workers) == self.args.workers else (
                f"{server.name}: {up} of {self.args.workers} workers booted")
        until(missing, timeout, server)

    def worker_options(self) -> list[str]:
        """gunicorn options after start_gunicorn's own (the last one given wins)."""
        if self.args.worker_class == "sync":
            return []
        return [f"--worker-class={self.args.worker_class}", f"--threads={self.args.threads}"]

    def warm(self, server: servers.Server, sample: list[Link], paths: Path,
             counting: bool, script: Path = SCRIPT) -> Load:
        """Every worker has the links and serves the sampled codes (the probe's requests:
        not counted), then a 2 s run whose rate sizes the counted quota. That run begins
        with WARM_QUOTA counted requests a wrk thread, in both modes: so when counting,
        every worker has started its visit writer before the measured run, as a worker
        in service does in its first second, and a writer's start (once in a worker's
        life) is not measured as the cost of each redirect. Its visits are counted with
        the run's. script: the run's without its pace (on gthread, a connection a
        request: kept open, all of them may go to one worker, and another starts no
        writer)."""
        probe.until_served_everywhere(server.port, sample[0], 4 * self.args.workers, 120)
        warm = self.load(server.base_url, paths, WARM_QUOTA, seconds=2, script=script)
        if counting:
            self.until_writers_started(server)
        return warm

    def until_writers_started(self, server: servers.Server, timeout: float = 30) -> None:
        """Wait until each worker has a visit writer that has lowered its priority (its
        last step before it serves: store opened, parsers loaded)."""
        def missing() -> str | None:
            table = processes.process_table()
            workers = processes.children({server.process.pid}, table)
            started = [pid for pid in processes.children(set(workers), table)
                       if table[pid].nice == visits.WRITER_NICENESS]
            return None if len(workers) == self.args.workers and len(started) >= len(
                workers) else f"{len(started)} of {len(workers)} workers' visit writers started"
        until(missing, timeout)

    def quota(self, rate: float) -> int:
        """Counted requests per wrk thread: a share of what the run can send, so that
        each is answered before the run ends."""
        threads = min(2, self.args.connections)
        return max(1, int(rate * self.args.duration * COUNTED_SHARE / threads))

    def load(self, base_url: str, paths: Path, quota: int, seconds: float | None = None,
             script: Path = SCRIPT) -> Load:
        """A wrk run; its own CPU time is kept apart (wrk is a child of this process too)."""
        reaped = children_cpu()
        try:
            return run_wrk(base_url, paths, seconds or self.args.duration,
                           self.args.connections, script=script, script_args=[str(quota)])
        finally:
            self.wrk_cpu += children_cpu() - reaped

    def record(self, run: Run) -> None:
        self.results.runs.append(run)
        counts = "" if run.exact is None else (
            f", counted {run.counted_people}/{run.warm_people + run.sent_people} people "
            f"{run.counted_bots}/{run.warm_bots + run.sent_bots} bots")
        self.log(f"{run.contender} @ {run.links:,} VISITS={run.visits} round {run.round}: "
                 f"{run.rps:,.0f}/s p99 {run.p99_ms} ms{counts}")

    # --- the nginx redirect cache and the two ways of counting -----------------------------

    def nginx(self, count: int, sample: list[Link], paths: Path,
              env_for: Callable[[str], dict[str, str]]) -> None:
        contenders = [("nginx cache, not counted", "off", False),
                      ("nginx cache, counted from its log", "off", True),
                      ("nginx, counted by the app", "on", False)]
        quotas: dict[str, int] = {}
        for number in range(self.args.rounds):
            for name, mode, logged in contenders[number % 3:] + contenders[:number % 3]:
                env = env_for(f"{name.replace(' ', '-')}-{number}")
                upstream = self.gunicorn(f"{name} upstream", env | {
                    "VISITS": mode, "TRUSTED_PROXY_HOPS": "2"})
                workdir = self.tmp / f"nginx-{number}-{name.replace(' ', '-')}"
                log = workdir / "visits.log"
                location = CACHE_LOCATION + (f"access_log {log} visits;" if logged else "")
                proxy = servers.start_nginx(name, workdir, PROXY % (upstream.port, location),
                                            self.args.workers,
                                            CACHE_HTTP % workdir + (VISIT_LOG if logged else ""))
                try:
                    servers.wait_until_listening(proxy, 10)
                    warm = self.warm(proxy, sample, paths, counting=False)
                    if mode == "on":
                        self.until_writers_started(upstream)
                    quota = quotas.setdefault(name, self.quota(warm.rps))
                    before = load1()
                    load = self.load(proxy.base_url, paths, quota)
                finally:
                    proxy.stop()
                    upstream.stop()
                people, bots = (counted_from_log(log) if logged else
                                counted_in(open_url(Path(env["DATA_DIR"], "urls.json").as_uri()),
                                           sample, fold=True) if mode == "on" else (None, None))
                self.record(Run(name, count, mode, number + 1, load.rps, load.p50_ms,
                                load.p99_ms, load.errors + load.bad_status,
                                load.sent["people"], load.sent["bots"], people, bots, before,
                                warm.sent["people"], warm.sent["bots"]))


def until(missing: Callable[[], str | None], timeout: float,
          server: servers.Server | None = None) -> None:
    """Poll until missing() says nothing is (None); ServerError with what it last said
    (and the end of server's log) after timeout seconds."""
    deadline = time.monotonic() + timeout
    while (state := missing()) is not None:
        if time.monotonic() > deadline:
            log = f":\n{server.log_tail()}" if server else ""
            raise servers.ServerError(f"{state} within {timeout} s{log}")
        time.sleep(0.05)


def run_env(base: Path, run: str, url: str = "") -> dict[str, str]:
    """The environment of one run on fresh counts: a data directory of its own under
    base, holding base's links file (hard-linked) or, with a database URL, beside that
    database's links with its visit counts emptied."""
    data = base / run
    data.mkdir()
    if not url:
        os.link(base / "urls.json", data / "urls.json")
        return {"DATA_DIR": str(data)}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE visit_counts, visit_visitors, visit_unique_days, visit_batches")
    return {"DATA_DIR": str(data), "DATABASE_URL": url}


def children_cpu() -> float:
    """CPU seconds of every process this one has waited for, with their own children
    they waited for: a stopped gunicorn brings its workers' time with it."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_of(leader: int) -> float:
    """CPU seconds a running server has used: each live process of it, and what its
    exited processes used (added to their parent's cutime and cstime when reaped)."""
    return sum(sum(cpu_ticks(pid)) for pid in processes.members(leader)) / os.sysconf(
        "SC_CLK_TCK")


def writers_cpu(leader: int) -> dict[int, float]:
    """CPU seconds each visit writer of a gunicorn master's workers has used so far: the
    part of the server's CPU that counting spends outside the workers."""
    table = processes.process_table()
    writers = processes.children(set(processes.children({leader}, table)), table)
    return {pid: own_cpu(pid) for pid in writers}


def own_cpu(pid: int) -> float:
    """A process's own CPU seconds (utime and stime), not its children's."""
    return sum(cpu_ticks(pid)[:2]) / os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> tuple[int, ...]:
    """A process's utime, stime, cutime and cstime in clock ticks (zeros once it has
    exited: it was listed, then reaped)."""
    fields = processes.stat_fields(pid)
    return (0, 0, 0, 0) if fields is None else tuple(int(value) for value in fields[11:15])


def counted_in(links: Any, sample: list[Link], fold: bool = False) -> tuple[int, int]:
    """People and bots the store has counted for the sampled codes."""
    try:
        store = visits.open_store(links)
        if fold and isinstance(store, FileVisits):
            store.fold()
        people = bots = 0
        for link in sample:
            stats = store.stats(link.code)
            people, bots = people + stats.visits, bots + stats.bots
        return people, bots
    finally:
        links.close()


def counted_from_log(log: Path) -> tuple[int, int]:
    """People and bots among the redirects nginx logged, classified as the app would."""
    people = bots = 0
    with open(log, encoding="utf-8") as lines:
        for line in lines:
            entry = json.loads(line)
            if entry["status"] != "302":
                continue
            visit = visitors.classify(visitors.hit(entry["method"], {
                "User-Agent": entry["agent"], "Referer": entry["referer"], "DNT": entry["dnt"],
                "Sec-GPC": entry["gpc"]}))
            people += visit.kind == "person"
            bots += visit.kind == "bot"
    return people, bots


# --- Figures and targets -------------------------------------------------------------------

def summary(runs: list[Run]) -> list[dict[str, Any]]:
    """Per contender and size: the medians with VISITS off and on, their ratios, and
    whether every counted run counted exactly what was sent."""
    rows = []
    for contender, links in dict.fromkeys((r.contender, r.links) for r in runs):
        mine = [r for r in runs if (r.contender, r.links) == (contender, links)]
        off = [r for r in mine if r.visits == "off"]
        on = [r for r in mine if r.visits == "on"]
        row: dict[str, Any] = {"contender": contender, "links": links,
                               "load": [min(r.load1 for r in mine), max(r.load1 for r in mine)],
                               "exact": all(r.exact for r in mine if r.exact is not None)
                               if any(r.exact is not None for r in mine) else None,
                               "steady": any(r.pace_ms for r in mine)}
        for mode, group in (("off", off), ("on", on)):
            if group:
                row[f"rps_{mode}"] = statistics.median(r.rps for r in group)
                row[f"p99_{mode}"] = statistics.median(r.p99_ms for r in group)
            if group and group[0].app_cpu_us is not None:
                row[f"cpu_{mode}"] = statistics.median(
                    (r.app_cpu_us or 0) + (r.database_cpu_us or 0) for r in group)
            if group and group[0].writers_cpu_us is not None:
                row["writers_on"] = statistics.median(r.writers_cpu_us or 0 for r in group)
            if group and group[0].stop_cpu_us is not None:
                row[f"stop_{mode}"] = statistics.median(r.stop_cpu_us or 0 for r in group)
        if off and on:
            row["rps_ratio"] = round(row["rps_on"] / row["rps_off"], 3)
            row["p99_ratio"] = round(row["p99_on"] / row["p99_off"], 3)
            # The spread of the same ratio round by round (on and off run one after the
            # other): how far one round's noise reaches on this machine.
            pairs = [(a, b) for a in on for b in off if a.round == b.round]
            for key, ratios in (("rps", [a.rps / b.rps for a, b in pairs]),
                                ("p99", [a.p99_ms / b.p99_ms for a, b in pairs])):
                row[f"{key}_ratio_rounds"] = [round(min(ratios), 3), round(max(ratios), 3)]
            row["rps_ratio_interval"] = interval([(a.rps, b.rps) for a, b in pairs])
            row["p99_ratio_interval"] = interval([(a.p99_ms, b.p99_ms) for a, b in pairs])
        if "cpu_off" in row and "cpu_on" in row:  # redirects the same CPU serves, on / off
            row["cpu_ratio"] = round(row["cpu_off"] / row["cpu_on"], 3)
        rows.append(row)
    saturated = {(row["contender"], row["links"]): row for row in rows if not row["steady"]}
    for row in rows:  # a steady load's rate, as a share of its saturated runs' (the aim: 0.6)
        full = saturated.get((row["contender"].removesuffix(STEADY), row["links"]), {})
        for mode in ("off", "on"):
            if row["steady"] and f"rps_{mode}" in row and f"rps_{mode}" in full:
                row[f"share_{mode}"] = round(row[f"rps_{mode}"] / full[f"rps_{mode}"], 3)
    return rows


def interval(pairs: Sequence[tuple[float, float]], level: float = 0.9,
             resamples: int = 2000) -> list[float]:
    """How far the ratio of medians (on's median over off's) of these rounds, each an
    (on, off) pair, could be from this machine's noise alone: a bootstrap interval at
    `level`. Rounds are drawn again with replacement, each keeping its pair (the two ran
    one after the other), `resamples` times, with a fixed seed: the same rounds give the
    same interval. Seven rounds make a coarse one; it says whether a ratio a little past
    a target is past it for sure, and the target is still judged on the ratio itself."""
    # Resampling, not secrecy:
    draw = random.Random(14)  # nosec B311
    ratios = sorted(
        statistics.median(on for on, _ in sample) / statistics.median(off for _, off in sample)
        for sample in ([draw.choice(pairs) for _ in pairs] for _ in range(resamples)))
    tail = (1 - level) / 2
    return [round(ratios[int(tail * (resamples - 1))], 3),
            round(ratios[int((1 - tail) * (resamples - 1))], 3)]


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 14's targets, judged per backend and size on this run's own figures."""
    judged = {}
    for row in rows:
        if "rps_ratio" not in row:
            continue
        where = f"{row['contender']} at {row['links']:,} links"
        if not row["steady"]:  # a steady load is the same on and off
            judged[f"{where}: redirects/s on / off"] = {
                "target": ">= 0.95", "measured": row["rps_ratio"],
                "interval": row["rps_ratio_interval"], "met": row["rps_ratio"] >= 0.95}
        judged[f"{where}: p99 on / off"] = {
            "target": "<= 1.1", "measured": row["p99_ratio"],
            "interval": row["p99_ratio_interval"], "met": row["p99_ratio"] <= 1.1}
        judged[f"{where}: counts equal what was sent"] = {
            "target": "exact", "measured": row["exact"], "met": bool(row["exact"])}
    return judged


def markdown(results: Results) -> str:
    rows = summary(results.runs)
    settings = results.settings
    threads = (f" x {settings['threads']} threads" if settings["worker_class"] == "gthread"
               else "")
    lines = [f"Visit counting, measured {results.machine['started_at']} "
             f"(load {results.machine['load_before'][0]} before, "
             f"{results.machine.get('load_after', ['?'])[0]} after); gunicorn: "
             f"{settings['workers']} {settings['worker_class']} workers{threads}, wrk: "
             f"{settings['connections']} connections"
             + "".join(f"; steady load: each wrk connection waits {pace:g} ms after each answer"
                       for pace in sorted({r.pace_ms for r in results.runs if r.pace_ms})),
             "",
             "| contender | links | VISITS=off /s | VISITS=on /s | on / off | round by "
             "round | p99 off ms | p99 on ms | p99 on / off | round by round | CPU µs off "
             "| CPU µs on | of which writers | of which at the stop, off / on | by CPU, on / off "
             "| counts exact | load |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for row in rows:
        def cell(key: str, digits: int = 0) -> str:
            return f"{row[key]:,.{digits}f}" if key in row else "-"

        def spread(key: str) -> str:
            return "-" if key not in row else f"{row[key][0]:.2f}-{row[key][1]:.2f}"
        exact = {True: "yes", False: "**no**", None: "not counted"}[row["exact"]]
        lines.append(f"| {row['contender']} | {row['links']:,} | {cell('rps_off')} | "
                     f"{cell('rps_on')} | {cell('rps_ratio', 3)} | {spread('rps_ratio_rounds')} | "
                     f"{cell('p99_off', 2)} | {cell('p99_on', 2)} | {cell('p99_ratio', 3)} | "
                     f"{spread('p99_ratio_rounds')} | {cell('cpu_off', 1)} | "
                     f"{cell('cpu_on', 1)} | {cell('writers_on', 1)} | "
                     f"{cell('stop_off', 1)} / {cell('stop_on', 1)} | "
                     f"{cell('cpu_ratio', 3)} | {exact} | "
                     f"{row['load'][0]}-{row['load'][1]} |")
    for row in (row for row in rows if "share_off" in row and "share_on" in row):
        near = max(row["share_off"], row["share_on"]) > 0.8
        lines += ["", f"Steady load, {row['contender'].removesuffix(STEADY)} at "
                  f"{row['links']:,} links: {row['rps_off']:,.0f} redirects/s off and "
                  f"{row['rps_on']:,.0f} on, {row['share_off']:.2f} and "
                  f"{row['share_on']:.2f} of the saturated runs' (the aim: about 0.6)"
                  + ("; **past 0.8, nearly a saturated load: its p99 reads as one**"
                     if near else ".")]
    lines += ["", "| contender | links | VISITS | round | redirects/s | p99 ms | CPU µs app "
              "| of which writers | of which at the stop | CPU µs database | people sent | "
              "counted | bots sent | counted | errors | load |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in results.runs:
        lines.append(f"| {run.contender} | {run.links:,} | {run.visits} | {run.round} | "
                     f"{run.rps:,.0f} | {run.p99_ms} | {run.app_cpu_us or '-'} | "
                     f"{run.writers_cpu_us or '-'} | {run.stop_cpu_us or '-'} | "
                     f"{run.database_cpu_us or '-'} | {run.warm_people + run.sent_people:,} | "
                     f"{'-' if run.counted_people is None else f'{run.counted_people:,}'} | "
                     f"{run.warm_bots + run.sent_bots:,} | "
                     f"{'-' if run.counted_bots is None else f'{run.counted_bots:,}'} | "
                     f"{run.errors} | {run.load1} |")
    lines += ["", "| target | measured | 90 % interval (bootstrap of the rounds) | met |",
              "|---|---:|---:|---|"]
    lines += [f"| {name} | {t['measured']} | "
              f"{'-' if 'interval' not in t else '{:.3f}-{:.3f}'.format(*t['interval'])} | "
              f"{'yes' if t['met'] else '**no**'} |" for name, t in results.targets.items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-visits-"))
    database = None
    try:
        wrk_path()
        if postgres.available() and not args.no_postgres:
            database = postgres.start()
        bench = VisitsBench(args, tmp, database)
        for count in args.sizes:
            bench.size(count)
    except (LoadError, servers.ServerError, probe.ProbeError, ServerUnavailable) as error:
        print(f"bench.visits: {error}", file=sys.stderr)
        return 1
    finally:
        if database is not None:
            database.close()
        shutil.rmtree(tmp, ignore_errors=True)
    results = bench.results
    results.machine["load_after"] = [round(x, 2) for x in os.getloadavg()]
    results.targets = targets(summary(results.runs))
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(results)
    (args.out / "visits.md").write_text(text)
    (args.out / "visits.json").write_text(json.dumps(
        {"settings": results.settings, "machine": results.machine,
         "summary": summary(results.runs), "targets": results.targets,
         "runs": [asdict(run) | {"exact": run.exact} for run in results.runs]},
        indent=2, default=str) + "\n")
    print(text)
    print(f"wrote {args.out}/visits.json and visits.md")
    return 0


if __name__ == "__main__":
    with servers.stopped_at_exit():
        raise SystemExit(main())
