"""Rehearse the original incident end to end against a real local environment.

`python -m ops.release --target local` deploys into a release directory served by real
gunicorn on loopback (ops/targets.py: LocalTarget). A good version (a copy of the
repository's application.py, templates and static) goes out first; links are created;
then the same app with `json.load` changed to `json.loads` - the bug of the original
outage - is released while a steady client keeps following links. The release must be
detected as bad and rolled back automatically, every link created before must still be
there, and the figures (time to restore, failed requests) go to
test-output/release-rehearsal.json for docs/deploying.md.
"""
from __future__ import annotations

import io
import json
import os
import subprocess  # nosec B404 - runs python -m ops.release
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from ops.release import EXIT_DEPLOYED, EXIT_ROLLED_BACK
from ops.targets import LocalTarget
from tests.servers import free_port

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "test-output"
GOOD, BAD = "v1-good", "v2-json-loads"
LINKS = 20


def copy_app(dest: Path) -> Path:
    """What the original app shipped - application.py, templates/, static/ - as committed
    (git HEAD), as `eb deploy` would bundle it: work in progress is not released."""
    dest.mkdir(parents=True)
    archive = subprocess.run(  # nosec B603 B607
        ["git", "archive", "HEAD", "application.py", "linkstore", "templates", "static"],
        cwd=REPO, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    assert (dest / "application.py").exists()
    return dest


def break_like_the_incident(source: Path) -> None:
    app = source / "linkstore" / "jsonfile.py"  # where the app reads its links file
    text = app.read_text()
    assert "json.load(" in text, "the app no longer reads its store with json.load"
    app.write_text(text.replace("json.load(", "json.loads("))


@dataclass
class SteadyClient:
    """Follows the known links round-robin every 20 ms and records every outcome."""

    url: str
    codes: list[str]
    results: list[tuple[float, bool]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, max_seconds: float = 180.0, max_requests: int = 20000) -> None:
        session = requests.Session()
        deadline = time.monotonic() + max_seconds
        i = 0
        while not self.stop.is_set() and time.monotonic() < deadline and i < max_requests:
            code = self.codes[i % len(self.codes)]
            try:
                resp = session.get(f"{self.url}/{code}", allow_redirects=False, timeout=2)
                ok = resp.status_code == 302
            except requests.RequestException:
                ok = False
                session = requests.Session()
            self.results.append((time.monotonic(), ok))
            i += 1
            time.sleep(0.02)

    @property
    def failures(self) -> list[float]:
        return [t for t, ok in self.results if not ok]


def release(root: Path, port: int, source: Path, label: str, report: Path,
            *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CREATE_RATE_LIMIT": "off", "SECRET_KEY": "rehearsal",
           "ALERT_WEBHOOK_URL": ""}
    cmd = [sys.executable, "-m", "ops.release", "--target", "local", "--local-dir", str(root),
           "--port", str(port), "--source", str(source), "--label", label,
           "--report", str(report), "--poll-interval", "0.2", "--verify-timeout", "20",
           "--deploy-timeout", "30", "--ready-timeout", "30", "--watch", "2",
           "--watch-interval", "0.5", "--min-requests", "5", *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,  # nosec B603
                          timeout=180, check=False)


@pytest.fixture
def environment(tmp_path: Path) -> Iterator[LocalTarget]:
    target = LocalTarget(tmp_path / "env", free_port())
    yield target
    target.stop()


def test_the_json_loads_release_is_rolled_back_and_no_link_is_lost(
        tmp_path: Path, environment: LocalTarget) -> None:
    root, port = environment.root, environment.port
    good = copy_app(tmp_path / "good")
    bad = copy_app(tmp_path / "bad")
    break_like_the_incident(bad)

    first = release(root, port, good, GOOD, tmp_path / "first.json", "--allow-unhealthy")
    assert first.returncode == EXIT_DEPLOYED, first.stderr

    url = environment.url
    codes = []
    for i in range(LINKS):
        resp = requests.post(f"{url}/api/links", json={"url": f"https://example.com/{i}"},
                             timeout=5)
        assert resp.status_code == 201, resp.text
        codes.append(resp.json()["code"])

    client = SteadyClient(url, codes)
    thread = threading.Thread(target=client.run)
    thread.start()
    time.sleep(1.0)
    bad_deploy_at = time.monotonic()
    second = release(root, port, bad, BAD, tmp_path / "second.json")
    release_done_at = time.monotonic()
    time.sleep(1.0)
    client.stop.set()
    thread.join(timeout=10)

    assert second.returncode == EXIT_ROLLED_BACK, second.stderr
    report = json.loads((tmp_path / "second.json").read_text())
    assert report["outcome"] == "rolled_back"
    assert report["last_good_version"] == GOOD
    assert report["failed_step"] in ("health", "healthz-version", "smoke", "watch-5xx")
    assert report["rollback"] == {"version": GOOD, "ok": True,
                                  "seconds": report["rollback"]["seconds"]}
    assert environment.state().version == GOOD
    assert requests.get(f"{url}/healthz", timeout=5).json()["version"] == GOOD

    for i, code in enumerate(codes):
        resp = requests.get(f"{url}/api/links/{code}", timeout=5)
        assert resp.status_code == 200 and resp.json()["url"] == f"https://example.com/{i}"

    failures = client.failures
    assert failures, "the steady client never saw the bad version: nothing was rehearsed"
    assert client.results[-1][1], "the service is not serving after the rollback"
    restored_at = next(t for t, ok in client.results if ok and t > failures[-1])
    figures = {
        "bad_release_to_restored_seconds": round(restored_at - bad_deploy_at, 2),
        "first_failure_to_restored_seconds": round(restored_at - failures[0], 2),
        "release_command_seconds": round(release_done_at - bad_deploy_at, 2),
        "failed_requests": len(failures),
        "requests": len(client.results),
        "failed_step": report["failed_step"],
        "rollback_seconds": report["rollback"]["seconds"],
        "links_before": LINKS,
        "links_after_rollback_found": LINKS,
    }
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "release-rehearsal.json").write_text(json.dumps(figures, indent=2) + "\n")
    (OUTPUT / "release-rehearsal.log").write_text(second.stderr)
    print(json.dumps(figures, indent=2))
