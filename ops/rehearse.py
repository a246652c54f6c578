"""Release good and bad versions through real nginx while a steady client counts what
users see: the deployment policy's table, measured (`make rehearse`).

    python -m ops.rehearse [--cases good,A,B,C,D,E] [--rate 50] [--output FILE]

One local environment (ops/local.py: nginx in front of a gunicorn per version, the
data directory shared) first gets the committed app (git HEAD, as `eb deploy` bundles
it) and 40 links. Then, for each case, a steady client sends `--rate` requests a second
through nginx - 80 % redirects of known links (the Location must be exact), 15 % form
creates as a browser makes them (the page, its CSRF token, the POST), 5 % API creates -
while `python -m ops.release --target local` ships the case's version, and for 3 s
after. Each case is the committed tree with one small change:

    good  nothing (a new label)
    A     does not start: it imports a module that is not installed
    B     json.load( -> json.loads( on the store's read: /healthz fails (the original
          outage, INC-0001)
    C     creating a link answers 500, except a link to the smoke test's probe URLs
          (https://example.com/smoke/...): the bug is on a path the synthetic checks
          do not take, so they pass, real traffic does not, and /healthz never notices
    D     slow: every request but /healthz takes 0.25 s longer
    E     writes data the old version cannot read: created_at becomes a Unix time (a
          number), which the old store refuses as "not an object of strings"; it then
          answers 503 to creates and 404 for links it cannot see, and /healthz 503

Before each case the environment is put back on the committed app if the last case
left it elsewhere (that release is not measured). For each case it prints, and writes
to test-output/rehearsal.json: the release's exit code and outcome, requests sent,
failed requests (5xx, connection errors, wrong answers: a wrong Location, a known link
not found, a create refused), how many requests the released version answered and,
for a bad one, for how long (its first request to its last; none while it still
serves); the detection window (from the canary getting its share to every request
back on the last good version) with the requests sent in it and the canary's share of
them, the bound on C's failures; the pre-deploy snapshot the report names and what
the recovery did; and the links created before and during the release (acknowledged
to the client) that the final version does not serve.

The client is bounded (`--max-seconds` per case, and its rate); every process the
rehearsal starts is stopped at the end, also on Ctrl-C.
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import logging
import os
import subprocess  # nosec B404
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ops.local import Policy, State, free_port, percentile, read_requests, stop_environment
from ops.smoke import CSRF_FIELD, SHORT_URL_FIELD, Response, SmokeFailure, Visitor

LOG = logging.getLogger("ops.rehearse")
REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT = REPO_ROOT / "test-output" / "rehearsal.json"
GOOD = "v1"
SEED_LINKS = 40

# `make rehearse`: a canary of 10 % for 20 s; checks every 0.5 s.
POLICY = Policy(new_version_percent=10, evaluation_time=20, health_check_interval=0.5,
                healthy_threshold=3, unhealthy_threshold=3, command_timeout=20,
                smoke_timeout=10)
# ops.release's options for a local environment: its production defaults wait minutes
# for CloudWatch and Elastic Beanstalk's 10 s instance metrics; nginx's access log is
# current to the millisecond. With a pre-deploy snapshot, as production takes one.
RELEASE_OPTIONS = ("--ready-timeout", "60", "--deploy-timeout", "120", "--verify-timeout", "30",
                   "--watch", "3", "--watch-interval", "0.5", "--canary-interval", "2",
                   "--min-requests", "5", "--max-p99-ratio", "3", "--poll-interval", "0.2",
                   "--smoke-timeout", "5", "--backup", "--restore-timeout", "120")
RELEASE_TIMEOUT = 600.0
# The versions' environment: no rate limit (one client address makes every request),
# two gunicorn workers each (two versions run side by side on a small machine).
VERSION_ENV = {"CREATE_RATE_LIMIT": "off", "GUNICORN_WORKERS": "2", "ALERT_WEBHOOK_URL": ""}


class RehearsalError(Exception):
    """The rehearsal itself cannot go on; the message says why."""


# --- the versions -------------------------------------------------------------------------


def committed_tree(dest: Path) -> Path:
    """The committed tree (git HEAD), as `eb deploy` bundles it: work in progress is not
    released."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=REPO_ROOT,  # nosec B603 B607
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def app_modules(tree: Path) -> list[Path]:
    """The app's own Python modules in tree: not the operator tools, tests or benchmarks."""
    return sorted(path for path in tree.rglob("*.py")
                  if path.relative_to(tree).parts[0] not in ("ops", "tests", "bench"))


def replace(tree: Path, old: str, new: str, case: str) -> None:
    """Replace old with new in the app's own modules of tree."""
    changed = 0
    for module in app_modules(tree):
        text = module.read_text()
        changed += text.count(old)
        module.write_text(text.replace(old, new))
    if not changed:
        raise RehearsalError(f"the app no longer contains {old!r}: update case {case} in "
                             "ops/rehearse.py to make the same kind of mistake")


def append(tree: Path, code: str) -> None:
    with open(tree / "application.py", "a") as app:
        app.write(code)


MISSING_DEPENDENCY = """
import rehearsal_missing_dependency  # noqa: E402,F401 - class A: a package not installed
"""
PROBE_TARGETS = "https://example.com/smoke/"  # where every link ops.smoke makes points


def break_creates(spare_probes: bool = True) -> str:
    """Code that makes every create (form or API) answer 500; with spare_probes, except
    a link to the smoke test's probe URLs, so the synthetic checks pass."""
    spared = f" and not str(url).startswith({PROBE_TARGETS!r})" if spare_probes else ""
    return f"""
# Rehearsal class C: creating a link answers 500.
@application.before_request
def _break_creates() -> None:
    from flask import request as _request
    if _request.method != "POST":
        return
    body = _request.get_json(silent=True) if _request.is_json else _request.form
    url = body.get("url") if hasattr(body, "get") else None
    if url{spared}:
        raise RuntimeError("rehearsal class C: creating a link is broken")
"""


def slow_down(seconds: float, prefix: str = "/") -> str:
    """Code that makes every request whose path starts with prefix, except /healthz,
    take `seconds` longer."""
    return f"""
# Rehearsal: requests to {prefix}... (but /healthz) take {seconds:g} s longer.
import time as _time  # noqa: E402
_fast_app = application.wsgi_app


def _slow_app(environ, start_response):  # type: ignore[no-untyped-def]
    path = environ.get("PATH_INFO", "")
    if path.startswith({prefix!r}) and path != "/healthz":
        _time.sleep({seconds})
    return _fast_app(environ, start_response)


application.wsgi_app = _slow_app  # type: ignore[method-assign]
"""


@dataclass(frozen=True)
class Case:
    name: str
    label: str
    what: str
    mutate: Callable[[Path], None]


def unreadable_data(tree: Path) -> None:
    """Creation times written as numbers, which this version accepts and the old one's
    store refuses (its shape check wants strings)."""
    replace(tree, 'return datetime.now(timezone.utc).isoformat(timespec="seconds")',
            "return int(datetime.now(timezone.utc).timestamp())  # type: ignore", "E")
    replace(tree, "isinstance(v, str) for v in record.values()",
            "isinstance(v, (str, int)) for v in record.values()", "E")


CASES = {case.name: case for case in (
    Case("good", "good", "the committed app", lambda tree: None),
    Case("A", "A-does-not-start", "does not start (imports a missing package)",
         lambda tree: append(tree, MISSING_DEPENDENCY)),
    Case("B", "B-json-loads", "json.load( -> json.loads(: /healthz fails",
         lambda tree: replace(tree, "json.load(", "json.loads(", "B")),
    Case("C", "C-create-500", "creates answer 500 (not the smoke test's)",
         lambda tree: append(tree, break_creates())),
    Case("D", "D-slow", "every request 0.25 s slower",
         lambda tree: append(tree, slow_down(0.25))),
    Case("E", "E-unreadable-data", "writes data the old version cannot read",
         unreadable_data),
)}


# --- the steady client --------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One request of the steady client."""

    kind: str      # redirect | page | form | api
    at: float      # time.time() when it was sent
    failure: str   # "" (it worked), "5xx", "connection" or "wrong answer"


class SteadyClient:
    """Sends `rate` operations a second on a fixed schedule, whatever the answers take
    (a slow version does not slow the client down): of every 20, 16 redirects, 3 form
    creates (the page, then the POST with its token) and 1 API create."""

    MIX = ["redirect"] * 16 + ["form"] * 3 + ["api"]

    def __init__(self, base_url: str, links: Sequence[tuple[str, str]], rate: float,
                 max_seconds: float, threads: int = 32) -> None:
        self.base_url, self.rate, self.max_seconds = base_url, rate, max_seconds
        self.links = list(links)       # (code, url) to follow; creates are added
        self.acknowledged: list[tuple[str, str]] = []
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._next = itertools.count()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work, daemon=True)
                         for _ in range(threads)]
        self._started = 0.0

    def __enter__(self) -> SteadyClient:
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _work(self) -> None:
        visitor = Visitor(self.base_url, timeout=10)
        while not self._stop.is_set():
            i = next(self._next)
            due = self._started + i / self.rate
            if due - self._started > self.max_seconds or self._stop.wait(
                    max(0.0, due - time.monotonic())):
                return
            kind = self.MIX[i % len(self.MIX)]
            if kind == "redirect":
                self._redirect(visitor, i)
            else:
                self._create(visitor, kind, i)

    def _record(self, kind: str, at: float, failure: str) -> None:
        with self._lock:
            self.outcomes.append(Outcome(kind, at, failure))

    def _redirect(self, visitor: Visitor, i: int) -> None:
        with self._lock:
            code, url = self.links[i % len(self.links)]
        at = time.time()
        try:
            resp = visitor.get(f"/{code}")
        except SmokeFailure:
            return self._record("redirect", at, "connection")
        if resp.status >= 500:
            return self._record("redirect", at, "5xx")
        right = resp.status == 302 and resp.headers.get("Location") == url
        self._record("redirect", at, "" if right else "wrong answer")

    def _create(self, visitor: Visitor, kind: str, i: int) -> None:
        url = f"https://example.com/rehearsal/{i}?from={kind}"
        at = time.time()
        try:
            if kind == "api":
                resp = visitor.post_json("/api/links", {"url": url})
                code = created_code(resp) if resp.status == 201 else None
            else:
                page = visitor.get("/")
                token = CSRF_FIELD.search(page.text) if page.status == 200 else None
                self._record("page", at, "" if token else failure_of(page.status))
                if token is None:
                    return
                at = time.time()
                resp = visitor.post_form("/your-url", {"csrf_token": token.group(1),
                                                       "url": url})
                shown = SHORT_URL_FIELD.search(resp.text) if resp.status == 200 else None
                code = shown.group(1).rsplit("/", 1)[1] if shown else None
        except SmokeFailure:  # the request got no answer
            return self._record(kind, at, "connection")
        self._record(kind, at, "" if code else failure_of(resp.status))
        if code:
            with self._lock:
                self.acknowledged.append((code, url))
                self.links.append((code, url))

    @property
    def failures(self) -> Counter[str]:
        return Counter(o.failure for o in self.outcomes if o.failure)


def created_code(resp: Response) -> str | None:
    """The code of a 201 from POST /api/links, or None if the body is not what it should be."""
    try:
        body = json.loads(resp.body)
    except ValueError:
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None


def failure_of(status: int) -> str:
    return "5xx" if status >= 500 else "wrong answer"


def missing_links(base_url: str, links: Sequence[tuple[str, str]]) -> list[str]:
    """The codes whose GET /<code> does not answer 302 to exactly their URL (checked 16
    at a time: a slow version answers each in its own time)."""
    def missing(link: tuple[str, str]) -> bool:
        code, url = link
        try:
            resp = Visitor(base_url, timeout=10).get(f"/{code}")
        except SmokeFailure:
            return True
        return resp.status != 302 or resp.headers.get("Location") != url
    with ThreadPoolExecutor(max_workers=16) as pool:
        return [code for (code, _), lost in zip(links, pool.map(missing, links)) if lost]


# --- one case -----------------------------------------------------------------------------


@dataclass
class CaseResult:
    case: str
    label: str
    what: str
    exit_code: int
    outcome: str | None
    failed_step: str | None
    release_seconds: float
    requests: int
    failed: int
    failures: dict[str, int]
    new_version_requests: int      # requests the released version answered
    exposed_seconds: float | None  # a bad version's first request to its last
    still_serving: bool            # the case's version serves when the release is over
    serving_after: str | None
    p99_new_ms: float | None       # nginx's request time, for the released version
    p99_others_ms: float | None    # and for the versions that served beside it
    canary_share: int              # % of requests the policy gives the canary
    window_seconds: float | None   # the canary getting its share -> all traffic back
    window_requests: int           # requests the client sent in that window
    acknowledged: int
    missing_after: int
    snapshot: str | None           # the pre-deploy snapshot the release report names
    recovery: str | None           # what restoring it did, when the release had to
    error: str | None              # why the release failed, as its report says

    @property
    def window_bound(self) -> float:
        """The most requests C may fail: the canary's share of the window's requests."""
        return self.canary_share / 100 * self.window_requests


class Rehearsal:
    """A local environment on the committed app, ready to release cases to."""

    def __init__(self, workdir: Path, rate: float = 50, policy: Policy = POLICY,
                 max_seconds: float = RELEASE_TIMEOUT) -> None:
        self.workdir = workdir
        self.root = workdir / "environment"
        self.port = free_port()
        self.rate, self.policy, self.max_seconds = rate, policy, max_seconds
        self.links: list[tuple[str, str]] = []
        self.sources: dict[str, Path] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Rehearsal:
        self.policy.save(self.root)
        try:
            done = self.release(GOOD, self.source("good"), "--allow-unhealthy")
            if done.returncode != 0:
                raise RehearsalError(f"the committed app did not deploy:\n{done.stderr[-2000:]}")
            self.seed()
        except BaseException:
            stop_environment(self.root)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        stop_environment(self.root)

    def source(self, case: str) -> Path:
        """The committed tree with the case's change, built once."""
        if case not in self.sources:
            tree = committed_tree(self.workdir / "sources" / case)
            CASES[case].mutate(tree)
            self.sources[case] = tree
        return self.sources[case]

    def release(self, label: str, source: Path, *extra: str,
                report: Path | None = None) -> subprocess.CompletedProcess[str]:
        """python -m ops.release --target local, as CI would run it."""
        report = report or self.workdir / f"release-{label}.json"
        cmd = [sys.executable, "-m", "ops.release", "--target", "local",
               "--local-dir", str(self.root), "--port", str(self.port), "--source", str(source),
               "--label", label, "--report", str(report), *RELEASE_OPTIONS, *extra]
        return subprocess.run(cmd, cwd=REPO_ROOT, env={**os.environ, **VERSION_ENV},  # nosec B603
                              capture_output=True, text=True, timeout=RELEASE_TIMEOUT,
                              check=False)

    def seed(self) -> None:
        visitor = Visitor(self.url, timeout=10)
        for i in range(SEED_LINKS):
            url = f"https://example.com/seed/{i}"
            resp = visitor.post_json("/api/links", {"url": url})
            if resp.status != 201:
                raise RehearsalError(f"seeding a link failed: HTTP {resp.status} {resp.text}")
            self.links.append((resp.json()["code"], url))

    def serving(self) -> str | None:
        serving = State.load(self.root).serving
        return serving.label if serving else None

    def back_to_good(self) -> None:
        """Put the committed app back if the last case left another version serving."""
        if self.serving() in (GOOD, "good"):
            return
        LOG.info("putting the committed app back (%s serves); not measured", self.serving())
        done = self.release(GOOD, self.source("good"), "--allow-unhealthy",
                            report=self.workdir / f"reset-{time.time():.0f}.json")
        if self.serving() != GOOD:
            raise RehearsalError(f"could not put {GOOD} back after the last case (exit "
                                 f"{done.returncode}):\n{done.stderr[-2000:]}")

    def run(self, case: Case, lead_in: float = 2.0, tail: float = 3.0) -> CaseResult:
        """Release the case's version under steady traffic and measure what happened."""
        self.back_to_good()
        source = self.source(case.name)
        report_path = self.workdir / f"release-{case.label}.json"
        with SteadyClient(self.url, self.links, self.rate, self.max_seconds) as client:
            time.sleep(lead_in)
            started = time.time()
            done = self.release(case.label, source, report=report_path)
            release_seconds = time.time() - started
            time.sleep(tail)
        (self.workdir / f"release-{case.label}.log").write_text(done.stderr)
        self.links += client.acknowledged
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        log = read_requests(self.root / "logs" / "access.log", started)
        events = self.events(since=started)
        ports = {e["port"] for e in events if e["label"] == case.label}
        window = detection_window(events, case.label)
        sent_in_window = [o for o in client.outcomes
                          if window and window[0] <= o.at <= window[1]]
        served = [r for r in log if r.port in ports]
        others = [r for r in log if r.port is not None and r.port not in ports]
        still_serving = self.serving() == case.label
        return CaseResult(
            case=case.name, label=case.label, what=case.what, exit_code=done.returncode,
            outcome=report.get("outcome"), failed_step=report.get("failed_step"),
            release_seconds=round(release_seconds, 1), requests=len(client.outcomes),
            failed=sum(client.failures.values()), failures=dict(client.failures),
            new_version_requests=len(served),
            exposed_seconds=(round(served[-1].at - served[0].at, 2)
                             if served and not still_serving and case.name != "good"
                             else None),
            still_serving=still_serving, serving_after=self.serving(),
            p99_new_ms=milliseconds(percentile([r.seconds for r in served], 99)),
            p99_others_ms=milliseconds(percentile([r.seconds for r in others], 99)),
            canary_share=self.policy.new_version_percent,
            window_seconds=round(window[1] - window[0], 2) if window else None,
            window_requests=len(sent_in_window),
            acknowledged=len(client.acknowledged),
            missing_after=len(missing_links(self.url, self.links)),
            snapshot=report.get("backup"), recovery=report.get("recovery"),
            error=report.get("error"))

    def events(self, since: float) -> list[dict[str, Any]]:
        """logs/events.jsonl since then: what the environment did to which version."""
        lines = (self.root / "logs" / "events.jsonl").read_text().splitlines()
        return [e for e in map(json.loads, lines) if e["at"] >= since - 1]


def detection_window(events: Sequence[dict[str, Any]], label: str) -> tuple[float, float] | None:
    """(the canary `label` got its share, every request was back on the last good
    version), or None when it never got a share or was never moved back."""
    start = next((e["at"] for e in events if e["label"] == label and e["event"] == "canary"),
                 None)
    end = next((e["at"] for e in events if start is not None and e["at"] >= start
                and e["event"] == "all traffic back"), None)
    return (start, end) if start is not None and end is not None else None


def milliseconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


# --- the table ----------------------------------------------------------------------------

COLUMNS = ("case", "exit", "outcome", "requests", "failed (5xx/conn/wrong)", "new version answered",
           "p99 new/old ms", "traffic back after", "window: requests, share", "serving after",
           "acked", "missing", "snapshot restored")


def row(result: CaseResult) -> tuple[str, ...]:
    f = result.failures
    if result.still_serving and result.case != "good":
        back = "still serving"
    elif result.exposed_seconds is None:
        back = "-" if result.case == "good" else "never got traffic"
    else:
        back = f"{result.exposed_seconds:.1f} s"
    window = "-" if result.window_seconds is None else (
        f"{result.window_requests} in {result.window_seconds:.1f} s, "
        f"{result.canary_share} %: {result.window_bound:.0f}")
    return (result.case, str(result.exit_code), result.outcome or "-", str(result.requests),
            f"{result.failed} ({f.get('5xx', 0)}/{f.get('connection', 0)}/"
            f"{f.get('wrong answer', 0)})",
            str(result.new_version_requests),
            f"{result.p99_new_ms or '-'}/{result.p99_others_ms or '-'}", back, window,
            result.serving_after or "-", str(result.acknowledged), str(result.missing_after),
            "yes" if result.recovery else "-")


def table(results: Sequence[CaseResult]) -> str:
    rows = [COLUMNS, *map(row, results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip()
                     for r in rows)


def write_results(path: Path, results: Sequence[CaseResult], rehearsal: Rehearsal) -> None:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT,  # nosec B603 B607
                            capture_output=True, text=True, check=False).stdout.strip()
    document: dict[str, Any] = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit, "cpus": os.cpu_count(), "rate": rehearsal.rate,
        "policy": asdict(rehearsal.policy), "release_options": list(RELEASE_OPTIONS),
        "cases": [asdict(result) for result in results]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


@contextmanager
def workspace(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="rehearsal-") as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.rehearse",
        description="Release good and bad versions through real nginx under steady "
                    "traffic; print and save what users would have seen.")
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"which cases, in order (default: {','.join(CASES)})")
    parser.add_argument("--rate", type=float, default=50.0,
                        help="the steady client's operations per second (default 50)")
    parser.add_argument("--max-seconds", type=float, default=RELEASE_TIMEOUT,
                        help="the longest the client runs for one case (default 600)")
    parser.add_argument("--output", type=Path, default=OUTPUT,
                        help="where to write the JSON results (default test-output/"
                             "rehearsal.json)")
    parser.add_argument("--keep", type=Path,
                        help="work in this directory and keep it (logs, reports, versions)")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = [name for name in names if name not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {', '.join(CASES)}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    results: list[CaseResult] = []
    with workspace(args.keep) as workdir, \
            Rehearsal(workdir, args.rate, max_seconds=args.max_seconds) as rehearsal:
        for name in names:
            LOG.info("case %s: %s", name, CASES[name].what)
            results.append(rehearsal.run(CASES[name]))
            print(table(results[-1:]).splitlines()[-1], flush=True)
            write_results(args.output, results, rehearsal)
    print()
    print(table(results))
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
