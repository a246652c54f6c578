"""python -m ops.links import: each peer's real export format (tests/fixtures/import/)
into the store on each backend, run as a separate process as an operator would."""
from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask

import linkrules
from linkstore import Link, LinkStore
from ops.linkformats import Candidate, read_links
from tests.opslinks import environment_of, links_command
from tests.test_linkformats import FIXTURES, PEER_FILES

UPLOAD = "3f2a9c0d8e7b6a5f4e3d2c1b0a998877.pdf"  # the upload links.csv and links.json name


@pytest.fixture
def env(location: str, tmp_path: Path) -> dict[str, str]:
    """The store's settings, with an upload directory holding the fixtures' upload."""
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    (uploads / UPLOAD).write_bytes(b"%PDF-1.4\n")
    return environment_of(location, uploads)


def import_args(name: str, fmt: str, domain: str | None) -> list[str]:
    return ["import", str(FIXTURES / name), "--format", fmt] + (
        ["--domain", domain] if domain else [])


def codes(stdout: str, outcome: str) -> list[str]:
    """The codes of the report's lines that end with outcome ("added", "already there")."""
    return [line.split()[2].lstrip("/") for line in stdout.splitlines()
            if line.startswith("line ") and line.endswith(" " + outcome)]


def candidates(name: str, fmt: str, domain: str | None) -> dict[str, Candidate]:
    rows = read_links((FIXTURES / name).read_bytes(), fmt, reserved=linkrules.RESERVED_CODES,
                      domain=domain)
    return {row.link.code: row for row in rows if isinstance(row, Candidate)}


@pytest.mark.parametrize("name, fmt, domain", PEER_FILES)
def test_each_format_imports_once_then_finds_every_link_already_there(
        store: LinkStore, env: dict[str, str], name: str, fmt: str, domain: str | None) -> None:
    args = import_args(name, fmt, domain)
    first = links_command(*args, env=env)
    added = codes(first.stdout, "added")
    assert added and sorted(link.code for link in store.links()) == sorted(added)
    stored = list(store.links())
    second = links_command(*args, env=env)
    assert codes(second.stdout, "added") == []
    assert set(codes(second.stdout, "already there")) == set(added)
    assert list(store.links()) == stored  # nothing changed
    refused = [line for line in first.stdout.splitlines() if line.endswith("]")]
    assert [line for line in second.stdout.splitlines() if line.endswith("]")] == refused
    assert first.returncode == second.returncode == (1 if refused else 0), first.stderr


@pytest.mark.parametrize("name, fmt, domain", PEER_FILES)
def test_each_link_keeps_its_target_and_creation_time(
        store: LinkStore, env: dict[str, str], name: str, fmt: str, domain: str | None) -> None:
    links_command(*import_args(name, fmt, domain), env=env)
    expected = candidates(name, fmt, domain)
    for link in store.links():
        source = expected[link.code].link
        assert (link.url, link.file) == (source.url, source.file)
        if source.created_at is not None:
            assert link.created_at == source.created_at.isoformat()
        else:
            assert link.created_at  # dated at the import


@pytest.mark.parametrize("name, fmt, domain", PEER_FILES)
def test_a_dry_run_changes_nothing_and_prints_the_same_report(
        store: LinkStore, env: dict[str, str], name: str, fmt: str, domain: str | None) -> None:
    dry = links_command(*import_args(name, fmt, domain), "--dry-run", env=env)
    assert list(store.links()) == []
    real = links_command(*import_args(name, fmt, domain), env=env)
    assert dry.stdout.replace(" would be added", " added").replace(
        " (dry run: nothing was changed)", "") == real.stdout
    assert dry.returncode == real.returncode


def test_a_clean_file_imported_twice_exits_0_both_times(store: LinkStore, env: dict[str, str],
                                                        tmp_path: Path) -> None:
    clean = tmp_path / "clean.csv"
    clean.write_text("code,url,created_at\r\n"
                     "one,https://example.com/1,2019-08-28T10:18:44+02:00\r\n"
                     "two,https://example.com/2,\r\n")
    first = links_command("import", str(clean), "--format", "csv", env=env)
    second = links_command("import", str(clean), "--format", "csv", env=env)
    assert (first.returncode, second.returncode) == (0, 0), first.stdout + first.stderr
    assert first.stdout.splitlines()[-1] == "2 added, 0 already there, 0 conflicting, 0 invalid"
    assert second.stdout.splitlines() == ["line 2: /one already there",
                                          "line 3: /two already there",
                                          "0 added, 2 already there, 0 conflicting, 0 invalid"]


def test_a_taken_code_is_reported_on_its_line_and_never_overwritten(
        store: LinkStore, env: dict[str, str], tmp_path: Path) -> None:
    store.add(Link("mine", "https://example.com/mine"))
    store.add(Link("gone", "https://example.com/gone"))
    store.delete("gone", by="test", reason="operator")
    rows = tmp_path / "rows.csv"
    rows.write_text("code,url\nfresh,https://example.com/fresh\nmine,https://example.com/theirs\n"
                    "gone,https://example.com/gone\napi,https://example.com/api\n"
                    "bad,ftp://example.com/\n")
    done = links_command("import", str(rows), "--format", "csv", env=env)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0] == "line 2: /fresh added"
    assert lines[1].startswith("line 3: 'mine' is taken: here it leads to https://example.com/mine")
    assert lines[2].startswith("line 4: 'gone' is taken: it was deleted here")
    assert lines[3].startswith("line 5: 'api' is used by the site itself")
    assert lines[3].endswith("[reserved]")
    assert lines[4].startswith("line 6: 'ftp://example.com/': Only http:// and https://")
    assert lines[5] == "1 added, 0 already there, 2 conflicting, 2 invalid"
    mine, gone = store.current("mine"), store.current("gone")
    assert mine is not None and mine.url == "https://example.com/mine"
    assert gone is not None and gone.state == "deleted"


def test_an_upload_that_is_not_in_the_upload_directory_is_not_imported(
        store: LinkStore, location: str, tmp_path: Path) -> None:
    done = links_command("import", str(FIXTURES / "links.csv"), "--format", "csv",
                         env=environment_of(location, tmp_path / "no-uploads"))
    assert "line 3: The uploaded file" in done.stdout and done.returncode == 1
    assert store.current("cv") is None


def test_a_file_that_cannot_be_read_is_one_clear_message(env: dict[str, str],
                                                         tmp_path: Path) -> None:
    done = links_command("import", str(tmp_path / "absent.csv"), "--format", "csv", env=env)
    assert done.returncode == 1
    assert "cannot read" in done.stderr and "absent.csv" in done.stderr


def test_every_route_of_the_app_is_a_code_the_import_refuses(app: Flask) -> None:
    assert app.config["RESERVED_CODES"] == linkrules.RESERVED_CODES, (
        "add the new route's first path segment to linkrules.RESERVED_CODES")
