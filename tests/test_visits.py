"""Counting visits: the recorder on the redirect's path, and the visit stores beside the
links on both backends (the JSON file's logs and totals, PostgreSQL's sharded counters).

Everything here runs on the real stores: files in a temporary directory, and the real
PostgreSQL server the suite starts. tests/test_visits_server.py does it through gunicorn.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import io
import json
import marshal  # nosec B403: what visits.Recorder sends its writer
import operator
import os
import random
import signal
import subprocess  # nosec B404: visit writers, and a worker of a test
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
import pytest
from psycopg.types.json import Jsonb

import visits
from linkstore import Link, LinkStore, StoreUnavailable, is_postgres_url
from linkstore.jsonfile import FileStore, write_atomically
from linkstore.postgres import PostgresStore
from linkstore.visits_file import FileVisits, shard_of
from linkstore.visits_postgres import (ADD_COUNTS_0004, ADD_COUNTS_0005, ADD_VISITORS_0004,
                                       PostgresVisits, add_counts_0005_parameters,
                                       visitor_sketch)
from ops import processes
from tests.helpers import CHROME_UA, FIREFOX_UA, eventually, everything_stored
from tests.servers import REPO
from visitors import BOT, Visit
from visits import Batch, DayCount, Recorder, Stats, VisitStore

CHROME = Visit("person", "Chrome", "Windows", "desktop", "t.co")
FIREFOX = Visit("person", "Firefox", "Linux", "desktop", "direct")
PRIVATE = Visit("person")  # asked not to be tracked: no details
DAY = 86400
NOW = time.time()
TODAY = visits.today(NOW)
YESTERDAY = visits.add_days(TODAY, -1)


def batch(*visits_: tuple[Visit, int | None], code: str = "abc", day: str = TODAY) -> Batch:
    """A batch of one link's visits on one day, each with its visitor hash (or None)."""
    made = Batch()
    for visit, visitor in visits_:
        made.tally(code, day).count(visit)
        if visitor is not None:
            made.tally(code, day).visitors.add(visitor)
    return made


@pytest.fixture
def stored(location: str) -> Callable[[], bytes]:
    """Every byte the visit store (and the links beside it) keeps, on either backend."""
    if is_postgres_url(location):
        return lambda: everything_stored(database_url=location)
    return lambda: everything_stored(data_dir=Path(unquote(urlsplit(location).path)).parent)


def another_worker(open_store: Callable[[], LinkStore]) -> VisitStore:
    """The same visit store as another worker, or another instance, opens it."""
    return visits.open_store(open_store())


# --- What every visit store does -----------------------------------------------------------

def test_a_batch_is_counted_per_day_with_the_details_of_people(visit_store: VisitStore) -> None:
    visit_store.add(batch((CHROME, 0x01), (CHROME, 0x02), (FIREFOX, 0x03), (PRIVATE, None),
                          (BOT, None)))
    visit_store.add(batch((CHROME, 0x04), day=YESTERDAY))
    stats = visit_store.stats("abc")
    assert (stats.visits, stats.bots, stats.private) == (5, 1, 1)
    assert stats.days == {TODAY: DayCount(4, 1, 3), YESTERDAY: DayCount(1, 0, 1)}
    assert stats.details["referrer"] == {"t.co": 3, "direct": 1}
    assert stats.details["browser"] == {"Chrome": 3, "Firefox": 1}
    assert stats.details["os"] == {"Windows": 3, "Linux": 1}
    assert stats.details["device"] == {"desktop": 4}


def test_a_link_never_visited_has_nothing_counted(visit_store: VisitStore) -> None:
    stats = visit_store.stats("nobody")
    assert (stats.visits, stats.bots, stats.days) == (0, 0, {})
    assert visit_store.totals(["nobody"]) == {}


def test_a_visitor_counts_once_a_day_whichever_worker_saw_them(
        visit_store: VisitStore, open_store: Callable[[], LinkStore]) -> None:
    other = another_worker(open_store)
    visit_store.add(batch((CHROME, 0xaa), (CHROME, 0xbb)))
    other.add(batch((CHROME, 0xaa), (FIREFOX, 0xcc)))
    visit_store.add(batch((CHROME, 0xbb)))
    visit_store.add(batch((CHROME, 0xaa), day=YESTERDAY))
    assert other.stats("abc").days == {TODAY: DayCount(5, 0, 3), YESTERDAY: DayCount(1, 0, 1)}


def test_a_few_visitors_are_counted_exactly_even_when_their_hashes_share_a_sketch_bit(
        visit_store: VisitStore, open_store: Callable[[], LinkStore]) -> None:
    """0x105, 0x305 and 0x505 all set bit 5 of level 0 of PostgreSQL's sketch (migration
    0005), which alone would read them as one visitor; the file keeps every hash."""
    other = another_worker(open_store)
    visit_store.add(batch((CHROME, 0x105)))
    other.add(batch((CHROME, 0x305)))
    visit_store.add(batch((CHROME, 0x105), (FIREFOX, 0x505)))
    assert other.stats("abc").days[TODAY] == DayCount(4, 0, 3)
    visit_store.maintain(now=NOW + 3 * DAY)  # closed
    assert visit_store.stats("abc").days[TODAY] == DayCount(4, 0, 3)


def test_the_home_page_reads_the_visits_of_several_links_at_once(visit_store: VisitStore) -> None:
    visit_store.add(batch((CHROME, None), (FIREFOX, None), code="one"))
    visit_store.add(batch((BOT, None), code="bots-only"))
    visit_store.add(batch((CHROME, None), code="one", day=YESTERDAY))
    visit_store.add(batch((PRIVATE, None), code="two"))
    assert visit_store.totals(["one", "two", "bots-only", "none"]) == {
        "one": 3, "two": 1, "bots-only": 0}


def test_a_flush_of_many_links_is_stored_in_parts_that_add_up_to_it(
        visit_store: VisitStore) -> None:
    """Each store cuts a flush into writes of its own size (the file: 500 tallies and
    hashes an append; PostgreSQL: 16 rows a statement); the parts hold every tally once,
    each has an id of its own, and stored one by one they count the whole flush."""
    flush = Batch()
    for number in range(300):
        tally = flush.tally(f"l{number:03d}", TODAY)
        for visitor in range(3):
            tally.count(CHROME)
            tally.visitors.add(number * 10 + visitor)
    parts = visit_store.parts(flush)
    assert len(parts) > 1
    assert sorted(key for part in parts for key in part.tallies) == sorted(flush.tallies)
    assert len({part.id for part in parts}) == len(parts)
    for part in parts:
        visit_store.add(part)
    assert visit_store.totals([f"l{number:03d}" for number in range(300)]) == {
        f"l{number:03d}": 3 for number in range(300)}
    assert visit_store.stats("l299").days == {TODAY: DayCount(3, 0, 3)}


def test_a_batch_is_cut_into_parts_of_about_the_rows_asked() -> None:
    """A tally is a row, and each of its visitor hashes `visitor_rows` more; a tally
    larger than a part is a part of its own."""
    flush = Batch()
    for number in range(6):
        flush.tally(f"l{number}", TODAY).visitors.update({1, 2, 3})
    flush.tally("l9", TODAY).visitors.update(range(100))
    assert [len(part.tallies) for part in flush.parts(8)] == [2, 2, 2, 1]
    assert [len(part.tallies) for part in flush.parts(8, visitor_rows=1 / 64)] == [6, 1]
    assert [len(part.tallies) for part in flush.parts(8, visitor_rows=0)] == [7]


def test_every_worker_gets_the_same_salt_and_earlier_days_salts_are_deleted(
        visit_store: VisitStore, open_store: Callable[[], LinkStore],
        stored: Callable[[], bytes]) -> None:
    first = visit_store.salts(YESTERDAY)
    assert set(first) == {YESTERDAY, TODAY} and len(first[YESTERDAY]) == 32
    assert first[YESTERDAY] != first[TODAY]
    assert another_worker(open_store).salts(YESTERDAY) == first
    assert first[YESTERDAY] in stored() or first[YESTERDAY].hex().encode() in stored()
    second = visit_store.salts(TODAY)
    assert second[TODAY] == first[TODAY]
    everything = stored()
    assert first[YESTERDAY] not in everything and first[YESTERDAY].hex().encode() not in everything


def test_a_closed_day_keeps_its_number_of_visitors_and_forgets_their_hashes(
        visit_store: VisitStore, stored: Callable[[], bytes]) -> None:
    hashes = [0x7a3f9e01c2d4b5a6, -0x0b1c2d3e4f5a6b7c]
    visit_store.add(batch(*[(CHROME, h) for h in hashes], day=YESTERDAY))
    visit_store.maintain(now=NOW)  # yesterday ended less than a day ago: may still be open
    # Three days on: the file's log of the day the batch was written (today, by the
    # clock) is deleted two days after it closes, an hour after midnight; at 00:30 two
    # days on would still be in that hour.
    visit_store.maintain(now=NOW + 3 * DAY)
    assert visit_store.stats("abc").days == {YESTERDAY: DayCount(2, 0, 2)}
    everything = stored()
    for visitor in hashes:
        assert str(visitor).encode() not in everything


def test_a_flush_that_arrives_after_its_day_closed_still_counts(visit_store: VisitStore) -> None:
    visit_store.add(batch((CHROME, 0x01), day=YESTERDAY))
    visit_store.maintain(now=NOW + 2 * DAY)
    visit_store.add(batch((CHROME, 0x02), (BOT, None), day=YESTERDAY))
    visit_store.maintain(now=NOW + 3 * DAY)
    assert visit_store.stats("abc").days == {YESTERDAY: DayCount(2, 1, 2)}


# --- The JSON file's logs and totals -------------------------------------------------------

@pytest.fixture
def file_visits(tmp_path: Path) -> Iterator[FileVisits]:
    urls_file = tmp_path / "urls.json"
    links = FileStore(urls_file)
    links.add(Link("abc", url="https://example.com/"))
    store = visits.open_store(links)
    assert isinstance(store, FileVisits)
    yield store


def test_counting_never_writes_the_links_file(file_visits: FileVisits) -> None:
    urls_file = file_visits.dir.parent / "urls.json"
    before = (urls_file.read_bytes(), urls_file.stat().st_mtime_ns, urls_file.stat().st_ino)
    file_visits.salts(TODAY)
    file_visits.add(batch((CHROME, 0x01)))
    file_visits.fold()
    assert file_visits.dir == urls_file.with_name("visits")
    assert (urls_file.read_bytes(), urls_file.stat().st_mtime_ns, urls_file.stat().st_ino) \
        == before


def test_each_worker_appends_to_its_own_log_beside_the_links_file(
        file_visits: FileVisits) -> None:
    file_visits.add(batch((CHROME, 0x01)))
    file_visits.add(batch((FIREFOX, 0x02)))
    [log] = file_visits.dir.glob("log/*/*.jsonl")
    assert log.parent.name == visits.today()
    assert log.name.endswith(f"-{os.getpid()}.jsonl")
    assert [len(json.loads(line)["rows"]) for line in log.read_text().splitlines()] == [1, 1]


def test_a_line_cut_short_by_a_crash_is_skipped_and_the_next_starts_afresh(
        file_visits: FileVisits) -> None:
    file_visits.add(batch((CHROME, 0x01)))
    [log] = file_visits.dir.glob("log/*/*.jsonl")
    whole = log.read_bytes()
    with open(log, "ab") as torn:
        torn.write(whole[:len(whole) // 2])  # a write that a power cut stopped halfway
    assert file_visits.stats("abc").visits == 1  # the torn line is not complete: unread
    file_visits.add(batch((FIREFOX, 0x02)))
    file_visits.fold()
    assert file_visits.stats("abc").visits == 2
    file_visits.add(batch((FIREFOX, 0x03)))
    assert file_visits.stats("abc").visits == 3


def test_stats_include_what_is_flushed_but_not_folded_yet(file_visits: FileVisits) -> None:
    file_visits.add(batch((CHROME, 0x01), (CHROME, 0x02)))
    file_visits.fold()
    file_visits.add(batch((CHROME, 0x02), (FIREFOX, 0x03)))
    assert file_visits.stats("abc").days == {TODAY: DayCount(4, 0, 3)}
    file_visits.fold()
    assert file_visits.stats("abc").days == {TODAY: DayCount(4, 0, 3)}
    manifest = json.loads((file_visits.dir / "manifest.json").read_text())
    assert manifest["generation"] == 2
    assert [p.name for p in (file_visits.dir / "totals").iterdir()] == [
        Path(manifest["totals"][str(shard_of("abc"))]).name]


def test_a_fold_that_dies_before_its_commit_leaves_the_previous_one_whole(
        file_visits: FileVisits, monkeypatch: pytest.MonkeyPatch) -> None:
    file_visits.add(batch((CHROME, 0x01)))
    file_visits.fold()
    file_visits.add(batch((FIREFOX, 0x02)))

    def dies_at_the_commit(path: Path, chunks: Any) -> Any:
        if path.name == "manifest.json":
            raise OSError(5, "Input/output error")  # the process died here
        return write_atomically(path, chunks)
    monkeypatch.setattr("linkstore.visits_file.write_atomically", dies_at_the_commit)
    with pytest.raises(StoreUnavailable, match="cannot fold"):
        file_visits.fold()
    assert file_visits.stats("abc").visits == 2  # the old fold, and the log after it
    monkeypatch.undo()
    file_visits.fold()
    assert file_visits.stats("abc").visits == 2
    assert len(list((file_visits.dir / "totals").iterdir())) == 1  # the orphan is gone


def many_codes(count: int, shard: int) -> list[str]:
    """count codes of one shard, in no order."""
    codes = (f"{prefix}{n}" for n in range(100_000) for prefix in ("k", "Z-", "a_"))
    return [code for code in codes if shard_of(code) == shard][:count]


def shard_file(store: FileVisits, shard: int) -> Path:
    manifest = json.loads((store.dir / "manifest.json").read_text())
    return store.dir / str(manifest["totals"][str(shard)])


def test_a_totals_file_is_a_link_a_line_in_order_and_one_json_object_all_the_same(
        file_visits: FileVisits) -> None:
    """One object, so the release before (which parsed it whole) reads it after a rollback."""
    codes = many_codes(40, shard_of("abc"))
    for code in codes:
        file_visits.add(batch((CHROME, 0x01), code=code))
    file_visits.fold()
    data = shard_file(file_visits, shard_of("abc")).read_bytes()
    lines = data.splitlines()
    assert lines[0] == b"{" and lines[-1] == b"}" and len(lines) == 42
    assert [json.loads(b"{" + line.rstrip(b",") + b"}").popitem()[0] for line in lines[1:-1]] \
        == sorted(codes)
    assert sorted(json.loads(data)) == sorted(codes)


def test_a_read_finds_each_link_in_its_shard_and_nothing_for_one_not_there(
        file_visits: FileVisits) -> None:
    codes = many_codes(301, shard_of("abc"))
    absent = set(random.Random(14).sample(codes, 100))  # first, last and between, by chance
    for n, code in enumerate(sorted(set(codes) - absent)):
        file_visits.add(batch(*[(CHROME, n << 8 | k) for k in range(n % 5 + 1)], code=code))
    file_visits.fold()
    expected = {code: n % 5 + 1 for n, code in enumerate(sorted(set(codes) - absent))}
    assert file_visits.totals(codes) == expected
    assert all(file_visits.stats(code).visits == 0 for code in absent)
    assert file_visits.stats(min(expected)).visits == expected[min(expected)]
    assert file_visits.stats(max(expected)).visits == expected[max(expected)]


def test_a_fold_rewrites_the_lines_of_the_links_it_adds_to_and_copies_the_rest(
        file_visits: FileVisits) -> None:
    codes = sorted(many_codes(50, shard_of("abc")))
    for code in codes:
        file_visits.add(batch((CHROME, 0x01), code=code))
    file_visits.fold()
    before = shard_file(file_visits, shard_of("abc")).read_bytes().splitlines()
    added = [codes[0], codes[17], codes[-1], "abc"]  # first, between, last; a new one
    for code in added:
        file_visits.add(batch((FIREFOX, 0x02), code=code))
    file_visits.fold()
    after = shard_file(file_visits, shard_of("abc")).read_bytes().splitlines()
    assert len(after) == len(before) + (0 if "abc" in codes else 1)
    changed = {json.loads(b"{" + line.rstrip(b",") + b"}").popitem()[0]
               for line in set(after) - set(before)}
    assert changed == set(added)
    assert file_visits.totals(codes + ["abc"]) == {
        code: 2 if code in added else 1 for code in codes} | {"abc": 1 + ("abc" in codes)}


def test_the_fold_that_closes_a_day_forgets_its_visitors_in_every_line_that_kept_them(
        file_visits: FileVisits) -> None:
    """Untouched lines too: their links' visitors of the closed day are kept no more."""
    closed, kept, visited = sorted(many_codes(3, shard_of("abc")))
    file_visits.add(batch((CHROME, 0x01), code=closed, day=visits.add_days(TODAY, -3)))
    file_visits.fold(now=NOW)  # a late flush of a day long closed: its number, no hashes
    file_visits.add(batch((CHROME, 0x02), (FIREFOX, 0x03), code=kept))
    file_visits.fold(now=NOW)
    path = shard_file(file_visits, shard_of("abc"))
    before = path.read_bytes().splitlines()
    assert before[2].endswith(b'"open":{"' + TODAY.encode() + b'":[2,3]}}')  # still open
    file_visits.add(batch((CHROME, 0x04), code=visited, day=visits.add_days(TODAY, 1)))
    file_visits.fold(now=NOW + DAY + 3600)  # today is closed; tomorrow is not yet
    after = shard_file(file_visits, shard_of("abc")).read_bytes().splitlines()
    assert after[1] == before[1]  # nothing of it was open: copied as it was
    assert after[2] != before[2] and after[2].endswith(b'"open":{}},')
    assert after[3].endswith(b'"open":{"' + visits.add_days(TODAY, 1).encode() + b'":[4]}}')
    assert file_visits.stats(kept).days == {TODAY: DayCount(2, 0, 2)}
    assert file_visits.stats(closed).days == {visits.add_days(TODAY, -3): DayCount(1, 0, 1)}


def test_totals_the_release_before_wrote_on_one_line_are_read_and_set_out_by_the_first_fold(
        file_visits: FileVisits) -> None:
    file_visits.add(batch((CHROME, 0x01), (FIREFOX, 0x02)))
    file_visits.add(batch((CHROME, 0x03), code="xyz"))
    file_visits.fold()
    for shard in {shard_of("abc"), shard_of("xyz")}:  # as that release wrote them
        path = shard_file(file_visits, shard)
        path.write_bytes(json.dumps(dict(reversed(json.loads(path.read_bytes()).items())),
                                    separators=(",", ":")).encode())
        assert b"\n" not in path.read_bytes()
    assert file_visits.stats("abc").visits == 2 and file_visits.totals(["xyz"]) == {"xyz": 1}
    file_visits.add(batch((FIREFOX, 0x04)))
    file_visits.fold()  # adds to abc's shard only, and sets out xyz's too
    assert shard_of("abc") != shard_of("xyz")
    for code in ("abc", "xyz"):
        assert shard_file(file_visits, shard_of(code)).read_bytes().startswith(b"{\n")
    assert file_visits.stats("abc").visits == 3 and file_visits.totals(["xyz"]) == {"xyz": 1}
    assert file_visits.stats("abc").days[TODAY].visitors == 3


def test_a_totals_file_cut_short_is_reported_and_nothing_else_is_read_wrong(
        file_visits: FileVisits) -> None:
    file_visits.add(batch((CHROME, 0x01)))
    file_visits.fold()
    path = shard_file(file_visits, shard_of("abc"))
    whole = path.read_bytes()
    path.write_bytes(whole[:-2])  # not as a fold writes (write_atomically), but on a disk
    with pytest.raises(StoreUnavailable, match="is damaged.*cannot be read"):
        file_visits.stats("abc")
    file_visits.add(batch((CHROME, 0x02)))
    with pytest.raises(StoreUnavailable, match="is damaged.*cannot be read"):
        file_visits.fold()  # and the fold leaves it, and the log, as they were
    path.write_bytes(whole)
    file_visits.fold()
    assert file_visits.stats("abc").visits == 2


def test_a_days_logs_are_deleted_once_folded_and_a_day_older_than_its_close(
        file_visits: FileVisits) -> None:
    file_visits.add(batch((CHROME, 0x01)))
    file_visits.fold(now=NOW)
    file_visits.fold(now=NOW + DAY)
    assert list(file_visits.dir.glob("log/*/*.jsonl")), "deleted while an instance's clock " \
        "could still be on that day"
    file_visits.fold(now=NOW + 3 * DAY)
    assert not list(file_visits.dir.glob("log/*"))
    assert file_visits.stats("abc").days == {TODAY: DayCount(1, 0, 1)}
    assert json.loads((file_visits.dir / "manifest.json").read_text())["folded"] == {}


def count_and_fold(directory: str, worker: int, batches: int) -> None:
    """One process, as one gunicorn worker of one instance: flush, and fold sometimes."""
    store = FileVisits(Path(directory), lock_timeout=30)
    for n in range(batches):
        store.add(batch((CHROME, worker << 32 | n)))
        if n % 7 == 0:
            store.fold()


def test_concurrent_workers_and_folds_count_every_visit_exactly_once(
        file_visits: FileVisits) -> None:
    with ProcessPoolExecutor(max_workers=4) as pool:
        list(pool.map(count_and_fold, [str(file_visits.dir)] * 4, range(4), [40] * 4))
    assert file_visits.stats("abc").days == {TODAY: DayCount(160, 0, 160)}
    file_visits.fold()
    assert file_visits.stats("abc").days == {TODAY: DayCount(160, 0, 160)}


# --- PostgreSQL's sharded counters ---------------------------------------------------------

@pytest.fixture
def pg_links(database_url: str) -> Iterator[PostgresStore]:
    links = PostgresStore(database_url, timeout=2)
    yield links
    links.close()


def test_a_batch_sent_again_after_a_lost_answer_is_counted_once(pg_links: PostgresStore
                                                                ) -> None:
    store = PostgresVisits(pg_links)
    sent = batch((CHROME, 0x01), (BOT, None))
    store.add(sent)
    store.add(sent)  # the connection died after the commit: the recorder tries again
    assert (store.stats("abc").visits, store.stats("abc").bots) == (1, 1)


def test_a_flush_of_many_links_goes_to_postgresql_in_larger_parts_not_more_of_them(
        pg_links: PostgresStore) -> None:
    """A part costs a round trip and a pause, so a flush of 10,000 links is not 625
    parts of 16 (seconds of pauses) but about 100."""
    flush = Batch()
    for number in range(10_000):
        flush.tally(f"l{number:05d}", TODAY).count(CHROME)
    parts = PostgresVisits(pg_links).parts(flush)
    assert len(parts) == 100
    assert sum(len(part.tallies) for part in parts) == 10_000
    assert [len(part.tallies) for part in PostgresVisits(pg_links).parts(batch(
        *[(CHROME, visitor) for visitor in range(1000)]))] == [1]


def test_one_hot_link_never_makes_one_workers_flush_wait_for_anothers(
        pg_links: PostgresStore, database_url: str) -> None:
    PostgresVisits(pg_links, shard=0).add(batch((CHROME, None)))
    PostgresVisits(pg_links, shard=1).add(batch((CHROME, None)))
    with psycopg.connect(database_url) as flushing:  # worker 0, mid-flush: its row locked
        flushing.execute("UPDATE visit_counts SET visits = visits + 1 WHERE code = 'abc' "
                         "AND shard = 0")
        started = time.monotonic()
        PostgresVisits(pg_links, shard=1).add(batch((FIREFOX, None)))  # not held up
        assert time.monotonic() - started < 2, "waited for the other worker's lock"
        with pytest.raises(StoreUnavailable, match="did not answer"):
            PostgresVisits(pg_links, shard=0).add(batch((FIREFOX, None)))  # its own shard
        flushing.rollback()
    assert PostgresVisits(pg_links).stats("abc").visits == 3


def test_the_details_of_every_flush_to_a_row_add_up_by_value(pg_links: PostgresStore) -> None:
    store = PostgresVisits(pg_links, shard=0)
    odd = Visit("person", "Odd: one\nbrowser", "Linux", "desktop", "t.co")
    for visits_ in [(CHROME, None), (FIREFOX, None), (CHROME, None), (odd, None)], [(BOT, None)]:
        for visit in visits_:
            store.add(batch(visit))  # one row, four flushes: three add to the row's
    details = store.stats("abc").details
    assert details["browser"] == {"Chrome": 2, "Firefox": 1, "Odd: one browser": 1}
    assert details["referrer"] == {"t.co": 3, "direct": 1}
    assert details["device"] == {"desktop": 4}


def test_a_days_visitors_are_counted_exactly_while_each_row_lists_them_then_closely(
        pg_links: PostgresStore) -> None:
    """Two workers (shards) see overlapping visitors; the union is what is counted:
    exactly while each shard's row lists its hashes (no more than 64), from the ORed
    sketches beyond."""
    for code, count, exact in [("few", 10, True), ("listed", 90, True),
                               ("some", 1000, False), ("many", 100_000, False)]:
        seeded = random.Random(count)  # the same hashes every run
        hashes = [seeded.getrandbits(64) - 2**63 for _ in range(count)]
        PostgresVisits(pg_links, shard=0).add(sketched(code, hashes[:count * 2 // 3]))
        PostgresVisits(pg_links, shard=1).add(sketched(code, hashes[count // 3:]))
        counted = PostgresVisits(pg_links).stats(code).days[TODAY].visitors
        assert counted == count if exact else abs(counted / count - 1) < 0.12, (code, counted)


def test_a_rows_list_of_hashes_stops_at_64_and_its_sketch_counts_on(
        pg_links: PostgresStore, database_url: str) -> None:
    seeded = random.Random(64)
    hashes = [seeded.getrandbits(64) - 2**63 for _ in range(100)]
    visits_ = PostgresVisits(pg_links, shard=0)
    for part, listed in [(hashes[:40], 40), (hashes[30:64], 64), (hashes[64:], None)]:
        visits_.add(sketched("abc", part))
        with psycopg.connect(database_url) as conn:
            row = conn.execute("SELECT cardinality(visitor_hashes) FROM visit_counts").fetchone()
        assert row == (listed,)
    assert abs(visits_.stats("abc").days[TODAY].visitors / 100 - 1) < 0.12


def test_a_sketch_sets_one_bit_a_visitor_where_migration_5_says() -> None:
    """Bit ``hash & 255`` of level min(15, trailing zero bits of ``hash >> 8``), counted
    from the left of 16 levels of 256 bits, read here as one big number."""
    def bits(sketch: str | None) -> int:
        assert sketch is not None and sketch[0] == "x" and len(sketch) == 1 + 1024
        return int(sketch[1:], 16)
    top = 16 * 256 - 1  # the leftmost bit
    assert visitor_sketch([]) is None
    assert bits(visitor_sketch([0x105])) == 1 << (top - 5)  # level 0: rest 1, no zero bits
    assert bits(visitor_sketch([0x2FF])) == 1 << (top - 256 - 255)  # level 1
    assert bits(visitor_sketch([0x07])) == 1 << (top - 15 * 256 - 7)  # rest 0: the last level
    assert bits(visitor_sketch([-1])) == 1 << (top - 255)  # as unsigned: rest all ones, level 0
    assert bits(visitor_sketch([1 << 40])) == 1 << (top - 15 * 256)  # 32 zero bits: capped

    def level(visitor: int) -> int:
        rest = (visitor % 2**64) >> 8
        return min((rest & -rest).bit_length() - 1, 15) if rest else 15
    seeded = random.Random(5)
    hashes = [seeded.getrandbits(64) - 2**63 for _ in range(300)]
    assert bits(visitor_sketch(hashes)) == functools.reduce(
        operator.or_, (1 << (top - 256 * level(h) - h % 256) for h in hashes))


def sketched(code: str, visitors: list[int]) -> Batch:
    made = batch((CHROME, None), code=code)
    made.tally(code, TODAY).visitors.update(visitors)
    return made


def test_the_counts_of_the_release_before_migration_5_still_add_up(
        pg_links: PostgresStore, database_url: str) -> None:
    """Migration 0005 is additive: after a rollback, the release before it adds its
    details to the JSON column of the rows this release wrote arrays to, and its
    visitors as rows; a read counts both, and so does closing the day."""
    PostgresVisits(pg_links, shard=0).add(batch((CHROME, 0x01), (FIREFOX, 0x02)))
    with psycopg.connect(database_url) as previous:  # its flush, word for word
        previous.execute(ADD_COUNTS_0004.encode(), (
            0, ["abc", "abc"], [TODAY, YESTERDAY], [2, 1], [1, 0], [0, 0],
            [Jsonb({"browser": {"Chrome": 2}, "referrer": {"t.co": 2}}),
             Jsonb({"browser": {"Chrome": 1}})]))
        previous.execute(ADD_VISITORS_0004.encode(), (
            ["abc", "abc", "abc"], [TODAY, TODAY, YESTERDAY], [0x03, 0x04, 0x05]))
    PostgresVisits(pg_links, shard=0).add(batch((CHROME, 0x06), day=YESTERDAY))
    stats = PostgresVisits(pg_links).stats("abc")
    assert stats.days == {TODAY: DayCount(4, 1, 4), YESTERDAY: DayCount(2, 0, 2)}
    assert stats.details["browser"] == {"Chrome": 5, "Firefox": 1}
    assert stats.details["referrer"] == {"t.co": 4, "direct": 1}
    PostgresVisits(pg_links).maintain(now=NOW + 2 * DAY)  # both days closed
    assert PostgresVisits(pg_links).stats("abc").days == stats.days
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM visit_visitors").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM visit_counts WHERE visitor_sketch IS NOT "
                            "NULL").fetchone() == (0,)


def test_the_counts_of_the_release_before_migration_6_still_add_up(
        pg_links: PostgresStore, database_url: str) -> None:
    """Migration 0006 is additive: after a rollback, the release before it ORs its
    visitors into the sketches and leaves the lists alone, and its day close clears only
    the sketches. A list that misses visitors, or a row that release wrote without one,
    is not trusted: the sketch counts; a stale list beside a cleared sketch is ignored."""
    def previous(*visits_: tuple[Visit, int], shard: int) -> None:
        made = batch(*visits_)
        with psycopg.connect(database_url) as conn:  # its flush, word for word
            conn.execute(ADD_COUNTS_0005.encode(), add_counts_0005_parameters(
                shard, sorted(made.tallies.items())))

    PostgresVisits(pg_links, shard=0).add(batch((CHROME, 0x01), (FIREFOX, 0x02)))
    previous((CHROME, 0x03), shard=0)  # onto this release's row and list
    previous((CHROME, 0x04), shard=1)  # a row of its own, without a list
    PostgresVisits(pg_links, shard=0).add(batch((CHROME, 0x05)))
    assert PostgresVisits(pg_links).stats("abc").days[TODAY] == DayCount(5, 0, 5)

    PostgresVisits(pg_links, shard=0).add(batch((CHROME, 0x105), day=YESTERDAY))
    with psycopg.connect(database_url) as conn:  # what its day close leaves: a stale list
        conn.execute("UPDATE visit_counts SET visitor_sketch = NULL WHERE day = %s",
                     (YESTERDAY,))
        conn.execute("INSERT INTO visit_unique_days (code, day, visitors)"
                     " VALUES ('abc', %s, 1)", (YESTERDAY,))
    PostgresVisits(pg_links, shard=0).add(batch((CHROME, 0x305), day=YESTERDAY))  # late
    stats = PostgresVisits(pg_links).stats("abc")
    assert stats.days == {TODAY: DayCount(5, 0, 5), YESTERDAY: DayCount(2, 0, 2)}
    PostgresVisits(pg_links).maintain(now=NOW + 3 * DAY)  # both days closed
    assert PostgresVisits(pg_links).stats("abc").days == stats.days


# --- The recorder, on the redirect's path -------------------------------------------------

def environ(remote_addr: str = "198.51.100.23", method: str = "GET",
            **headers: str) -> dict[str, Any]:
    return {"REQUEST_METHOD": method, "REMOTE_ADDR": remote_addr,
            **{"HTTP_" + name.upper(): value for name, value in headers.items()}}


def one_day(stats: Stats) -> DayCount:
    """The counts of the one day that hits recorded by the clock fell on: today when the
    test ran, which is not TODAY (the day this module was imported) in a run that
    crosses midnight."""
    [(day, counts)] = stats.days.items()
    assert day in (visits.today(), visits.add_days(visits.today(), -1))
    return counts


@pytest.fixture
def recorder(file_visits: FileVisits) -> Iterator[Recorder]:
    counter = Recorder(file_visits, flush_seconds=3600)  # flushed by the tests
    yield counter
    counter.close()


def test_the_visitors_address_never_enters_the_queue(recorder: Recorder) -> None:
    recorder.record("abc", environ("203.0.113.77", user_agent=CHROME_UA))
    [(code, _, _, agent, _, _, visitor)] = list(recorder._hits)
    assert (code, agent, isinstance(visitor, int)) == ("abc", CHROME_UA, True)
    assert "203.0.113.77" not in repr(list(recorder._hits))
    recorder.flush()
    assert one_day(recorder.store.stats("abc")).visitors == 1


def test_the_same_address_and_browser_is_one_visitor_and_another_is_another(
        recorder: Recorder) -> None:
    for address, agent in [("192.0.2.1", CHROME_UA), ("192.0.2.1", CHROME_UA),
                           ("192.0.2.2", CHROME_UA), ("192.0.2.1", CHROME_UA + " Edg/142.0")]:
        recorder.record("abc", environ(address, user_agent=agent))
    recorder.flush()
    assert one_day(recorder.store.stats("abc")) == DayCount(4, 0, 3)


def test_dnt_and_gpc_visits_count_in_the_total_only(recorder: Recorder) -> None:
    recorder.record("abc", environ(user_agent=CHROME_UA, dnt="1", referer="https://t.co/x"))
    recorder.record("abc", environ(user_agent=CHROME_UA, sec_gpc="1"))
    recorder.record("abc", environ(user_agent=CHROME_UA))
    recorder.flush()
    stats = recorder.store.stats("abc")
    assert (stats.visits, stats.private, one_day(stats).visitors) == (3, 2, 1)
    assert sum(stats.details["browser"].values()) == 1 and "t.co" not in stats.details["referrer"]


def test_bots_count_apart_and_head_requests_and_the_probe_not_at_all(recorder: Recorder
                                                                     ) -> None:
    for agent in ["curl/8.11.1", "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
                  "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"]:
        recorder.record("abc", environ(user_agent=agent))
    recorder.record("abc", environ(method="HEAD", user_agent=CHROME_UA))
    recorder.record("abc", environ(user_agent="shortener-probe/1 (+ops.smoke)"))
    recorder.flush()
    stats = recorder.store.stats("abc")
    assert (stats.visits, stats.bots, one_day(stats).visitors) == (0, 3, 0)


def test_batches_wait_in_memory_while_the_store_is_down(tmp_path: Path) -> None:
    data_dir = tmp_path / "not-mounted-yet"
    store = FileVisits(data_dir / "visits")
    counter = Recorder(store, flush_seconds=3600)
    try:
        counter.record("abc", environ(user_agent=CHROME_UA))
        counter.flush()  # the store cannot take it: kept
        data_dir.mkdir()
        counter.record("abc", environ(user_agent=CHROME_UA))
        counter.flush()
    finally:
        counter.close()
    stats = store.stats("abc")
    assert stats.visits == 2
    assert one_day(stats).visitors == 0, "no salt could be kept: no visitor hashes"


def test_a_writer_keeps_at_most_unsaved_rows_while_the_store_is_down(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The bound is in rows (tallies and visitor hashes), not parts, so a store that
    cuts small parts keeps as much as one that cuts large ones; the oldest go first,
    and the log says how many visits."""
    monkeypatch.setattr(visits, "UNSAVED_ROWS", 20)
    data_dir = tmp_path / "not-mounted-yet"
    store = FileVisits(data_dir / "visits")
    writer = visits.Writer(store)
    day = int(NOW // DAY)
    for flush in range(3):  # 5 links, a visitor each: 10 rows a flush
        writer.take(marshal.dumps([(f"f{flush}-{n}", day, "GET", CHROME_UA, None, False, n)
                                   for n in range(5)]))
        assert not writer.flush()
    assert [message.split("); ")[-1] for message in caplog.messages] == [
        "1 parts kept for the next flush", "2 parts kept for the next flush",
        "2 parts kept for the next flush, 5 visits dropped"]
    data_dir.mkdir()
    assert writer.flush()
    codes = [f"f{flush}-{n}" for flush in range(3) for n in range(5)]
    assert store.totals(codes) == {code: 1 for code in codes[5:]}


def test_a_hand_off_thread_that_fails_tries_again_an_interval_later_not_at_once(
        file_visits: FileVisits, caplog: pytest.LogCaptureFixture) -> None:
    """The thread waits until the next hand-off is due; one that fails must not leave it
    due, or the thread would spin, logging, as fast as it can."""
    counter = Recorder(file_visits, flush_seconds=1)  # a hand-off every 0.1 s

    def fails() -> None:
        raise RuntimeError("a surprise")
    counter._keep_salts = fails  # type: ignore[method-assign]
    try:
        time.sleep(1.0)
    finally:
        counter.close()
    failures = caplog.text.count("visit hand-off failed")
    assert 1 <= failures <= 15, f"{failures} failures logged in 1 s, 10 expected"


def test_a_hand_off_after_a_response_never_waits_on_a_writer_that_takes_nothing(
        file_visits: FileVisits, monkeypatch: pytest.MonkeyPatch) -> None:
    """The request thread writes to the writer's pipe only what it has room for. With the
    writer stopped (SIGSTOP) the pipe fills; each hand-off after a response still
    returns at once, and what the pipe did not take waits (the rest of a frame, and
    the queue), none lost. Once the writer goes on, every hit is stored."""
    monkeypatch.setattr(visits, "HANDOFF_SECONDS", 3600.0)  # the thread hands off nothing
    counter = Recorder(file_visits, flush_seconds=36_000)
    counter.record("abc", environ(user_agent=CHROME_UA))
    assert counter.flush() and counter._writer is not None  # started, and ready
    writer = counter._writer.pid
    os.kill(writer, signal.SIGSTOP)
    try:
        handed = []
        for _ in range(100):  # until the pipe is full
            for _ in range(2000):
                counter.record("abc", environ(user_agent=CHROME_UA))
            counter._next_hand_off = 0.0  # due
            handing = threading.Thread(target=counter.hand_off_after_response)
            handing.start()
            handing.join(timeout=10)
            assert not handing.is_alive(), "the hand-off after a response waited"
            handed.append(counter._handed)
            if len(handed) > 1 and handed[-1] == handed[-2]:
                break  # nothing handed off: the pipe is full
        assert counter._hits and counter._frame, "the pipe never filled"
        assert handed[0] == 2001, "what the pipe had room for was handed off"
        assert counter.dropped() == 0
    finally:
        os.kill(writer, signal.SIGCONT)
    try:
        assert counter.flush()
    finally:
        counter.close()
    assert file_visits.stats("abc").visits == counter._recorded == counter._handed


def test_a_worker_whose_writer_takes_nothing_holds_at_most_max_queued_hits(
        file_visits: FileVisits, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A stopped writer (SIGSTOP) reads nothing: its pipe fills, the hand-off waits on
    it, and the hits that keep coming wait in the worker, MAX_QUEUED at most; older ones
    go, counted and logged. Once the writer goes on, every hit kept is stored."""
    monkeypatch.setattr(visits, "MAX_QUEUED", 2000)
    counter = Recorder(file_visits, flush_seconds=3600)  # its own hand-offs: hourly
    counter.record("abc", environ(user_agent=CHROME_UA))
    assert counter.flush() and counter._writer is not None  # started, and ready
    writer = counter._writer.pid
    os.kill(writer, signal.SIGSTOP)
    try:
        for _ in range(30):  # until a hand-off waits on the full pipe
            for _ in range(2000):
                counter.record("abc", environ(user_agent=CHROME_UA))
            handing = threading.Thread(target=counter.hand_off)
            handing.start()
            handing.join(timeout=1)
            if handing.is_alive():
                break
        assert handing.is_alive(), "the pipe never filled"
        for _ in range(30_000):
            counter.record("abc", environ(user_agent=CHROME_UA))
        assert len(counter._hits) == 2000 and counter.dropped() >= 28_000
    finally:
        os.kill(writer, signal.SIGCONT)
    handing.join(timeout=30)
    try:
        assert counter.flush()
        eventually(lambda: "visits dropped uncounted" in caplog.text)
    finally:
        counter.close()
    assert file_visits.stats("abc").visits == counter._recorded - counter.dropped()


@pytest.fixture
def stopped_writer(file_visits: FileVisits, monkeypatch: pytest.MonkeyPatch
                   ) -> Iterator[tuple[Recorder, subprocess.Popen[bytes]]]:
    """A recorder whose writer has started, then been stopped with SIGSTOP; only a
    close hands off (CLOSE_SECONDS: 1). The writer goes on (SIGCONT) after the test."""
    monkeypatch.setattr(visits, "CLOSE_SECONDS", 1.0)
    monkeypatch.setattr(visits, "HANDOFF_SECONDS", 3600.0)
    counter = Recorder(file_visits, flush_seconds=3600)
    counter.record("abc", environ(user_agent=CHROME_UA))
    assert counter.flush() and counter._writer is not None  # started, and ready
    writer = counter._writer
    os.kill(writer.pid, signal.SIGSTOP)
    try:
        yield counter, writer
    finally:
        if writer.poll() is None:
            os.kill(writer.pid, signal.SIGCONT)
            Recorder._end(writer, 30)


def closed_within(counter: Recorder, seconds: float) -> None:
    closing = threading.Thread(target=counter.close)
    started = time.monotonic()
    closing.start()
    closing.join(timeout=10)
    took = time.monotonic() - started
    assert not closing.is_alive() and took < seconds, f"the close took {took:.1f} s"


def test_a_closing_worker_does_not_wait_for_a_stopped_writer_which_stores_all_later(
        stopped_writer: tuple[Recorder, subprocess.Popen[bytes]], file_visits: FileVisits,
        caplog: pytest.LogCaptureFixture) -> None:
    """A stopped writer cannot exit: a graceful exit of its worker must not wait for it
    until gunicorn's graceful_timeout kills the worker. Once it goes on, it stores
    every visit it was handed, and exits."""
    counter, writer = stopped_writer
    for _ in range(1000):  # room for them in its pipe
        counter.record("abc", environ(user_agent=CHROME_UA))
    closed_within(counter, 3)
    assert f"visit writer {writer.pid} is stopped: not waited for" in caplog.text
    os.kill(writer.pid, signal.SIGCONT)
    assert writer.wait(30) == 0
    assert file_visits.stats("abc").visits == counter._handed == 1001


def test_a_closing_worker_whose_writer_takes_nothing_gives_up_what_the_pipe_cannot_hold(
        stopped_writer: tuple[Recorder, subprocess.Popen[bytes]], file_visits: FileVisits,
        caplog: pytest.LogCaptureFixture) -> None:
    """When the stopped writer's pipe is full, the close stops handing off after
    CLOSE_SECONDS and says how many visits it did not hand off; the writer, once it
    goes on and its pipe ends (as when the worker exits), stores the rest."""
    counter, writer = stopped_writer
    for n in range(20_000):  # distinct referrers: about 3 MB of frames, the pipe holds 1
        counter.record("abc", environ(user_agent=CHROME_UA,
                                      referer=f"https://example.com/{n:05}/{'x' * 100}"))
    closed_within(counter, 3)
    lost = counter._recorded - counter._handed
    assert 0 < lost < 20_000
    assert f"{lost} visits not handed off: visit writer {writer.pid}" in caplog.text
    os.kill(writer.pid, signal.SIGCONT)
    Recorder._end(writer, 30)
    assert writer.returncode == 0
    assert file_visits.stats("abc").visits == counter._handed == counter._recorded - lost


# A worker whose writer it stops, then fills the writer's pipe and exits gracefully.
STOPPED_WRITER_WORKER = """
import os, signal, sys
from pathlib import Path
import visits
from linkstore.visits_file import FileVisits
visits.CLOSE_SECONDS = 1.0
visits.HANDOFF_SECONDS = 3600.0
directory = Path(sys.argv[1])
counter = visits.Recorder(FileVisits(directory / "visits"), flush_seconds=3600)
environ = {"REQUEST_METHOD": "GET", "REMOTE_ADDR": "198.51.100.23", "HTTP_USER_AGENT": sys.argv[2]}
counter.record("abc", environ)
assert counter.flush() and counter._writer is not None
os.kill(counter._writer.pid, signal.SIGSTOP)
(directory / "writer").write_text(str(counter._writer.pid))
for n in range(20_000):
    counter.record("abc", dict(environ, HTTP_REFERER=f"https://example.com/{n:05}/{'x' * 100}"))
counter.close()
(directory / "handed").write_text(str(counter._handed))
"""


def test_a_stopped_writer_whose_worker_exits_stores_what_it_was_handed_once_continued(
        tmp_path: Path, file_visits: FileVisits) -> None:
    """The worker gives up what its stopped writer's pipe cannot hold, and exits. When a
    process group is left orphaned with a stopped member, the kernel sends it SIGHUP,
    then SIGCONT; so does this test (under pytest, a subreaper, the group is not
    orphaned). The writer ignores the hangup (it is for the worker, like SIGTERM and
    SIGINT), goes on, and stores every visit it was handed before it exits."""
    directory = file_visits.dir.parent
    with open(tmp_path / "worker.log", "w+") as log:  # not a pipe: the writer holds it
        worker = subprocess.run(  # nosec B603: this interpreter, the script above
            [sys.executable, "-c", STOPPED_WRITER_WORKER, str(directory), CHROME_UA],
            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60,
            stdout=log, stderr=subprocess.STDOUT)
        log.seek(0)
        output = log.read()
    assert worker.returncode == 0, output
    assert "visits not handed off" in output
    writer = int((directory / "writer").read_text())
    try:
        assert visits.stopped(writer)
        os.kill(writer, signal.SIGHUP)
        os.kill(writer, signal.SIGCONT)
        eventually(lambda: not processes.running(writer), timeout=30)
    finally:
        if processes.running(writer):
            os.kill(writer, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):  # this process reaps it: a subreaper
            os.waitpid(writer, 0)
    handed = int((directory / "handed").read_text())
    assert 1 < handed < 20_001
    file_visits.fold()
    assert file_visits.stats("abc").visits == handed


def test_a_graceful_close_flushes_what_is_queued(file_visits: FileVisits) -> None:
    counter = Recorder(file_visits, flush_seconds=3600)

    def visitor() -> None:
        for _ in range(250):
            counter.record("abc", environ(user_agent=CHROME_UA))
    threads = [threading.Thread(target=visitor) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counter.close()
    assert file_visits.stats("abc").visits == 1000


# --- The writer, a child process of the worker --------------------------------------------

def test_the_writer_is_a_child_started_by_the_first_hits_that_exits_with_its_pipe(
        recorder: Recorder) -> None:
    recorder.hand_off()
    assert recorder._writer is None, "nothing counted yet: no process started"
    recorder.record("abc", environ(user_agent=CHROME_UA))
    recorder.hand_off()
    writer = recorder._writer
    assert writer is not None and writer.poll() is None
    assert parent_of(writer.pid) == os.getpid()
    recorder.close()
    assert writer.returncode == 0
    assert recorder.store.stats("abc").visits == 1, "stored on its way out"


def test_the_writer_leaves_a_stop_signal_to_its_worker(recorder: Recorder) -> None:
    """SIGTERM or SIGINT to the whole process group (Ctrl-C) is for the worker: the
    writer goes on until the worker closes the pipe, so a graceful stop loses nothing."""
    recorder.record("abc", environ(user_agent=CHROME_UA))
    assert recorder.flush()
    assert recorder._writer is not None
    for stop in (signal.SIGTERM, signal.SIGINT):
        os.kill(recorder._writer.pid, stop)
    recorder.record("abc", environ(user_agent=CHROME_UA))
    assert recorder.flush() and recorder._writer.poll() is None
    assert recorder.store.stats("abc").visits == 2


def test_a_dead_writer_is_replaced_at_the_next_hand_off(
        recorder: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    recorder.record("abc", environ(user_agent=CHROME_UA))
    assert recorder.flush()
    assert recorder._writer is not None
    first = recorder._writer
    first.kill()
    first.wait()
    recorder.record("abc", environ(user_agent=FIREFOX_UA))
    assert recorder.flush()
    assert recorder._writer is not first and recorder._writer.poll() is None
    assert "starting another" in caplog.text
    assert recorder.store.stats("abc").details["browser"] == {"Chrome": 1, "Firefox": 1}


def test_a_request_thread_starts_no_writer_it_wakes_the_hand_off_thread_to(
        file_visits: FileVisits, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Starting a writer (a fork and an exec) would hold a request thread for
    milliseconds. A hand-off after a response that finds no writer running (none yet,
    or one that died) leaves the start to the worker's hand-off thread, which starts
    one and hands off at once, not at its next interval."""
    monkeypatch.setattr(visits, "HANDOFF_SECONDS", 3600.0)  # the thread acts only if woken
    counter = Recorder(file_visits, flush_seconds=36_000)
    started_by: list[str] = []
    start = counter._start_writer

    def noted_start() -> subprocess.Popen[bytes]:
        started_by.append(threading.current_thread().name)
        return start()
    counter._start_writer = noted_start  # type: ignore[method-assign]
    try:
        for hits in (1, 2):
            counter.record("abc", environ(user_agent=CHROME_UA))
            counter.hand_off_after_response()
            eventually(lambda: counter._handed == hits, timeout=30)
            assert counter.flush()
            assert counter._writer is not None
            first = counter._writer
            first.kill()  # the second round finds it dead
            first.wait()
    finally:
        counter.close()
    assert started_by == ["visit-handoff", "visit-handoff"]
    assert "starting another" in caplog.text
    assert file_visits.stats("abc").visits == 2


def test_a_frame_a_dead_writer_had_taken_part_of_goes_whole_to_the_next(
        file_visits: FileVisits, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer reads no unfinished frame: one that dies with part of a frame in its
    pipe counted none of it. The worker keeps the frame whole until the pipe has taken
    all of it, and its hits count as handed only then; the next writer is sent all of
    it. What the dead writer loses is what it was handed: the whole frames in its pipe.
    (Its pipe is made 64 KiB, so that the second frame, about 70 kB, is cut short.)"""
    monkeypatch.setattr(visits, "HANDOFF_SECONDS", 3600.0)  # the thread hands off nothing
    counter = Recorder(file_visits, flush_seconds=36_000)
    counter.record("abc", environ(user_agent=CHROME_UA))
    assert counter.flush() and counter._writer is not None  # started, one visit stored
    writer = counter._writer
    os.kill(writer.pid, signal.SIGSTOP)
    try:
        stdin = visits.pipes(writer)[0]
        fcntl.fcntl(stdin, fcntl.F_SETPIPE_SZ, 65536)  # empty: the writer answered
        for hits in (100, visits.CHUNK):  # distinct referrers: about 140 bytes a hit
            for n in range(hits):
                counter.record("abc", environ(
                    user_agent=CHROME_UA, referer=f"https://example.com/{hits}/{n}/{'x' * 99}"))
            counter.hand_off_after_response()
        assert counter._handed == 101, "the first frame went whole"
        assert 0 < counter._frame_sent < len(counter._frame), "the second was cut short"
        assert counter._frame_hits == visits.CHUNK and counter.dropped() == 0
    finally:
        writer.kill()  # stopped or not
        writer.wait()
    try:
        assert counter.flush()  # a new writer: the frame cut short, all of it
    finally:
        counter.close()
    assert counter._handed == counter._recorded == 601
    assert file_visits.stats("abc").visits == 601 - 100  # the first frame died with it


def test_hits_on_their_way_from_the_queue_to_a_frame_are_not_taken_for_dropped(
        recorder: Recorder, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A hand-off takes hits off the queue, then frames them. The thread's check for
    dropped hits waits for it (the pipe lock): counted meanwhile, the hits in its hands
    were logged as dropped, and the log then said too few once some really were."""
    framing, go_on = threading.Event(), threading.Event()
    frame = visits.framed

    def slow_framed(hits: list[visits.Queued]) -> bytes:
        framing.set()
        go_on.wait(10)
        return frame(hits)
    monkeypatch.setattr(visits, "framed", slow_framed)
    for _ in range(300):
        recorder.record("abc", environ(user_agent=CHROME_UA))
    handing = threading.Thread(target=recorder.hand_off)
    handing.start()
    assert framing.wait(10)
    checking = threading.Thread(target=recorder._log_dropped)
    checking.start()
    checking.join(timeout=0.5)  # long enough to log, had it not waited
    go_on.set()
    for thread in (handing, checking):
        thread.join(timeout=10)
        assert not thread.is_alive()
    assert recorder.dropped() == 0 and recorder._handed == 300
    assert "dropped uncounted" not in caplog.text


def queued_hit() -> visits.Queued:
    """One person's visit to abc today, as a worker queues it for its writer."""
    return ("abc", int(time.time() // 86400), "GET", CHROME_UA, None, False, 7)


def test_the_writer_counts_every_frame_it_can_read_and_skips_one_it_cannot(
        file_visits: FileVisits, caplog: pytest.LogCaptureFixture) -> None:
    hit = queued_hit()
    writer = visits.Writer(file_visits)
    for frame in (marshal.dumps([hit]), b"\xff not marshal", marshal.dumps([hit])):
        writer.take(frame)
    assert writer.flush()
    assert one_day(file_visits.stats("abc")) == DayCount(2, 0, 1)
    assert "skipped a frame it cannot read" in caplog.text


def test_a_writer_works_in_steps_each_followed_by_a_pause_pace_times_as_long() -> None:
    pace = visits.Pace()
    began = pace.started
    pace()
    assert pace.started == began  # a step that has not used its time goes on, unpaused
    while time.thread_time() - began < 2 * visits.STEP_SECONDS:
        pass  # work, twice a step's CPU time
    worked = time.thread_time() - began
    paused_at = time.monotonic()
    pace()
    assert time.monotonic() - paused_at >= worked * visits.PACE and pace.started > began
    hit = queued_hit()
    calls: list[None] = []
    counting = visits.Counting()
    counting.add([hit] * 200, pace=lambda: calls.append(None))
    assert len(calls) == 4 and counting.batch().counted() == 200  # at 0, 64, 128, 192


def test_a_writer_counts_its_first_frame_without_pausing_for_its_own_start(
        file_visits: FileVisits) -> None:
    """Starting (the store opened, the parsers loaded) costs a writer about 0.3 s of
    CPU; had its steps counted that, its first frame would wait three times as long,
    and a kill -9 soon after a start found nothing stored."""
    writer = visits.Writer(file_visits)
    began = time.thread_time()
    while time.thread_time() - began < 0.2:
        pass  # a start's worth of work
    started = time.monotonic()
    writer.take(marshal.dumps([queued_hit()]))
    assert time.monotonic() - started < 0.2 * visits.PACE / 2, "paused for its start"
    assert writer.flush() and file_visits.stats("abc").visits == 1


def test_a_writers_first_flush_is_one_interval_after_it_began_not_after_its_start_up(
        file_visits: FileVisits) -> None:
    """A writer begins when its worker hands off the first hits, which wait in the pipe
    while it starts (over a second on a loaded machine): its interval counts from then."""
    writer = visits.Writer(file_visits)
    read_end, write_end = os.pipe()
    os.write(write_end, visits.framed([queued_hit()]))
    serving = threading.Thread(target=writer.serve, args=(
        read_end, io.BytesIO(), 3.0, time.monotonic() - 2.5))  # began 2.5 s ago
    serving.start()
    try:
        assert eventually(lambda: file_visits.stats("abc").visits == 1) < 2.0
    finally:
        os.close(write_end)
        serving.join(timeout=30)
        os.close(read_end)
    assert not serving.is_alive()


def parent_of(pid: int) -> int:
    return processes.process_table()[pid].ppid
