"""python -m ops.links: the operator's commands, run as a separate process with the app's
environment, on both backends."""
from __future__ import annotations

import json
import subprocess  # nosec B404: checks what importing ops.links loads
import sys

import requests

import visits
from tests.helpers import CHROME_UA, FIREFOX_UA
from tests.opslinks import links_command
from tests.servers import REPO, Site, create_link, follow

SETTINGS = {"VISITS_FLUSH_SECONDS": "3600"}  # as the servers here run


def test_stats_prints_exactly_what_the_api_answers(site: Site) -> None:
    with site.server() as server:
        create_link(server, "counted")
        for agent in [CHROME_UA, CHROME_UA, FIREFOX_UA, "curl/8.11.1"]:
            follow(server, "counted", User_Agent=agent, Referer="https://t.co/a")
        server.stop()  # the counts are flushed
        server.start()
        api = requests.get(f"{server.url}/api/links/counted/stats", timeout=10).json()
    done = links_command("stats", "counted", "--json", env=site.environment() | SETTINGS)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == api
    assert (api["visits"], api["bots"], api["browsers"]) == (3, 1, {"Chrome": 2, "Firefox": 1})


def test_stats_reads_as_lines_for_a_person(site: Site) -> None:
    with site.server() as server:
        create_link(server, "read")
        follow(server, "read", User_Agent=CHROME_UA, DNT="1")
        follow(server, "read", User_Agent=FIREFOX_UA)
    done = links_command("stats", "read", env=site.environment() | SETTINGS)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "/read -> https://example.com/read"
    assert lines[1].split()[:3] == ["visits", "(people)", "2"]
    assert "1 asked not to be tracked" in lines[1]
    assert any(line.split() == [visits.today(), "2", "1", "0"] for line in lines)
    assert "browsers:  Firefox 1" in lines


def test_an_unknown_code_fails_saying_so(site: Site) -> None:
    with site.server():
        pass  # the store exists, empty
    done = links_command("stats", "nothing-here", env=site.environment() | SETTINGS)
    assert done.returncode == 1
    assert "no link has the code 'nothing-here'" in done.stderr


def test_a_command_is_required_and_stats_is_listed() -> None:
    done = links_command(env={})
    assert done.returncode == 2 and "stats" in done.stderr
    assert "stats" in links_command("--help", env={}).stdout


def test_it_opens_the_store_without_the_web_app() -> None:
    done = subprocess.run(  # nosec B603
        [sys.executable, "-c", "import sys, ops.links; "
                               "sys.exit('application' in sys.modules or 'flask' in sys.modules)"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
