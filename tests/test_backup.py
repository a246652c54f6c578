"""ops.backup: snapshots of the real app's data that restore, locally and on (fake) S3."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from application import create_app
from linkstore.jsonfile import FileStore
from ops import backup
from tests.helpers import PostForm
from tests.servers import GunicornServer

ROOT = Path(__file__).resolve().parent.parent


def live_of(app: Flask) -> backup.Live:
    return backup.Live(Path(app.config["URLS_FILE"]), Path(app.config["UPLOAD_DIR"]), 5.0)


def store_args(live: backup.Live) -> list[str]:
    return ["--urls-file", str(live.urls_file), "--upload-dir", str(live.upload_dir)]


def create_links(client: FlaskClient, count: int) -> dict[str, str]:
    """Create links through the API; return code -> URL."""
    made = {}
    for number in range(count):
        url = f"https://example.org/page/{number}"
        response = client.post("/api/links", json={"url": url})
        assert response.status_code == 201, response.text
        made[response.json["code"]] = url  # type: ignore[index]
    return made


def upload(post_form: PostForm, content: bytes, name: str, code: str) -> None:
    response = post_form(file=(io.BytesIO(content), name), code=code)
    assert response.status_code == 200, response.text


def assert_every_link_served(data_dir: Path, links: dict[str, str],
                             files: dict[str, bytes]) -> None:
    """A fresh app over the data directory serves every link and file."""
    client = create_app({"DATA_DIR": data_dir, "TESTING": True,
                         "SECRET_KEY": "test-secret"}).test_client()
    for code, url in links.items():
        response = client.get(f"/{code}")
        assert (response.status_code, response.headers.get("Location")) == (302, url)
    for code, content in files.items():
        response = client.get(f"/{code}")
        assert (response.status_code, response.data) == (200, content)
    assert client.get("/healthz").json["links"] == len(links) + len(files)  # type: ignore[index]


def test_round_trip_snapshot_damage_restore_brings_every_link_back(
        app: Flask, client: FlaskClient, post_form: PostForm, tmp_path: Path) -> None:
    links = create_links(client, 5)
    files = {"quarterly": b"%PDF-1.4 quarterly numbers\n", "photo": b"\x89PNG\r\n\x1a\n pixels"}
    upload(post_form, files["quarterly"], "report.pdf", "quarterly")
    upload(post_form, files["photo"], "photo.png", "photo")
    live = live_of(app)
    dest = tmp_path / "snapshots"

    assert backup.main(["snapshot", str(dest), *store_args(live)]) == 0
    [name] = backup.LocalDestination(dest).snapshot_names()
    manifest = json.loads((dest / name / "manifest.json").read_text())
    assert (manifest["links"], manifest["file_links"], manifest["uploads"]) == (7, 2, 2)
    assert manifest["files"]["urls.json"]["size"] == live.urls_file.stat().st_size
    assert backup.main(["verify", str(dest / name)]) == 0

    before = live.urls_file.read_bytes()
    live.urls_file.write_bytes(before[: len(before) // 2])  # a torn write
    for stored in live.upload_dir.iterdir():
        stored.unlink()
        break
    assert backup.main(["restore", str(dest), *store_args(live)]) == 0

    assert live.urls_file.read_bytes() == before
    [kept] = live.urls_file.parent.glob("urls.json.replaced-*")
    assert kept.read_bytes() == before[: len(before) // 2]  # the damaged file is kept
    assert_every_link_served(live.urls_file.parent, links, files)


def test_verify_finds_a_changed_upload_and_a_broken_link_file(
        app: Flask, post_form: PostForm, tmp_path: Path) -> None:
    upload(post_form, b"original bytes", "notes.txt", "notes")
    live = live_of(app)
    dest = tmp_path / "snapshots"
    manifest = backup.take_snapshot(live, backup.LocalDestination(dest), keep=5)
    snapshot = dest / manifest["name"]
    [copied] = (snapshot / "uploads").iterdir()
    copied.write_bytes(b"Original bytes")
    with pytest.raises(backup.BackupError, match="SHA-256 differs"):
        backup.restore(live, backup.LocalDestination(dest), manifest["name"], force=False)

    copied.write_bytes(b"original bytes")
    assert backup.main(["verify", str(snapshot)]) == 0
    (snapshot / "urls.json").write_text('{"notes": {"file": ')
    assert backup.main(["verify", str(snapshot)]) == 1
    problems = backup.verify(backup.LocalDestination(dest), manifest["name"], tmp_path)
    assert any("not valid JSON" in p for p in problems)


def test_a_manifest_cannot_point_a_restore_outside_the_upload_dir(
        app: Flask, client: FlaskClient, tmp_path: Path) -> None:
    create_links(client, 1)
    dest = tmp_path / "snapshots"
    manifest = backup.take_snapshot(live_of(app), backup.LocalDestination(dest), keep=5)
    path = dest / manifest["name"] / "manifest.json"
    manifest["files"]["uploads/../../escape.txt"] = {"size": 1, "sha256": "0" * 64}
    path.write_text(json.dumps(manifest))
    problems = backup.verify(backup.LocalDestination(dest), manifest["name"], tmp_path)
    assert problems == ["'uploads/../../escape.txt': not a file a snapshot may hold"]


def test_restore_refuses_a_live_file_with_newer_links_unless_forced(
        app: Flask, client: FlaskClient, tmp_path: Path) -> None:
    create_links(client, 2)
    live = live_of(app)
    dest = tmp_path / "snapshots"
    backup.take_snapshot(live, backup.LocalDestination(dest), keep=5)
    newer = create_links(client, 1)
    current = live.urls_file.read_bytes()

    assert backup.main(["restore", str(dest), *store_args(live)]) == 1
    assert live.urls_file.read_bytes() == current  # untouched
    assert backup.main(["restore", str(dest), "--force", *store_args(live)]) == 0
    assert not set(newer) & set(json.loads(live.urls_file.read_bytes()))
    [kept] = live.urls_file.parent.glob("urls.json.replaced-*")
    assert set(newer) <= set(json.loads(kept.read_bytes()))


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can hand files to another owner")
def test_a_restore_run_as_root_leaves_files_the_app_user_owns(
        app: Flask, client: FlaskClient, post_form: PostForm, tmp_path: Path) -> None:
    """On EB the app runs as webapp, while cron and `sudo` run the tool as root."""
    create_links(client, 2)
    upload(post_form, b"owned bytes", "owned.txt", "owned")
    live = live_of(app)
    app_user = 4321
    for path in [live.urls_file.parent, *live.urls_file.parent.rglob("*")]:
        os.chown(path, app_user, app_user)
    live.lock_path.unlink()
    mode = stat.S_IMODE(live.urls_file.stat().st_mode)
    dest = tmp_path / "snapshots"
    backup.take_snapshot(live, backup.LocalDestination(dest), keep=2)
    live.urls_file.write_text("")
    for stored in live.upload_dir.iterdir():
        stored.unlink()

    assert backup.main(["restore", str(dest), *store_args(live)]) == 0
    restored = [live.urls_file, live.lock_path, *live.upload_dir.iterdir()]
    assert len(restored) == 3
    assert {path.stat().st_uid for path in restored} == {app_user}
    assert stat.S_IMODE(live.urls_file.stat().st_mode) == mode


def test_snapshot_refuses_an_unparseable_live_file_and_keeps_older_snapshots(
        app: Flask, client: FlaskClient, tmp_path: Path) -> None:
    create_links(client, 1)
    live = live_of(app)
    dest = tmp_path / "snapshots"
    backup.take_snapshot(live, backup.LocalDestination(dest), keep=1)
    live.urls_file.write_text("{not json")
    assert backup.main(["snapshot", str(dest), "--keep", "1", *store_args(live)]) == 1
    [survivor] = backup.LocalDestination(dest).snapshot_names()
    assert backup.main(["verify", str(dest / survivor)]) == 0


def test_keep_prunes_the_oldest_and_incomplete_snapshots_do_not_count(
        app: Flask, client: FlaskClient, tmp_path: Path) -> None:
    create_links(client, 1)
    live = live_of(app)
    dest = tmp_path / "snapshots"
    (dest / "20000101T000000000000Z").mkdir(parents=True)  # no manifest: cut short
    names = [backup.take_snapshot(live, backup.LocalDestination(dest), keep=2)["name"]
             for _ in range(3)]
    assert backup.LocalDestination(dest).snapshot_names() == names[1:]
    listing = subprocess.run(
        [sys.executable, "-m", "ops.backup", "list", str(dest)], cwd=ROOT,
        capture_output=True, text=True, timeout=60, check=True)
    assert [s["name"] for s in json.loads(listing.stdout)["snapshots"]] == names[1:]


def test_verify_max_age_fails_when_snapshots_stop(
        app: Flask, client: FlaskClient, tmp_path: Path) -> None:
    create_links(client, 1)
    dest = tmp_path / "snapshots"
    backup.take_snapshot(live_of(app), backup.LocalDestination(dest), keep=2)
    assert backup.main(["verify", str(dest), "--max-age", "1h"]) == 0
    assert backup.main(["verify", str(dest), "--max-age", "2999-01-01T00:00"]) == 1


def test_snapshot_waits_for_the_apps_lock(app: Flask, client: FlaskClient,
                                          tmp_path: Path) -> None:
    """The app's own LinkStore lock keeps a snapshot out, so it cannot copy a write midway."""
    create_links(client, 1)
    live = live_of(app)
    with FileStore(live.urls_file, lock_timeout=1.0).locked():
        held = subprocess.run(
            [sys.executable, "-m", "ops.backup", "snapshot", str(tmp_path / "snapshots"),
             "--lock-timeout", "0.3", *store_args(live)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert held.returncode == 1
    assert "stayed locked" in held.stderr
    assert backup.main(["snapshot", str(tmp_path / "snapshots"), *store_args(live)]) == 0


# ---- S3, through moto's in-process fake of the S3 API -------------------------------

@pytest.fixture
def fake_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fake S3 (moto): no network, no real credentials."""
    from moto import mock_aws
    import boto3

    for name, value in {"AWS_ACCESS_KEY_ID": "fake", "AWS_SECRET_ACCESS_KEY": "fake",
                        "AWS_SESSION_TOKEN": "fake", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="shortener-backups")
        yield s3


def test_s3_snapshot_list_verify_restore_and_prune(
        app: Flask, client: FlaskClient, post_form: PostForm, fake_s3: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    links = create_links(client, 3)
    upload(post_form, b"s3 bytes", "s3.txt", "s3file")
    live = live_of(app)
    monkeypatch.setenv("BACKUP_BUCKET", "shortener-backups")
    monkeypatch.setenv("BACKUP_PREFIX", "prod")
    for _ in range(3):
        assert backup.main(["snapshot", "--keep", "2", *store_args(live)]) == 0
    place = backup.S3Destination("s3://shortener-backups/prod")
    names = place.snapshot_names()
    assert len(names) == 2
    keys = [o["Key"] for o in fake_s3.list_objects_v2(Bucket="shortener-backups")["Contents"]]
    assert sorted({key.split("/")[1] for key in keys}) == names  # the oldest is gone
    head = fake_s3.head_object(Bucket="shortener-backups", Key=f"prod/{names[-1]}/urls.json")
    assert head["ServerSideEncryption"] == "AES256"
    assert backup.main(["verify", "s3://shortener-backups/prod"]) == 0

    live.urls_file.write_text("")
    for stored in live.upload_dir.iterdir():
        stored.unlink()
    assert backup.main(["restore", f"s3://shortener-backups/prod/{names[0]}",
                        *store_args(live)]) == 0
    assert_every_link_served(live.urls_file.parent, links, {"s3file": b"s3 bytes"})


def test_s3_verify_finds_a_missing_object(app: Flask, client: FlaskClient,
                                          fake_s3: Any) -> None:
    create_links(client, 1)
    manifest = backup.take_snapshot(live_of(app),
                                    backup.S3Destination("s3://shortener-backups/p"), keep=3)
    fake_s3.delete_object(Bucket="shortener-backups", Key=f"p/{manifest['name']}/urls.json")
    assert backup.main(["verify", f"s3://shortener-backups/p/{manifest['name']}"]) == 1


# ---- a snapshot during a create storm against real gunicorn -------------------------

def storm(server: GunicornServer, acked: list[str], guard: threading.Lock,
          stop: threading.Event, worker: int) -> None:
    """POST /api/links until told to stop (at most 250 creates); record every 201."""
    with requests.Session() as session:
        for number in range(250):
            if stop.is_set():
                return
            response = session.post(f"{server.url}/api/links", timeout=10,
                                    json={"url": f"https://example.com/{worker}/{number}"})
            if response.status_code == 201:
                with guard:
                    acked.append(response.json()["code"])


def test_a_snapshot_during_a_create_storm_loses_nothing_acknowledged_before_it(
        server: GunicornServer, tmp_path: Path) -> None:
    acked: list[str] = []
    guard, stop = threading.Lock(), threading.Event()
    threads = [threading.Thread(target=storm, args=(server, acked, guard, stop, n))
               for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(acked) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        with guard:
            before = list(acked)
        dest = tmp_path / "snapshots"
        snap = subprocess.run(
            [sys.executable, "-m", "ops.backup", "snapshot", str(dest),
             "--urls-file", str(server.urls_file),
             "--upload-dir", str(server.data_dir / "uploads")],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert snap.returncode == 0, snap.stderr
    assert len(before) >= 40
    assert len(acked) > len(before), "the storm had ended before the snapshot ran"
    name = json.loads(snap.stdout)["name"]
    snapshot_links = json.loads((dest / name / "urls.json").read_text())
    assert set(before) <= set(snapshot_links)
    live_links = json.loads(server.urls_file.read_text())
    assert set(snapshot_links) <= set(live_links)
    assert set(acked) <= set(live_links)
    assert backup.main(["verify", str(dest / name)]) == 0


# ---- the snapshot's shape is the app's own check ------------------------------------

@pytest.mark.parametrize("content", ['{"a": {"url": 5}}', '{"a": {}}', '{"a": "https://x/"}'])
def test_a_snapshot_the_app_would_refuse_does_not_verify(
        app: Flask, client: FlaskClient, tmp_path: Path, content: str) -> None:
    create_links(client, 1)
    dest = tmp_path / "snapshots"
    manifest = backup.take_snapshot(live_of(app), backup.LocalDestination(dest), keep=5)
    links = dest / manifest["name"] / "urls.json"
    links.write_text(content)
    manifest["files"]["urls.json"] = {"size": links.stat().st_size,
                                      "sha256": backup.sha256_file(links)}
    (dest / manifest["name"] / "manifest.json").write_text(json.dumps(manifest))
    problems = backup.verify(backup.LocalDestination(dest), manifest["name"], tmp_path)
    assert any("wrong shape" in problem for problem in problems), problems


# ---- PostgreSQL: a snapshot in the app's JSON format, restored into a database ------

def postgres_app(data_dir: Path, database_url: str) -> Flask:
    return create_app({"DATA_DIR": data_dir, "TESTING": True, "SECRET_KEY": "test-secret",
                       "CREATE_RATE_LIMIT": "off", "DATABASE_URL": database_url})


def test_a_postgresql_snapshot_restores_into_an_empty_database(
        tmp_path: Path, postgres: Any, database_url: str) -> None:
    app = postgres_app(tmp_path / "data", database_url)
    client = app.test_client()
    links = create_links(client, 4)
    app.extensions["link_store"].close()
    live = backup.Live(tmp_path / "data" / "urls.json", tmp_path / "data" / "uploads", 5.0,
                       database_url)
    dest = tmp_path / "snapshots"
    manifest = backup.take_snapshot(live, backup.LocalDestination(dest), keep=3)
    assert manifest["links"] == 4 and manifest["source"]["database"].endswith(
        database_url.rsplit("@", 1)[1])
    assert postgres.password not in json.dumps(manifest)
    assert backup.main(["verify", str(dest)]) == 0
    snapshot = json.loads((dest / manifest["name"] / "urls.json").read_text())
    assert {code: record["url"] for code, record in snapshot.items()} == links

    fresh = postgres.create_database("restored_from_snapshot")
    try:
        assert backup.main(["restore", str(dest), "--database-url", fresh,
                            "--upload-dir", str(tmp_path / "data" / "uploads")]) == 0
        restored = postgres_app(tmp_path / "data", fresh)
        try:
            for code, url in links.items():
                assert restored.test_client().get(f"/{code}").headers["Location"] == url
        finally:
            restored.extensions["link_store"].close()
        assert backup.main(["restore", str(dest), "--force", "--database-url", fresh]) == 1
    finally:
        postgres.drop_database("restored_from_snapshot")
