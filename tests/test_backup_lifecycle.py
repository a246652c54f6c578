"""ops.backup carries the links' lifecycle: a takedown, a deletion and the visits used of a
limited link survive a snapshot and a restore, with their history, from either backend
into either backend."""
from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from linkstore import Link, LinkStore, is_postgres_url, open_url
from ops import backup

_restored = itertools.count()


def live_at(location: str, tmp_path: Path) -> backup.Live:
    """The store at location as ops.backup sees it."""
    uploads = tmp_path / "uploads"
    if is_postgres_url(location):
        return backup.Live(tmp_path / "unused" / "urls.json", uploads, 5.0, location)
    return backup.Live(Path(location.removeprefix("file://")), uploads, 5.0, "")


@pytest.fixture
def lived(store: LinkStore) -> LinkStore:
    """Links in every state, with a history."""
    store.add(Link("taken", "https://example.com/phish", created_at="2026-01-01T00:00:00+00:00"))
    store.disable("taken", "phishing", by="alice", note="ticket 9")
    store.add(Link("back", "https://example.com/back"))
    store.disable("back", "spam", by="alice")
    store.enable("back", by="bob")
    store.add(Link("gone", "https://example.com/gone"))
    store.delete("gone", by="carol", reason="operator")
    store.add(Link("limited", "https://example.com/limited", max_visits=3))
    store.consume_visit("limited")
    store.add(Link("plain", "https://example.com/plain"))
    return store


@pytest.fixture(params=["file", "postgresql"])
def elsewhere(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Another, empty store to restore into, on each backend in turn."""
    if request.param == "file":
        (tmp_path / "elsewhere").mkdir()
        yield (tmp_path / "elsewhere" / "urls.json").as_uri()
        return
    postgres = request.getfixturevalue("postgres")
    name = f"restored_{os.getpid()}_{next(_restored)}"
    yield postgres.create_database(name)
    postgres.drop_database(name)


def everything(store: LinkStore) -> list[tuple[Link, list[tuple[str, str, str | None]]]]:
    """Every link with its history (who did what, why), as a restore must bring back."""
    return [(link, [(c.action, c.by, c.reason) for c in store.history(link.code)])
            for link in store.links()]


def test_a_snapshot_restores_every_state_and_its_history_into_either_backend(
        lived: LinkStore, location: str, elsewhere: str, tmp_path: Path) -> None:
    dest = tmp_path / "snapshots"
    manifest = backup.take_snapshot(live_at(location, tmp_path), backup.LocalDestination(dest),
                                    keep=3)
    assert (manifest["links"], manifest["link_states"], manifest["state_changes"]) == (5, 4, 4)
    assert backup.main(["verify", str(dest)]) == 0
    target = live_at(elsewhere, tmp_path)
    assert backup.main(["restore", str(dest), "--urls-file", str(target.urls_file),
                        "--database-url", target.database_url,
                        "--upload-dir", str(target.upload_dir)]) == 0
    restored = open_url(elsewhere)
    try:
        assert everything(restored) == everything(lived)
        taken = restored.current("taken")
        assert taken is not None and (taken.state, taken.reason, taken.note) == (
            "disabled", "phishing", "ticket 9")
    finally:
        restored.close()


@pytest.fixture
def phished(tmp_path: Path) -> tuple[LinkStore, backup.Live]:
    """A links file holding one link, "taken", and the same file as ops.backup sees it."""
    urls = tmp_path / "data" / "urls.json"
    urls.parent.mkdir()
    store = open_url(urls.as_uri())
    store.add(Link("taken", "https://example.com/phish"))
    return store, backup.Live(urls, tmp_path / "uploads", 5.0)


def test_restoring_the_file_brings_a_takedown_back_that_was_undone_since(
        phished: tuple[LinkStore, backup.Live], tmp_path: Path) -> None:
    store, live = phished
    store.disable("taken", "malware", by="alice")
    backup.take_snapshot(live, backup.LocalDestination(tmp_path / "snapshots"), keep=3)
    store.enable("taken", by="mallory")
    done = backup.restore(live, *backup.split_snapshot(str(tmp_path / "snapshots")), force=False)
    link = store.current("taken")
    assert link is not None and (link.state, link.reason) == ("disabled", "malware")
    assert [(c.action, c.by) for c in store.history("taken")] == [("disable", "alice")]
    kept = done["replaced_sidecars_kept_as"]
    assert "mallory" in Path(kept["urls.json.audit"]).read_text()  # the undone history, kept
    assert json.loads(Path(kept["urls.json.state"]).read_text())["taken"]["by"] == "mallory"


def test_a_snapshot_whose_state_was_tampered_with_does_not_verify(
        lived: LinkStore, location: str, tmp_path: Path) -> None:
    dest = tmp_path / "snapshots"
    name = backup.take_snapshot(live_at(location, tmp_path), backup.LocalDestination(dest),
                                keep=3)["name"]
    state = dest / name / "urls.json.state"
    state.write_text(state.read_text().replace('"disabled"', '"enabled"'))
    assert backup.main(["verify", str(dest)]) == 1
    assert backup.main(["restore", str(dest), "--urls-file", str(tmp_path / "new" / "urls.json"),
                        "--database-url", ""]) == 1
    assert not (tmp_path / "new" / "urls.json").exists()


def test_every_table_of_the_schema_is_carried_or_said_not_to_be(database_url: str) -> None:
    open_url(database_url).close()  # brings the schema up to date
    with psycopg.connect(database_url) as conn:
        tables = [name for (name,) in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")]
    forgotten = [name for name in tables if name not in backup.TABLES
                 and not any(name.startswith(prefix) for prefix in backup.NOT_CARRIED)]
    assert "links" in tables and forgotten == [], (
        "carry these in ops.backup (TABLES, copy_database, add_to_database) or name them "
        "in NOT_CARRIED with why")


def test_a_snapshot_from_before_states_were_carried_leaves_the_live_takedowns(
        phished: tuple[LinkStore, backup.Live], tmp_path: Path) -> None:
    store, live = phished
    dest = tmp_path / "snapshots"
    name = backup.take_snapshot(live, backup.LocalDestination(dest), keep=3)["name"]
    manifest = json.loads((dest / name / "manifest.json").read_text())
    for key in ("link_states", "state_changes"):  # as an older release wrote it
        del manifest[key]
    (dest / name / "manifest.json").write_text(json.dumps(manifest))
    store.disable("taken", "malware", by="alice")
    backup.restore(live, *backup.split_snapshot(str(dest)), force=False)
    link = store.current("taken")
    assert link is not None and link.state == "disabled"
