"""API keys under real gunicorn (3 workers) on both backends: made by the operator's
command, sent as Authorization: Bearer; a key lists and deletes its own links, is
refused everywhere from the request after its revocation, and ANONYMOUS_CREATE=off
makes the API and the form ask for one."""
from __future__ import annotations

import base64
import re

import requests

from tests.servers import GunicornServer, Site
from tests.opslinks import links_command

CHALLENGE = 'Bearer realm="api"'


def new_key(site: Site, name: str) -> str:
    done = links_command("keys", "create", name, env=site.environment())
    assert done.returncode == 0, done.stderr
    assert "not shown again" in done.stderr
    return done.stdout.strip()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def create(server: GunicornServer, key: str | None, **body: str) -> requests.Response:
    return requests.post(f"{server.url}/api/links", timeout=30, headers=bearer(key) if key else {},
                         json={"url": "https://example.com/", **body})


def listed(server: GunicornServer, key: str, **query: str) -> requests.Response:
    return requests.get(f"{server.url}/api/links", params=query, headers=bearer(key), timeout=30)


def test_a_key_lists_and_deletes_only_its_own_links(site: Site) -> None:
    with site.server() as server:
        mine, theirs = new_key(site, "mine"), new_key(site, "theirs")
        assert create(server, mine, code="by-me").status_code == 201
        assert create(server, theirs, code="by-them").status_code == 201
        assert create(server, None, code="by-nobody").status_code == 201
        page = listed(server, mine).json()
        assert [link["code"] for link in page["links"]] == ["by-me"]
        assert page["links"][0]["short_url"] == f"{server.url}/by-me"
        assert page["next_cursor"] is None

        refused = requests.delete(f"{server.url}/api/links/by-them", headers=bearer(mine),
                                  timeout=30)
        assert refused.status_code == 403 and refused.json()["error"]
        deleted = requests.delete(f"{server.url}/api/links/by-me", headers=bearer(mine),
                                  timeout=30)
        assert deleted.status_code == 200 and deleted.json()["state"] == "deleted"
        assert requests.get(f"{server.url}/by-me", allow_redirects=False,
                            timeout=30).status_code == 410
        again = requests.delete(f"{server.url}/api/links/by-me", headers=bearer(mine),
                                timeout=30)
        assert again.status_code == 410
        assert requests.get(f"{server.url}/by-them", allow_redirects=False,
                            timeout=30).status_code == 302
    links = site.links()
    history = links.history("by-me")
    links.close()
    assert [(c.action, c.reason) for c in history] == [("delete", "creator")]
    assert history[0].by.startswith("api key ")


def test_pages_walk_every_link_once_newest_first(site: Site) -> None:
    with site.server() as server:
        key = new_key(site, "pager")
        for n in range(5):
            assert create(server, key, code=f"page{n}").status_code == 201
        seen, cursor, sizes = [], None, []
        while True:
            page = listed(server, key, limit="2", **({"cursor": cursor} if cursor else {}))
            assert page.status_code == 200, page.text
            sizes.append(len(page.json()["links"]))
            seen += [link["code"] for link in page.json()["links"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        assert sizes == [2, 2, 1]
        assert sorted(seen) == [f"page{n}" for n in range(5)]
        created = [requests.get(f"{server.url}/api/links/{code}", timeout=30).json()[
            "created_at"] for code in seen]
        assert created == sorted(created, reverse=True)
        null_byte = base64.urlsafe_b64encode(b'["\\u0000", "page1"]').decode()
        for bad in ({"limit": "0"}, {"limit": "1001"}, {"limit": "ten"},
                    {"cursor": "not-a-cursor"}, {"cursor": null_byte}):
            refused = listed(server, key, **bad)
            assert refused.status_code == 400
            assert refused.json()["field"] == next(iter(bad))


def test_every_401_names_the_bearer_scheme(site: Site) -> None:
    with site.server() as server:
        key = new_key(site, "real")
        assert create(server, key, code="kept").status_code == 201
        wrong = key[:-1] + ("0" if key[-1] != "0" else "1")
        answers = [
            requests.get(f"{server.url}/api/links", timeout=30),
            listed(server, wrong),
            requests.get(f"{server.url}/api/links", headers={"Authorization": "Basic eDp5"},
                         timeout=30),
            create(server, wrong, code="never"),
            create(server, "sk_" + "0" * 64, code="never"),
            requests.delete(f"{server.url}/api/links/kept", timeout=30),
            requests.delete(f"{server.url}/api/links/kept", headers=bearer(wrong), timeout=30),
        ]
        assert [a.status_code for a in answers] == [401] * len(answers)
        assert {a.headers["WWW-Authenticate"] for a in answers} == {CHALLENGE}
        assert all(a.json()["error"] for a in answers)
        assert requests.get(f"{server.url}/api/links/never", timeout=30).status_code == 404


def test_a_revoked_key_is_refused_by_every_worker_from_the_next_request(site: Site) -> None:
    with site.server() as server:
        key = new_key(site, "leaked")
        server.wait_for_workers(3)
        assert [listed(server, key).status_code for _ in range(12)] == [200] * 12
        done = links_command("keys", "revoke", "leaked", env=site.environment())
        assert done.returncode == 0, done.stderr
        answers = [listed(server, key) for _ in range(12)] + [create(server, key)]
        assert [a.status_code for a in answers] == [401] * 13
        assert "revoked" in answers[0].json()["error"]
    shown = links_command("keys", "list", env=site.environment())
    assert "leaked" in shown.stdout and "revoked 20" in shown.stdout
    assert key not in shown.stdout + links_command("keys", "list", "--json",
                                                   env=site.environment()).stdout


def test_only_the_key_s_hash_is_stored(site: Site) -> None:
    with site.server() as server:
        key = new_key(site, "secret")
        assert create(server, key, code="hashed").status_code == 201
    stored = site.stored()
    assert key.encode() not in stored and key[3:].encode() not in stored


def test_with_anonymous_create_off_the_api_and_the_form_ask_for_a_key(site: Site) -> None:
    with site.server(ANONYMOUS_CREATE="off") as server:
        key = new_key(site, "member")
        refused = create(server, None, code="anonymous")
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"] == CHALLENGE
        assert "API key" in refused.json()["error"]
        assert create(server, key, code="member-link").status_code == 201

        browser = requests.Session()
        home = browser.get(server.url, timeout=30)
        assert 'name="api_key"' in home.text and "You need an API key" in home.text
        token = re.search(r'name="csrf_token" value="([^"]+)"', home.text)
        assert token is not None
        form = {"csrf_token": token.group(1), "url": "https://example.com/form"}
        missing = browser.post(f"{server.url}/your-url", data=form, timeout=30)
        assert missing.status_code == 400 and "enter yours" in missing.text
        wrong = browser.post(f"{server.url}/your-url", timeout=30,
                             data=form | {"api_key": "sk_" + "1" * 64})
        assert wrong.status_code == 403 and "not one this site gave out" in wrong.text
        assert "sk_111" not in wrong.text  # never shown again
        made = browser.post(f"{server.url}/your-url", timeout=30,
                            data=form | {"api_key": key, "code": "form-link"})
        assert made.status_code == 200, made.text
        codes = [link["code"] for link in listed(server, key).json()["links"]]
        assert sorted(codes) == ["form-link", "member-link"]
