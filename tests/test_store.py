"""The JSON file backend: what only the file does (journal, identity, the bytes on disk).

What both backends must do is in tests/test_store_contract.py.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path

import pytest

from linkstore import CodeTaken, Link, StoreUnavailable
from linkstore.jsonfile import FileStore, Identity, Stored
from tests.servers import links_on_disk

# A urls.json as the original app wrote it: no created_at, files by their plain name.
ORIGINAL_APP_FILE = '{"docs": {"url": "https://docs.python.org/3/"}, "cv": {"file": "cv.pdf"}}'


@pytest.fixture
def urls_file(tmp_path: Path) -> Path:
    return tmp_path / "urls.json"


@pytest.fixture
def store(urls_file: Path) -> FileStore:
    return FileStore(urls_file, lock_timeout=0.5)


def test_an_original_app_file_loads_unchanged(urls_file: Path, store: FileStore) -> None:
    urls_file.write_text(ORIGINAL_APP_FILE)
    assert store.get("docs") == Link("docs", url="https://docs.python.org/3/")
    assert store.get("cv") == Link("cv", file="cv.pdf")
    store.add(Link("new", url="https://example.com/"))
    assert links_on_disk(urls_file) == {**json.loads(ORIGINAL_APP_FILE),
                                        "new": {"url": "https://example.com/"}}


def test_a_fresh_directory_starts_empty(store: FileStore) -> None:
    assert store.get("anything") is None
    assert store.count() == 0
    assert store.error is None


def test_added_links_are_on_disk_and_in_memory(urls_file: Path, store: FileStore) -> None:
    store.add(Link("a", url="https://a.example/"))
    assert store.get("a") == Link("a", url="https://a.example/")
    assert links_on_disk(urls_file) == {"a": {"url": "https://a.example/"}}


def test_an_existing_code_is_never_overwritten(urls_file: Path, store: FileStore) -> None:
    store.add(Link("a", url="https://first.example/"))
    with pytest.raises(CodeTaken):
        store.add(Link("a", url="https://second.example/"))
    assert links_on_disk(urls_file)["a"] == {"url": "https://first.example/"}


def test_a_write_by_another_process_is_seen_on_the_next_read(urls_file: Path,
                                                             store: FileStore) -> None:
    other = FileStore(urls_file)
    store.add(Link("mine", url="https://mine.example/"))
    assert other.get("mine") == Link("mine", url="https://mine.example/")
    other.add(Link("theirs", url="https://theirs.example/"))
    assert store.get("theirs") == Link("theirs", url="https://theirs.example/")
    assert store.get("mine") == Link("mine", url="https://mine.example/")


def test_a_redirect_does_not_reparse_an_unchanged_file(store: FileStore,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store.add(Link("a", url="https://a.example/"))
    parses = count_parses(store, monkeypatch)
    for _ in range(100):
        assert store.get("a") == Link("a", url="https://a.example/")
    assert parses == []


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    ("", "not valid JSON"),
    ("[]", "expected a JSON object of links, found list"),
    ('{"a": "https://a.example/"}', "link 'a' is not an object of strings"),
    ('{"a": {"href": "https://a.example/"}}', "link 'a' has neither 'url' nor 'file'"),
    ('{"a": {"url": 42}}', "link 'a' is not an object of strings"),
    (b"\xff\xfe{}", "cannot read"),
])
def test_an_unusable_file_is_never_overwritten(urls_file: Path, store: FileStore,
                                               caplog: pytest.LogCaptureFixture,
                                               content: str | bytes, problem: str) -> None:
    store.add(Link("kept", url="https://kept.example/"))
    if isinstance(content, bytes):
        urls_file.write_bytes(content)
    else:
        urls_file.write_text(content)
    damaged = urls_file.read_bytes()
    with caplog.at_level(logging.ERROR, logger="shortener"):
        assert store.get("kept") == Link("kept", url="https://kept.example/")  # the last good copy
        with pytest.raises(StoreUnavailable, match=problem):
            store.add(Link("new", url="https://new.example/"))
    assert urls_file.read_bytes() == damaged
    assert store.error and problem in store.error
    assert "python -m ops.backup restore" in caplog.text
    assert problem in caplog.text


def test_a_repaired_file_is_used_again(urls_file: Path, store: FileStore) -> None:
    store.add(Link("a", url="https://a.example/"))
    good = urls_file.read_text()
    urls_file.write_text("garbage")
    assert store.get("a") is not None and store.error
    urls_file.write_text(good)
    assert store.get("a") == Link("a", url="https://a.example/")
    assert store.error is None
    store.add(Link("b", url="https://b.example/"))
    assert set(links_on_disk(urls_file)) == {"a", "b"}


def test_a_deleted_file_is_an_error_not_a_fresh_start(urls_file: Path, store: FileStore) -> None:
    store.add(Link("a", url="https://a.example/"))
    urls_file.unlink()
    assert store.get("a") == Link("a", url="https://a.example/")
    with pytest.raises(StoreUnavailable, match="missing"):
        store.add(Link("b", url="https://b.example/"))
    assert not urls_file.exists()


def test_a_held_lock_makes_a_write_fail_after_a_bounded_wait(urls_file: Path,
                                                             store: FileStore) -> None:
    with open(store.lock_path, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(StoreUnavailable, match="locked by another process"):
            store.add(Link("a", url="https://a.example/"))
    store.add(Link("a", url="https://a.example/"))
    assert links_on_disk(urls_file) == {"a": {"url": "https://a.example/"}}


def test_a_failed_write_leaves_the_old_file_and_no_temp_files(urls_file: Path, store: FileStore,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    store.add(Link("a", url="https://a.example/"))
    before = urls_file.read_bytes()

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(StoreUnavailable, match="No space left on device"):
        store.add(Link("b", url="https://b.example/"))
    monkeypatch.undo()
    assert urls_file.read_bytes() == before
    assert sorted(p.name for p in urls_file.parent.iterdir()) == [
        "urls.json", "urls.json.journal", "urls.json.lock"]
    assert store.get("b") is None


def test_writes_replace_the_file_atomically(urls_file: Path, store: FileStore) -> None:
    store.add(Link("a", url="https://a.example/"))
    inode = urls_file.stat().st_ino
    with open(urls_file) as old_reader:
        store.add(Link("b", url="https://b.example/"))
        assert json.load(old_reader) == {"a": {"url": "https://a.example/"}}
    assert urls_file.stat().st_ino != inode


def test_a_new_process_refuses_to_start_over_when_the_file_was_deleted(urls_file: Path,
                                                                       store: FileStore) -> None:
    store.add(Link("a", url="https://a.example/"))
    urls_file.unlink()
    fresh = FileStore(urls_file)
    assert fresh.get("a") is None
    assert fresh.error and "missing" in fresh.error
    with pytest.raises(StoreUnavailable, match="missing"):
        fresh.add(Link("b", url="https://b.example/"))
    assert not urls_file.exists()


def count_parses(store: FileStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    parses: list[int] = []
    real_read = store._read  # noqa: SLF001

    def counting_read() -> tuple[dict[str, Stored], Identity | None]:
        parses.append(1)
        return real_read()
    monkeypatch.setattr(store, "_read", counting_read)
    return parses


def test_another_process_s_links_arrive_through_the_journal_without_a_parse(
        urls_file: Path, store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    other = FileStore(urls_file)
    other.add(Link("first", url="https://first.example/"))
    assert store.get("first") == Link("first", url="https://first.example/")  # parsed once here
    parses = count_parses(store, monkeypatch)
    for i in range(20):
        other.add(Link(f"n{i}", url=f"https://n{i}.example/"))
        assert store.get(f"n{i}") == Link(f"n{i}", url=f"https://n{i}.example/")
    assert store.count() == 21
    assert parses == []


def test_a_file_replaced_behind_the_store_s_back_is_parsed_again(
        urls_file: Path, store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.add(Link("a", url="https://a.example/"))
    parses = count_parses(store, monkeypatch)
    restored = urls_file.with_name("restored.json")
    restored.write_text('{"a": {"url": "https://a.example/"}, "b": {"url": "https://b.example/"}}')
    os.replace(restored, urls_file)  # as a backup restore does
    assert store.get("b") == Link("b", url="https://b.example/")
    assert parses == [1]


def test_a_damaged_journal_falls_back_to_the_file(urls_file: Path, store: FileStore) -> None:
    other = FileStore(urls_file)
    other.add(Link("a", url="https://a.example/"))
    assert store.get("a") is not None
    other.add(Link("b", url="https://b.example/"))
    with open(store.journal_path, "ab") as journal:
        journal.write(b'{"prev": "garbage"\n')
    other.add(Link("c", url="https://c.example/"))
    assert store.get("b") == Link("b", url="https://b.example/")
    assert store.get("c") == Link("c", url="https://c.example/")


def test_a_journal_that_starts_again_is_still_followed_correctly(
        urls_file: Path, store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FileStore, "JOURNAL_MAX_BYTES", 300)
    other = FileStore(urls_file)
    for i in range(30):
        other.add(Link(f"n{i}", url=f"https://n{i}.example/"))
        if i % 7 == 0:
            assert store.get(f"n{i}") is not None
    assert store.journal_path.stat().st_size < 600
    assert store.count() == 30
    assert all(store.get(f"n{i}") == Link(f"n{i}", url=f"https://n{i}.example/") for i in range(30))


@pytest.mark.parametrize("original", [
    "{}", "{}\n", '{\n  "docs": {\n    "url": "https://docs.python.org/3/"\n  }\n}\n',
    '{"cv": {"file": "cv.pdf"}, "a": {"url": "https://a.example/", "created_at": "x"}}   ',
])
def test_a_write_appends_one_entry_and_keeps_the_old_bytes(urls_file: Path, store: FileStore,
                                                           original: str) -> None:
    urls_file.write_text(original)
    before = json.loads(original)
    store.add(Link("new", url="https://new.example/", created_at="2026-11-27T05:00:00+00:00"))
    text = urls_file.read_text()
    assert text.startswith(original.rstrip()[:-1].rstrip())
    assert json.loads(text) == {**before, "new": {"url": "https://new.example/",
                                                  "created_at": "2026-11-27T05:00:00+00:00"}}


def test_links_keep_every_field_they_were_stored_with(urls_file: Path, store: FileStore) -> None:
    records = {"plain": {"url": "https://a.example/"},
               "dated": {"url": "https://b.example/", "created_at": "2026-11-27T05:00:00+00:00"},
               "extra": {"url": "https://c.example/", "created_at": "t", "note": "kept"},
               "file": {"file": "x.pdf", "name": "x.pdf", "created_at": "t"}}
    urls_file.write_text(json.dumps(records))
    assert {code: stored_record(store, code) for code in records} == records
    store.add(Link("more", url="https://d.example/"))
    assert {code: stored_record(FileStore(urls_file), code) for code in records} == records
    assert store.get("extra") == Link("extra", url="https://c.example/", created_at="t",
                                      extra={"note": "kept"})


def stored_record(store: FileStore, code: str) -> dict[str, str] | None:
    link = store.get(code)
    return None if link is None else link.record()


def test_a_read_that_crashes_never_leads_to_a_write(urls_file: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The original outage: json.loads(urls_file) raised TypeError in the read path. A bug
    of that kind must fail the request, and never let a create replace the file with a
    store that looks empty."""
    FileStore(urls_file).add(Link("kept", url="https://kept.example/"))
    before = urls_file.read_bytes()

    def json_loads_on_a_file(*args: object, **kwargs: object) -> None:
        raise TypeError("the JSON object must be str, bytes or bytearray, not TextIOWrapper")
    monkeypatch.setattr(json, "load", json_loads_on_a_file)
    fresh = FileStore(urls_file)  # a worker that starts on the broken version
    with pytest.raises(TypeError):
        fresh.get("kept")
    with pytest.raises(TypeError):
        fresh.add(Link("new", url="https://new.example/"))
    with pytest.raises(TypeError):
        fresh.count()
    assert urls_file.read_bytes() == before


def test_a_worker_looking_right_after_the_rename_catches_up_without_a_parse(
        urls_file: Path, store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between the writer's rename and its journal entry, a reader found a file the
    journal did not explain yet and parsed it all; under load, on nearly every create."""
    other = FileStore(urls_file)
    other.add(Link("first", url="https://first.example/"))
    assert store.get("first") == Link("first", url="https://first.example/")  # parsed once here
    parses = count_parses(store, monkeypatch)
    real_replace = os.replace

    def replace_then_a_request_arrives(src: str, dst: str) -> None:
        real_replace(src, dst)
        store.get("first")
    monkeypatch.setattr(os, "replace", replace_then_a_request_arrives)
    other.add(Link("second", url="https://second.example/"))
    assert store.get("second") == Link("second", url="https://second.example/")
    assert parses == []


@pytest.mark.parametrize("content", [
    '{"url": {"url": "https://a.example/"}}',
    '{"created_at": {"url": "https://b.example/"}}',
    '{"url": {"url": "https://a.example/"}, "created_at": {"url": "https://b.example/"}}',
])
def test_a_file_whose_codes_are_field_names_is_read_as_links(
        urls_file: Path, store: FileStore, content: str) -> None:
    """json's object_hook also sees the outer object, which once packed it like a record
    and declared such a file corrupt."""
    urls_file.write_text(content)
    assert {link.code: link.record() for link in store.links()} == json.loads(content)
    assert store.problem() is None
    store.add(Link("new", url="https://new.example/"))
    assert set(links_on_disk(urls_file)) == set(json.loads(content)) | {"new"}


def test_an_import_is_one_write_that_keeps_the_old_bytes(urls_file: Path,
                                                         store: FileStore) -> None:
    urls_file.write_text(ORIGINAL_APP_FILE)
    inode = urls_file.stat().st_ino
    added = store.add_many(Link(f"n{i}", url=f"https://n{i}.example/") for i in range(500))
    assert added == 500
    assert urls_file.read_text().startswith(ORIGINAL_APP_FILE[:-1] + ",")
    assert urls_file.stat().st_ino != inode
    assert FileStore(urls_file).count() == 502


def test_an_import_too_large_for_the_journal_makes_other_workers_parse_the_file(
        urls_file: Path, store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FileStore, "JOURNAL_MAX_BYTES", 1000)
    other = FileStore(urls_file)
    other.add(Link("first", url="https://first.example/"))
    assert store.get("first") is not None
    journal_before = other.journal_path.read_bytes()
    other.add_many(Link(f"n{i}", url=f"https://n{i}.example/") for i in range(100))
    assert other.journal_path.read_bytes() == journal_before
    parses = count_parses(store, monkeypatch)
    assert store.get("n99") == Link("n99", url="https://n99.example/")
    assert parses == [1]


# --- the state sidecar ---------------------------------------------------------------

def sidecar(urls_file: Path) -> dict[str, dict[str, object]]:
    states: dict[str, dict[str, object]] = json.loads(
        urls_file.with_name("urls.json.state").read_text())
    return states


def test_a_visit_or_a_takedown_leaves_the_links_file_byte_for_byte(urls_file: Path,
                                                                   store: FileStore) -> None:
    store.add(Link("once", url="https://once.example/", max_visits=2))
    store.add(Link("bad", url="https://bad.example/"))
    before, identity = urls_file.read_bytes(), os.stat(urls_file).st_ino
    assert store.consume_visit("once") is not None
    store.disable("bad", "phishing", by="alice", note="ticket 42")
    assert urls_file.read_bytes() == before and os.stat(urls_file).st_ino == identity
    assert sidecar(urls_file) == {
        "once": {"visits": 1},
        "bad": {"state": "disabled", "reason": "phishing", "note": "ticket 42", "by": "alice",
                "at": store.get("bad").changed_at}}  # type: ignore[union-attr]


def test_the_lifecycle_fields_are_strings_an_older_release_can_read(
        urls_file: Path, store: FileStore) -> None:
    """The release before this one reads every field as a string and keeps what it does not
    know as extra: a rollback still serves the file."""
    store.add(Link("l", url="https://l.example/", expires_at="2030-01-01T00:00:00+00:00",
                   max_visits=5, password_hash="scrypt$1$2$3$4$5", manage_hash="ab"))
    record = links_on_disk(urls_file)["l"]
    assert record == {"url": "https://l.example/", "expires_at": "2030-01-01T00:00:00+00:00",
                      "max_visits": "5", "password_hash": "scrypt$1$2$3$4$5",
                      "manage_hash": "ab"}
    assert all(isinstance(value, str) for value in record.values())


def test_an_audit_line_is_kept_for_every_change(urls_file: Path, store: FileStore) -> None:
    store.add(Link("x", url="https://x.example/"))
    store.disable("x", "spam", by="alice")
    store.enable("x", by="bob")
    store.delete("x", by="carol", reason="operator")
    lines = [json.loads(line) for line in
             urls_file.with_name("urls.json.audit").read_text().splitlines()]
    assert [(line["action"], line["by"]) for line in lines] == [
        ("disable", "alice"), ("enable", "bob"), ("delete", "carol")]


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    ("[]", "expected a JSON object of link states"),
    ('{"x": {"visits": -1}}', "not a whole number"),
    ('{"x": {"state": "gone"}}', "not one of active, disabled, deleted"),
    ('{"x": {"colour": "red"}}', "not an object of"),
])
def test_an_unusable_sidecar_is_never_overwritten_and_the_last_good_copy_serves(
        urls_file: Path, store: FileStore, content: str, problem: str) -> None:
    store.add(Link("x", url="https://x.example/"))
    store.disable("x", "malware", by="ops")
    state_file = urls_file.with_name("urls.json.state")
    state_file.write_text(content)
    assert store.get("x").state == "disabled"  # type: ignore[union-attr]
    with pytest.raises(StoreUnavailable, match=problem):
        store.enable("x", by="ops")
    assert store.problem() is not None and problem in store.problem()  # type: ignore[operator]
    assert state_file.read_text() == content


def test_a_missing_sidecar_after_a_takedown_is_an_error_not_a_fresh_start(
        urls_file: Path, store: FileStore) -> None:
    store.add(Link("x", url="https://x.example/"))
    store.disable("x", "malware", by="ops")
    urls_file.with_name("urls.json.state").unlink()
    fresh = FileStore(urls_file)
    assert fresh.problem() is not None and "missing" in fresh.problem()  # type: ignore[operator]
    with pytest.raises(StoreUnavailable, match="missing"):
        fresh.consume_visit("x")
