"""Reports and API keys on both backends (the JSON file's sidecars, PostgreSQL's tables),
and a key's own links, newest first, a page at a time."""
from __future__ import annotations

import os
import threading
from collections.abc import Callable

import pytest

from linkstore import Link, LinkStore, Report, new_api_key
from linkstore.keys import KeyExists, NoSuchKey, open_keys
from linkstore.jsonfile import FileStore
from linkstore.reports import open_reports

REPORT = Report("spammy", "spam", "Sent to me 40 times today.", "2026-11-30T00:00:00+00:00")


def test_reports_are_listed_newest_first_and_by_code(store: LinkStore) -> None:
    reports = open_reports(store)
    older = Report("phish", "phishing", "", "2026-11-29T10:00:00+00:00")
    reports.add(older)
    reports.add(REPORT)
    assert reports.reports() == [REPORT, older]
    assert reports.reports("phish") == [older]
    assert reports.reports("nothing-reported") == []


def test_another_worker_sees_a_report_at_once(open_store: Callable[[], LinkStore]) -> None:
    open_reports(open_store()).add(REPORT)
    assert open_reports(open_store()).reports() == [REPORT]


def test_reports_from_many_threads_are_all_kept(store: LinkStore) -> None:
    reports = open_reports(store)
    sent = [Report(f"code{n}", "other", "é" * 1000, REPORT.at) for n in range(20)]
    threads = [threading.Thread(target=reports.add, args=(report,)) for report in sent]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(reports.reports(), key=lambda r: r.code) == sorted(sent, key=lambda r: r.code)


def test_the_report_file_is_only_appended_to_and_survives_a_line_cut_short(
        tmp_path: os.PathLike[str]) -> None:
    store = FileStore(tmp_path / "urls.json")  # type: ignore[operator]
    reports = open_reports(store)
    reports.add(REPORT)
    path = store.path.with_name("urls.json.reports")
    first = path.read_bytes()
    with open(path, "ab") as cut:
        cut.write(b'{"code": "half", "rea')  # a crash in the middle of a write
    later = Report("later", "malware", "", REPORT.at)
    reports.add(later)
    assert path.read_bytes().startswith(first)
    assert reports.reports() == [later, REPORT]


def test_a_key_is_stored_as_its_hash_and_found_by_the_key(store: LinkStore) -> None:
    keys = open_keys(store)
    key, record = new_api_key("partner")
    keys.add(record)
    assert key.startswith("sk_") and len(key) == 3 + 64
    assert key not in repr(keys.all())
    assert keys.find(key) == record
    assert keys.find(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert keys.find("") is None and keys.find("not a key \0 \udc80") is None
    assert keys.all() == [record]


def test_a_key_name_is_used_once(store: LinkStore) -> None:
    keys = open_keys(store)
    keys.add(new_api_key("partner")[1])
    with pytest.raises(KeyExists):
        keys.add(new_api_key("partner")[1])


def test_a_revoked_key_is_found_revoked_by_every_worker(
        open_store: Callable[[], LinkStore]) -> None:
    first, second = open_keys(open_store()), open_keys(open_store())
    key, record = new_api_key("leaked")
    first.add(record)
    assert second.find(key) == record  # read once, so a later change must be followed
    revoked = first.revoke("leaked")
    assert revoked.revoked_at is not None
    assert second.find(key) == revoked
    assert first.revoke(record.id) == revoked  # by its id too; twice changes nothing
    with pytest.raises(NoSuchKey):
        first.revoke("no-such-key")


def test_a_key_s_links_come_newest_first_a_page_at_a_time(store: LinkStore) -> None:
    for n in range(5):
        store.add(Link(f"mine{n}", url="https://example.com/", owner="k1",
                       created_at=f"2026-11-30T00:00:0{n % 3}+00:00"))
    store.add(Link("theirs", url="https://example.com/", owner="k2",
                   created_at="2026-11-30T00:00:09+00:00"))
    store.add(Link("anonymous", url="https://example.com/", created_at="2026-11-30T00:00:09Z"))
    expected = ["mine2", "mine4", "mine1", "mine3", "mine0"]  # newest, then code, descending
    first = store.owned("k1", 2)
    assert [link.code for link in first] == expected[:2]
    after = (first[-1].created_at or "", first[-1].code)
    rest = store.owned("k1", 10, after)
    assert [link.code for link in rest] == expected[2:]
    assert store.owned("nobody", 10) == []
