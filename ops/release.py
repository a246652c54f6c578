"""Deploy one version to one environment, verify it, and roll back on any failure.

    python -m ops.release --environment shortener-prod --label "$GITHUB_SHA" --backup

The environment always ends on a version that passed verification, or a person is told
loudly that it does not:

1. prepare (read-only; any failure refuses the release, nothing is changed): wait until
   the environment is Ready; it must be healthy (unless --allow-unhealthy, to ship a
   fix); count its links; find the last good version, the newest one tagged as having
   passed verification; check that the deployment policy and health settings the
   repository declares are the ones the environment runs; find out whether the release
   changes .ebextensions option settings or resources (a deployment on new instances
   cannot carry those); and with --backup, snapshot the link store (python -m ops.backup
   on an instance) under the label's name;
2. apply a configuration change as its own update first, then start the deployment:
   `eb deploy ENV --label LABEL --nohang` (or `--version LABEL` when that version
   exists; nothing at all when LABEL is already live: that release only verifies);
3. watch it (step `canary`), every --canary-interval seconds until the target has
   promoted it: the new version's share of requests (the canary) against the last good
   version's (the baseline). Abort - every request moves back to the baseline,
   nothing restarts - as soon as the canary's rate of 5xx and connection errors is over
   --max-5xx-rate (once --min-requests were counted), its p99 latency is over
   --max-p99-ratio times the baseline's twice in a row, `python -m ops.smoke --full`
   against the canary alone fails, or the baseline fails its health checks (a new
   version that wrote data the old one cannot read: class E);
4. verify: the environment is Ready on LABEL, health Green/Ok, /healthz reports LABEL and
   at least as many links as before, `python -m ops.smoke` (--full with --full-smoke)
   creates links and follows them through the public URL, and the 5xx rate stays under
   --max-5xx-rate for the --watch window (judged on our own bounded traffic when real
   traffic is too thin); then tag LABEL as verified;
5. on any failure or timeout: abort the deployment if it still runs; redeploy the last
   good version unless traffic is back on it already; if it cannot read the link store
   (its /healthz says so), restore the pre-deploy snapshot and create again the links
   written since (python -m ops.recover); verify it the same way, send an alert; exit
   non-zero.

The release report (--report, JSON) is rewritten atomically after every step, so a job
killed in the middle still leaves one. Before verifying and before rolling back, the
environment must run our label, the last good one or the one it ran at the start:
anything else is someone else's deploy, and ops.release stops rather than deploy over it.

Exit codes:
  0  deployed: the version passed every check (or was already live and verified)
  1  rolled back: the version failed; the environment serves the last good version,
     verified
  2  bad arguments
  3  refused: a check before the deploy failed; nothing was changed
  4  ROLLBACK FAILED: the environment may be serving a broken version; act now
  5  interfered: someone else's deploy changed the environment during the release;
     ops.release stopped without deploying over it; look before acting

`--target local` runs the same logic against a local environment: real nginx on
--port in front of a gunicorn per version, deploying as Elastic Beanstalk's traffic
splitting does (ops/local.py): that is how releases are rehearsed (`make rehearse`).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import math
import os
import signal
import subprocess  # nosec B404
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any, Callable, TypeVar

from ops import ebsettings
from ops.alert import send_alert
from ops.targets import (CanaryMetrics, Deployment, EBTarget, EnvState, Health, Target,
                         TargetError, deploy_limit, run_command)

LOG = logging.getLogger("ops.release")
REPO_ROOT = Path(__file__).resolve().parent.parent

EXIT_DEPLOYED, EXIT_ROLLED_BACK, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
EXIT_ROLLBACK_FAILED, EXIT_INTERFERED = 4, 5
# One line per code: the --help epilog, docs/deploying.md and README say the same
# (tests/test_release.py checks that they agree with this table and the docstring).
EXIT_MEANINGS = {
    EXIT_DEPLOYED: "deployed",
    EXIT_ROLLED_BACK: "rolled back (the environment serves the last good version)",
    EXIT_USAGE: "bad arguments",
    EXIT_REFUSED: "refused (a check before the deploy failed; nothing was changed)",
    EXIT_ROLLBACK_FAILED: "ROLLBACK FAILED (act now)",
    EXIT_INTERFERED: "interfered (someone else's deploy; stopped without deploying over it)",
}
HTTP_TIMEOUT = 10.0  # one request of ours to the public URL
T = TypeVar("T")


class StepFailed(Exception):
    """A release step failed; the message is what the operator needs to know."""


class Interfered(StepFailed):
    """The environment runs a version that is not ours: someone else deployed."""


@dataclass
class Options:
    """Every wait is bounded; `worst_case_seconds` adds them all up (the credential and
    job budget of deploy.yml is checked against it)."""

    ready_timeout: float = 900.0
    deploy_timeout: float = 1800.0
    verify_timeout: float = 600.0
    backup_timeout: float = 600.0
    restore_timeout: float = 600.0
    watch: float = 300.0
    watch_interval: float = 60.0
    canary_interval: float = 10.0
    max_5xx_rate: float = 0.01
    max_p99_ratio: float = 3.0
    min_requests: int = 20
    poll_interval: float = 10.0
    smoke_timeout: float = 10.0
    allow_unhealthy: bool = False
    backup: bool = False
    existing_only: bool = False
    full_smoke: bool = False


def verification_seconds(o: Options) -> float:
    """The longest one verification (`Release.verify`) can take."""
    poll = o.poll_interval + HTTP_TIMEOUT  # a poll may overrun its deadline by one round
    samples = max(1, math.ceil(o.watch / max(o.watch_interval, 0.001))) if o.watch > 0 else 0
    return ((o.ready_timeout + poll)                       # ready-after
            + (o.verify_timeout + poll)                     # health
            + (o.verify_timeout + poll)                     # healthz-version
            + smoke_limit(o, o.full_smoke)                  # smoke
            + samples * o.watch_interval                    # watch-5xx: CloudWatch samples
            + o.min_requests * o.smoke_timeout)             # ... and our own traffic


def worst_case_seconds(o: Options) -> float:
    """The longest a release can run with these options: every wait to its limit, the
    forward path and the rollback. deploy.yml's timeout-minutes and credential lifetime
    must cover it (tests/test_budget.py)."""
    poll = o.poll_interval + HTTP_TIMEOUT
    deploy = deploy_limit(o.deploy_timeout)
    settle = o.ready_timeout + poll                       # abort, then the deployment ends
    prepare = ((o.ready_timeout + poll)                   # wait-ready
               + HTTP_TIMEOUT                             # links-before
               + o.backup_timeout + poll)                 # backup
    config = (o.ready_timeout + poll) + (o.verify_timeout + poll)  # config-update
    # deploy (eb uploads, then returns) and canary share one deadline, --deploy-timeout
    # from the start; the watch may overrun it by one sample, and waits for the canary's
    # smoke test once the deployment is over.
    canary = o.canary_interval + HTTP_TIMEOUT + smoke_limit(o, full=True)
    forward = prepare + config + deploy + canary + settle + verification_seconds(o)
    recover = o.restore_timeout + poll + HTTP_TIMEOUT     # rollback:data
    rollback = (config + (o.ready_timeout + poll) + deploy + recover
                + verification_seconds(o))
    return forward + rollback


def smoke_limit(o: Options, full: bool = False) -> float:
    """How long a smoke test may run: it makes a handful of requests, --full about 20."""
    return o.smoke_timeout * (20 if full else 5) + 30


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
    last_good_verified: bool = False
    started_at: str = ""
    finished_at: str = ""
    outcome: str = ""  # deployed | rolled_back | rollback_failed | refused | interfered
    failed_step: str | None = None
    error: str | None = None
    steps: list[Step] = field(default_factory=list)
    backup: str | None = None
    config_change: str | None = None
    canary: dict[str, Any] | None = None
    recovery: str | None = None
    watch: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    rollback: dict[str, Any] | None = None
    alert_sent: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_atomically(path: Path, text: str) -> None:
    """Replace path with text: a reader sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.",
                                     delete=False) as tmp:
        tmp.write(text)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, path)


class Release:
    """One release of `label` to `target`; `run()` returns the finished report."""

    def __init__(self, target: Target, label: str, options: Options,
                 report_path: Path | None = None, source: Path = REPO_ROOT) -> None:
        self.target = target
        self.label = label
        self.opts = options
        self.report_path = report_path
        self.source = source
        self.report = Report(environment=target.name, version=label)
        self.links_before: int | None = None
        self.start_version: str | None = None
        self.healthy_at_start = False
        self.exists = False
        self.change = ebsettings.ConfigChange()
        self.old_settings: dict[ebsettings.Key, str] = {}
        self.config_applied = False
        self.deadline = 0.0  # when the deployment must be over (--deploy-timeout)
        self.background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="canary")
        self.canary_smoke: Future[str] | None = None

    # --- the release as a whole --------------------------------------------------

    def run(self) -> Report:
        self.report.started_at = now_iso()
        self.save()
        LOG.info("release %s to %s: started", self.label, self.target.name)
        try:
            self.prepare()
        except StepFailed as err:
            self._fail(err, "interfered" if isinstance(err, Interfered) else "refused")
            LOG.error("REFUSED: %s. Nothing was changed.", err)
            return self._finish()
        try:
            self.ship()
            self.verify(self.label)
            self.step("mark-verified", lambda: self.target.set_verified(self.label, True))
        except Interfered as err:
            self._fail(err, "interfered")
            LOG.error("STOPPED: %s", err)
            return self._finish()
        except StepFailed as err:
            self._fail(err, "rolled_back")
            self.roll_back()
            return self._finish()
        self.report.outcome = "deployed"
        LOG.info("release %s to %s: deployed and verified", self.label, self.target.name)
        return self._finish()

    def prepare(self) -> None:
        before = self.step("wait-ready", self.wait_ready)
        self.start_version = before.version
        self.step("health-before", self.check_health_before)
        self.step("links-before", self.count_links_before)
        self.exists = self.step("check-version", self.check_version)
        self.step("last-good", self.find_last_good)
        self.step("config-change", self.find_config_change)
        self.step("settings", self.check_settings)
        self.step("lifecycle", self.check_lifecycle)
        if self.opts.backup:
            self.report.backup = self.step("backup", self.take_backup)

    def ship(self) -> None:
        if self.start_version == self.label:
            self.step("deploy", lambda: f"skipped: {self.label} is already live; verifying it")
            return
        if self.change.settings or self.change.removed:
            self.step("config-update", self.apply_config_change)
        self.deadline = time.monotonic() + self.opts.deploy_timeout
        try:
            self.step("deploy", self.start_deployment)
            self.step("canary", self.watch_deployment)
        except StepFailed as err:
            reason = str(err)
            self.step("abort", lambda: self.abort_deployment(reason))
            raise
        except (KeyboardInterrupt, SystemExit):
            self.abort_unwatched()
            raise
        finally:
            self.settle_canary_smoke()

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
        self.save()
        if not last_good:
            rollback["error"] = ("no earlier version is known to roll back to: none is "
                                 "tagged verified and the one running before was not healthy")
            self.report.outcome = "rollback_failed"
            return
        try:
            LOG.warning("rolling back %s to %s", self.target.name, last_good)
            self.step("rollback:unverify", lambda: self.target.set_verified(self.label, False))
            if self.config_applied:
                self.step("rollback:config", self.restore_config)
            self.step("rollback:wait-ready", self.wait_ready_ours)
            self.step("rollback:deploy", lambda: self.redeploy_last_good(last_good))
            self.step("rollback:data", self.recover_data)
            self.verify(last_good, prefix="rollback:")
            rollback["ok"] = True
        except Interfered as err:
            rollback["error"] = f"{self.report.steps[-1].name}: {err}"
            self.report.outcome = "interfered"
        except StepFailed as err:
            rollback["error"] = f"{self.report.steps[-1].name}: {err}"
            self.report.outcome = "rollback_failed"
        rollback["seconds"] = round(time.monotonic() - started, 2)

    # --- steps --------------------------------------------------------------------

    def step(self, name: str, action: Callable[[], T]) -> T:
        """Run one step: log it, time it, record it, rewrite the report; a failure
        raises StepFailed (Interfered stays Interfered)."""
        LOG.info("step %s: started", name)
        started = time.monotonic()
        try:
            result = action()
        except Exception as err:  # any failure (an AWS API error too) must roll back
            failure = err if isinstance(err, StepFailed) else StepFailed(
                str(err) if isinstance(err, TargetError) else f"{type(err).__name__}: {err}")
            seconds = round(time.monotonic() - started, 2)
            self.report.steps.append(Step(name, False, seconds, str(failure)))
            LOG.error("step %s: FAILED after %.1f s: %s", name, seconds, failure)
            if self.report.failed_step is None:
                self.report.failed_step = name
            self.save()
            if failure is err:
                raise
            raise failure from err
        seconds = round(time.monotonic() - started, 2)
        detail = describe(result)
        self.report.steps.append(Step(name, True, seconds, detail))
        LOG.info("step %s: ok in %.1f s%s", name, seconds, f" ({detail})" if detail else "")
        self.save()
        return result

    def wait_ready(self) -> EnvState:
        """Poll until Ready: a deploy already running (two pushes close together) is
        waited for, not failed with 'invalid state'."""
        return self._poll(self.target.state, lambda s: s.status == "Ready",
                          self.opts.ready_timeout, "the environment to be Ready",
                          lambda s: f"status {s.status} on {s.version}")

    def wait_ready_ours(self) -> EnvState:
        state = self.wait_ready()
        self.check_ours(state)
        return state

    def check_ours(self, state: EnvState) -> None:
        """Stop when the environment runs a version this release did not put there."""
        ours = {self.label, self.report.last_good_version, self.start_version}
        if state.version not in ours:
            raise Interfered(
                f"{self.target.name} is {state.status} on {state.version!r}, which is neither "
                f"{self.label!r} (this release), {self.report.last_good_version!r} (the last "
                f"good) nor {self.start_version!r} (running before): someone else deployed. "
                "Stopped without deploying over it; see docs/deploying.md, exit 5")

    def check_health_before(self) -> str:
        health = self.target.health()
        self.healthy_at_start = health.good
        if health.good:
            return f"{health.color}/{health.status}"
        message = (f"environment {self.target.name} is {health.color}/{health.status} "
                   f"before the deploy ({'; '.join(health.causes) or 'no cause given'}): "
                   "its current version cannot be trusted as a rollback target")
        if self.opts.allow_unhealthy:
            LOG.warning("%s; going ahead because --allow-unhealthy was given", message)
            self.report.warnings.append(message)
            return f"{health.color}/{health.status} (allowed)"
        raise StepFailed(message + ". Fix the environment first, or ship a fix with "
                         "--allow-unhealthy (the Fix forward workflow)")

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
        raise StepFailed(message + "; fix the environment first, or ship a fix with "
                         "--allow-unhealthy")

    def check_version(self) -> bool:
        exists = self.target.version_exists(self.label)
        if not exists and self.opts.existing_only:
            raise StepFailed(f"there is no application version {self.label!r}, and "
                             "--existing-only was given: nothing to redeploy")
        return exists

    def find_last_good(self) -> str:
        """The rollback target: the newest version tagged verified, never the one being
        released; nor the one running now when it is unhealthy. Only when no version
        was ever verified (the first release after `eb create`) is the healthy version
        running now taken, and the report says it was not verified."""
        exclude = {self.label} | (set() if self.healthy_at_start else {self.start_version or ""})
        verified = self.target.newest_verified(exclude)
        if verified:
            self.report.last_good_version, self.report.last_good_verified = verified, True
            return f"{verified} (verified)"
        if self.healthy_at_start and self.start_version and self.start_version != self.label:
            self.report.last_good_version = self.start_version
            warning = (f"no version is tagged verified yet; the rollback target is "
                       f"{self.start_version}, which was running and healthy")
            self.report.warnings.append(warning)
            return f"{self.start_version} (running, healthy, not verified)"
        return "none: a failure cannot be rolled back"

    def find_config_change(self) -> str:
        """Compare the release's .ebextensions with the last good version's bundle."""
        last_good = self.report.last_good_version
        old = self.target.version_config(last_good) if last_good else None
        if old is None:
            return "not compared (no last good bundle to compare with)"
        new = self.new_configs()
        self.change = ebsettings.config_change(old, new)
        self.old_settings = ebsettings.option_settings(old)
        if not self.change:
            return f"none against {last_good}"
        self.report.config_change = self.change.describe()
        policy = ebsettings.option_settings(new).get(ebsettings.WATCHED[0], "AllAtOnce")
        if self.change.resources and policy in ("Immutable", "TrafficSplitting"):
            raise StepFailed(
                f"this release changes .ebextensions Resources ({', '.join(self.change.resources)})"
                f" and the deployment policy is {policy}, which cannot carry such a change. "
                "Release it as docs/deploying.md 'Releasing a configuration change' says")
        return f"{self.change.describe()}: applied as its own update before the deploy"

    def new_configs(self) -> dict[str, str]:
        """The .ebextensions this release ships (eb deploy bundles the checkout)."""
        return ebsettings.read_configs(self.source / ".ebextensions")

    def check_settings(self) -> str:
        effective = self.target.effective_settings()
        if effective is None:
            return "not applicable to this target"
        declared = ebsettings.option_settings(self.new_configs())
        pending = set(self.change.settings) | set(self.change.removed)
        watched = {key: value for key, value in declared.items() if key not in pending}
        problems = ebsettings.setting_differences(watched, effective, self.target.name)
        if problems:
            raise StepFailed("; ".join(problems))
        checked = [name for ns, name in ebsettings.WATCHED if (ns, name) in watched]
        return f"as declared: {', '.join(checked)}"

    def check_lifecycle(self) -> str:
        policy = self.target.version_lifecycle()
        if policy is None:
            warning = ("no application version lifecycle policy: deploys stop at the quota "
                       "of 1,000 versions; set it once (docs/deploying.md, step 3)")
            LOG.warning(warning)
            self.report.warnings.append(warning)
            return "MISSING (warning)"
        return policy

    def take_backup(self) -> str:
        snapshot = self.target.snapshot(self.label, self.opts.backup_timeout)
        if not snapshot:
            raise StepFailed(f"{self.target.name} cannot take a snapshot before the deploy")
        return snapshot

    def apply_config_change(self) -> str:
        self.config_applied = True
        self.target.apply_settings(self.change.settings, self.change.removed)
        self.wait_ready_ours()
        self.wait_healthy()
        return self.change.describe()

    def restore_config(self) -> str:
        restore = {key: self.old_settings[key] for key in
                   [*self.change.settings, *self.change.removed] if key in self.old_settings}
        added = [key for key in self.change.settings if key not in self.old_settings]
        self.target.apply_settings(restore, added)
        self.wait_ready_ours()
        return f"{len(restore)} setting(s) restored, {len(added)} removed"

    def deploy(self, label: str, new: bool) -> str:
        """A whole deployment, waited for (the rollback's redeploy)."""
        output = self.target.deploy(label, new, self.opts.deploy_timeout)
        for line in output.splitlines():
            LOG.info("  | %s", line)
        return f"{'new' if new else 'existing'} version {label}"

    def start_deployment(self) -> str:
        started = self.target.start_deployment(self.label, not self.exists,
                                               self.opts.deploy_timeout)
        return (f"{'new' if not self.exists else 'existing'} version {self.label}: "
                f"{started.phase}, {started.detail}")

    def watch_deployment(self) -> str:
        """Follow the deployment until the target has promoted it, judging the canary
        against the baseline every --canary-interval seconds (CanaryWatch); stop at the
        first verdict. Once the canary serves, the full smoke test runs against it
        alone, beside the watch (canary_smoke)."""
        watch = CanaryWatch(self.opts)
        self.report.canary = watch.figures
        while True:
            current = self.target.deployment()
            if current is None:
                raise StepFailed("the target reports no deployment of ours")
            if current.phase == "complete":
                break
            if current.phase in ("failed", "aborted"):
                raise StepFailed(f"the deployment of {self.label} {current.phase} "
                                 f"({current.detail}); traffic is back on {current.baseline}")
            if current.phase == "canary" and self.canary_smoke is None:
                self.canary_smoke = self.background.submit(self.target.smoke_canary,
                                                           self.opts.smoke_timeout)
            if current.phase in ("launching", "canary"):
                verdict = watch.judge(current, self.target.canary_metrics(
                    self.opts.canary_interval)) or smoke_verdict(self.canary_smoke)
                self.save()
                if verdict:
                    raise StepFailed(verdict)
            if time.monotonic() > self.deadline:
                raise StepFailed(f"the deployment of {self.label} was not over within "
                                 f"--deploy-timeout {self.opts.deploy_timeout:g} s (last "
                                 f"seen: {current.phase}, {current.detail})")
            time.sleep(self.opts.canary_interval)
        if self.canary_smoke is not None:
            watch.figures["smoke"] = self.canary_smoke_result(self.canary_smoke)
        return f"{current.detail}; {watch.summary()}"

    def canary_smoke_result(self, smoke: Future[str]) -> str:
        """The canary's smoke test, waited for: it must pass."""
        try:
            return smoke.result(timeout=smoke_limit(self.opts, full=True))
        except TargetError as err:
            raise StepFailed(f"python -m ops.smoke --full against the canary failed: "
                             f"{err}") from None
        except TimeoutError:
            raise StepFailed("python -m ops.smoke --full against the canary did not "
                             "finish") from None

    def settle_canary_smoke(self) -> None:
        """Let the canary's smoke test end (a failure after an abort says nothing new):
        nothing the release started outlives its deployment steps."""
        if self.canary_smoke is not None:
            concurrent.futures.wait([self.canary_smoke], timeout=smoke_limit(self.opts, True))
        self.background.shutdown(wait=False)

    def abort_unwatched(self) -> None:
        """ops.release is being stopped (Ctrl-C, a cancelled job's SIGTERM) while its
        deployment runs: nobody would watch the canary, so move traffic back first."""
        current = self.target.deployment()
        if current is not None and current.in_progress:
            LOG.error("interrupted: aborting the deployment of %s", self.label)
            try:
                self.target.abort("interrupted")
            except Exception as err:  # the interruption goes on, whatever this did
                LOG.error("could not abort the deployment: %s", err)

    def abort_deployment(self, reason: str) -> str:
        """After a failure in deploy or canary: abort the deployment if it still runs
        (traffic back to the baseline, nothing restarted) and wait until it has ended.
        One that is promoting cannot be aborted: it is waited for, and the rollback
        deploys the last good version."""
        current = self.target.deployment()
        if current is None:
            state = self.target.state()
            return f"nothing to abort: the deployment never started ({state.status} on " \
                   f"{state.version})"
        note = ""
        if current.in_progress:
            try:
                self.target.abort(reason)
            except TargetError as err:
                note = f"could not abort ({err}); "
                LOG.warning("could not abort the deployment: %s", err)
        ended = self._poll(self.target.deployment, lambda d: d is None or not d.in_progress,
                           self.opts.ready_timeout, "the deployment to end",
                           lambda d: f"{d.phase}: {d.detail}" if d else "none")
        if ended is None:
            return note + "the target no longer reports the deployment"
        seconds = ended.updated_at - current.updated_at
        return f"{note}{ended.phase} after {max(0.0, seconds):.1f} s: {ended.detail}"

    def recover_data(self) -> str:
        """The last good version serves again; if it cannot read the link store (its
        /healthz says the store check failed), the release wrote data it cannot read
        (class E): restore the pre-deploy snapshot and create again the links written
        since, through that version (Target.recover, python -m ops.recover)."""
        url = self.target.state().url + "/healthz"
        status, body = fetch_json(url)
        checks = body.get("checks")
        store = checks.get("store", "ok") if isinstance(checks, dict) else "ok"
        if status == 200 or store == "ok":
            return f"{url} reads the store (HTTP {status}): nothing to restore"
        damage = f"{url} answered HTTP {status}: the store check says {store!r}"
        if not self.report.backup:
            raise StepFailed(f"{damage}, and no pre-deploy snapshot was taken (--backup): "
                             "restore the newest good snapshot by hand (docs/operating.md)")
        LOG.warning("%s: restoring %s", damage, self.report.backup)
        self.report.recovery = self.target.recover(self.report.backup, self.opts.restore_timeout)
        return f"{damage}; {self.report.recovery}"

    def redeploy_last_good(self, last_good: str) -> str:
        state = self.target.state()
        if state.version == last_good:
            return f"environment is already back on {last_good}; verifying it"
        return self.deploy(last_good, False)

    def wait_on_version(self, label: str) -> EnvState:
        state = self.wait_ready_ours()
        if state.version != label:
            raise StepFailed(f"environment is Ready on version {state.version!r}, not "
                             f"{label!r}: the deploy did not take")
        return state

    def wait_healthy(self) -> str:
        def settled(h: Health) -> bool:
            if h.color == "Red":
                raise StepFailed(f"health is Red/{h.status}: {'; '.join(h.causes)}")
            return h.good
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
                             "restore the pre-deploy snapshot with python -m ops.backup)")
        return f"{url} reports {label} with {links} links ({before} before)"

    def smoke(self) -> str:
        url = self.target.state().url
        cmd = [sys.executable, "-m", "ops.smoke", url, "--timeout", str(self.opts.smoke_timeout),
               *(["--full"] if self.opts.full_smoke else [])]
        try:
            done = subprocess.run(  # nosec B603
                cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=False,
                timeout=smoke_limit(self.opts, self.opts.full_smoke))
        except subprocess.TimeoutExpired:
            raise StepFailed(f"the smoke test against {url} did not finish") from None
        for line in (done.stdout + done.stderr).splitlines():
            LOG.info("  | %s", line)
        if done.returncode != 0:
            failures = [ln for ln in done.stdout.splitlines() if ln.startswith("FAIL")]
            raise StepFailed(f"smoke test failed against {url}: "
                             f"{'; '.join(failures) or done.stderr.strip()[-300:]}")
        return f"{'full smoke test' if self.opts.full_smoke else 'create + follow'} " \
               f"passed against {url}"

    def watch_errors(self) -> str:
        """Sample the 5xx rate since the step began, every --watch-interval seconds for
        --watch seconds; fail as soon as it is over --max-5xx-rate. When fewer than
        --min-requests were served, no count proves anything: send our own bounded
        traffic through the public URL and judge on what it got back."""
        if self.opts.watch <= 0:
            return "skipped (--watch 0)"
        samples = max(1, math.ceil(self.opts.watch / max(self.opts.watch_interval, 0.001)))
        since = datetime.now(timezone.utc)
        errors = total = 0
        for _ in range(samples):
            time.sleep(self.opts.watch_interval)
            errors, total = self.target.request_counts(since, datetime.now(timezone.utc))
            LOG.info("  | %d of %d responses were 5xx", errors, total)
            if total >= self.opts.min_requests:
                self.judge(errors, total, "counted responses")
        watch = self.report.watch = {"requests": total, "errors": errors}
        if total >= self.opts.min_requests:
            watch["judged_on"] = "counted responses"
            return f"{errors}/{total} responses were 5xx over {self.opts.watch:.0f} s"
        own_errors, sent = self.own_traffic()
        watch.update(judged_on="own traffic", own_requests=sent, own_errors=own_errors)
        self.judge(own_errors, sent, f"our own {sent} requests (only {total} were counted)")
        return (f"only {total} responses counted (< --min-requests "
                f"{self.opts.min_requests}): {own_errors}/{sent} of our own requests failed")

    def judge(self, errors: int, total: int, what: str) -> None:
        rate = errors / total if total else 1.0
        if rate > self.opts.max_5xx_rate:
            raise StepFailed(f"5xx rate {rate:.1%} ({errors}/{total}) is over "
                             f"{self.opts.max_5xx_rate:.1%}, judged on {what}")

    def own_traffic(self) -> tuple[int, int]:
        """--min-requests GETs of /healthz and / through the public URL: (failed, sent);
        a connection error counts as a failure."""
        url = self.target.state().url
        failed = 0
        for i in range(self.opts.min_requests):
            status, _ = fetch_json(url + ("/healthz" if i % 2 == 0 else "/"),
                                   self.opts.smoke_timeout)
            failed += status == 0 or status >= 500
        return failed, self.opts.min_requests

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

    def save(self) -> None:
        if self.report_path is not None:
            write_atomically(self.report_path, self.report.to_json())

    def _fail(self, err: StepFailed, outcome: str) -> None:
        self.report.outcome = outcome
        self.report.error = str(err)

    def _finish(self) -> Report:
        self.report.finished_at = now_iso()
        if self.report.outcome != "deployed":
            self.report.alert_sent = send_alert(alert_text(self.report))
        if self.report.outcome == "rollback_failed":
            shout_rollback_failed(self.report)
        self.save()
        return self.report


# The latency watch compares versions only on samples where each answered this many
# requests (a p99 of fewer is one slow request), and aborts when the canary is slower
# than --max-p99-ratio times the baseline in this many samples in a row (one sample
# can be one stall of a busy machine).
LATENCY_MIN_REQUESTS = 5
SLOW_SAMPLES = 2


class CanaryWatch:
    """Judges each sample of a deployment: the canary's errors add up over the samples,
    its latency is compared with the baseline's sample by sample, and the baseline must
    stay healthy. `judge` returns the reason to abort, or None. `figures` is what the
    release report shows (`canary`)."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.slow_in_a_row = 0
        self.figures: dict[str, Any] = {
            "samples": 0, "requests": 0, "failed": 0, "baseline_requests": 0,
            "baseline_failed": 0, "p99_ms": [], "verdict": None}

    def judge(self, current: Deployment, metrics: CanaryMetrics) -> str | None:
        canary, baseline = metrics.canary, metrics.baseline
        f = self.figures
        f["samples"] += 1
        f["requests"] += canary.requests
        f["failed"] += canary.failed
        f["baseline_requests"] += baseline.requests
        f["baseline_failed"] += baseline.failed
        verdict = (self.baseline_fails(current, metrics) or self.too_many_errors(current)
                   or self.too_slow(current, metrics))
        if verdict:
            f["verdict"] = verdict
            LOG.error("canary: %s", verdict)
        else:
            LOG.info("  | %s %s: %d requests, %d failed; baseline %d requests, healthy %s",
                     current.label, current.phase, canary.requests, canary.failed,
                     baseline.requests, baseline.healthy)
        return verdict

    @staticmethod
    def baseline_fails(current: Deployment, metrics: CanaryMetrics) -> str | None:
        """Class E: the old version fails while the new one runs beside it on the same
        store; the likeliest cause is data it cannot read."""
        baseline = metrics.baseline
        if baseline.healthy is not False:
            return None
        return (f"{baseline.label} (the last good version) fails its health check while "
                f"{current.label} is deployed beside it ({baseline.health_detail}): "
                f"{current.label} may have written data {baseline.label} cannot read")

    def too_many_errors(self, current: Deployment) -> str | None:
        failed, requests = self.figures["failed"], self.figures["requests"]
        if requests < self.opts.min_requests or failed / requests <= self.opts.max_5xx_rate:
            return None
        return (f"{current.label} failed {failed} of the {requests} requests it answered "
                f"({failed / requests:.1%} 5xx and connection errors, over "
                f"--max-5xx-rate {self.opts.max_5xx_rate:.1%})")

    def too_slow(self, current: Deployment, metrics: CanaryMetrics) -> str | None:
        canary, baseline = metrics.canary, metrics.baseline
        if (canary.p99 is None or baseline.p99 is None
                or min(canary.requests, baseline.requests) < LATENCY_MIN_REQUESTS):
            return None
        self.figures["p99_ms"] = (self.figures["p99_ms"] + [
            [round(canary.p99 * 1000, 1), round(baseline.p99 * 1000, 1)]])[-20:]
        slow = canary.p99 > self.opts.max_p99_ratio * baseline.p99
        self.slow_in_a_row = self.slow_in_a_row + 1 if slow else 0
        if self.slow_in_a_row < SLOW_SAMPLES:
            return None
        return (f"{current.label}'s p99 latency was over --max-p99-ratio "
                f"{self.opts.max_p99_ratio:g} times the baseline's in {self.slow_in_a_row} "
                f"samples in a row (last: {canary.p99 * 1000:.0f} ms against "
                f"{baseline.p99 * 1000:.0f} ms)")

    def summary(self) -> str:
        f = self.figures
        if f["requests"] < self.opts.min_requests:
            errors = (f"its error rate not judged: {f['requests']} requests counted "
                      f"(< --min-requests {self.opts.min_requests}; the watch after "
                      "the deployment judges it)")
        else:
            errors = f"{f['failed']} of {f['requests']} requests failed"
        return f"canary watched in {f['samples']} samples: {errors}"


def smoke_verdict(smoke: Future[str] | None) -> str | None:
    """The canary's smoke test, if it has failed already."""
    if smoke is None or not smoke.done() or smoke.exception() is None:
        return None
    return f"python -m ops.smoke --full against the canary failed: {smoke.exception()}"


def describe(result: object) -> str:
    if isinstance(result, EnvState):
        return f"{result.status} on {result.version}"
    if isinstance(result, bool):
        return "exists" if result else "new"
    return str(result) if result is not None else ""


def fetch_json(url: str, timeout: float = HTTP_TIMEOUT) -> tuple[int, dict[str, Any]]:
    """GET url; (status, JSON object or {'error': ...}); never raises for HTTP trouble."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # nosec B310
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


ALERT_HEADS = {
    "refused": ":no_entry: Release REFUSED",
    "rolled_back": ":rotating_light: Release FAILED and was rolled back",
    "rollback_failed": "<!channel> :fire: ROLLBACK FAILED - production may be broken",
    "interfered": "<!channel> :warning: Release STOPPED - someone else deployed meanwhile",
}


def alert_text(report: Report) -> str:
    lines = [f"{ALERT_HEADS[report.outcome]}: {report.version} to {report.environment}",
             f"failed step: {report.failed_step}: {report.error}"]
    if report.rollback:
        state = "ok" if report.rollback["ok"] else f"FAILED: {report.rollback.get('error')}"
        lines.append(f"rollback to {report.rollback['version']}: {state} "
                     f"({report.rollback['seconds']} s)")
    if report.backup:
        lines.append(f"pre-deploy snapshot: {report.backup}")
    if report.recovery:
        lines.append(f"data: {report.recovery}")
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
              "refused": EXIT_REFUSED, "rollback_failed": EXIT_ROLLBACK_FAILED,
              "interfered": EXIT_INTERFERED}


def interrupted_alert(report_path: Path, target: Target | None) -> str | None:
    """The alert for a job that ended (failed, killed, cancelled) without ops.release
    telling anyone: what the report got to, and what the environment is doing now.
    None when ops.release finished and its own alert went out."""
    run = os.environ.get("GITHUB_RUN_URL", "(no run URL)")
    try:
        report: dict[str, Any] = json.loads(report_path.read_text())
    except (OSError, ValueError):
        report = {}
    if report.get("finished_at") and report.get("alert_sent"):
        return None
    steps = report.get("steps") or [{}]
    where = (f"release {report.get('version')} stopped after step "
             f"{steps[-1].get('name')!r} ({report.get('outcome') or 'unfinished'})"
             if report else "no release report: the job ended before ops.release started")
    try:
        now = target.state() if target else None
        health = target.health() if target else None
        env = (f"{target.name if target else ''} is {now.status} on {now.version}, "
               f"{health.color}/{health.status}" if now and health else "environment unknown")
    except Exception as err:  # the alert must go out even when AWS cannot be read
        env = f"environment state unknown ({type(err).__name__}: {err})"
    return (f"<!channel> :warning: Deploy job ended without finishing: {where}. "
            f"Now: {env}. Run: {run}")


# --- command line -----------------------------------------------------------------


def git_head() -> str:
    return run_command(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], 30).strip()


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter,
                            argparse.ArgumentDefaultsHelpFormatter):
    """Show each default once: not 'None', nor after a help text that names its own."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def exit_codes_epilog() -> str:
    lines = [f"  {code}  {meaning}" for code, meaning in EXIT_MEANINGS.items()]
    return ("exit codes:\n" + "\n".join(lines)
            + "\n\nAlerts go to $ALERT_WEBHOOK_URL when set.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ops.release",
        description="Deploy one version to one environment, verify it, roll back on failure.",
        epilog=exit_codes_epilog(), formatter_class=DefaultsHelpFormatter)
    p.add_argument("--target", choices=["eb", "local"], default="eb",
                   help="eb: an Elastic Beanstalk environment; local: a local environment, "
                        "nginx in front of a gunicorn per version (rehearsals, ops/local.py)")
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
                   help="where to write the JSON release report (rewritten after every step)")
    defaults = Options()
    p.add_argument("--ready-timeout", type=float, default=defaults.ready_timeout,
                   help="seconds to wait for the environment to be Ready")
    p.add_argument("--deploy-timeout", type=float, default=defaults.deploy_timeout,
                   help="seconds allowed for one deployment, from eb deploy to the new "
                        "version serving everything (the canary evaluation included)")
    p.add_argument("--verify-timeout", type=float, default=defaults.verify_timeout,
                   help="seconds allowed for health Green/Ok and for /healthz to show the "
                        "version")
    p.add_argument("--backup-timeout", type=float, default=defaults.backup_timeout,
                   help="seconds allowed for the pre-deploy snapshot (--backup)")
    p.add_argument("--restore-timeout", type=float, default=defaults.restore_timeout,
                   help="seconds allowed to restore that snapshot and create again the links "
                        "written since, when the last good version cannot read the store")
    p.add_argument("--watch", type=float, default=defaults.watch,
                   help="seconds to watch the 5xx rate after the smoke test (0: skip)")
    p.add_argument("--watch-interval", type=float, default=defaults.watch_interval,
                   help="seconds between 5xx-rate samples")
    p.add_argument("--canary-interval", type=float, default=defaults.canary_interval,
                   help="seconds between samples of the canary against the baseline while "
                        "the deployment runs (Elastic Beanstalk's instance metrics cover the "
                        "last 10 s)")
    p.add_argument("--max-5xx-rate", type=float, default=defaults.max_5xx_rate,
                   help="highest acceptable share of failed responses (5xx, and for the "
                        "canary connection errors) in the canary's and the watch's window")
    p.add_argument("--max-p99-ratio", type=float, default=defaults.max_p99_ratio,
                   help="abort when the canary's p99 latency is over this many times the "
                        "baseline's in two samples in a row")
    p.add_argument("--min-requests", type=int, default=defaults.min_requests,
                   help="fewer responses than this prove nothing: ops.release then sends "
                        "this many requests of its own and judges on them")
    p.add_argument("--poll-interval", type=float, default=defaults.poll_interval,
                   help="seconds between state and health polls")
    p.add_argument("--smoke-timeout", type=float, default=defaults.smoke_timeout,
                   help="seconds per HTTP request of the smoke tests")
    p.add_argument("--full-smoke", action="store_true",
                   help="verify through the public URL with python -m ops.smoke --full "
                        "(the form, the API, an upload, the 404 page), not only create + "
                        "follow; the canary always gets the full one")
    p.add_argument("--allow-unhealthy", action="store_true",
                   help="deploy even when the environment is unhealthy before the deploy "
                        "(to ship a fix; the unhealthy version is then never a rollback "
                        "target)")
    p.add_argument("--backup", action="store_true",
                   help="snapshot the link store (python -m ops.backup on an instance) "
                        "under the label's name before deploying; refuse if it fails")
    p.add_argument("--existing-only", action="store_true",
                   help="refuse unless LABEL is an existing application version (redeploy "
                        "a known version; never bundle the checkout under its name)")
    p.add_argument("--notify-interrupted", action="store_true",
                   help="do not release: alert that the deploy job ended without finishing, "
                        "with what --report got to and the environment's state")
    p.add_argument("--local-dir", type=Path,
                   help="--target local: the environment's directory (versions, data, "
                        "snapshots, logs)")
    p.add_argument("--source", type=Path,
                   help="--target local: the source tree a new version is copied from "
                        "(default: this checkout)")
    p.add_argument("--port", type=int, default=8080,
                   help="--target local: the loopback port nginx, the environment's one "
                        "address, listens on (the versions get ports of their own)")
    return p


def make_target(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Target:
    if args.target == "local":
        from ops.local import LocalTarget  # nginx in front of gunicorn, on this machine
        if args.local_dir is None:
            parser.error("--target local needs --local-dir")
        return LocalTarget(args.local_dir, args.port, source=args.source or REPO_ROOT)
    if not args.environment:
        parser.error("--environment (or $EB_ENVIRONMENT) is required for --target eb")
    import boto3  # only the eb target needs AWS
    session = boto3.session.Session(region_name=args.region)
    return EBTarget(args.environment, session.client("elasticbeanstalk"),
                    session.client("cloudwatch"), args.eb_command, args.url,
                    s3=session.client("s3"), ssm=session.client("ssm"))


def options_from(args: argparse.Namespace) -> Options:
    names = {f.name for f in fields(Options)}
    return Options(**{name: value for name, value in vars(args).items() if name in names})


def execute(target: Target, label: str, options: Options, report_path: Path,
            source: Path = REPO_ROOT) -> int:
    """Run one release, writing its report as it goes; return the exit code."""
    report = Release(target, label, options, report_path, source).run()
    LOG.info("release report written to %s (outcome: %s)", report_path, report.outcome)
    return EXIT_CODES[report.outcome]


def exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """A cancelled job's runner sends SIGTERM: unwind (and abort a deployment being
    watched) as Ctrl-C does, rather than vanish."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.notify_interrupted:
        try:
            target: Target | None = make_target(args, parser)
        except Exception:  # no AWS client at all: still say what the report knows
            target = None
        text = interrupted_alert(args.report, target)
        if text:
            send_alert(text)
        return EXIT_DEPLOYED
    target = make_target(args, parser)
    label = args.label or os.environ.get("GITHUB_SHA") or git_head()
    source = args.source or REPO_ROOT
    return execute(target, label, options_from(args), args.report, source)


if __name__ == "__main__":
    sys.exit(main())
