"""python -m ops.links list, search, show, disable, enable, delete and export: run as a
separate process against the store on each backend (the `store` and `location` fixtures
of conftest.py), and against a running gunicorn app."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import requests

from linkstore import Link, LinkStore, hash_password, new_manage_token, open_url
from tests.helpers import eventually
from tests.opslinks import environment_of, links_command
from tests.servers import Site, create_link

OLDEST, MIDDLE, NEWEST = ("2024-01-01T00:00:00+00:00", "2025-06-01T12:00:00+02:00",
                          "2026-11-01T00:00:00+00:00")


@pytest.fixture
def env(location: str, tmp_path: Path) -> dict[str, str]:
    """Where the command finds the store the `store` fixture opened."""
    return environment_of(location, tmp_path / "uploads")


@pytest.fixture
def three(store: LinkStore) -> LinkStore:
    """Three links made at different times, in another order than their codes'."""
    store.add(Link("b-middle", "https://example.com/Middle", created_at=MIDDLE))
    store.add(Link("c-oldest", "https://example.org/oldest", created_at=OLDEST))
    store.add(Link("a-newest", "https://example.net/newest", created_at=NEWEST))
    return store


def codes_listed(stdout: str) -> list[str]:
    return [line.split()[2].lstrip("/") for line in stdout.splitlines()]


def test_list_shows_the_newest_links_first(three: LinkStore, env: dict[str, str]) -> None:
    done = links_command("list", env=env)
    assert done.returncode == 0, done.stderr
    assert codes_listed(done.stdout) == ["a-newest", "b-middle", "c-oldest"]
    assert "(3 links)" in done.stderr


def test_list_keeps_to_the_limit_and_the_state_asked_for(three: LinkStore,
                                                         env: dict[str, str]) -> None:
    three.disable("b-middle", "spam", by="test")
    assert codes_listed(links_command("list", "--limit", "2", env=env).stdout) == [
        "a-newest", "b-middle"]
    assert codes_listed(links_command("list", "--state", "disabled", env=env).stdout) == [
        "b-middle"]
    assert codes_listed(links_command("list", "--state", "active", env=env).stdout) == [
        "a-newest", "c-oldest"]


def test_list_as_json_says_each_link_s_state(three: LinkStore, env: dict[str, str]) -> None:
    three.delete("c-oldest", by="test", reason="operator")
    listed = json.loads(links_command("list", "--json", env=env).stdout)
    assert [(link["code"], link["state"], link["reason"]) for link in listed] == [
        ("a-newest", "active", None), ("b-middle", "active", None),
        ("c-oldest", "deleted", "operator")]


def test_a_limit_must_be_a_whole_number_from_one(env: dict[str, str]) -> None:
    done = links_command("list", "--limit", "0", env=env)
    assert done.returncode == 2 and "from 1" in done.stderr


def test_search_finds_text_in_codes_and_targets_in_any_case(
        three: LinkStore, env: dict[str, str]) -> None:
    assert codes_listed(links_command("search", "MIDDLE", env=env).stdout) == ["b-middle"]
    assert codes_listed(links_command("search", "example.org", env=env).stdout) == ["c-oldest"]
    assert codes_listed(links_command("search", "example", "--limit", "2", env=env).stdout) == [
        "a-newest", "b-middle"]
    nothing = links_command("search", "nowhere", env=env)
    assert (nothing.returncode, nothing.stdout, "(0 links)" in nothing.stderr) == (0, "", True)


def test_show_tells_everything_but_the_hashes(store: LinkStore, env: dict[str, str]) -> None:
    token, token_hash = new_manage_token()
    password_hash = hash_password("correct horse")
    store.add(Link("secret", "https://example.com/hidden", created_at=OLDEST, max_visits=5,
                   expires_at="2030-01-01T00:00:00+00:00", password_hash=password_hash,
                   manage_hash=token_hash, owner="key-7"))
    store.disable("secret", "phishing", by="alice", note="ticket 42")
    done = links_command("show", "secret", "--json", env=env)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown | {"history": []} == {
        "code": "secret", "url": "https://example.com/hidden", "file": None, "name": None,
        "created_at": OLDEST, "state": "disabled", "reason": "phishing", "note": "ticket 42",
        "changed_by": "alice", "changed_at": shown["changed_at"],
        "expires_at": "2030-01-01T00:00:00+00:00", "max_visits": 5, "visits": 0,
        "protected": True, "owner": "key-7", "history": []}
    assert [(c["action"], c["by"], c["reason"], c["note"]) for c in shown["history"]] == [
        ("disable", "alice", "phishing", "ticket 42")]
    text = links_command("show", "secret", env=env).stdout
    assert "protected   yes" in text and "disable  by alice  phishing (ticket 42)" in text
    for secret in (token, token_hash, password_hash, password_hash.split("$")[-1]):
        assert secret not in done.stdout + text


def test_disable_takes_a_link_down_and_records_who_and_why(
        store: LinkStore, env: dict[str, str]) -> None:
    store.add(Link("bad", "https://example.com/phish"))
    done = links_command("disable", "bad", "--reason", "phishing", "--note", "ticket 7",
                         "--by", "alice", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("/bad disabled (phishing): it answers 410 Gone; it was active.")
    link = store.current("bad")
    assert link is not None and (link.state, link.reason, link.note, link.changed_by) == (
        "disabled", "phishing", "ticket 7", "alice")
    assert [(c.action, c.by) for c in store.history("bad")] == [("disable", "alice")]


def test_enable_brings_it_back_and_enabling_twice_changes_nothing(store: LinkStore,
                                                                  env: dict[str, str]) -> None:
    store.add(Link("back", "https://example.com/"))
    store.disable("back", "spam", by="alice")
    done = links_command("enable", "back", "--by", "bob", env=env)
    assert done.returncode == 0, done.stderr
    assert "enabled: it works again; it was disabled (spam)" in done.stdout
    again = links_command("enable", "back", "--by", "bob", env=env)
    assert (again.returncode, again.stdout) == (0, "/back was already active; nothing changed\n")
    assert [(c.action, c.by) for c in store.history("back")] == [
        ("disable", "alice"), ("enable", "bob")]


def test_enabling_an_expired_link_says_it_still_answers_410(
        store: LinkStore, env: dict[str, str]) -> None:
    store.add(Link("late", "https://example.com/", expires_at="2020-01-01T00:00:00+00:00"))
    store.disable("late", "spam", by="alice")
    done = links_command("enable", "late", env=env)
    assert done.returncode == 0, done.stderr
    assert "enabled, but it has expired: it still answers 410 Gone" in done.stdout


def test_delete_is_for_good_and_a_second_delete_is_refused(store: LinkStore,
                                                           env: dict[str, str]) -> None:
    store.add(Link("gone", "https://example.com/"))
    done = links_command("delete", "gone", "--by", "carol", env=env)
    assert done.returncode == 0, done.stderr
    link = store.current("gone")
    assert link is not None and (link.state, link.reason, link.changed_by) == (
        "deleted", "operator", "carol")
    for args in (["delete", "gone"], ["enable", "gone"], ["disable", "gone", "--reason", "spam"]):
        refused = links_command(*args, env=env)
        assert refused.returncode == 1
        assert "'gone' was deleted; a deleted link cannot change; nothing changed" in refused.stderr
    assert len(store.history("gone")) == 1


@pytest.mark.parametrize("args", [["show", "Nope"], ["disable", "Nope", "--reason", "spam"],
                                  ["enable", "Nope"], ["delete", "Nope"]])
def test_an_unknown_code_is_refused_saying_so(store: LinkStore, env: dict[str, str],
                                              args: list[str]) -> None:
    store.add(Link("nope", "https://example.com/"))
    done = links_command(*args, env=env)
    assert done.returncode == 1
    assert "no link has the code 'Nope' (codes are case-sensitive)" in done.stderr


def test_disable_needs_one_of_the_reasons(env: dict[str, str]) -> None:
    done = links_command("disable", "x", "--reason", "boring", env=env)
    assert done.returncode == 2 and "phishing" in done.stderr


def test_the_running_app_answers_410_after_disable_and_302_after_enable(site: Site) -> None:
    """Within the store's bound on every worker: the next request with the file, 2 s and
    a poll with PostgreSQL (each worker may hold the link in its cache until then)."""
    replies: list[requests.Response] = []

    def answers(status: int) -> bool:
        replies[:] = [requests.get(f"{server.url}/taken", allow_redirects=False, timeout=10,
                                   headers={"Accept": "application/json"}) for _ in range(6)]
        return all(reply.status_code == status for reply in replies)

    with site.server() as server:
        create_link(server, "taken")
        assert answers(302)  # every worker has it now
        env = site.environment()
        assert links_command("disable", "taken", "--reason", "malware", env=env).returncode == 0
        eventually(lambda: answers(410))
        gone = replies[-1].json()  # a worker not asked may be within its bound still
        assert (gone["state"], gone["reason"]) == ("disabled", "malware")
        assert links_command("enable", "taken", env=env).returncode == 0
        eventually(lambda: answers(302))
        assert {reply.headers["Location"] for reply in replies} == {"https://example.com/taken"}


# --- export ----------------------------------------------------------------------------

def full_link(store: LinkStore) -> Link:
    """A link with every field set, disabled: what a lossless export must carry."""
    _, token_hash = new_manage_token()
    store.add(Link("full", "https://example.com/full", created_at=MIDDLE, max_visits=3,
                   expires_at="2030-01-01T00:00:00+00:00",
                   password_hash=hash_password("correct horse"), manage_hash=token_hash,
                   owner="key-1"))
    store.consume_visit("full")
    return store.disable("full", "legal", by="dana", note="court order 9")


def test_csv_export_is_for_people_and_holds_no_hash(store: LinkStore,
                                                    env: dict[str, str]) -> None:
    link = full_link(store)
    store.add(Link("plain", "https://example.com/plain", created_at=OLDEST))
    done = links_command("export", "--format", "csv", env=env)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout, newline="")))
    assert rows == [
        {"code": "full", "url": "https://example.com/full", "file": "", "name": "",
         "created_at": MIDDLE, "expires_at": "2030-01-01T00:00:00+00:00", "max_visits": "3",
         "visits": "1", "state": "disabled", "reason": "legal"},
        {"code": "plain", "url": "https://example.com/plain", "file": "", "name": "",
         "created_at": OLDEST, "expires_at": "", "max_visits": "", "visits": "",
         "state": "active", "reason": ""}]
    assert link.password_hash and link.password_hash not in done.stdout
    assert link.manage_hash and link.manage_hash not in done.stdout
    assert "exported 2 links" in done.stderr


def test_a_json_export_imported_into_an_empty_store_rebuilds_every_field(
        store: LinkStore, env: dict[str, str], tmp_path: Path) -> None:
    link = full_link(store)
    store.add(Link("deleted", "https://example.com/d", created_at=OLDEST))
    store.delete("deleted", by="erin", reason="operator")
    exported = tmp_path / "links.json"
    assert links_command("export", "--format", "json", "--output", str(exported),
                         env=env).returncode == 0
    (tmp_path / "elsewhere").mkdir()
    elsewhere = {"URLS_FILE": str(tmp_path / "elsewhere" / "urls.json")}
    done = links_command("import", str(exported), "--format", "json", env=elsewhere)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "2 added, 0 already there, 0 conflicting, 0 invalid"
    rebuilt = open_url((tmp_path / "elsewhere" / "urls.json").as_uri())
    assert list(rebuilt.links()) == [store.current("deleted"), link]


def test_export_to_a_file_leaves_the_old_file_whole_when_the_store_cannot_be_read(
        tmp_path: Path) -> None:
    exported = tmp_path / "links.csv"
    exported.write_text("the last good export\n")
    (tmp_path / "urls.json").write_text('{"a": ')  # damaged
    done = links_command("export", "--format", "csv", "--output", str(exported),
                         env={"URLS_FILE": str(tmp_path / "urls.json")})
    assert done.returncode == 1 and "not valid JSON" in done.stderr
    assert exported.read_text() == "the last good export\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".links")] == []
