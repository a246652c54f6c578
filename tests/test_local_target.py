"""ops.local: the local environment, real nginx in front of real gunicorn, deploying as
Elastic Beanstalk's traffic splitting does.

Each scenario runs once per module (a fixture) while a client follows a link through
nginx, and the tests read what happened where an operator would: nginx's access log
(which version answered each request), logs/events.jsonl, state.json and the
processes themselves.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess  # nosec B404 - python -m ops.release and ops.local, as operators run them
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import requests

from ops.local import (LocalTarget, Policy, Request, State, nginx_binary, parse_request,
                       read_requests, web_command)
from ops.processes import group_members, spawn, stop
from ops.rehearse import CASES, append, break_creates, committed_tree, slow_down
from ops.targets import CanaryMetrics, Deployment, TargetError
from tests.servers import REPO, free_port

FAST = Policy(new_version_percent=25, evaluation_time=3, health_check_interval=0.2,
              healthy_threshold=2, unhealthy_threshold=2, command_timeout=5, smoke_timeout=5)
LONG_CANARY = replace(FAST, evaluation_time=60)  # time to interrupt the release in it
ENV = {**os.environ, "CREATE_RATE_LIMIT": "off", "GUNICORN_WORKERS": "1",
       "ALERT_WEBHOOK_URL": ""}
LINK = "https://example.com/followed?q=1"


def require_nginx() -> None:
    """Skip without nginx, unless REQUIRE_NGINX=1 (CI), where its absence fails."""
    if nginx_binary() is None:
        if os.environ.get("REQUIRE_NGINX") == "1":
            pytest.fail("nginx is not installed, and REQUIRE_NGINX=1 requires it")
        pytest.skip("nginx is not installed (apt-get install nginx-light)")


HEALTH_FAILS_LATER = """
import itertools as _itertools  # noqa: E402
_health_checks = _itertools.count()


@application.before_request
def _fail_health_after_a_while():  # type: ignore[no-untyped-def]
    from flask import abort, request
    if request.path == "/healthz" and next(_health_checks) >= 8:
        abort(503)
"""
CHANGES: dict[str, Callable[[Path], None]] = {
    "good": lambda tree: None,
    "does-not-start": CASES["A"].mutate,
    "json-loads": CASES["B"].mutate,
    "form-500": lambda tree: append(tree, break_creates(spare_probes=False)),
    "health-fails-later": lambda tree: append(tree, HEALTH_FAILS_LATER),
    "slow": lambda tree: append(tree, slow_down(0.3, prefix="/followed")),
    "slow-links": lambda tree: append(tree, slow_down(1.0, prefix="/slow")),
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The committed app, and copies of it with one thing changed."""
    require_nginx()
    root = tmp_path_factory.mktemp("sources")
    trees = {}
    for name, change in CHANGES.items():
        trees[name] = committed_tree(root / name)
        change(trees[name])
    return trees


def environment(root: Path, source: Path, policy: Policy = FAST) -> LocalTarget:
    """A local environment whose v1 is `source`; the policy is in its settings.json,
    where a separate `python -m ops.release` finds it too."""
    policy.save(root)
    target = LocalTarget(root, free_port(), source=source, env=ENV)
    try:
        target.deploy("v1", True, 60)
    except BaseException:
        target.stop()
        raise
    return target


@dataclass
class Follower:
    """Follows one link through nginx, one request at a time, and records each try as
    (sent, answered, "ok" or what was wrong)."""

    url: str
    code: str
    answers: list[tuple[float, float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set() and len(self.answers) < 20_000:
                sent = time.time()
                try:
                    resp = session.get(f"{self.url}/{self.code}", allow_redirects=False,
                                       timeout=10)
                    right = resp.status_code == 302 and resp.headers["Location"] == LINK
                    answer = "ok" if right else f"HTTP {resp.status_code}"
                except requests.RequestException as err:
                    answer = f"error: {err}"
                self.answers.append((sent, time.time(), answer))
                time.sleep(0.02)

    @property
    def failures(self) -> list[tuple[float, float, str]]:
        return [a for a in self.answers if a[2] != "ok"]


@contextmanager
def following(target: LocalTarget, code: str = "followed") -> Iterator[Follower]:
    """A link created through v1, followed through nginx while the block runs."""
    resp = requests.post(f"{target.url}/api/links", json={"url": LINK, "code": code}, timeout=10)
    assert resp.status_code == 201, resp.text
    follower = Follower(target.url, code)
    thread = threading.Thread(target=follower.run)
    thread.start()
    try:
        time.sleep(0.3)
        yield follower
        time.sleep(0.3)
    finally:
        follower.stop.set()
        thread.join(timeout=30)


@dataclass
class Scenario:
    """What happened while one deployment ran."""

    target: LocalTarget
    before: State        # state.json before the deployment
    after: State
    error: str           # the TargetError deploy() raised, if any
    seconds: float
    follower: Follower
    result: Any          # what the scenario's action returned

    @property
    def events(self) -> list[dict[str, Any]]:
        lines = (self.target.root / "logs" / "events.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    @property
    def outcome(self) -> Deployment:
        assert self.after.deployment is not None
        return self.after.deployment

    def at(self, label: str, event: str) -> float:
        return float(next(e["at"] for e in self.events
                          if e["label"] == label and e["event"] == event))

    def port(self, label: str) -> int:
        return int(next(e["port"] for e in self.events
                        if e["label"] == label and e["event"] == "launched"))

    def requests(self, start: float = 0, end: float = float("inf")) -> list[Request]:
        """What nginx served between start and end (finish times)."""
        log = read_requests(self.target.root / "logs" / "access.log", start)
        return [r for r in log if r.at <= end]

    def answered_by(self, label: str) -> list[float]:
        """When each request nginx sent to `label` finished."""
        return [r.at for r in self.requests() if r.port == self.port(label)]

    def answered_after(self, moment: float) -> set[int | None]:
        """The ports that answered requests finishing after `moment` (+0.2 s in flight)."""
        return {r.port for r in self.requests(moment + 0.2)}


def run_scenario(root: Path, sources: dict[str, Path], base: str,
                 action: Callable[[LocalTarget], Any], code: str = "followed") -> Scenario:
    target = environment(root, sources[base])
    before = State.load(target.root)
    error, result = "", None
    started = time.monotonic()
    try:
        with following(target, code) as follower:
            try:
                result = action(target)
            except TargetError as err:
                error = str(err)
        return Scenario(target, before, State.load(target.root), error,
                        time.monotonic() - started, follower, result)
    finally:
        target.stop()


def deploy(source: Path, label: str = "v2") -> Callable[[LocalTarget], str]:
    def act(target: LocalTarget) -> str:
        target.source = source
        return target.deploy(label, True, 60)
    return act


def wait_for_phase(target: LocalTarget, label: str, phase: str, timeout: float = 60) -> None:
    """Wait until the deployment of `label` (perhaps not started yet) reaches `phase`."""
    deadline = time.monotonic() + timeout
    while (current := target.deployment()) is None or (current.label, current.phase) != (
            label, phase):
        assert time.monotonic() < deadline, f"{label} never reached {phase}: {current}"
        assert current is None or current.label != label or current.in_progress, \
            f"{label} ended before {phase}: {current}"
        time.sleep(0.05)


def gone(pid: int) -> bool:
    return not group_members(pid)


# --- a good version --------------------------------------------------------------------


@pytest.fixture(scope="module")
def promotion(tmp_path_factory: pytest.TempPathFactory, sources: dict[str, Path]) -> Scenario:
    return run_scenario(tmp_path_factory.mktemp("promotion"), sources, "good",
                        deploy(sources["good"]))


def test_a_new_version_gets_no_request_before_its_health_checks_and_smoke_test(
        promotion: Scenario) -> None:
    assert promotion.outcome.phase == "complete", promotion.error
    answered = promotion.answered_by("v2")
    assert answered, "v2 never got a request"
    assert min(answered) > promotion.at("v2", "smoke test passed")
    assert promotion.at("v2", "healthy") < promotion.at("v2", "smoke test passed")


def test_during_the_evaluation_the_new_version_gets_its_share_of_requests(
        promotion: Scenario) -> None:
    start, end = promotion.at("v2", "canary"), promotion.at("v2", "all traffic")
    during = promotion.requests(start + 0.2, end - 0.2)
    to_v2 = [r for r in during if r.port == promotion.port("v2")]
    assert len(during) >= 20
    assert 0.15 <= len(to_v2) / len(during) <= 0.35, (len(to_v2), len(during))


def test_once_promoted_the_new_version_gets_every_request(promotion: Scenario) -> None:
    assert promotion.after.serving is not None and promotion.after.serving.label == "v2"
    assert promotion.answered_after(promotion.at("v2", "all traffic")) == {promotion.port("v2")}


def test_the_old_version_stops_only_after_the_new_one_serves_everything(
        promotion: Scenario) -> None:
    assert promotion.at("v1", "stopped") > promotion.at("v2", "all traffic")
    assert promotion.before.serving is not None and gone(promotion.before.serving.pid)


def test_no_request_fails_while_traffic_moves_between_versions_sharing_the_data(
        promotion: Scenario) -> None:
    """The link was created through v1; v2 serves it from the same data directory."""
    assert len(promotion.follower.answers) > 50
    assert promotion.follower.failures == []


def test_requests_in_flight_when_traffic_moves_are_answered(
        tmp_path: Path, sources: dict[str, Path]) -> None:
    """nginx -s reload lets old workers finish, and the old version is stopped only
    after them: a request taking 1 s to the old version outlives the switch."""
    moved = run_scenario(tmp_path, sources, "slow-links", deploy(sources["good"]),
                         code="slow-link")
    assert max(moved.answered_by("v1")) > moved.at("v2", "moving all traffic")
    assert moved.at("v2", "all traffic") < moved.at("v1", "stopped")
    assert moved.follower.failures == []


# --- versions that must never get traffic ----------------------------------------------


@pytest.fixture(scope="module")
def unhealthy(tmp_path_factory: pytest.TempPathFactory, sources: dict[str, Path]) -> Scenario:
    return run_scenario(tmp_path_factory.mktemp("unhealthy"), sources, "good",
                        deploy(sources["json-loads"]))


def test_a_version_that_fails_its_health_check_never_gets_a_request(
        unhealthy: Scenario) -> None:
    assert unhealthy.outcome.phase == "failed"
    assert "did not pass 2 health checks in a row" in unhealthy.outcome.detail
    assert "deployment of v2 failed" in unhealthy.error
    assert unhealthy.answered_by("v2") == []
    assert unhealthy.follower.failures == []


def test_a_failed_version_is_stopped_and_the_old_one_keeps_running_untouched(
        unhealthy: Scenario) -> None:
    assert any(e["event"] == "stopped" and e["port"] == unhealthy.port("v2")
               for e in unhealthy.events)
    assert unhealthy.after.canary is None
    assert unhealthy.after.serving == unhealthy.before.serving  # same process, same port


def test_a_version_that_does_not_start_fails_without_waiting_for_the_timeout(
        tmp_path: Path, sources: dict[str, Path]) -> None:
    crashed = run_scenario(tmp_path, sources, "good", deploy(sources["does-not-start"]))
    assert crashed.outcome.phase == "failed"
    assert "exited with code" in crashed.outcome.detail
    assert "rehearsal_missing_dependency" in crashed.outcome.detail
    assert crashed.answered_by("v2") == []
    assert crashed.after.serving == crashed.before.serving


def test_a_version_whose_form_answers_500_fails_its_smoke_test_before_any_traffic(
        tmp_path: Path, sources: dict[str, Path]) -> None:
    broken = run_scenario(tmp_path, sources, "good", deploy(sources["form-500"]))
    assert broken.outcome.phase == "failed"
    assert "smoke test of v2 failed on its own port, before it got traffic" in \
        broken.outcome.detail
    assert "POST /your-url (url form): expected HTTP 200, got 500" in broken.outcome.detail
    assert broken.answered_by("v2") == []
    assert broken.follower.failures == []


# --- a version that goes bad during its canary ------------------------------------------


def test_failed_health_checks_during_the_evaluation_move_traffic_back(
        tmp_path: Path, sources: dict[str, Path]) -> None:
    worse = run_scenario(tmp_path, sources, "good", deploy(sources["health-fails-later"]))
    assert worse.outcome.phase == "failed"
    assert "failed 2 health checks in a row during the evaluation" in worse.outcome.detail
    assert worse.answered_by("v2"), "it had canary traffic before its health failed"
    back = worse.at("v1", "all traffic back")
    assert worse.answered_after(back) == {worse.port("v1")}
    assert worse.after.serving == worse.before.serving


@pytest.fixture(scope="module")
def aborted(tmp_path_factory: pytest.TempPathFactory, sources: dict[str, Path]) -> Scenario:
    def start_then_abort(target: LocalTarget) -> Deployment:
        target.source = sources["good"]
        started = target.start_deployment("v2", True)
        assert started.phase == "launching" and started.share == 0
        wait_for_phase(target, "v2", "canary")
        time.sleep(0.5)
        return target.abort("the release saw too many 5xx")
    return run_scenario(tmp_path_factory.mktemp("aborted"), sources, "good", start_then_abort)


def test_abort_during_the_canary_moves_every_request_back_to_the_old_version(
        aborted: Scenario) -> None:
    assert aborted.result.phase == "aborted" and aborted.result.share == 0
    assert aborted.result.detail == "aborted: the release saw too many 5xx"
    assert aborted.answered_by("v2"), "the canary got requests before the abort"
    back = aborted.at("v1", "all traffic back")
    assert aborted.answered_after(back) == {aborted.port("v1")}
    assert aborted.follower.failures == []


def test_abort_restarts_nothing_and_stops_the_new_version(aborted: Scenario) -> None:
    assert aborted.after.serving == aborted.before.serving
    assert any(e["event"] == "stopped" and e["port"] == aborted.port("v2")
               for e in aborted.events)
    assert aborted.after.canary is None
    assert aborted.target.state().status == "Ready"


def test_an_aborted_deployment_cannot_be_aborted_into_anything_else(aborted: Scenario) -> None:
    assert aborted.target.abort("again") == aborted.outcome


def test_canary_metrics_compare_the_new_version_with_the_old(
        tmp_path: Path, sources: dict[str, Path]) -> None:
    def measure(target: LocalTarget) -> CanaryMetrics:
        target.source = sources["slow"]
        target.start_deployment("v2-slow", True)
        wait_for_phase(target, "v2-slow", "canary")
        time.sleep(2.5)
        metrics = target.canary_metrics(2.0)
        target.abort("slow")
        return metrics
    metrics = run_scenario(tmp_path, sources, "good", measure).result
    canary, baseline = metrics.canary, metrics.baseline
    assert (canary.label, baseline.label) == ("v2-slow", "v1")
    assert canary.healthy and baseline.healthy
    assert canary.requests >= 3 and baseline.requests > canary.requests
    assert canary.failed == baseline.failed == 0
    assert canary.p50 is not None and baseline.p50 is not None
    assert canary.p50 >= 0.3 > baseline.p50


# --- the process driving a deployment goes away ----------------------------------------


def release(target: LocalTarget, source: Path, label: str) -> subprocess.Popen[bytes]:
    """python -m ops.release --target local, in its own process, as CI runs it."""
    return spawn([sys.executable, "-m", "ops.release", "--target", "local",
                  "--local-dir", str(target.root), "--port", str(target.port),
                  "--source", str(source), "--label", label,
                  "--report", str(target.root / "report.json"), "--poll-interval", "0.2",
                  "--ready-timeout", "30", "--deploy-timeout", "120", "--watch", "1",
                  "--watch-interval", "0.5"], cwd=REPO, env=ENV)


@pytest.mark.parametrize("interrupt", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_release_stops_its_new_version_and_keeps_the_old(
        tmp_path: Path, sources: dict[str, Path], interrupt: signal.Signals) -> None:
    target = environment(tmp_path, sources["good"], LONG_CANARY)
    before = State.load(target.root)
    driver = release(target, sources["good"], "v2")
    try:
        wait_for_phase(target, "v2", "canary")
        canary = State.load(target.root).canary
        assert canary is not None and canary.running
        driver.send_signal(interrupt)
        assert driver.wait(timeout=60) != 0
        after = State.load(target.root)
        assert after.deployment is not None and after.deployment.phase == "aborted"
        assert after.deployment.detail == "aborted: interrupted"
        assert gone(canary.pid)
        assert after.canary is None and after.serving == before.serving
        assert requests.get(f"{target.url}/healthz", timeout=10).json()["version"] == "v1"
        assert target.state().status == "Ready"
    finally:
        stop(driver)
        target.stop()


def ops_local(command: str, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops.local", command,  # nosec B603
                           "--local-dir", str(root)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture
def killed(tmp_path: Path, sources: dict[str, Path]) -> Iterator[tuple[LocalTarget, State]]:
    """A release killed with SIGKILL during its canary: its new version still runs."""
    target = environment(tmp_path, sources["good"], LONG_CANARY)
    driver = release(target, sources["good"], "v2")
    try:
        wait_for_phase(target, "v2", "canary")
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        orphaned = State.load(target.root)
        assert orphaned.canary is not None and orphaned.canary.running
        yield target, orphaned
    finally:
        target.stop()


def test_the_next_deployment_cleans_up_after_a_release_killed_with_sigkill(
        killed: tuple[LocalTarget, State]) -> None:
    target, orphaned = killed
    assert orphaned.canary is not None
    target.policy = FAST
    target.deploy("v3", True, 60)
    after = State.load(target.root)
    assert gone(orphaned.canary.pid)
    assert after.serving is not None and after.serving.label == "v3"
    events = (target.root / "logs" / "events.jsonl").read_text()
    assert "stopped: its deployment was abandoned" in events


def test_ops_local_stop_stops_everything_a_release_left_running(
        killed: tuple[LocalTarget, State]) -> None:
    target, orphaned = killed
    assert orphaned.nginx_pid is not None and orphaned.serving and orphaned.canary
    status = ops_local("status", target.root)
    assert status.returncode == 0, status.stderr
    assert "v1: running, HTTP 200" in status.stdout and "v2: running" in status.stdout
    done = ops_local("stop", target.root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("stopped: nginx")
    for pid in (orphaned.nginx_pid, orphaned.serving.pid, orphaned.canary.pid):
        assert gone(pid)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", target.port), timeout=2).close()


# --- the pieces, without processes ----------------------------------------------------


def test_request_counts_use_nginx_millisecond_times(tmp_path: Path) -> None:
    """A watch starting at .300 does not count what the previous version served at .100."""
    from datetime import datetime, timezone
    target = LocalTarget(tmp_path, port=1)
    t0 = 1_800_000_000
    (tmp_path / "logs" / "access.log").write_text(
        f'{t0}.100 "127.0.0.1:5001" 500 0.003 "0.000" "0.003" "GET /a"\n'
        f'{t0}.400 "127.0.0.1:5002" 302 0.002 "0.000" "0.002" "GET /a"\n'
        f'{t0}.900 "127.0.0.1:5002" 503 0.002 "0.000" "0.002" "GET /healthz"\n'
        'not an access log line\n')
    start = datetime.fromtimestamp(t0 + 0.3, tz=timezone.utc)
    end = datetime.fromtimestamp(t0 + 5, tz=timezone.utc)
    assert target.request_counts(start, end) == (1, 2)
    assert target.request_counts(datetime.fromtimestamp(t0, tz=timezone.utc), end) == (2, 3)


def test_a_request_no_version_answered_is_a_connection_error_not_a_5xx() -> None:
    refused = parse_request('1800000000.100 "127.0.0.1:5001" 502 0.001 "-" "-" "GET /a"')
    answered = parse_request('1800000000.100 "127.0.0.1:5001" 500 0.01 "0.000" "0.01" "GET /"')
    assert refused is not None and not refused.answered and refused.port == 5001
    assert answered is not None and answered.answered and answered.status == 500


def test_the_window_is_read_from_the_end_of_a_long_log(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    t0 = 1_800_000_000
    log.write_text("".join(f'{t0 + i / 100:.3f} "127.0.0.1:5001" 302 0.002 "0.000" "0.002" '
                           f'"GET /{i}"\n' for i in range(100_000)))
    since = t0 + 990.5
    window = read_requests(log, since)
    assert [r.request for r in window] == [f"GET /{i}" for i in range(99_050, 100_000)]


@pytest.mark.parametrize("procfile, expected", [
    ("web: gunicorn --config gunicorn.conf.py --bind 127.0.0.1:8000 application:application",
     ["gunicorn", "--config", "gunicorn.conf.py", "--bind", "127.0.0.1:5001",
      "application:application"]),
    ("web: gunicorn --bind=0.0.0.0:80 app:app", ["gunicorn", "--bind=127.0.0.1:5001", "app:app"]),
    (None, ["gunicorn", "application:application", "--bind", "127.0.0.1:5001"]),
])
def test_a_version_runs_its_procfile_command_on_its_own_port(
        tmp_path: Path, procfile: str | None, expected: list[str]) -> None:
    if procfile is not None:
        (tmp_path / "Procfile").write_text(procfile + "\n")
    assert web_command(tmp_path, 5001) == expected


def test_the_repository_procfile_is_what_a_local_version_runs() -> None:
    assert web_command(REPO, 5001)[:3] == ["gunicorn", "--config", "gunicorn.conf.py"]


def test_settings_with_an_unknown_option_are_refused(tmp_path: Path) -> None:
    (tmp_path / "settings.json").write_text('{"NewVersionPercent": 10}')
    with pytest.raises(TargetError, match="unknown settings"):
        Policy.load(tmp_path)
