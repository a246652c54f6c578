"""Deploy one version to one environment, verify it, and roll back on any failure.

    python -m ops.release --environment shortener-prod --label "$GITHUB_SHA"

The environment always ends on a version that passed verification:

1. wait until the environment is Ready (a deploy still running blocks us, we do not
   fail with "invalid state"); record its version as the last good one; refuse when it
   is not healthy to begin with (a rollback target must be known good);
2. `eb deploy ENV --label LABEL` (or `--version LABEL` when that version exists, so a
   re-run reuses it);
3. verify: environment Ready on LABEL, health Green/Ok, /healthz reports LABEL and at
   least as many links as before the deploy (a version that cannot read the store is
   stopped before anything writes to it), the smoke test (python -m ops.smoke) creates
   a link and follows it through the public URL, and the 5xx rate stays under
   --max-5xx-rate for the --watch window;
4. on any failure or timeout: `eb deploy ENV --version LAST_GOOD`, verify it the same
   way, send an alert, write the JSON release report, exit non-zero.

Exit codes: 0 deployed and verified; 1 failed and rolled back (the environment serves
the last good version); 2 bad arguments; 3 refused (the environment was not Ready or
not healthy before the deploy; nothing was changed); 4 ROLLBACK FAILED (the environment
may be serving a broken version: a person must act now).

`--target local` runs the same logic against a local release directory served by
gunicorn on loopback (see ops/targets.py): that is how the rollback is rehearsed.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess  # nosec B404
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar

from ops.alert import send_alert
from ops.targets import EBTarget, EnvState, Target, TargetError, run_command

LOG = logging.getLogger("ops.release")
REPO_ROOT = Path(__file__).resolve().parent.parent

EXIT_DEPLOYED, EXIT_ROLLED_BACK, EXIT_USAGE, EXIT_REFUSED, EXIT_ROLLBACK_FAILED = 0, 1, 2, 3, 4
T = TypeVar("T")


class StepFailed(Exception):
    """A release step failed; the message is what the operator needs to know."""


@dataclass
class Options:
    ready_timeout: float = 900.0
    deploy_timeout: float = 1800.0
    verify_timeout: float = 600.0
    watch: float = 300.0
    watch_interval: float = 60.0
    max_5xx_rate: float = 0.01
    min_requests: int = 20
    poll_interval: float = 10.0
    smoke_timeout: float = 10.0
    allow_unhealthy: bool = False


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    detail: str


@dataclass
class Report:
    environment: str
    version: str
    last_good_version: str | None = None
    started_at: str = ""
    finished_at: str = ""
    outcome: str = ""  # deployed | rolled_back | rollback_failed | refused
    failed_step: str | None = None
    error: str | None = None
    steps: list[Step] = field(default_factory=list)
    rollback: dict[str, Any] | None = None
    alert_sent: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Release:
    """One release of `label` to `target`; `run()` returns the finished report."""

    def __init__(self, target: Target, label: str, options: Options) -> None:
        self.target = target
        self.label = label
        self.opts = options
        self.report = Report(environment=target.name, version=label)
        self.links_before: int | None = None

    # --- the release as a whole --------------------------------------------------

    def run(self) -> Report:
        self.report.started_at = now_iso()
        LOG.info("release %s to %s: started", self.label, self.target.name)
        try:
            self.prepare()
        except StepFailed as err:
            self._fail(err, "refused")
            LOG.error("REFUSED: %s. Nothing was changed.", err)
            return self._finish()
        try:
            new = not self.step("check-version", self.check_version)
            self.step("deploy", lambda: self.deploy(self.label, new))
            self.verify(self.label)
        except StepFailed as err:
            self._fail(err, "rolled_back")
            self.roll_back()
            return self._finish()
        self.report.outcome = "deployed"
        LOG.info("release %s to %s: deployed and verified", self.label, self.target.name)
        return self._finish()

    def prepare(self) -> None:
        before = self.step("wait-ready", self.wait_ready)
        self.report.last_good_version = before.version
        self.step("health-before", self.check_health_before)
        self.step("links-before", self.count_links_before)

    def verify(self, label: str, prefix: str = "") -> None:
        self.step(prefix + "ready-after", lambda: self.wait_on_version(label))
        self.step(prefix + "health", self.wait_healthy)
        self.step(prefix + "healthz-version", lambda: self.check_healthz_version(label))
        self.step(prefix + "smoke", self.smoke)
        self.step(prefix + "watch-5xx", self.watch_errors)

    def roll_back(self) -> None:
        last_good = self.report.last_good_version
        started = time.monotonic()
        rollback: dict[str, Any] = {"version": last_good, "ok": False, "seconds": 0.0}
        self.report.rollback = rollback
        if not last_good or last_good == self.label:
            rollback["error"] = ("no earlier version is known to roll back to "
                                 f"(last good: {last_good!r})")
            self.report.outcome = "rollback_failed"
            return
        try:
            LOG.warning("rolling back %s to %s", self.target.name, last_good)
            self.step("rollback:wait-ready", self.wait_ready)
            self.step("rollback:deploy", lambda: self.redeploy_last_good(last_good))
            self.verify(last_good, prefix="rollback:")
            rollback["ok"] = True
        except StepFailed as err:
            rollback["error"] = f"{self.report.steps[-1].name}: {err}"
            self.report.outcome = "rollback_failed"
        rollback["seconds"] = round(time.monotonic() - started, 2)

    # --- steps --------------------------------------------------------------------

    def step(self, name: str, action: Callable[[], T]) -> T:
        """Run one step: log it, time it, record it; a failure raises StepFailed."""
        LOG.info("step %s: started", name)
        started = time.monotonic()
        try:
            result = action()
        except Exception as err:  # any failure (an AWS API error too) must roll back
            seconds = round(time.monotonic() - started, 2)
            if not isinstance(err, (StepFailed, TargetError)):
                err = StepFailed(f"{type(err).__name__}: {err}")
            self.report.steps.append(Step(name, False, seconds, str(err)))
            LOG.error("step %s: FAILED after %.1f s: %s", name, seconds, err)
            if self.report.failed_step is None:
                self.report.failed_step = name
            raise StepFailed(str(err)) from err
        seconds = round(time.monotonic() - started, 2)
        detail = describe(result)
        self.report.steps.append(Step(name, True, seconds, detail))
        LOG.info("step %s: ok in %.1f s%s", name, seconds, f" ({detail})" if detail else "")
        return result

    def wait_ready(self) -> EnvState:
        """Poll until Ready: a deploy already running (two pushes close together) is
        waited for, not failed with 'invalid state'."""
        return self._poll(self.target.state, lambda s: s.status == "Ready",
                          self.opts.ready_timeout, "the environment to be Ready",
                          lambda s: f"status {s.status}")

    def check_health_before(self) -> str:
        health = self.target.health()
        if health.good:
            return f"{health.color}/{health.status}"
        message = (f"environment {self.target.name} is {health.color}/{health.status} "
                   f"before the deploy ({'; '.join(health.causes) or 'no cause given'}): "
                   "its current version cannot be trusted as a rollback target")
        if self.opts.allow_unhealthy:
            LOG.warning("%s; going ahead because --allow-unhealthy was given", message)
            return f"{health.color}/{health.status} (allowed)"
        raise StepFailed(message + ". Fix the environment first, or re-run with "
                         "--allow-unhealthy to deploy a fix anyway")

    def count_links_before(self) -> str:
        """Remember how many links the running version serves: a new version that sees
        fewer cannot read the store, and must be stopped before anything writes to it."""
        url = self.target.state().url + "/healthz"
        status, body = fetch_json(url)
        links = body.get("links")
        if status == 200 and isinstance(links, int):
            self.links_before = links
            return f"{links} links"
        message = f"{url} answered HTTP {status} {body} before the deploy"
        if self.opts.allow_unhealthy:
            return f"{message} (allowed: link count not checked)"
        raise StepFailed(message + "; fix the environment first, or re-run with "
                         "--allow-unhealthy to deploy a fix anyway")

    def check_version(self) -> bool:
        exists = self.target.version_exists(self.label)
        if exists:
            LOG.info("version %s already exists: deploying it again", self.label)
        return exists

    def deploy(self, label: str, new: bool) -> str:
        output = self.target.deploy(label, new, self.opts.deploy_timeout)
        for line in output.splitlines():
            LOG.info("  | %s", line)
        return f"{'new' if new else 'existing'} version {label}"

    def redeploy_last_good(self, last_good: str) -> str:
        state = self.target.state()
        if state.version == last_good:
            return f"environment is already back on {last_good}; verifying it"
        return self.deploy(last_good, False)

    def wait_on_version(self, label: str) -> EnvState:
        state = self.wait_ready()
        if state.version != label:
            raise StepFailed(f"environment is Ready on version {state.version!r}, not "
                             f"{label!r}: the deploy did not take")
        return state

    def wait_healthy(self) -> str:
        def settled(h: Any) -> bool:
            if h.color == "Red":
                raise StepFailed(f"health is Red/{h.status}: {'; '.join(h.causes)}")
            return bool(h.good)
        health = self._poll(self.target.health, settled, self.opts.verify_timeout,
                            "health Green/Ok", lambda h: f"{h.color}/{h.status}")
        return f"{health.color}/{health.status}"

    def check_healthz_version(self, label: str) -> str:
        url = self.target.state().url + "/healthz"
        status, body = self._poll(
            lambda: fetch_json(url), lambda r: r[0] == 200 and r[1].get("version") == label,
            self.opts.verify_timeout, f"{url} to report version {label}",
            lambda r: f"HTTP {r[0]} {r[1]}")
        links = body.get("links")
        before = self.links_before
        if before is not None and not (isinstance(links, int) and links >= before):
            raise StepFailed(f"{label} serves {links} links, but {before} existed before the "
                             "deploy: it cannot read the link store (if links were lost, "
                             "restore them with python -m ops.backup)")
        return f"{url} reports {label} with {links} links ({before} before)"

    def smoke(self) -> str:
        url = self.target.state().url
        cmd = [sys.executable, "-m", "ops.smoke", url, "--timeout", str(self.opts.smoke_timeout)]
        try:
            done = subprocess.run(  # nosec B603
                cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=False,
                timeout=self.opts.smoke_timeout * 5 + 30)
        except subprocess.TimeoutExpired:
            raise StepFailed(f"the smoke test against {url} did not finish") from None
        for line in (done.stdout + done.stderr).splitlines():
            LOG.info("  | %s", line)
        if done.returncode != 0:
            failures = [ln for ln in done.stdout.splitlines() if ln.startswith("FAIL")]
            raise StepFailed(f"smoke test failed against {url}: "
                             f"{'; '.join(failures) or done.stderr.strip()[-300:]}")
        return f"create + follow passed against {url}"

    def watch_errors(self) -> str:
        """Sample the 5xx rate since the step began, every --watch-interval seconds
        for --watch seconds; fail as soon as it is over --max-5xx-rate."""
        if self.opts.watch <= 0:
            return "skipped (--watch 0)"
        samples = max(1, math.ceil(self.opts.watch / max(self.opts.watch_interval, 0.001)))
        since = datetime.now(timezone.utc)
        errors = total = 0
        for _ in range(samples):
            time.sleep(self.opts.watch_interval)
            errors, total = self.target.request_counts(since, datetime.now(timezone.utc))
            rate = errors / total if total else 0.0
            LOG.info("  | %d of %d responses were 5xx (%.2f%%)", errors, total, rate * 100)
            if total >= self.opts.min_requests and rate > self.opts.max_5xx_rate:
                raise StepFailed(f"5xx rate {rate:.1%} ({errors}/{total}) is over "
                                 f"{self.opts.max_5xx_rate:.1%}")
        return f"{errors}/{total} responses were 5xx over {self.opts.watch:.0f} s"

    def _poll(self, read: Callable[[], T], done: Callable[[T], bool], timeout: float,
              what: str, show: Callable[[T], str]) -> T:
        deadline = time.monotonic() + timeout
        while True:
            value = read()
            if done(value):
                return value
            if time.monotonic() >= deadline:
                raise StepFailed(f"timed out after {timeout:.0f} s waiting for {what} "
                                 f"(last seen: {show(value)})")
            LOG.info("  | waiting for %s: %s", what, show(value))
            time.sleep(self.opts.poll_interval)

    # --- the end --------------------------------------------------------------------

    def _fail(self, err: StepFailed, outcome: str) -> None:
        self.report.outcome = outcome
        self.report.error = str(err)

    def _finish(self) -> Report:
        self.report.finished_at = now_iso()
        if self.report.outcome != "deployed":
            self.report.alert_sent = send_alert(alert_text(self.report))
        if self.report.outcome == "rollback_failed":
            shout_rollback_failed(self.report)
        return self.report


def describe(result: object) -> str:
    if isinstance(result, EnvState):
        return f"{result.status} on {result.version}"
    if isinstance(result, bool):
        return "exists" if result else "new"
    return str(result) if result is not None else ""


def fetch_json(url: str) -> tuple[int, dict[str, Any]]:
    """GET url; (status, JSON object or {'error': ...}); never raises for HTTP trouble."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # nosec B310
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    except (urllib.error.URLError, OSError) as err:
        return 0, {"error": str(err)}
    try:
        body = json.loads(raw)
    except ValueError:
        return status, {"error": raw[:200].decode(errors="replace")}
    return status, body if isinstance(body, dict) else {"body": body}


def alert_text(report: Report) -> str:
    head = {
        "refused": ":no_entry: Release REFUSED",
        "rolled_back": ":rotating_light: Release FAILED and was rolled back",
        "rollback_failed": "<!channel> :fire: ROLLBACK FAILED - production may be broken",
    }[report.outcome]
    lines = [f"{head}: {report.version} to {report.environment}",
             f"failed step: {report.failed_step}: {report.error}"]
    if report.rollback:
        state = "ok" if report.rollback["ok"] else f"FAILED: {report.rollback.get('error')}"
        lines.append(f"rollback to {report.rollback['version']}: {state} "
                     f"({report.rollback['seconds']} s)")
    run_url = os.environ.get("GITHUB_RUN_URL")
    if run_url:
        lines.append(f"run: {run_url}")
    return "\n".join(lines)


def shout_rollback_failed(report: Report) -> None:
    """The loudest thing a CI log can do: a banner, an error annotation, and exit 4."""
    rollback = report.rollback or {}
    banner = "!" * 78
    message = (f"ROLLBACK FAILED for {report.environment}: deploying {report.version} failed "
               f"({report.error}) and rolling back to {rollback.get('version')} also failed "
               f"({rollback.get('error')}). The environment may be serving a broken version. "
               "Act now: see 'When a deploy goes wrong' in docs/deploying.md.")
    print(f"\n{banner}\n{message}\n{banner}\n", file=sys.stderr, flush=True)
    print(f"::error title=ROLLBACK FAILED::{message}", flush=True)


EXIT_CODES = {"deployed": EXIT_DEPLOYED, "rolled_back": EXIT_ROLLED_BACK,
              "refused": EXIT_REFUSED, "rollback_failed": EXIT_ROLLBACK_FAILED}


# --- command line -----------------------------------------------------------------


def git_head() -> str:
    return run_command(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], 30).strip()


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show each default once: not 'None', nor after a help text that names its own."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ops.release",
        description="Deploy one version to one environment, verify it, roll back on failure.",
        epilog="Exit codes: 0 deployed; 1 failed and rolled back; 2 bad arguments; "
               "3 refused (environment not Ready/healthy, nothing changed); "
               "4 ROLLBACK FAILED (act now). Alerts go to $ALERT_WEBHOOK_URL when set.",
        formatter_class=DefaultsHelpFormatter)
    p.add_argument("--target", choices=["eb", "local"], default="eb",
                   help="eb: an Elastic Beanstalk environment; local: a local release "
                        "directory served by gunicorn on loopback (rehearsals)")
    p.add_argument("--environment", default=os.environ.get("EB_ENVIRONMENT"),
                   help="Elastic Beanstalk environment name (default: $EB_ENVIRONMENT)")
    p.add_argument("--label", help="version label to deploy (default: $GITHUB_SHA, "
                                   "else git rev-parse HEAD)")
    p.add_argument("--url", help="public base URL to verify through (default for eb: "
                                 "http://<environment CNAME>)")
    p.add_argument("--region", default=None, help="AWS region (default: boto3's, e.g. "
                                                  "$AWS_REGION)")
    p.add_argument("--eb-command", default="eb", help="path of the eb CLI executable")
    p.add_argument("--report", type=Path, default=Path("release-report.json"),
                   help="where to write the JSON release report")
    p.add_argument("--ready-timeout", type=float, default=900,
                   help="seconds to wait for the environment to be Ready")
    p.add_argument("--deploy-timeout", type=float, default=1800,
                   help="seconds allowed for one eb deploy")
    p.add_argument("--verify-timeout", type=float, default=600,
                   help="seconds allowed for health Green/Ok and for /healthz to show the "
                        "version")
    p.add_argument("--watch", type=float, default=300,
                   help="seconds to watch the 5xx rate after the smoke test (0: skip)")
    p.add_argument("--watch-interval", type=float, default=60,
                   help="seconds between 5xx-rate samples")
    p.add_argument("--max-5xx-rate", type=float, default=0.01,
                   help="highest acceptable share of 5xx responses in the watch window")
    p.add_argument("--min-requests", type=int, default=20,
                   help="the 5xx rate is judged only once this many requests were served")
    p.add_argument("--poll-interval", type=float, default=10,
                   help="seconds between state and health polls")
    p.add_argument("--smoke-timeout", type=float, default=10,
                   help="seconds per HTTP request of the smoke test")
    p.add_argument("--allow-unhealthy", action="store_true",
                   help="deploy even when the environment is unhealthy before the deploy "
                        "(to ship a fix; the rollback target is then not known good)")
    p.add_argument("--local-dir", type=Path,
                   help="--target local: the release directory (versions, data, logs)")
    p.add_argument("--source", type=Path, default=REPO_ROOT,
                   help="--target local: the source tree a new version is copied from")
    p.add_argument("--port", type=int, default=8080,
                   help="--target local: loopback port gunicorn serves on")
    return p


def make_target(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Target:
    if args.target == "local":
        from ops.local import LocalTarget  # nginx in front of gunicorn, on this machine
        if args.local_dir is None:
            parser.error("--target local needs --local-dir")
        return LocalTarget(args.local_dir, args.port, source=args.source)
    if not args.environment:
        parser.error("--environment (or $EB_ENVIRONMENT) is required for --target eb")
    import boto3  # only the eb target needs AWS
    session = boto3.session.Session(region_name=args.region)
    return EBTarget(args.environment, session.client("elasticbeanstalk"),
                    session.client("cloudwatch"), args.eb_command, args.url)


def options_from(args: argparse.Namespace) -> Options:
    return Options(ready_timeout=args.ready_timeout, deploy_timeout=args.deploy_timeout,
                   verify_timeout=args.verify_timeout, watch=args.watch,
                   watch_interval=args.watch_interval, max_5xx_rate=args.max_5xx_rate,
                   min_requests=args.min_requests, poll_interval=args.poll_interval,
                   smoke_timeout=args.smoke_timeout, allow_unhealthy=args.allow_unhealthy)


def execute(target: Target, label: str, options: Options, report_path: Path) -> int:
    """Run one release, write its report, return the exit code."""
    report = Release(target, label, options).run()
    report_path.write_text(report.to_json())
    LOG.info("release report written to %s (outcome: %s)", report_path, report.outcome)
    return EXIT_CODES[report.outcome]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    target = make_target(args, parser)
    label = args.label or os.environ.get("GITHUB_SHA") or git_head()
    return execute(target, label, options_from(args), args.report)


if __name__ == "__main__":
    sys.exit(main())
