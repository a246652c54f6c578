"""Configuration: the secret key, the environment, and `make run` itself."""
from __future__ import annotations

import os
import stat
import subprocess  # nosec B404
import sys
import time
from pathlib import Path

import pytest
import requests

from application import ConfigError, create_app
from ops import processes
from tests.servers import REPO, free_port


def test_without_secret_key_one_is_made_once_with_mode_0600(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SECRET_KEY", raising=False)
    first = create_app({"DATA_DIR": tmp_path})
    second = create_app({"DATA_DIR": tmp_path})  # another worker, or a restart
    secret_file = tmp_path / "secret_key"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert first.secret_key == second.secret_key == secret_file.read_text().strip()
    assert len(str(first.secret_key)) >= 64


def test_a_secret_key_from_the_environment_wins_and_nothing_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_KEY", "from-the-environment")
    assert create_app({"DATA_DIR": tmp_path}).secret_key == "from-the-environment"
    assert not (tmp_path / "secret_key").exists()


def test_settings_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("APP_VERSION", "v42")
    monkeypatch.setenv("MAX_UPLOAD_MB", "3")
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://sho.rt/")
    app = create_app()
    assert app.config["URLS_FILE"] == tmp_path / "urls.json"
    assert app.config["UPLOAD_DIR"] == tmp_path / "uploads"
    assert app.config["MAX_UPLOAD_BYTES"] == 3 * 1024 * 1024
    client = app.test_client()
    assert client.get("/healthz").json["version"] == "v42"  # type: ignore[index]
    created = client.post("/api/links", json={"url": "https://example.com/", "code": "x"},
                          headers={"Host": "evil.example"})
    assert created.json["short_url"] == "https://sho.rt/x"  # type: ignore[index]


@pytest.mark.parametrize("settings, links, uploads", [
    ({"DATA_DIR": "d"}, "d/urls.json", "d/uploads"),
    ({"DATA_DIR": "d", "URLS_FILE": "links.json", "UPLOAD_DIR": "up"}, "links.json", "up"),
    ({"DATA_DIR": "d", "URLS_FILE": "", "UPLOAD_DIR": ""}, "d/urls.json", "d/uploads"),
    ({"DATA_DIR": "", "URLS_FILE": ""}, "data/urls.json", "data/uploads"),
])
def test_the_app_and_every_operator_tool_find_the_same_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: dict[str, str],
        links: str, uploads: str) -> None:
    """DATA_DIR, URLS_FILE and UPLOAD_DIR read one way (linkstore.data_paths), by the app,
    ops.links, ops.backup and ops.recover alike; a setting left empty is not set."""
    from ops import backup, recover
    from ops import links as operator
    monkeypatch.chdir(tmp_path)
    for name in ("DATA_DIR", "URLS_FILE", "UPLOAD_DIR", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    Path(settings["DATA_DIR"] or "data").mkdir()
    app = create_app()
    found = (Path(app.config["URLS_FILE"]), Path(app.config["UPLOAD_DIR"]))
    assert found == (Path(links), Path(uploads))
    assert recover.store_paths() == found
    live = backup.Live.from_env(None, None, 5.0)
    assert (live.urls_file, live.upload_dir) == found
    assert operator.upload_dir(os.environ) == found[1]
    store = operator.open_links(os.environ)
    try:
        assert store.path == found[0].resolve()  # type: ignore[attr-defined]
    finally:
        store.close()


def test_no_secret_is_committed() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()  # nosec B603 B607
    assert not [name for name in tracked if "secret_key" in name or name.endswith(".pem")]


def test_make_run_serves_a_working_site(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PORT": str(port), "DATA_DIR": str(tmp_path / "data")}
    env.pop("SECRET_KEY", None)
    with open(tmp_path / "make-run.log", "wb") as log:
        make = processes.spawn(["make", "run"], cwd=REPO, env=env, stdout=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # a fresh machine installs requirements first
        while time.monotonic() < deadline:
            try:
                health = requests.get(f"{base}/healthz", timeout=2)
                break
            except requests.RequestException:
                assert make.poll() is None, (tmp_path / "make-run.log").read_text()
                time.sleep(0.2)
        else:
            pytest.fail("make run did not serve /healthz within 120 s")
        assert health.json()["status"] == "ok"
        created = requests.post(f"{base}/api/links", json={"url": "https://example.com/run"},
                                timeout=5)
        assert created.status_code == 201
        followed = requests.get(created.json()["short_url"], allow_redirects=False, timeout=5)
        assert followed.headers["Location"] == "https://example.com/run"
        assert (tmp_path / "data" / "urls.json").exists()
        assert "Shorten" in requests.get(base, timeout=5).text
    finally:
        processes.stop(make)


@pytest.mark.parametrize("hops, forwarded_for, client", [
    (1, "203.0.113.7", "203.0.113.7"),
    (2, "203.0.113.7, 10.0.0.5", "203.0.113.7"),  # Elastic Beanstalk: ALB, then nginx
    (2, "198.51.100.1, 203.0.113.7, 10.0.0.5", "203.0.113.7"),  # a spoofed first value
    (0, "203.0.113.7", "127.0.0.1"),
])
def test_the_client_address_comes_from_the_trusted_proxies_only(
        tmp_path: Path, hops: int, forwarded_for: str, client: str) -> None:
    app = create_app({"DATA_DIR": tmp_path, "SECRET_KEY": "t", "TRUSTED_PROXY_HOPS": hops,
                      "CREATE_RATE_LIMIT": "1/minute"})
    headers = {"X-Forwarded-For": forwarded_for, "X-Forwarded-Proto": "https"}
    client_app = app.test_client()
    first = client_app.post("/api/links", json={"url": "https://example.com/"},
                            headers=headers, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert first.status_code == 201
    assert first.json["short_url"].startswith(  # type: ignore[index]
        "https://" if hops else "http://")
    limited = client_app.post("/api/links", json={"url": "https://example.com/"},
                              headers=headers, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert limited.status_code == 429
    other = client_app.post("/api/links", json={"url": "https://example.com/"},
                            headers={"X-Forwarded-For": forwarded_for.replace(
                                client, "192.0.2.99")},
                            environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert other.status_code == (429 if client == "127.0.0.1" else 201)


def test_a_secret_that_cannot_be_written_leaves_no_temporary_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SECRET_KEY", raising=False)

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", full_disk)
    app = create_app({"DATA_DIR": tmp_path})
    assert len(str(app.secret_key)) >= 64  # a key for this process, and an ERROR line
    assert [p.name for p in tmp_path.iterdir() if "secret" in p.name] == []


@pytest.mark.parametrize("setting, value, message", [
    ("DATABASE_URL", "mysql://u:hunter2@db/links", "DATABASE_URL must be a PostgreSQL URL"),
    ("DATABASE_URL", "file:///var/app/urls.json", "DATABASE_URL must be a PostgreSQL URL"),
    ("MAX_UPLOAD_MB", "ten", "MAX_UPLOAD_MB must be a number, not 'ten'"),
    ("ANONYMOUS_CREATE", "no", "ANONYMOUS_CREATE must be on .* or off .*, not 'no'"),
])
def test_a_setting_that_cannot_be_used_stops_the_app_with_a_message(
        tmp_path: Path, setting: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        create_app({"DATA_DIR": tmp_path, "SECRET_KEY": "t", setting: value})
    assert "hunter2" not in str(error.value)


def test_gunicorn_stops_with_one_line_when_database_url_is_wrong(tmp_path: Path) -> None:
    env = {**os.environ, "DATA_DIR": str(tmp_path), "SECRET_KEY": "t",
           "DATABASE_URL": "mysql://u:hunter2@db/links"}
    result = subprocess.run(  # nosec B603
        [sys.executable, "-m", "gunicorn", "--config", str(REPO / "gunicorn.conf.py"),
         "--bind", f"127.0.0.1:{free_port()}", "--workers", "2", "application:application"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert "cannot start: DATABASE_URL must be a PostgreSQL URL" in result.stderr
    assert "hunter2" not in result.stderr
    # No traceback through the app. (When two workers fail to boot at once, gunicorn's
    # own master may print one of its HaltServer: that is gunicorn's, not ours.)
    assert "application.py" not in result.stderr and "ConfigError" not in result.stderr
    assert "Worker failed to boot" in result.stderr
