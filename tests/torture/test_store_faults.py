"""The data directory goes wrong under a running server: full, read-only, unreadable,
deleted, or replaced by something that is not a links file. Redirects keep working from
what the workers hold, /healthz says what is wrong, creates answer 503 with a message,
and nothing on disk is overwritten or truncated.

Tests that corrupt the file run one worker (with its threads): each worker process keeps
its own last good copy, so a worker forked after the damage has nothing to serve until
the file is restored (docs/reliability.md says so). One worker makes "keeps serving what
it has" a property the test can check every time.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.servers import GunicornServer
from tests.torture.conftest import Record, create, remount, resolve

LINKS = 20


def seed_links(server: GunicornServer, count: int = LINKS) -> dict[str, str]:
    links = {}
    for n in range(count):
        response = create(server.url, f"https://example.com/seed/{n}")
        assert response.status_code == 201, response.text
        links[response.json()["code"]] = response.json()["url"]
    return links


def assert_redirects(server: GunicornServer, links: dict[str, str]) -> None:
    with requests.Session() as session:
        wrong = {code: resolve(server.url, code, session) for code in links}
        assert wrong == links


def assert_create_refused(server: GunicornServer, reason: str) -> str:
    """A create answers 503 with a message that names the reason; return the message."""
    response = create(server.url, "https://example.com/refused")
    assert response.status_code == 503, response.text
    message: str = response.json()["error"]
    assert reason.lower() in message.lower(), message
    return message


def health(server: GunicornServer) -> tuple[int, dict[str, object]]:
    response = requests.get(f"{server.url}/healthz", timeout=10)
    return response.status_code, response.json()


@pytest.fixture
def one_worker(tmp_path: Path) -> Iterator[GunicornServer]:
    with GunicornServer(tmp_path / "data", workers=1) as server:
        yield server


def fill(directory: Path) -> int:
    """Write a filler file until the filesystem refuses; return the bytes written."""
    written = 0
    with open(directory / "filler", "wb", buffering=0) as filler:
        for size in (1 << 16, 1 << 10, 1):
            while True:
                try:
                    written += filler.write(b"\0" * size)
                except OSError:
                    break
    return written


def test_a_full_disk_refuses_creates_and_keeps_redirects(small_fs: Path,
                                                         record_figure: Record) -> None:
    server = GunicornServer(small_fs, workers=2)  # its log goes beside, not inside
    server.start()
    try:
        links = seed_links(server)
        before = server.urls_file.read_bytes()
        filler_bytes = fill(small_fs)
        refusals = [assert_create_refused(server, "no space left") for _ in range(5)]
        status, body = health(server)
        assert status == 503 and "no space left" in str(body["checks"]).lower()
        assert_redirects(server, links)
        assert server.urls_file.read_bytes() == before, "the links file changed on a full disk"
        (small_fs / "filler").unlink()
        response = create(server.url, "https://example.com/after-the-disk-was-freed")
        assert response.status_code == 201, response.text
        assert health(server)[0] == 200
        assert_redirects(server, links)
    finally:
        server.stop()
    assert json.loads(server.urls_file.read_bytes())  # still whole after all that
    record_figure("creates_refused_with_503", len(refusals))
    record_figure("filler_bytes", filler_bytes)
    record_figure("message", refusals[0])


def test_a_read_only_data_directory_refuses_creates_and_keeps_redirects(
        small_fs: Path, record_figure: Record) -> None:
    server = GunicornServer(small_fs, workers=2)  # its log goes beside, not inside
    server.start()
    try:
        links = seed_links(server)
        before = server.urls_file.read_bytes()
        remount(small_fs, "ro")
        message = assert_create_refused(server, "read-only file system")
        status, body = health(server)
        assert status == 503 and "read-only" in str(body["checks"]).lower()
        assert_redirects(server, links)
        remount(small_fs, "rw")
        assert server.urls_file.read_bytes() == before
        assert create(server.url, "https://example.com/writable-again").status_code == 201
        assert health(server)[0] == 200
    finally:
        remount(small_fs, "rw")
        server.stop()
    record_figure("message", message)


# Tests run as root, and root reads a chmod 000 file anyway. setpriv drops the two
# capabilities that let it, so file permissions apply to the server as to any user.
WITHOUT_ROOT_FILE_ACCESS = ["/usr/bin/setpriv", "--bounding-set=-dac_override,-dac_read_search",
                            "--"]


def test_an_unreadable_links_file_is_reported_and_never_overwritten(
        tmp_path: Path, record_figure: Record) -> None:
    """chmod 000 on the file, then an operator's restore that the app user cannot read."""
    if os.geteuid() != 0 or not Path(WITHOUT_ROOT_FILE_ACCESS[0]).exists():
        pytest.skip("needs root and setpriv(1) to drop CAP_DAC_OVERRIDE")
    server = GunicornServer(tmp_path / "data", workers=1, launcher=WITHOUT_ROOT_FILE_ACCESS)
    server.start()
    try:
        links = seed_links(server)
        server.urls_file.chmod(0)
        status, body = health(server)
        assert status == 503 and "permission denied" in str(body["checks"]).lower(), body
        assert_redirects(server, links)
        restored = {**json.loads(server.urls_file.read_bytes()),
                    "restored": {"url": "https://example.com/restored"}}
        unreadable = tmp_path / "data" / "restored.json"
        unreadable.write_text(json.dumps(restored))
        unreadable.chmod(0)
        os.replace(unreadable, server.urls_file)
        before = server.urls_file.read_bytes()
        message = assert_create_refused(server, "permission denied")
        assert_redirects(server, links)
        assert server.urls_file.read_bytes() == before
        assert server.urls_file.stat().st_mode & 0o777 == 0, "the unreadable file was replaced"
        server.urls_file.chmod(0o600)
        assert create(server.url, "https://example.com/readable-again").status_code == 201
        assert health(server)[0] == 200
        assert resolve(server.url, "restored") == "https://example.com/restored"
    finally:
        server.stop()
    record_figure("message", message)


BAD_CONTENTS = {
    "garbage": b"\x00\xff\xfenot json at all {",
    "empty": b"",
    "a list": b"[]",
    "a number per link": b'{"abc": 5}',
    "a link without url or file": b'{"abc": {"title": "x"}}',
    "a non-string url": b'{"abc": {"url": 5}}',
    "invalid UTF-8": b'{"abc": {"url": "https://example.com/\xff"}}',
    "truncated": None,  # the real file cut in half
}


@pytest.mark.parametrize("damage", sorted(BAD_CONTENTS))
def test_a_damaged_links_file_is_reported_and_never_overwritten(
        one_worker: GunicornServer, damage: str) -> None:
    server = one_worker
    links = seed_links(server, 5)
    good = server.urls_file.read_bytes()
    bad = BAD_CONTENTS[damage]
    bad = good[: len(good) // 2] if bad is None else bad
    server.urls_file.write_bytes(bad)
    status, body = health(server)
    assert status == 503 and body["status"] == "fail", body
    assert str(server.urls_file) in str(body["checks"])
    assert_create_refused(server, "unusable")
    assert_redirects(server, links)
    assert server.urls_file.read_bytes() == bad, "the damaged file was overwritten"
    assert "ops.backup restore" in server.log()
    server.urls_file.write_bytes(good)
    assert health(server)[0] == 200
    assert create(server.url, "https://example.com/after-restore").status_code == 201


def test_a_deleted_links_file_is_reported_and_not_recreated_empty(
        one_worker: GunicornServer) -> None:
    server = one_worker
    links = seed_links(server, 5)
    server.urls_file.unlink()
    status, body = health(server)
    assert status == 503 and "missing" in str(body["checks"]), body
    assert_create_refused(server, "missing")
    assert_redirects(server, links)
    assert not server.urls_file.exists(), "a fresh, empty links file replaced the lost one"


def test_a_server_started_on_a_damaged_file_serves_and_says_why(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "urls.json").write_bytes(b'{"abc": {"url": "https://example.com/"')
    server = GunicornServer(data_dir, workers=2)
    server.start()
    try:
        status, body = health(server)
        assert status == 503 and "not valid JSON" in str(body["checks"]), body
        assert_create_refused(server, "unusable")
        assert requests.get(f"{server.url}/", timeout=10).status_code == 200
    finally:
        server.stop()
    assert (data_dir / "urls.json").read_bytes() == b'{"abc": {"url": "https://example.com/"'
