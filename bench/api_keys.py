"""Whether a refused API key's answer tells anything by its time: a wrong key (a real
key with its last character changed), an unknown key (random, well formed) and a
revoked key, side by side, on both backends.

Usage: python -m bench.api_keys [--requests 2000] [--keys 50]

Each round sends the three kinds in turn (interleaved, so drift in the machine's load
hits them alike) as ``GET /api/links`` through the app in process (Flask's test client:
the request machinery without the network's noise), with ``--keys`` keys stored. It
prints the median time of each kind and their ratios to the wrong key's; docs record a
run. Every answer is checked to be the 401 it should be. Not part of ``make test``.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from flask.testing import FlaskClient

from application import create_app
from linkstore import new_api_key
from linkstore.keys import open_keys
from ops.pgserver import PostgresServer

KINDS = ("wrong", "unknown", "revoked")


def keyed_client(data_dir: Path, database_url: str, keys: int
                 ) -> tuple[FlaskClient, dict[str, str]]:
    """The app over data_dir (or database_url), keys keys stored, one of them revoked,
    and a key of each kind to send."""
    app = create_app({"DATA_DIR": data_dir, "DATABASE_URL": database_url, "TESTING": True,
                      "SECRET_KEY": "bench", "VISITS": "off"})  # nosec B105: a throwaway app
    stored = open_keys(app.extensions["link_store"])
    made = []
    for n in range(keys):
        key, record = new_api_key(f"bench-{n}")
        stored.add(record)
        made.append((key, record))
    stored.revoke(made[-1][1].name)
    real = made[0][0]
    return app.test_client(), {"wrong": real[:-1] + ("0" if real[-1] != "0" else "1"),
                               "unknown": new_api_key("never stored")[0],
                               "revoked": made[-1][0]}


def medians(client: FlaskClient, sent: dict[str, str], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for _ in range(rounds):
        for kind in KINDS:
            headers = {"Authorization": f"Bearer {sent[kind]}"}
            started = time.perf_counter()
            response = client.get("/api/links", headers=headers)
            times[kind].append(time.perf_counter() - started)
            if response.status_code != 401:
                raise SystemExit(f"a {kind} key got {response.status_code}, not 401")
    return {kind: statistics.median(found) for kind, found in times.items()}


def show(backend: str, found: dict[str, float]) -> None:
    wrong = found["wrong"]
    print(f"{backend}: " + ", ".join(f"{kind} {seconds * 1e6:,.0f} µs ({seconds / wrong:.3f})"
                                     for kind, seconds in found.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="rounds of three requests")
    parser.add_argument("--keys", type=int, default=50, help="keys stored")
    args = parser.parse_args()
    print(f"median time of a 401, {args.requests:,} rounds, {args.keys} keys stored; "
          "(ratio to the wrong key's)")
    with tempfile.TemporaryDirectory() as scratch:
        client, sent = keyed_client(Path(scratch), "", args.keys)
        show("file", medians(client, sent, args.requests))
    with PostgresServer() as server, tempfile.TemporaryDirectory() as scratch:
        url = server.create_database("bench_api_keys")
        client, sent = keyed_client(Path(scratch), url, args.keys)
        try:
            show("PostgreSQL", medians(client, sent, args.requests))
        finally:
            client.application.extensions["link_store"].close()


if __name__ == "__main__":
    main()
