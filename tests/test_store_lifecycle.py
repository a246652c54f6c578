"""The lifecycle part of the store contract, run on both backends: links that end after a
date or a number of visits, links with a password, links taken down or deleted.

The `store` fixture (conftest.py) is parametrized over the backends; `open_store` opens
another store on the same links, as another worker or another server would.
"""
from __future__ import annotations

import subprocess  # nosec B404: other processes race for the last visits
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from linkstore import (CodeTaken, Link, LinkDeleted, LinkStore, NoSuchLink, hash_password,
                       new_manage_token, password_matches, utc_now)
from linkstore.jsonfile import FileStore
from tests.helpers import eventually
from tests.servers import REPO

Opener = Callable[[], LinkStore]

LATER = (datetime.now(timezone.utc) + timedelta(days=30)).isoformat(timespec="seconds")
EARLIER = "2020-01-01T00:00:00+00:00"
# How long a state change may take to reach another worker: the next read on the file;
# on PostgreSQL 2 s and one poll, given generous room on a loaded machine.
PROPAGATION_BOUND = 2.0 + 8.0


def limited(code: str = "once", max_visits: int = 3, expires_at: str | None = None) -> Link:
    return Link(code, url=f"https://{code}.example/", max_visits=max_visits,
                expires_at=expires_at)


# --- what a link is made with ---------------------------------------------------------

def test_every_lifecycle_field_comes_back_as_it_was_stored(store: LinkStore) -> None:
    _, token_hash = new_manage_token()
    link = Link("full", url="https://full.example/", created_at=utc_now(), expires_at=LATER,
                max_visits=5, password_hash=hash_password("correct horse"),
                manage_hash=token_hash, owner="key-1")
    store.add(link)
    assert store.get("full") == link
    assert store.current("full") == link
    assert list(store.links()) == [link]
    assert link.state == "active" and link.visits == 0 and link.stopped(datetime.now(
        timezone.utc)) is None


def test_a_plain_link_is_the_only_kind_that_is_plain(store: LinkStore) -> None:
    assert Link("p", url="https://p.example/").plain
    assert not Link("p", url="https://p.example/", expires_at=LATER).plain
    assert not limited().plain
    assert not Link("p", url="https://p.example/", password_hash="x").plain
    assert not Link("p", url="https://p.example/", state="disabled").plain


# --- visits ---------------------------------------------------------------------------

def test_a_limited_link_serves_exactly_its_visits_then_stops(store: LinkStore) -> None:
    store.add(limited(max_visits=3))
    served = [store.consume_visit("once") for _ in range(5)]
    assert [link.visits if link else None for link in served] == [1, 2, 3, None, None]
    now = store.current("once")
    assert now is not None and now.visits == 3
    assert now.stopped(datetime.now(timezone.utc)) == "limit_reached"


def test_a_link_without_a_limit_counts_nothing(store: LinkStore) -> None:
    store.add(Link("free", url="https://free.example/"))
    assert store.consume_visit("free") is None
    assert store.current("free") == Link("free", url="https://free.example/")


def test_no_visit_is_counted_for_an_unknown_code(store: LinkStore) -> None:
    assert store.consume_visit("nothing") is None
    assert store.consume_visit("a\0b") is None


def test_an_expired_limited_link_counts_no_visit(store: LinkStore) -> None:
    store.add(limited(expires_at=EARLIER))
    assert store.consume_visit("once") is None
    assert store.current("once").visits == 0  # type: ignore[union-attr]


def test_a_disabled_limited_link_counts_no_visit(store: LinkStore) -> None:
    store.add(limited())
    store.disable("once", "spam", by="ops")
    assert store.consume_visit("once") is None
    store.enable("once", by="ops")
    assert store.consume_visit("once") is not None


def test_threads_of_many_workers_racing_for_the_last_visits_get_exactly_the_limit(
        store: LinkStore, open_store: Opener) -> None:
    store.add(limited(max_visits=7))
    workers = [open_store() for _ in range(6)]
    start = threading.Barrier(len(workers) * 4)
    served: list[int] = []

    def visit(worker: LinkStore) -> None:
        start.wait()
        for _ in range(5):
            link = worker.consume_visit("once")
            if link is not None:
                served.append(link.visits)
    threads = [threading.Thread(target=visit, args=(worker,))
               for worker in workers for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(served) == [1, 2, 3, 4, 5, 6, 7]  # each visit number served once
    assert store.current("once").visits == 7  # type: ignore[union-attr]


RACER = """
import sys
from linkstore import open_url
store = open_url(sys.argv[1], timeout=30)
sys.stdin.readline()  # every racer is ready: go
print(sum(store.consume_visit("once") is not None for _ in range(10)))
store.close()
"""


def test_processes_racing_for_the_last_visits_get_exactly_the_limit(
        store: LinkStore, location: str) -> None:
    store.add(limited(max_visits=12))
    racers = [subprocess.Popen([sys.executable, "-c", RACER, location], cwd=REPO,  # nosec
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
              for _ in range(4)]
    for racer in racers:
        assert racer.stdin is not None
        racer.stdin.write("go\n")
        racer.stdin.flush()
    counts = [int(racer.communicate(timeout=120)[0]) for racer in racers]
    assert sum(counts) == 12
    assert store.current("once").visits == 12  # type: ignore[union-attr]


# --- taking down, bringing back, deleting ---------------------------------------------

def test_a_disabled_link_says_why_who_and_when(store: LinkStore) -> None:
    store.add(Link("bad", url="https://bad.example/"))
    before = utc_now()
    disabled = store.disable("bad", "phishing", by="alice", note="ticket 42")
    assert (disabled.state, disabled.reason, disabled.note, disabled.changed_by) == (
        "disabled", "phishing", "ticket 42", "alice")
    assert disabled.changed_at is not None and disabled.changed_at >= before
    assert store.get("bad") == disabled == store.current("bad")
    assert disabled.stopped(datetime.now(timezone.utc)) == "disabled"
    assert disabled.url == "https://bad.example/"  # the target is kept, for the record


def test_a_takedown_reaches_another_worker_that_cached_the_link_within_the_bound(
        store: LinkStore, open_store: Opener) -> None:
    store.add(Link("hot", url="https://hot.example/"))
    other = open_store()
    eventually(lambda: other.get("hot") is not None)
    if not isinstance(other, FileStore):  # the first read may come before the log is followed
        polls = other._polls  # type: ignore[attr-defined]  # noqa: SLF001
        eventually(lambda: other._polls > polls)  # type: ignore[attr-defined]  # noqa: SLF001
        assert other.get("hot") is not None  # now cached
    store.disable("hot", "malware", by="ops")
    took = eventually(lambda: other.get("hot").state == "disabled")  # type: ignore[union-attr]
    assert took < PROPAGATION_BOUND


def test_a_file_takedown_is_seen_by_another_worker_on_its_very_next_read(tmp_path: Path
                                                                         ) -> None:
    path = tmp_path / "urls.json"
    one, two = FileStore(path), FileStore(path)
    one.add(Link("hot", url="https://hot.example/"))
    assert two.get("hot") is not None
    one.disable("hot", "spam", by="ops")
    assert two.get("hot").state == "disabled"  # type: ignore[union-attr]


def test_an_enabled_link_works_again_and_both_changes_are_recorded(store: LinkStore) -> None:
    store.add(Link("back", url="https://back.example/"))
    store.disable("back", "legal", by="alice", note="court order 7")
    enabled = store.enable("back", by="bob")
    assert (enabled.state, enabled.reason, enabled.note, enabled.changed_by) == (
        "active", None, None, "bob")
    assert enabled.stopped(datetime.now(timezone.utc)) is None
    history = store.history("back")
    assert [(c.action, c.by, c.reason, c.note) for c in history] == [
        ("disable", "alice", "legal", "court order 7"), ("enable", "bob", None, None)]
    assert history[0].at <= history[1].at
    assert all(c.code == "back" for c in history)


def test_enabling_an_active_link_changes_and_records_nothing(store: LinkStore) -> None:
    store.add(Link("fine", url="https://fine.example/"))
    assert store.enable("fine", by="ops") == Link("fine", url="https://fine.example/")
    assert store.history("fine") == []


def test_a_deleted_code_is_a_tombstone_never_reused(store: LinkStore) -> None:
    store.add(Link("gone", url="https://gone.example/"))
    deleted = store.delete("gone", by="creator", reason="creator")
    assert (deleted.state, deleted.reason) == ("deleted", "creator")
    assert deleted.stopped(datetime.now(timezone.utc)) == "deleted"
    with pytest.raises(CodeTaken):
        store.add(Link("gone", url="https://new-owner.example/"))
    assert store.get("gone") == deleted
    assert store.count() == 1


def test_a_deleted_link_stays_deleted(store: LinkStore) -> None:
    store.add(Link("gone", url="https://gone.example/"))
    store.delete("gone", by="ops", reason="operator")
    with pytest.raises(LinkDeleted):
        store.enable("gone", by="ops")
    with pytest.raises(LinkDeleted):
        store.disable("gone", "spam", by="ops")
    with pytest.raises(LinkDeleted):
        store.delete("gone", by="ops", reason="operator")
    assert [c.action for c in store.history("gone")] == ["delete"]
    assert store.current("gone").state == "deleted"  # type: ignore[union-attr]


@pytest.mark.parametrize("change", ["disable", "enable", "delete"])
def test_changing_an_unknown_code_raises_no_such_link(store: LinkStore, change: str) -> None:
    with pytest.raises(NoSuchLink):
        if change == "disable":
            store.disable("nothing", "spam", by="ops")
        elif change == "enable":
            store.enable("nothing", by="ops")
        else:
            store.delete("nothing", by="ops", reason="operator")
    assert store.history("nothing") == []


@pytest.mark.parametrize("reason", ["", "rude", None])
def test_a_takedown_needs_a_known_reason(store: LinkStore, reason: str | None) -> None:
    store.add(Link("x", url="https://x.example/"))
    with pytest.raises(ValueError, match="phishing, malware, spam, legal, other"):
        store.disable("x", reason, by="ops")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="creator, operator"):
        store.delete("x", by="ops", reason=reason)  # type: ignore[arg-type]
    assert store.current("x") == Link("x", url="https://x.example/")
    assert store.history("x") == []


def test_a_copy_keeps_each_link_s_state_and_visits(store: LinkStore, tmp_path: Path) -> None:
    source = FileStore(tmp_path / "source.json")
    source.add(Link("taken-down", url="https://t.example/"))
    source.add(limited("counted", max_visits=5))
    source.disable("taken-down", "malware", by="ops")
    source.consume_visit("counted")
    links = list(source.links())
    assert store.add_many(links) == 2
    assert list(store.links()) == links
    assert store.add_many(links) == 0  # again: already there
    after_a_visit = [replace(link, visits=link.visits + 1) for link in links]
    assert store.add_many(after_a_visit) == 0  # visits and state are not what a link is


# --- passwords and tokens (no store) --------------------------------------------------

def test_a_password_hash_is_salted_and_matches_only_its_password() -> None:
    first, second = hash_password("s3cret pass"), hash_password("s3cret pass")
    assert first != second and first.startswith("scrypt$16384$8$1$")
    assert "s3cret" not in first
    assert password_matches(first, "s3cret pass") and password_matches(second, "s3cret pass")
    assert not password_matches(first, "s3cret pasS")
    assert not password_matches(None, "s3cret pass")


def test_a_management_token_is_kept_only_as_its_hash() -> None:
    token, token_hash = new_manage_token()
    link = Link("m", url="https://m.example/", manage_hash=token_hash)
    assert len(token) >= 43 and token not in token_hash
    assert link.accepts_token(token)
    assert not link.accepts_token(token[:-1] + ("A" if token[-1] != "A" else "B"))
    assert not Link("m", url="https://m.example/").accepts_token(token)


def test_a_check_of_a_password_costs_one_scrypt_whatever_the_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A right password, a wrong one, and a link with none all cost the same work."""
    import hashlib
    calls: list[int] = []
    real = hashlib.scrypt

    def counted(*args: object, **kwargs: object) -> bytes:
        calls.append(int(kwargs["n"]))  # type: ignore[call-overload]
        return real(*args, **kwargs)  # type: ignore[arg-type]
    stored = hash_password("right one")
    monkeypatch.setattr(hashlib, "scrypt", counted)
    protected = Link("p", url="https://p.example/", password_hash=stored)
    assert protected.accepts_password("right one")
    assert not protected.accepts_password("wrong one")
    assert not Link("p", url="https://p.example/").accepts_password("right one")
    assert calls == [16384, 16384, 16384]
