"""python -m ops.recover: a snapshot restored with the real ops.backup, then every link
written since created again through the real app under gunicorn, the version that must
read the store; and a release through the local target that writes data the old
version cannot read (class E), recovered by ops.release itself."""
from __future__ import annotations

import json
import os
import subprocess  # nosec B404 - runs python -m ops.recover and ops.release, as operators do
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from ops.local import stop_environment
from ops.rehearse import CASES, committed_tree
from tests.servers import REPO, GunicornServer, free_port
from tests.test_local_target import require_nginx

FILE_BYTES = bytes(range(256)) * 4


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GunicornServer]:
    with GunicornServer(tmp_path / "data", workers=2, env={"CREATE_RATE_LIMIT": "off"}) as srv:
        yield srv


def create(server: GunicornServer, code: str) -> None:
    resp = requests.post(f"{server.url}/api/links",
                         json={"url": f"https://example.com/{code}", "code": code}, timeout=10)
    assert resp.status_code == 201, resp.text


def upload(server: GunicornServer, code: str) -> None:
    with requests.Session() as browser:
        page = browser.get(f"{server.url}/", timeout=10).text
        token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        resp = browser.post(f"{server.url}/your-url", data={"csrf_token": token, "code": code},
                            files={"file": ("data.bin", FILE_BYTES)}, timeout=10)
    assert resp.status_code == 200, resp.text


def ops(server: GunicornServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO,  # nosec B603
                          env={**os.environ, "DATA_DIR": str(server.data_dir)},
                          capture_output=True, text=True, timeout=300, check=False)


def snapshot(server: GunicornServer, dest: Path) -> str:
    done = ops(server, "ops.backup", "snapshot", str(dest))
    assert done.returncode == 0, done.stderr
    return f"{dest}/{json.loads(done.stdout)['name']}"


def rewrite_as_a_newer_version(server: GunicornServer, change: Any) -> None:
    """What a release that changed the store's format leaves: the same links, written in
    a shape the running version refuses."""
    links = json.loads(server.urls_file.read_text())
    server.urls_file.write_text(json.dumps({code: change(record)
                                            for code, record in links.items()}))
    assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 503


def with_numeric_time(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "created_at": 1795000000}


def follows(server: GunicornServer, code: str) -> bool:
    resp = requests.get(f"{server.url}/{code}", allow_redirects=False, timeout=10)
    return resp.status_code == 302 and resp.headers["Location"] == f"https://example.com/{code}"


def test_every_link_written_since_the_snapshot_comes_back_through_the_running_version(
        server: GunicornServer, tmp_path: Path) -> None:
    for code in ("before-1", "before-2"):
        create(server, code)
    taken = snapshot(server, tmp_path / "snapshots")
    for code in ("after-1", "after-2"):
        create(server, code)
    upload(server, "after-file")
    rewrite_as_a_newer_version(server, with_numeric_time)

    done = ops(server, "ops.recover", taken, "--url", server.url)

    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["ok"] and sorted(summary["replayed"]) == ["after-1", "after-2", "after-file"]
    assert "created again 3 of the 3 link(s) written since" in summary["summary"]
    assert all(follows(server, code) for code in ("before-1", "before-2", "after-1", "after-2"))
    download = requests.get(f"{server.url}/after-file", timeout=10)
    assert download.status_code == 200 and download.content == FILE_BYTES
    assert requests.get(f"{server.url}/healthz", timeout=10).json()["status"] == "ok"
    assert Path(summary["replaced_file_kept_as"]).exists()


def test_a_record_only_a_migration_could_read_is_named_and_kept(
        server: GunicornServer, tmp_path: Path) -> None:
    create(server, "before")
    taken = snapshot(server, tmp_path / "snapshots")
    create(server, "renamed")
    rewrite_as_a_newer_version(server, lambda record: {"target": record["url"]})

    done = ops(server, "ops.recover", taken, "--url", server.url)

    assert done.returncode == 1
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["replayed"] == [] and list(summary["not_replayed"]) == ["renamed"]
    assert "no plain url or file in ['target']" in summary["not_replayed"]["renamed"]
    assert "NOT back: renamed" in summary["summary"]
    assert str(summary["replaced_file_kept_as"]) in summary["summary"]
    assert follows(server, "before") and not follows(server, "renamed")


def test_a_snapshot_that_cannot_be_restored_changes_nothing(
        server: GunicornServer, tmp_path: Path) -> None:
    create(server, "kept")
    done = ops(server, "ops.recover", str(tmp_path / "no-such-snapshot"), "--url", server.url)
    assert done.returncode == 1
    assert "python -m ops.backup restore failed" in json.loads(done.stdout)["summary"]
    assert follows(server, "kept")


# --- class E through ops.release ------------------------------------------------------


def test_a_release_that_writes_what_the_old_version_cannot_read_loses_no_link(
        tmp_path: Path) -> None:
    """The new version's pre-traffic smoke test writes a record the old store refuses:
    the deployment is refused before any traffic, ops.release restores the pre-deploy
    snapshot the report names and creates the links written since again."""
    require_nginx()
    root, port = tmp_path / "environment", free_port()
    good, bad = committed_tree(tmp_path / "good"), committed_tree(tmp_path / "E")
    CASES["E"].mutate(bad)
    env = {**os.environ, "CREATE_RATE_LIMIT": "off", "GUNICORN_WORKERS": "1",
           "ALERT_WEBHOOK_URL": ""}
    (root / "settings.json").parent.mkdir(parents=True)
    (root / "settings.json").write_text(json.dumps({
        "evaluation_time": 3, "health_check_interval": 0.2, "healthy_threshold": 2,
        "command_timeout": 20, "smoke_timeout": 5}))

    def release(label: str, source: Path, *extra: str) -> dict[str, Any]:
        subprocess.run([sys.executable, "-m", "ops.release", "--target", "local",  # nosec
                        "--local-dir", str(root), "--port", str(port), "--source", str(source),
                        "--label", label, "--report", str(tmp_path / f"{label}.json"),
                        "--backup", "--canary-interval", "0.5", "--poll-interval", "0.2",
                        "--watch", "1", "--watch-interval", "0.5", "--min-requests", "5",
                        "--smoke-timeout", "5", *extra],
                       cwd=REPO, env=env, capture_output=True, timeout=300, check=False)
        report: dict[str, Any] = json.loads((tmp_path / f"{label}.json").read_text())
        return report

    try:
        assert release("v1", good, "--allow-unhealthy")["outcome"] == "deployed"
        url = f"http://127.0.0.1:{port}"
        for i in range(10):
            assert requests.post(f"{url}/api/links", json={"url": f"https://example.com/{i}",
                                                           "code": f"kept-{i}"},
                                 timeout=10).status_code == 201
        report = release("v2-E", bad)
        assert report["outcome"] == "rolled_back", report["error"]
        assert "cannot read" in report["error"]
        assert report["backup"].startswith(f"{root}/snapshots/pre-deploy/v2-E/")
        assert report["recovery"].startswith(f"restored {report['backup']}")
        data = next(step for step in report["steps"] if step["name"] == "rollback:data")
        assert "the store check says" in data["detail"]
        for i in range(10):
            resp = requests.get(f"{url}/kept-{i}", allow_redirects=False, timeout=10)
            assert resp.headers["Location"] == f"https://example.com/{i}"
        health = requests.get(f"{url}/healthz", timeout=10).json()
        assert (health["status"], health["version"]) == ("ok", "v1")
    finally:
        stop_environment(root)
