"""python -m ops.store: moving links between the file and PostgreSQL, both ways."""
from __future__ import annotations

import json
import os
import subprocess  # nosec B404
import sys
from pathlib import Path

import psycopg
import pytest

from linkstore import Link, open_url
from linkstore.jsonfile import FileStore
from linkstore.postgres import MIGRATIONS, PostgresStore
from ops import store as ops_store
from tests.servers import REPO

LINKS = [Link("docs", url="https://docs.python.org/3/"),
         Link("cv", file="3f2a.pdf", name="cv.pdf", created_at="2026-11-27T05:01:00+00:00"),
         Link("Mixed-Case_9", url="https://xn--bcher-kva.example/stra%C3%9Fe", created_at="t",
              extra={"note": "kept"})] + [
    Link(f"n{i:04d}", url=f"https://example.com/{i}", created_at="2026-11-27T05:00:00+00:00")
    for i in range(1500)]


@pytest.fixture
def urls_file(tmp_path: Path) -> Path:
    path = tmp_path / "urls.json"
    FileStore(path).add_many(LINKS)
    return path


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops.store", *args], cwd=REPO,  # nosec
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=300, check=False)


def stored(url: str) -> list[Link]:
    store = open_url(url)
    try:
        return list(store.links())
    finally:
        store.close()


def test_a_file_moves_to_postgresql_and_a_second_copy_adds_nothing(
        urls_file: Path, database_url: str) -> None:
    first = run("copy", "--from", urls_file.as_uri(), "--to", "env:TARGET",
                env={"TARGET": database_url})
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert (report["source_links"], report["added"], report["already_there"],
            report["destination_links"]) == (len(LINKS), len(LINKS), 0, len(LINKS))
    assert stored(database_url) == sorted(LINKS, key=lambda link: link.code)
    again = json.loads(run("copy", "--from", urls_file.as_uri(), "--to", "env:TARGET",
                           env={"TARGET": database_url}).stdout)
    assert (again["added"], again["already_there"], again["sha256"]) == (
        0, len(LINKS), report["sha256"])


def test_postgresql_moves_back_to_a_file_the_app_reads(urls_file: Path, database_url: str,
                                                       tmp_path: Path) -> None:
    assert run("copy", "--from", urls_file.as_uri(), "--to", "env:DB",
               env={"DB": database_url}).returncode == 0
    back = tmp_path / "back" / "urls.json"
    back.parent.mkdir()
    result = run("copy", "--from", "env:DB", "--to", back.as_uri(), env={"DB": database_url})
    assert result.returncode == 0, result.stderr
    assert json.loads(back.read_text()) == json.loads(urls_file.read_text())
    assert list(FileStore(back).links()) == list(FileStore(urls_file).links())


def test_a_copy_that_would_overwrite_a_link_is_refused_before_any_write(
        urls_file: Path, database_url: str) -> None:
    database = PostgresStore(database_url)
    try:
        database.add(Link("n0700", url="https://somewhere-else.example/"))
    finally:
        database.close()
    result = run("copy", "--from", urls_file.as_uri(), "--to", "env:DB",
                 env={"DB": database_url})
    assert result.returncode == 1
    assert "different link under 1 of the source's codes (n0700)" in result.stderr
    assert "nothing was copied" in result.stderr
    assert stored(database_url) == [Link("n0700", url="https://somewhere-else.example/")]


def test_verify_catches_a_destination_that_lost_a_link(urls_file: Path,
                                                       database_url: str) -> None:
    source, destination = FileStore(urls_file), PostgresStore(database_url)
    try:
        ops_store.copy(source, destination)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM links WHERE code = 'n0001'")
        with pytest.raises(ops_store.CopyError, match=r"1 of 1503 source links are missing"):
            ops_store.verify(source, destination, ops_store.Report())
    finally:
        destination.close()


@pytest.mark.parametrize("url, message", [
    ("mysql://u:secret@host/db", "not 'mysql://u:***@host/db'"),
    ("env:NOT_SET_ANYWHERE", "NOT_SET_ANYWHERE is not set"),
])
def test_a_store_url_that_cannot_be_used_is_a_clear_error(urls_file: Path, url: str,
                                                          message: str) -> None:
    result = run("copy", "--from", urls_file.as_uri(), "--to", url)
    assert result.returncode == 1
    assert message in result.stderr and "secret" not in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_creates_the_schema_once(database_url: str) -> None:
    first = run("migrate", "env:DB", env={"DB": database_url})
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"applied": [path.name for path in sorted(
        MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql"))]}
    assert json.loads(run("migrate", "env:DB", env={"DB": database_url}).stdout) == {
        "applied": []}
