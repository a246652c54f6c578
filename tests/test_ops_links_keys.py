"""python -m ops.links keys and reports: what the operator sees when something is wrong,
on both backends."""
from __future__ import annotations

import json

import pytest

from linkstore import Report
from linkstore.reports import open_reports
from tests.servers import Site
from tests.opslinks import links_command


@pytest.fixture
def site_dir(site: Site) -> Site:
    """A site whose data directory exists, as it does once the app has run."""
    site.data_dir.mkdir(parents=True)
    return site


def test_a_key_is_printed_once_and_listed_without_it(site_dir: Site) -> None:
    made = links_command("keys", "create", "partner.blog", env=site_dir.environment())
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("sk_") and len(key) == 67
    listed = links_command("keys", "list", "--json", env=site_dir.environment())
    [shown] = json.loads(listed.stdout)
    assert (shown["name"], shown["id"], shown["revoked_at"]) == ("partner.blog", key[3:11], None)
    assert "key_hash" not in shown and key not in listed.stdout


@pytest.mark.parametrize("args, message", [
    (["create", "has space"], "a key's name is 1 to 64 letters"),
    (["create", "_starts-with-underscore"], "a key's name is 1 to 64 letters"),
    (["create", "x" * 65], "a key's name is 1 to 64 letters"),
    (["revoke", "nobody"], "no API key has the name or id 'nobody'"),
])
def test_a_key_command_that_cannot_be_done_says_why(site_dir: Site, args: list[str],
                                                    message: str) -> None:
    done = links_command("keys", *args, env=site_dir.environment())
    assert done.returncode == 1
    assert message in done.stderr


def test_a_name_is_given_to_one_key_only(site_dir: Site) -> None:
    assert links_command("keys", "create", "twice", env=site_dir.environment()).returncode == 0
    again = links_command("keys", "create", "twice", env=site_dir.environment())
    assert again.returncode == 1 and "exists already" in again.stderr
    assert again.stdout == ""  # no key printed that was not stored


def test_reports_of_a_link_that_is_gone_say_so(site_dir: Site) -> None:
    links = site_dir.links()
    try:
        open_reports(links).add(Report("vanished", "legal", "", "2026-11-30T00:00:00+00:00"))
    finally:
        links.close()
    shown = links_command("reports", env=site_dir.environment())
    assert shown.returncode == 0, shown.stderr
    assert "/vanished  legal  [link no such link]" in shown.stdout
