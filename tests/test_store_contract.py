"""What every link store does, run on both backends: the JSON file and PostgreSQL.

The `store` fixture (conftest.py) is parametrized over the backends; `open_store` opens
another store on the same links, as another worker or another server would.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from linkstore import CodeTaken, Link, LinkStore

Opener = Callable[[], LinkStore]

DATED = Link("dated", url="https://a.example/", created_at="2026-11-27T05:00:00+00:00")
UPLOAD = Link("upload", file="3f2a.pdf", name="cv.pdf", created_at="2026-11-27T05:01:00+00:00")
LEGACY = Link("legacy", url="https://docs.python.org/3/")  # the original app: no created_at
EXTRA = Link("extra", url="https://c.example/", created_at="t", extra={"note": "kept"})


def test_a_new_store_is_empty_and_healthy(store: LinkStore) -> None:
    assert store.get("anything") is None
    assert store.count() == 0
    assert list(store.links()) == []
    assert store.problem() is None


@pytest.mark.parametrize("link", [DATED, UPLOAD, LEGACY, EXTRA], ids=lambda link: link.code)
def test_a_link_comes_back_with_every_field_it_was_stored_with(store: LinkStore,
                                                               link: Link) -> None:
    store.add(link)
    assert store.get(link.code) == link
    assert store.count() == 1


def test_an_existing_code_is_never_overwritten(store: LinkStore) -> None:
    store.add(Link("taken", url="https://first.example/"))
    with pytest.raises(CodeTaken) as taken:
        store.add(Link("taken", url="https://second.example/"))
    assert taken.value.code == "taken"
    assert store.get("taken") == Link("taken", url="https://first.example/")
    assert store.count() == 1


def test_codes_are_case_sensitive(store: LinkStore) -> None:
    store.add(Link("Abc", url="https://upper.example/"))
    store.add(Link("abc", url="https://lower.example/"))
    assert store.get("Abc") == Link("Abc", url="https://upper.example/")
    assert store.get("abc") == Link("abc", url="https://lower.example/")
    assert store.get("ABC") is None


def test_a_url_is_kept_exactly(store: LinkStore) -> None:
    url = "https://xn--bcher-kva.example/stra%C3%9Fe?q=%5B1%5D&x=%22'<>#frag" + "a" * 1900
    store.add(Link("exact", url=url))
    assert store.get("exact") == Link("exact", url=url)


@pytest.mark.parametrize("code", ["a\0b", "\ud800", "x" * 5000, "", "/", "caf\u00e9"])
def test_a_code_no_link_can_have_is_simply_not_found(store: LinkStore, code: str) -> None:
    store.add(Link("a", url="https://a.example/"))
    assert store.get(code) is None


def test_a_link_added_by_another_worker_is_found_at_once(store: LinkStore,
                                                         open_store: Opener) -> None:
    other = open_store()
    assert store.get("late") is None
    other.add(Link("late", url="https://late.example/"))
    assert store.get("late") == Link("late", url="https://late.example/")
    assert store.count() == 1
    with pytest.raises(CodeTaken):
        store.add(Link("late", url="https://other.example/"))


def test_simultaneous_creates_of_one_code_give_exactly_one_link(
        store: LinkStore, open_store: Opener) -> None:
    workers = [open_store() for _ in range(6)]
    outcomes: list[str] = []
    start = threading.Barrier(len(workers))

    def create(number: int) -> None:
        start.wait()
        try:
            workers[number].add(Link("race", url=f"https://{number}.example/"))
            outcomes.append(f"stored {number}")
        except CodeTaken:
            outcomes.append("taken")
    threads = [threading.Thread(target=create, args=(n,)) for n in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    [stored] = [outcome for outcome in outcomes if outcome.startswith("stored")]
    assert outcomes.count("taken") == len(workers) - 1
    assert store.get("race") == Link("race", url=f"https://{stored.split()[1]}.example/")
    assert store.count() == 1


def test_links_come_out_in_code_order(store: LinkStore) -> None:
    codes = ["b", "B", "a-1", "a_1", "A", "9", "zz", "Z-", "0a"]
    for code in codes:
        store.add(Link(code, url=f"https://{code.lower()}.example/"))
    assert [link.code for link in store.links()] == sorted(codes)
    assert store.count() == len(codes)


def test_an_import_adds_what_is_missing_and_skips_what_is_there(store: LinkStore) -> None:
    store.add(DATED)
    added = store.add_many([DATED, UPLOAD, LEGACY, EXTRA])
    assert added == 3
    assert store.add_many([DATED, UPLOAD, LEGACY, EXTRA]) == 0
    assert list(store.links()) == sorted([DATED, UPLOAD, LEGACY, EXTRA],
                                         key=lambda link: link.code)


def test_an_import_that_would_overwrite_a_link_stores_nothing(store: LinkStore) -> None:
    store.add(DATED)
    changed = Link("dated", url="https://elsewhere.example/", created_at=DATED.created_at)
    with pytest.raises(CodeTaken) as taken:
        store.add_many([UPLOAD, changed, LEGACY])
    assert taken.value.code == "dated"
    assert list(store.links()) == [DATED]


def test_an_import_with_one_code_twice_differently_stores_nothing(store: LinkStore) -> None:
    with pytest.raises(CodeTaken):
        store.add_many([LEGACY, Link("legacy", url="https://other.example/")])
    assert store.count() == 0


def test_many_links_are_counted_and_listed(store: LinkStore) -> None:
    links = [Link(f"n{i:05d}", url=f"https://example.com/{i}") for i in range(2_500)]
    assert store.add_many(links) == 2_500
    assert store.count() == 2_500
    assert list(store.links()) == links
    assert store.get("n01234") == links[1234]
