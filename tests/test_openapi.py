"""The OpenAPI description (openapi.json): valid OpenAPI 3.1, served at /api/openapi.json,
covering every JSON route, and true of the live server.

The live check is schemathesis against real gunicorn: every described operation, with
examples, boundary cases and generated input, plus create -> look up, follow, read the
stats, delete chains along the description's links. Every answer must be a described
status with a described content type, headers and body, and none may be a 5xx. Links in
every state (active, protected, limited, used up, expired, disabled, deleted, a file)
are stored before the server starts, so the look-ups meet each of them, not only 404s.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis import engine
from schemathesis.core.result import Ok
from schemathesis.engine import events

from application import OPENAPI_FILE, create_app
from linkstore import Link, hash_password, hash_token, new_api_key
from linkstore.keys import open_keys
from tests.servers import GunicornServer, Site

DESCRIPTION: dict[str, Any] = json.loads(OPENAPI_FILE.read_text(encoding="utf-8"))

# The API key the live run holds: it is stored before the server starts, and some
# requests send it, so the key's own list and its creates and deletes are reached.
API_KEY, API_KEY_RECORD = new_api_key("schemathesis")
KEYED = {"GET /api/links", "POST /api/links", "DELETE /api/links/{code}"}

# What every answer of the live server is held to.
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance"]
# Bounded for make test on 2 loaded cores by counts, not by time: a fixed number of
# generated cases per operation and phase and of steps per chain, a fixed seed, no example
# database, so every run sends the same requests (no "max-time": with it, schemathesis
# fuzzes again and again until the time is up).
LIVE_CONFIG = {
    "seed": 13,
    "request-timeout": 30,
    "generation": {"max-examples": 100, "deterministic": True, "database": "none"},
    "checks": {"enabled": False} | {name: {"enabled": True} for name in CHECKS},
    "phases": {"stateful": {"max-steps": 8}},
}
# The described answers the live run must meet, so that a change that stops it reaching
# one (say, every create refused) cannot pass unseen. The others: 413 and 429 in
# test_refusals_the_live_run_cannot_reach_answer_as_described, 503 only from a store
# that is down (tests/test_postgres_faults.py).
LIVE_STATUSES = {
    "POST /api/links 201", "POST /api/links 400", "POST /api/links 409", "POST /api/links 415",
    "GET /api/links/{code} 200", "GET /api/links/{code} 404",
    "DELETE /api/links/{code} 200", "DELETE /api/links/{code} 403",
    "DELETE /api/links/{code} 404", "DELETE /api/links/{code} 410",
    "GET /api/links 200", "GET /api/links 401",
    "GET /api/links/{code}/stats 200", "GET /api/links/{code}/stats 404",
    "GET /{code} 200", "GET /{code} 302", "GET /{code} 404", "GET /{code} 410",
    "GET /api 200", "GET /api/openapi.json 200", "GET /healthz 200"}
MANAGE_TOKEN = "seeded-token-for-the-deletable-link"  # nosec B105: a test fixture's token
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  # enough: the server sends the file as it is


# --- The description itself -------------------------------------------------------------

ROUTE_VARIABLE = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")  # Werkzeug's <converter:name>


def openapi_path(rule: str) -> str:
    """A Flask route as OpenAPI writes its path: /api/links/<code> is /api/links/{code}."""
    return ROUTE_VARIABLE.sub(r"{\1}", rule)


def described_operations() -> set[str]:
    """Every operation of the description, as "METHOD /path"."""
    return {f"{method.upper()} {path}" for path, item in DESCRIPTION["paths"].items()
            for method in item if method != "parameters"}


def served_operations(app: Flask) -> set[str]:
    """Every route of the JSON API in app's url_map, with /<code> written as /{code}."""
    return {f"{method} {openapi_path(rule.rule)}"
            for rule in app.url_map.iter_rules()
            if rule.rule.startswith("/api") or rule.rule == "/healthz"
            for method in sorted(rule.methods or ()) if method not in ("HEAD", "OPTIONS")}


def test_the_description_is_valid_openapi_3_1() -> None:
    assert DESCRIPTION["openapi"].startswith("3.1.")
    validate(DESCRIPTION)  # openapi-spec-validator: raises on anything OpenAPI 3.1 forbids


def test_schemathesis_accepts_the_description() -> None:
    schema = schemathesis.openapi.from_dict(DESCRIPTION)
    schema.validate()
    loaded = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    assert {operation.label for operation in loaded} == described_operations()


def test_every_json_route_is_described(app: Flask) -> None:
    assert served_operations(app) - described_operations() == set(), (
        "describe each new route in openapi.json")


def test_every_described_operation_is_served(app: Flask) -> None:
    json_api = {name for name in described_operations() if name != "GET /{code}"}
    assert json_api == served_operations(app)


def test_the_api_serves_the_description(client: FlaskClient) -> None:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == DESCRIPTION


def test_an_unchanged_description_is_not_sent_again(client: FlaskClient) -> None:
    etag = client.get("/api/openapi.json").headers["ETag"]
    again = client.get("/api/openapi.json", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""


# --- The live server -----------------------------------------------------------------------

def seeded_links() -> list[Link]:
    """A link in every state the API can show. The deletable one's management token is
    MANAGE_TOKEN; "disabled" and "deleted" are taken down once stored (seed)."""
    now = datetime.now(timezone.utc)
    past = (now - timedelta(days=1)).isoformat(timespec="seconds")
    links = [Link("plain", url="https://example.com/plain"),
             Link("deletable", url="https://example.com/deletable",
                  manage_hash=hash_token(MANAGE_TOKEN)),
             Link("protected", url="https://example.com/protected",
                  password_hash=hash_password("correct horse")),
             Link("limited", url="https://example.com/limited", max_visits=3),
             Link("used-up", url="https://example.com/used-up", max_visits=1, visits=1),
             Link("expired", url="https://example.com/expired", expires_at=past),
             Link("disabled", url="https://example.com/disabled"),
             Link("deleted", url="https://example.com/deleted"),
             Link("picture", file="seeded.png", name="picture.png")]
    return [replace(link, created_at=now.isoformat(timespec="seconds")) for link in links]


def seed(site: Site, links: list[Link]) -> None:
    """Store links (and the picture's file) the way the app would, before it starts."""
    uploads = site.data_dir / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    (uploads / "seeded.png").write_bytes(PNG_SIGNATURE)
    store = site.links()
    try:
        for link in links:
            store.add(link)
        open_keys(store).add(API_KEY_RECORD)
        store.disable("disabled", reason="phishing", by="test", note="seeded")
        store.delete("deleted", by="test", reason="creator")
    finally:
        store.close()


@pytest.fixture
def live_server(site: Site) -> Iterator[GunicornServer]:
    """The app under gunicorn on each backend in turn, with the seeded links."""
    seed(site, seeded_links())
    # Creates must not be throttled away: every generated create has to reach the app.
    with site.server(CREATE_RATE_LIMIT="off") as server:
        yield server


@pytest.fixture
def live_schema(live_server: GunicornServer) -> schemathesis.BaseSchema:
    """The description as the running server serves it, held to CHECKS."""
    served = requests.get(f"{live_server.url}/api/openapi.json", timeout=10).json()
    # from_dict, not from_url: from_url leaves out the operation that served the description.
    config = schemathesis.Config.from_dict(LIVE_CONFIG | {"base-url": live_server.url})
    schema = schemathesis.openapi.from_dict(served, config=config)
    seeded = st.sampled_from([link.code for link in seeded_links()])

    @schema.hook
    def before_generate_path_parameters(context: schemathesis.HookContext,
                                        strategy: st.SearchStrategy[dict[str, Any]]
                                        ) -> st.SearchStrategy[dict[str, Any]]:
        """Half the codes are the seeded links, so look-ups meet every state."""
        return st.one_of(strategy, st.fixed_dictionaries({"code": seeded}))

    @schema.hook
    def before_generate_headers(context: schemathesis.HookContext,
                                strategy: st.SearchStrategy[dict[str, Any] | None]
                                ) -> st.SearchStrategy[dict[str, Any] | None]:
        """Some deletes carry the deletable link's own token; some keyed requests the key."""
        label = context.operation.label if context.operation is not None else ""
        if label == "DELETE /api/links/{code}":
            strategy = st.one_of(strategy, st.just({"X-Manage-Token": MANAGE_TOKEN}))
        if label in KEYED:
            strategy = st.one_of(strategy, st.just({"Authorization": f"Bearer {API_KEY}"}))
        return strategy

    return schema


def run_schemathesis(schema: schemathesis.BaseSchema) -> tuple[list[str], set[str], str]:
    """Every phase of a schemathesis run, as its command line would make it: the failures,
    each with the curl command that repeats it, every "METHOD /path STATUS" answered, and
    why the run stopped ("completed", or "server_unavailable" when the server went away)."""
    failures, answered, stopped = [], set(), ""
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for case_id, interaction in event.recorder.interactions.items():
                if interaction.response is not None:
                    case = event.recorder.cases[case_id].value
                    answered.add(f"{case.method} {case.operation.path} "
                                 f"{interaction.response.status_code}")
            failures += [f"{info.failure.operation}: {info.failure.title}\n{info.failure.message}"
                         f"\n{info.code_sample}"
                         for nodes in event.recorder.checks.values() for node in nodes
                         if (info := node.failure_info) is not None]
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            failures.append(str(getattr(event, "info", event)))
        elif isinstance(event, events.EngineFinished):
            stopped = event.stop_reason.value
    return failures, answered, stopped


def test_every_operation_answers_as_described(live_schema: schemathesis.BaseSchema) -> None:
    failures, answered, stopped = run_schemathesis(live_schema)
    assert not failures, "\n\n".join(failures)
    assert LIVE_STATUSES - answered == set(), f"never answered; the run stopped: {stopped}"


def test_refusals_the_live_run_cannot_reach_answer_as_described(data_dir: Path) -> None:
    """413 and 429 through the app itself (WSGI), held to the same checks: the live
    server takes every create, and nothing generated comes near the body limit."""
    app = create_app({"DATA_DIR": data_dir, "SECRET_KEY": "test-secret",
                      "MAX_UPLOAD_MB": "0", "CREATE_RATE_LIMIT": "2/minute", "VISITS": "off"})
    schema = schemathesis.openapi.from_wsgi(
        "/api/openapi.json", app, config=schemathesis.Config.from_dict(LIVE_CONFIG))
    create = schema["/api/links"]["POST"]
    oversized = json.dumps({"url": "https://example.com/" + "a" * 1024 * 1024})  # over 1 MB
    fine = json.dumps({"url": "https://example.com/"})
    answers = [create.Case(body=body.encode(), media_type="application/json").call_and_validate()
               for body in (oversized, fine, fine)]
    assert [answer.status_code for answer in answers] == [413, 201, 429]
    assert int(answers[2].headers["retry-after"][0]) > 0
