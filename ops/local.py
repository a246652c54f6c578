"""The local target: an Elastic Beanstalk environment with traffic-splitting deployments,
played on this machine by real nginx and real gunicorn, so releases are rehearsed end
to end (`make rehearse`, tests/test_release_rehearsal.py).

    python -m ops.release --target local --local-dir DIR --source SRC --port PORT --label L
    python -m ops.local status --local-dir DIR
    python -m ops.local stop --local-dir DIR     # stops everything the environment runs

What stands for what:

    Elastic Beanstalk                           here
    the load balancer, one public address       nginx on 127.0.0.1:PORT (weighted upstreams)
    the instances that run one version          one gunicorn per version, on its own
                                                loopback port, started as its Procfile says
    the EFS mount                               DIR/data, shared by every version
    the health check on /healthz                GET /healthz on the version's own port
    a postdeploy hook running the smoke test    python -m ops.smoke --full on that port
    NewVersionPercent, EvaluationTime           Policy (EvaluationTime in seconds here)
    AbortEnvironmentUpdate                      LocalTarget.abort()
    per-instance requests, 5xx, latency         LocalTarget.canary_metrics(), from nginx's
      (DescribeInstancesHealth)                   access log, by upstream
    SSM Run Command on an instance: the         LocalTarget.smoke_canary(), snapshot() and
      canary's smoke test, ops.backup,            recover(), on the canary's port and the
      ops.recover                                 data directory

A deployment follows Elastic Beanstalk's traffic splitting (docs/deploying.md, "Choosing
the deployment policy", cites the pages). Phases, as `deployment()` reports them:

- `launching`: the new version starts beside the serving one, on a port of its own,
  and gets no traffic. It must pass `healthy_threshold` health checks in a row within
  `command_timeout` (a version that exits, or never passes, fails the deployment), then
  the full smoke test against its own port; and the old version must still pass its
  health check after that test wrote to the shared store (a version whose writes the
  old one cannot read fails here, before any traffic).
- `canary`: nginx sends it `new_version_percent` % of requests (nginx -s reload: old
  workers finish their requests, so none is dropped) for `evaluation_time` seconds,
  while its health is checked every `health_check_interval`; `unhealthy_threshold`
  failures in a row move traffic back and stop it (phase `failed`), as EB does.
- `promoting`, then `complete`: all traffic to the new version; the old one is stopped
  only after nginx's last worker routing to it has finished.
- `failed` (the target gave up: see `detail`) or `aborted` (abort() was called): traffic
  is on the old version, which was never restarted, and the new one is stopped.

The first deployment has no old version to split with: it goes from `launching`
straight to `complete` and starts nginx.

Interface for the release logic (ops.release):

- the blocking `Target` methods (`state`, `health`, `version_exists`, `deploy`,
  `request_counts`); `deploy()` runs a whole deployment and raises TargetError unless
  it completes;
- `start_deployment(label, new, timeout)` returns at once, the deployment runs in a
  thread; `deployment()` is its current phase, share and detail; `canary_metrics(window)`
  the canary's and the baseline's requests, 5xx, connection errors, p50 and p99 and
  health over the last `window` seconds; `abort(reason)` moves traffic back to the old
  version and stops the new one (in `launching` or `canary`; TargetError once
  promoting); `smoke_canary` runs `ops.smoke --full` against the canary's own port;
- `snapshot(label)` and `recover(snapshot)`: `python -m ops.backup snapshot` into
  DIR/snapshots/pre-deploy/<label>/, and `python -m ops.recover` on the data directory
  through nginx.

Files under DIR: versions/<label>/ (a copy of the source tree, like eb deploy's bundle),
data/, snapshots/, logs/access.log (nginx: every request and the upstream that answered it),
logs/<label>.log (that version's gunicorn), logs/nginx-error.log, logs/events.jsonl
(what the target did, when, to which version and port), nginx/ (its configuration),
settings.json (the Policy, optional), state.json and deploy.lock (held while a
deployment runs: the environment is "Updating").

Processes: every one is started by ops.processes.spawn in a process group of its own
and stopped with ops.processes.stop. The serving version and nginx are left running
between releases, on purpose (an environment keeps serving); anything a deployment
started is stopped when it fails, is aborted, or when the process driving it exits
(normally, on Ctrl-C or on SIGTERM). A driver killed with SIGKILL leaves its new
version running: the next deployment, or `python -m ops.local stop`, cleans it up.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess  # nosec B404
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any, Mapping

from ops.processes import NGINX as NGINX_STOP
from ops.processes import group_members, spawn, stop
from ops.targets import (NOT_RUNNING, BasicTarget, CanaryMetrics, Deployment, EnvState,
                         Health, Phase, TargetError, VersionStats)

LOG = logging.getLogger("ops.local")
REPO_ROOT = Path(__file__).resolve().parent.parent
# What a deploy copies from the source tree into versions/<label>/ (like `eb deploy`,
# which bundles the committed tree and leaves local state behind).
IGNORED = shutil.ignore_patterns(".git", ".venv", "data", "test-output", "node_modules",
                                 "__pycache__", ".mypy_cache", ".pytest_cache", "*.pyc")
# What Elastic Beanstalk's Python platform runs when a bundle has no Procfile.
DEFAULT_WEB = "gunicorn application:application"


def nginx_binary() -> Path | None:
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    return Path(found) if Path(found).exists() else None


@dataclass(frozen=True)
class Policy:
    """The traffic-splitting settings, named after Elastic Beanstalk's options."""

    new_version_percent: int = 10    # NewVersionPercent
    evaluation_time: float = 30.0    # EvaluationTime (minutes on EB, seconds here)
    health_check_interval: float = 1.0  # HealthCheckInterval
    healthy_threshold: int = 3       # HealthyThresholdCount
    unhealthy_threshold: int = 3     # UnhealthyThresholdCount
    command_timeout: float = 120.0   # Timeout (aws:elasticbeanstalk:command)
    smoke_timeout: float = 10.0      # seconds per request of the pre-traffic smoke test

    @classmethod
    def load(cls, root: Path) -> Policy:
        """DIR/settings.json if there is one (any of the fields above), else defaults."""
        path = root / "settings.json"
        if not path.exists():
            return cls()
        settings = json.loads(path.read_text())
        unknown = set(settings) - {f.name for f in fields(cls)}
        if unknown:
            raise TargetError(f"{path}: unknown settings {sorted(unknown)}")
        policy = cls(**settings)
        if not 1 <= policy.new_version_percent <= 100:
            raise TargetError(f"{path}: new_version_percent must be 1 to 100")
        return policy

    def save(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "settings.json").write_text(json.dumps(asdict(self), indent=2) + "\n")


@dataclass(frozen=True)
class Instance:
    """One running version: its gunicorn's process group and loopback port."""

    label: str
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return bool(group_members(self.pid))


@dataclass
class State:
    """state.json: what runs, and the deployment in progress or the last one."""

    port: int | None = None
    nginx_pid: int | None = None
    serving: Instance | None = None
    canary: Instance | None = None
    deployment: Deployment | None = None

    @classmethod
    def load(cls, root: Path) -> State:
        path = root / "state.json"
        if not path.exists():
            return cls()
        raw = json.loads(path.read_text())
        return cls(port=raw.get("port"), nginx_pid=raw.get("nginx_pid"),
                   serving=Instance(**raw["serving"]) if raw.get("serving") else None,
                   canary=Instance(**raw["canary"]) if raw.get("canary") else None,
                   deployment=Deployment(**raw["deployment"]) if raw.get("deployment")
                   else None)

    def save(self, root: Path) -> None:
        tmp = root / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, root / "state.json")


class _Stopped(Exception):
    """abort() took over the deployment: the driver thread just ends."""


# --- nginx, the load balancer ----------------------------------------------------------

ACCESS_LOG_FORMAT = ('$msec "$upstream_addr" $status $request_time "$upstream_connect_time" '
                     '"$upstream_header_time" "$request_method $uri"')
ACCESS_LINE = re.compile(r'(?P<at>\d+\.\d+) "(?P<upstream>[^"]*)" (?P<status>\d{3}) '
                         r'(?P<seconds>[\d.]+) "[^"]*" "(?P<header>[^"]*)" "(?P<request>.*)"')


class Nginx:
    """nginx in front of the versions, as the load balancer is on Elastic Beanstalk.

    It stands for the load balancer, not for the nginx on each instance, so it has no
    redirect cache, does not retry a failed request on another version
    (proxy_next_upstream off: a load balancer answers 502), and closes each client
    connection after its response: a reload cannot then race a client reusing an idle
    connection, a race the real load balancer, which never reloads, does not have."""

    def __init__(self, root: Path, port: int) -> None:
        self.prefix = root / "nginx"
        self.logs = root / "logs"
        self.port = port
        self.conf = self.prefix / "nginx.conf"

    def config(self, weights: Mapping[int, int]) -> str:
        servers = "\n".join(f"        server 127.0.0.1:{port} weight={weight};"
                            for port, weight in weights.items())
        user = "user root;\n" if os.geteuid() == 0 else ""
        temp = "\n".join(f"    {kind}_temp_path {self.prefix}/{kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        return f"""# Written by ops.local: the load balancer of a local environment.
daemon off;
{user}worker_processes 1;
pid {self.prefix}/nginx.pid;
error_log {self.logs}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format release '{ACCESS_LOG_FORMAT}';
    access_log {self.logs}/access.log release;
{temp}
    keepalive_timeout 0;
    client_max_body_size 11m;
    upstream versions {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://versions;
            proxy_next_upstream off;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""

    def _command(self, *args: str) -> list[str]:
        binary = nginx_binary()
        if binary is None:
            raise TargetError("nginx is not installed (Debian: apt-get install nginx-light); "
                              "the local target needs it as its load balancer")
        return [str(binary), "-p", str(self.prefix), "-c", str(self.conf),
                "-e", str(self.logs / "nginx-error.log"), *args]

    def _write(self, weights: Mapping[int, int]) -> None:
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.config(weights))
        done = subprocess.run(self._command("-t", "-q"),  # nosec B603
                              capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise TargetError(f"nginx refused its configuration {self.conf}: "
                              f"{(done.stdout + done.stderr).strip()}")

    def start(self, weights: Mapping[int, int], timeout: float = 30.0) -> int:
        self._write(weights)
        process = spawn(self._command())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise TargetError(f"nginx exited with code {process.returncode}: "
                                  f"{tail(self.logs / 'nginx-error.log')}")
            if self._pid_file() == process.pid:  # written after it listens; -s reads it
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return process.pid
            time.sleep(0.05)
        stop(process, NGINX_STOP)
        raise TargetError(f"nginx did not listen on 127.0.0.1:{self.port} within {timeout:g} s")

    def _pid_file(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.prefix / "nginx.pid").read_text())
        return None

    def route(self, pid: int, weights: Mapping[int, int], timeout: float = 60.0) -> None:
        """Reload with new weights; return once the new worker runs and every old worker
        has finished its requests and exited (nginx -s reload drops none of them)."""
        self._write(weights)
        old = workers(pid)
        done = subprocess.run(self._command("-s", "reload"), capture_output=True,  # nosec B603
                              text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise TargetError(f"nginx -s reload failed: {(done.stdout + done.stderr).strip()}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = workers(pid)
            if now - old and not now & old:
                return
            time.sleep(0.02)
        raise TargetError(f"nginx did not finish its reload within {timeout:g} s: "
                          f"{tail(self.logs / 'nginx-error.log')}")


def workers(master: int) -> set[int]:
    """The nginx master's worker processes."""
    children = Path(f"/proc/{master}/task/{master}/children")
    try:
        return {int(pid) for pid in children.read_text().split()}
    except OSError:
        return set()


# --- the access log ----------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One line of nginx's access log."""

    at: float          # when it finished, seconds since the epoch
    port: int | None   # the version's port; None when no upstream was tried
    status: int
    seconds: float     # from the first byte of the request to the last of the response
    answered: bool     # the version sent a response (False: refused, reset, timed out)
    request: str       # "GET /abc"


def read_requests(log: Path, since: float) -> list[Request]:
    """The requests logged at or after `since`, oldest first. The log is read from its
    end, in growing blocks: a long rehearsal writes megabytes, a canary watch wants
    the last seconds."""
    if not log.exists():
        return []
    with open(log, "rb") as f:
        end, size = f.seek(0, os.SEEK_END), 1 << 16
        while True:
            start = max(0, end - size)
            f.seek(start)
            lines = f.read(end - start).decode(errors="replace").splitlines()[bool(start):]
            first = parse_request(lines[0]) if lines else None
            if start == 0 or (first is not None and first.at < since):
                break
            size *= 2
    requests = (parse_request(line) for line in lines)
    return [r for r in requests if r is not None and r.at >= since]


def parse_request(line: str) -> Request | None:
    match = ACCESS_LINE.fullmatch(line.strip())
    if not match:
        return None
    upstream = match["upstream"].split(",")[-1].strip()
    port = int(upstream.rsplit(":", 1)[1]) if upstream.startswith("127.0.0.1:") else None
    return Request(at=float(match["at"]), port=port, status=int(match["status"]),
                   seconds=float(match["seconds"]), answered=match["header"] not in ("", "-"),
                   request=match["request"])


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least q % of values at or below."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def version_stats(instance: Instance | None, requests: list[Request]) -> VersionStats:
    if instance is None:
        return NOT_RUNNING
    healthy, detail = check_health(instance.url)
    mine = [r for r in requests if r.port == instance.port]
    times = [r.seconds for r in mine]
    return VersionStats(instance.label, healthy, detail, len(mine),
                        sum(r.answered and r.status >= 500 for r in mine),
                        sum(not r.answered for r in mine),
                        percentile(times, 50), percentile(times, 99))


# --- the environment ---------------------------------------------------------------------


class LocalTarget(BasicTarget):
    """A release directory whose versions nginx serves on 127.0.0.1:<port>."""

    def __init__(self, root: Path, port: int, source: Path | None = None,
                 env: Mapping[str, str] | None = None, policy: Policy | None = None) -> None:
        self.root = root.resolve()
        self.port = port
        self.source = source
        self.env = dict(os.environ if env is None else env)
        for sub in ("versions", "data", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.policy = policy or Policy.load(self.root)
        self.name = f"local:{self.root}"
        self.nginx = Nginx(self.root, port)
        self.lock = threading.RLock()  # held for every change of what runs and routes
        self._rollout: Rollout | None = None    # the deployment this process drives
        self._lock_file: IO[str] | None = None  # deploy.lock, held meanwhile
        self._cleanup_registered = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    # --- the Target interface, as ops.release drives it ---------------------------------

    def state(self) -> EnvState:
        serving = State.load(self.root).serving
        return EnvState("Updating" if self._busy() else "Ready",
                        serving.label if serving else None, self.url)

    def health(self) -> Health:
        """Like Elastic Beanstalk's environment health: Green/Ok when the load balancer
        runs and every running version passes /healthz, Yellow/Warning when only some
        do, Red/Severe when none does or nginx is down, Grey/NoData when nothing runs."""
        state = State.load(self.root)
        instances = [i for i in (state.serving, state.canary) if i is not None]
        if not instances:
            return Health("Grey", "NoData", ("no version deployed",))
        failing = [f"{i.label} on port {i.port}: {detail}" for i in instances
                   for healthy, detail in [check_health(i.url)] if not healthy]
        if not running(state.nginx_pid):
            return Health("Red", "Severe", (f"nginx (the load balancer) is not running on "
                                            f"port {state.port}", *failing))
        if not failing:
            return Health("Green", "Ok")
        if len(failing) < len(instances):
            return Health("Yellow", "Warning", tuple(failing))
        return Health("Red", "Severe", tuple(failing))

    def version_exists(self, label: str) -> bool:
        return (self.root / "versions" / label).is_dir()

    def deploy(self, label: str, new: bool, timeout: float) -> str:
        """A whole deployment: return once it completed; raise TargetError when it failed,
        was aborted or ran past `timeout` (then it is aborted: traffic stays on the old
        version). Interrupted (Ctrl-C, SIGTERM), it is aborted too."""
        current = self.start_deployment(label, new, timeout)
        deadline = time.monotonic() + timeout
        try:
            while current.in_progress:
                if time.monotonic() > deadline:
                    current = self.abort(f"not complete within {timeout:g} s")
                    break
                time.sleep(0.05)
                current = self.deployment() or current
        except BaseException:  # Ctrl-C, SIGTERM (SystemExit), anything: give it up
            with contextlib.suppress(TargetError):  # unless it completed meanwhile
                self.abort("interrupted")
            raise
        if current.phase != "complete":
            raise TargetError(f"deployment of {label} {current.phase}: {current.detail}")
        return f"deployed {label} on {self.url}: {current.detail}"

    def request_counts(self, start: datetime, end: datetime) -> tuple[int, int]:
        """(5xx responses, all responses) that nginx served between start and end."""
        requests = [r for r in read_requests(self.access_log, start.timestamp())
                    if r.at <= end.timestamp()]
        return sum(r.status >= 500 for r in requests), len(requests)

    # --- progressive delivery ------------------------------------------------------------

    def start_deployment(self, label: str, new: bool, timeout: float = 0.0) -> Deployment:
        """Start deploying `label` (copied from the source tree when `new`) and return at
        once (so `timeout` bounds nothing here: the Policy's own waits bound the
        deployment); TargetError when another deployment runs or the version does not
        exist."""
        with self.lock:
            self._take_deploy_lock()
            try:
                version_dir = self._version_dir(label, new)
                state = self._settle(State.load(self.root))
                now = time.time()
                state.deployment = Deployment(
                    label, state.serving.label if state.serving else None, "launching", 0,
                    f"starting {label}", now, now)
                state.save(self.root)
            except BaseException:
                self._release_deploy_lock()
                raise
            self._stop_on_exit()
            self._rollout = Rollout(self, label, version_dir, state.serving)
            self._rollout.start()
            return state.deployment

    def deployment(self) -> Deployment | None:
        """The deployment in progress, or the last one; None before the first."""
        return State.load(self.root).deployment

    def canary_metrics(self, window: float) -> CanaryMetrics:
        """The new version's and the old one's traffic over the last `window` seconds."""
        state = State.load(self.root)
        requests = read_requests(self.access_log, time.time() - window)
        return CanaryMetrics(window, version_stats(state.canary, requests),
                             version_stats(state.serving, requests))

    def abort(self, reason: str) -> Deployment:
        """Move all traffic back to the old version and stop the new one, as
        AbortEnvironmentUpdate does during a traffic-splitting deployment. A deployment
        already failed or aborted is returned as it is; one that is promoting or
        complete cannot be aborted (TargetError: deploy the last good version)."""
        rollout = self._rollout
        if rollout is not None:
            rollout.aborted.set()
        with self.lock:
            current = self.deployment()
            if current is None or current.phase in ("aborted", "failed"):
                return current or self._no_deployment()
            if not current.in_progress or current.phase == "promoting":
                raise TargetError(f"cannot abort the deployment of {current.label}: it is "
                                  f"{current.phase}; deploy the last good version instead")
            if rollout is None or self._lock_file is None:
                raise TargetError(f"the deployment of {current.label} is driven by another "
                                  "process; only that one can abort it")
            return self.back_to_baseline(rollout, "aborted", f"aborted: {reason}")

    def smoke_canary(self, timeout: float) -> str:
        """python -m ops.smoke --full against the canary's own port, while it serves its
        share: a request through nginx cannot choose the version that answers it."""
        canary = State.load(self.root).canary
        if canary is None:
            raise TargetError("no canary runs in this environment")
        return f"{canary.label}: {run_smoke(canary.url, timeout)}"

    def snapshot(self, label: str, timeout: float) -> str:
        """python -m ops.backup snapshot of the data directory, to
        DIR/snapshots/pre-deploy/<label>/<time>, as the pipeline's pre-deploy snapshot
        goes to S3."""
        dest = self.root / "snapshots" / "pre-deploy" / label
        manifest = json.loads(self._ops(["ops.backup", "snapshot", str(dest), "--keep", "3"],
                                        timeout, "the pre-deploy snapshot"))
        return f"{dest}/{manifest['name']}"

    def recover(self, snapshot: str, timeout: float) -> str:
        """python -m ops.recover on the data directory, through nginx: what runs on an
        instance through SSM on Elastic Beanstalk."""
        output = self._ops(["ops.recover", snapshot, "--url", self.url,
                            "--deadline", str(timeout)], timeout + 60, "the recovery")
        return str(json.loads(output.strip().splitlines()[-1])["summary"])

    def _ops(self, args: list[str], timeout: float, what: str) -> str:
        """Run python -m <args> on this environment's data, as the versions see it."""
        env = {**self.instance_env("ops"), "ALERT_WEBHOOK_URL": ""}
        try:
            done = subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT,  # nosec B603
                                  env=env, capture_output=True, text=True, timeout=timeout,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise TargetError(f"{what} did not finish within {timeout:g} s") from None
        if done.returncode != 0:
            raise TargetError(f"{what} failed (python -m {' '.join(args[:2])} exited "
                              f"{done.returncode}): {(done.stdout + done.stderr)[-600:]}")
        return done.stdout

    def stop(self) -> list[str]:
        """Abort our deployment if one runs, then stop everything this environment runs
        (nginx and every version); return what was stopped."""
        with self.lock:
            if self._lock_file is not None:
                self.abort("the environment is being stopped")
            return stop_environment(self.root)

    # --- what a deployment changes, under self.lock ----------------------------------------

    def route(self, weights: Mapping[int, int]) -> None:
        """Send traffic to versions by port and weight; start nginx if it is not running."""
        state = State.load(self.root)
        pid = live(state.nginx_pid)
        if pid is not None:
            self.nginx.route(pid, weights)
        else:
            self.update(nginx_pid=self.nginx.start(weights), port=self.port)

    def promoted(self, new: Instance, baseline: Instance | None) -> None:
        """The new version serves all traffic: stop the old one, record the new."""
        if baseline is not None:
            stop(baseline.pid)
            self.event(baseline, "stopped")
        state = State.load(self.root)
        state.serving, state.canary = new, None
        state.save(self.root)
        stopped = f"; {baseline.label} stopped" if baseline else ""
        self.update(phase="complete", detail=f"{new.label} serves all traffic{stopped}")
        self._release_deploy_lock()

    def back_to_baseline(self, rollout: Rollout, phase: Phase, detail: str) -> Deployment:
        """All traffic to the serving version (never restarted); stop the new one."""
        state = State.load(self.root)
        new = state.canary
        if state.deployment is not None and state.deployment.share > 0 and \
                state.serving is not None:
            self.route({state.serving.port: 1})
            self.event(state.serving, "all traffic back", 0)
        if new is not None:
            stop(rollout.process or new.pid)
            self.event(new, "stopped")
        self.update(canary=None, phase=phase, share=0, detail=detail)
        self._release_deploy_lock()
        LOG.warning("deployment %s: %s", phase, detail)
        return self._current()

    def update(self, **changes: Any) -> None:
        """Record what runs (canary, nginx_pid, port) and the deployment's phase, share
        and detail in state.json."""
        state = State.load(self.root)
        for key in ("canary", "nginx_pid", "port"):
            if key in changes:
                setattr(state, key, changes.pop(key))
        if changes and state.deployment is not None:
            state.deployment = replace(state.deployment, **changes, updated_at=time.time())
        state.save(self.root)

    def event(self, instance: Instance, what: str, share: int | None = None) -> None:
        """A line in logs/events.jsonl (and the log): what happened to which version."""
        entry = {"at": time.time(), "label": instance.label, "port": instance.port,
                 "event": what, **({"share": share} if share is not None else {})}
        with open(self.root / "logs" / "events.jsonl", "a") as events:
            events.write(json.dumps(entry) + "\n")
        LOG.info("%s (port %d): %s%s", instance.label, instance.port, what,
                 f", {share} % of requests" if share is not None else "")

    @property
    def access_log(self) -> Path:
        return self.root / "logs" / "access.log"

    def instance_env(self, label: str) -> dict[str, str]:
        """The environment a version runs with: ours, with the shared data directory and
        its label, and this Python's scripts (gunicorn) first on PATH."""
        env = {k: v for k, v in self.env.items() if k not in ("URLS_FILE", "UPLOAD_DIR")}
        path = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', os.defpath)}"
        return {**env, "DATA_DIR": str(self.data_dir), "APP_VERSION": label, "PATH": path,
                "PYTHONDONTWRITEBYTECODE": "1"}

    # --- helpers ----------------------------------------------------------------------------

    def _version_dir(self, label: str, new: bool) -> Path:
        version_dir = self.root / "versions" / label
        if new and not version_dir.exists():
            if self.source is None:
                raise TargetError("no source directory given to create a new version")
            shutil.copytree(self.source, version_dir, ignore=IGNORED)
        elif not version_dir.exists():
            raise TargetError(f"No Application Version named {label!r} found.")
        return version_dir

    def _settle(self, state: State) -> State:
        """Before a deployment: clean up one whose driver died (SIGKILL), forget a
        serving version that no longer runs, and make sure nginx serves the one that
        does, on our port."""
        if running(state.nginx_pid) and state.port != self.port:
            raise TargetError(f"this environment's nginx listens on port {state.port}: "
                              f"pass --port {state.port}, or stop it first "
                              f"(python -m ops.local stop --local-dir {self.root})")
        abandoned = state.deployment is not None and state.deployment.in_progress
        if abandoned and state.deployment is not None:
            if state.canary is not None:
                stop(state.canary.pid)
                self.event(state.canary, "stopped: its deployment was abandoned")
            state.canary = None
            state.deployment = replace(state.deployment, phase="aborted", share=0,
                                       detail="abandoned: the process driving it exited")
        if state.serving is not None and not state.serving.running:
            self.event(state.serving, "found not running")
            state.serving = None
        state.save(self.root)
        if state.serving is not None and (abandoned or not running(state.nginx_pid)):
            self.route({state.serving.port: 1})
        return State.load(self.root)

    def _current(self) -> Deployment:
        return self.deployment() or self._no_deployment()

    @staticmethod
    def _no_deployment() -> Deployment:
        raise TargetError("no deployment has been started in this environment")

    def _busy(self) -> bool:
        with open(self.root / "deploy.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(lock, fcntl.LOCK_UN)
        return False

    def _take_deploy_lock(self) -> None:
        lock = open(self.root / "deploy.lock", "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise TargetError(f"Environment named {self.name} is in an invalid state for "
                              "this operation. Must be Ready.") from None
        self._lock_file = lock

    def _release_deploy_lock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def _stop_on_exit(self) -> None:
        """Abort our deployment when this process exits, also on Ctrl-C and SIGTERM."""
        if not self._cleanup_registered:
            atexit.register(self._abandon)
            self._cleanup_registered = True
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _exit_on_sigterm)

    def _abandon(self) -> None:
        if self._lock_file is not None:
            with contextlib.suppress(TargetError):
                self.abort("the process driving the deployment is exiting")


class Rollout(threading.Thread):
    """One deployment, step by step, in a thread of its own. `aborted` is set by
    abort(), which then owns the deployment: the steps stop at their next check."""

    def __init__(self, target: LocalTarget, label: str, version_dir: Path,
                 baseline: Instance | None) -> None:
        super().__init__(name=f"deploy {label}", daemon=True)
        self.target, self.policy = target, target.policy
        self.label, self.version_dir, self.baseline = label, version_dir, baseline
        self.aborted = threading.Event()
        self.process: subprocess.Popen[bytes] | None = None

    def run(self) -> None:
        try:
            new = self.launch()
            self.wait_healthy(new)
            self.smoke(new)
            if self.baseline is not None:
                self.check_baseline_reads(new, self.baseline)
                self.split(new, self.baseline)
                self.evaluate(new, self.baseline)
            self.promote(new)
        except _Stopped:
            pass  # abort() moved the traffic back and stopped the new version
        except Exception as err:  # whatever went wrong: give up, traffic to the old version
            message = str(err) if isinstance(err, TargetError) else f"{type(err).__name__}: {err}"
            with self.target.lock:
                if not self.aborted.is_set():
                    self.target.back_to_baseline(self, "failed", message)

    def launch(self) -> Instance:
        with self.target.lock:
            self.check_aborted()
            port = free_port()
            with open(self.target.root / "logs" / f"{self.label}.log", "ab") as log:
                self.process = spawn(web_command(self.version_dir, port), cwd=self.version_dir,
                                     env=self.target.instance_env(self.label), stdout=log)
            new = Instance(self.label, port, self.process.pid)
            self.target.update(canary=new, detail=f"{self.label} started on port {port}")
            self.target.event(new, "launched")
            return new

    def wait_healthy(self, new: Instance) -> None:
        """Health checks until `healthy_threshold` pass in a row, as the load balancer
        requires before a target gets traffic; within `command_timeout`, or fail."""
        deadline = time.monotonic() + self.policy.command_timeout
        streak, last = 0, "no answer yet"
        while True:
            self.check_running(new, "while starting")
            healthy, last = check_health(new.url)
            streak = streak + 1 if healthy else 0
            if streak >= self.policy.healthy_threshold:
                break
            if time.monotonic() > deadline:
                raise TargetError(f"{new.label} did not pass {self.policy.healthy_threshold} "
                                  f"health checks in a row within "
                                  f"{self.policy.command_timeout:g} s (last: {last})")
            self.wait(self.policy.health_check_interval)
        self.target.update(detail=f"{new.label} passed {streak} health checks")
        self.target.event(new, "healthy")

    def smoke(self, new: Instance) -> None:
        """python -m ops.smoke --full against the new version's own port: what the
        postdeploy hook on each new instance does before it takes traffic."""
        try:
            run_smoke(new.url, self.policy.smoke_timeout)
        except TargetError as err:
            self.check_aborted()
            raise TargetError(f"the smoke test of {new.label} failed on its own port, before "
                              f"it got traffic: {err}") from None
        self.check_aborted()
        self.target.update(detail=f"{new.label} passed the full smoke test")
        self.target.event(new, "smoke test passed")

    def check_baseline_reads(self, new: Instance, baseline: Instance) -> None:
        """The old version must still pass /healthz (its store re-reads the file) after
        the new one wrote: a version whose writes the old one cannot read (class E)
        would break every request the old version serves, and the rollback target."""
        healthy, detail = check_health(baseline.url)
        if not healthy:
            raise TargetError(f"{baseline.label} (serving) no longer passes its health "
                              f"check after {new.label} wrote to the store: it cannot read "
                              f"what {new.label} writes ({detail})")
        self.target.event(new, f"{baseline.label} still reads the store")

    def split(self, new: Instance, baseline: Instance) -> None:
        share = self.policy.new_version_percent
        with self.target.lock:
            self.check_aborted()
            self.target.route({baseline.port: 100 - share, new.port: share} if share < 100
                              else {new.port: 1})
            self.target.update(phase="canary", share=share,
                               detail=f"{new.label} gets {share} % of requests for "
                                      f"{self.policy.evaluation_time:g} s")
            self.target.event(new, "canary", share)

    def evaluate(self, new: Instance, baseline: Instance) -> None:
        """Watch the new version's health for evaluation_time; `unhealthy_threshold`
        failures in a row, or its exit, end the deployment (traffic goes back)."""
        end = time.monotonic() + self.policy.evaluation_time
        failures = 0
        while time.monotonic() < end:
            self.wait(min(self.policy.health_check_interval, end - time.monotonic()))
            self.check_running(new, "during the evaluation")
            healthy, detail = check_health(new.url)
            failures = 0 if healthy else failures + 1
            if failures >= self.policy.unhealthy_threshold:
                raise TargetError(f"{new.label} failed {failures} health checks in a row "
                                  f"during the evaluation ({detail}); traffic is back on "
                                  f"{baseline.label}")

    def promote(self, new: Instance) -> None:
        with self.target.lock:
            self.check_aborted()
            self.target.update(phase="promoting", share=100, detail=f"all traffic to {new.label}")
            self.target.event(new, "moving all traffic")
            self.target.route({new.port: 1})
            self.target.event(new, "all traffic", 100)
            self.target.promoted(new, self.baseline)

    def check_aborted(self) -> None:
        if self.aborted.is_set():
            raise _Stopped()

    def wait(self, seconds: float) -> None:
        if self.aborted.wait(max(0.0, seconds)):
            raise _Stopped()

    def check_running(self, new: Instance, when: str) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise TargetError(f"{new.label} exited with code {self.process.returncode} {when}: "
                              f"{tail(self.target.root / 'logs' / f'{new.label}.log')}")


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def running(pid: int | None) -> bool:
    """A process group started by spawn still has a live member."""
    return live(pid) is not None


def live(pid: int | None) -> int | None:
    """pid, if its process group (started by spawn) still has a live member."""
    return pid if pid is not None and group_members(pid) else None


def check_health(url: str, timeout: float = 5.0) -> tuple[bool, str]:
    """GET url/healthz as the load balancer does: healthy when it answers 200 in time."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=timeout) as resp:  # nosec B310
            return resp.status == 200, f"HTTP {resp.status}"
    except urllib.error.HTTPError as err:
        return False, f"/healthz answered HTTP {err.code}: " \
                      f"{err.read()[:300].decode(errors='replace')}"
    except (urllib.error.URLError, OSError) as err:
        return False, f"/healthz unreachable: {err}"


def run_smoke(url: str, timeout: float) -> str:
    """python -m ops.smoke --full against url; its last line, or TargetError with the
    checks that failed."""
    cmd = [sys.executable, "-m", "ops.smoke", "--full", url, "--timeout", str(timeout)]
    try:
        done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True,  # nosec B603
                              timeout=timeout * 20 + 30, check=False)
    except subprocess.TimeoutExpired:
        raise TargetError(f"the smoke test against {url} did not finish") from None
    if done.returncode != 0:
        failures = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
        raise TargetError("; ".join(failures) or done.stderr[-300:])
    return done.stdout.strip().splitlines()[-1]


def web_command(version_dir: Path, port: int) -> list[str]:
    """The Procfile's `web:` command, as Elastic Beanstalk runs it, bound to this port."""
    web = DEFAULT_WEB
    procfile = version_dir / "Procfile"
    if procfile.exists():
        for line in procfile.read_text().splitlines():
            if line.startswith("web:"):
                web = line[len("web:"):]
    args = shlex.split(web)
    address = f"127.0.0.1:{port}"
    for i, arg in enumerate(args):
        if arg in ("--bind", "-b") and i + 1 < len(args):
            return [*args[:i + 1], address, *args[i + 2:]]
        if arg.startswith("--bind="):
            return [*args[:i], f"--bind={address}", *args[i + 1:]]
    return [*args, "--bind", address]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 5) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return " | ".join(text.strip().splitlines()[-lines:]) or f"{path} is empty"


def stop_environment(root: Path) -> list[str]:
    """Stop nginx and every version the environment at root runs; return what stopped."""
    state = State.load(root)
    stopped = []
    nginx = live(state.nginx_pid)
    if nginx is not None:
        stop(nginx, NGINX_STOP)
        stopped.append(f"nginx (pid {state.nginx_pid}, port {state.port})")
    for instance in (state.canary, state.serving):
        if instance is not None and instance.running:
            stop(instance.pid)
            stopped.append(f"{instance.label} (pid {instance.pid}, port {instance.port})")
    if state.deployment is not None and state.deployment.in_progress:
        state.deployment = replace(state.deployment, phase="aborted", share=0,
                                   detail="the environment was stopped")
    state.nginx_pid, state.serving, state.canary = None, None, None
    if (root / "state.json").exists():
        state.save(root)
    return stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.local",
        description="Look at, or stop, a local environment that "
                    "python -m ops.release --target local deploys to.")
    parser.add_argument("command", choices=["status", "stop"],
                        help="status: what runs and the last deployment; stop: stop nginx "
                             "and every version (the data directory is kept)")
    parser.add_argument("--local-dir", type=Path, required=True,
                        help="the environment's directory (ops.release --local-dir)")
    args = parser.parse_args(argv)
    root = args.local_dir.resolve()
    if not (root / "state.json").exists():
        print(f"{root} is not a local environment (no state.json): nothing runs there")
        return 0 if args.command == "stop" else 1
    if args.command == "stop":
        stopped = stop_environment(root)
        print("stopped: " + ", ".join(stopped) if stopped else "nothing was running")
        return 0
    state = State.load(root)
    print(json.dumps(asdict(state), indent=2))
    for instance in (state.serving, state.canary):
        if instance is not None:
            print(f"{instance.label}: {'running' if instance.running else 'NOT running'}, "
                  f"{check_health(instance.url)[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
