"""What counting visits costs the app's own code, a redirect at a time: the app's WSGI
callable called directly, with VISITS=off and VISITS=on side by side in one process.

Usage: python -m bench.visit_code [--links 100000] [--requests 50000] [--rounds 7]
       [--out bench/results]

A redirect through gunicorn costs a few hundred µs of CPU (the connection, parsing,
the answer, the close: gunicorn's and the kernel's), and what counting adds there
moves with the machine's noise (bench.visits). Here nothing but the app runs: no
server, no socket, no load generator. Two apps, one counting and one not, each on its
own copy of the same links file, answer the same requests in turn, round after round
(each round in the other order): the CPU time of this process a redirect (its request
thread, and the counting app's hand-off thread), and apart from it the CPU time of the
counting app's visit writer (a child process) a counted redirect. The requests are
bench/visits.lua's mix: people in five browsers, each request from an address of its
own (5,000 made up front, sent in turn), a third with a referrer, every 20th with DNT: 1,
every 10th request a bot. At the end the counting
app flushes, and the counts it stored must equal the requests it answered, exactly.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from flask import Flask

import visits
from bench.data import sample_of, write_links
from bench.visits import own_cpu

BROWSERS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/142.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
    "like Gecko) Version/18.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/142.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/18.6 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:145.0) Gecko/20100101 Firefox/145.0",
]
BOTS = ["Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", "curl/8.11.1"]
DISTINCT = 5_000  # requests made up front and sent in turn (each as a fresh copy)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.visit_code",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--links", type=int, default=100_000, help="links in the file")
    parser.add_argument("--requests", type=int, default=50_000, help="redirects a round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of each mode")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    if not (1_000 <= args.links <= 2_000_000 and 1_000 <= args.requests <= 1_000_000
            and 1 <= args.rounds <= 20):
        parser.error("--links 1,000-2,000,000, --requests 1,000-1,000,000, --rounds 1-20")
    return args


def requests(codes: list[str]) -> list[dict[str, Any]]:
    """WSGI environs of GET /<code> as gunicorn makes them behind one proxy, in the mix
    of bench/visits.lua; whether each is a bot's is in its "bench.bot" key."""
    made = []
    for number in range(DISTINCT):
        bot = number % 10 == 0
        environ: dict[str, Any] = {
            "REQUEST_METHOD": "GET", "PATH_INFO": f"/{codes[number % len(codes)]}",
            "QUERY_STRING": "", "SCRIPT_NAME": "", "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
            "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1:8000",
            "HTTP_X_FORWARDED_FOR": f"10.{number % 100_000 // 65_536}.{number // 256 % 256}."
                                    f"{number % 256}",
            "HTTP_USER_AGENT": (BOTS[number // 10 % len(BOTS)] if bot
                                else BROWSERS[number % len(BROWSERS)]),
            "bench.bot": bot}
        if not bot and number % 3 == 0:
            environ["HTTP_REFERER"] = "https://news.example.org/item?id=1"
        if not bot and number % 20 == 1:
            environ["HTTP_DNT"] = "1"
        made.append(environ)
    return made


def ignore(status: str, headers: list[tuple[str, str]], exc_info: Any = None, /
           ) -> Callable[[bytes], object]:
    """A WSGI start_response that only checks the answer is a redirect."""
    if not status.startswith("302"):
        raise RuntimeError(f"a redirect answered {status}")
    return len


def serve(app: Flask, environs: list[dict[str, Any]], count: int) -> float:
    """Answer `count` requests, in turn from environs; the CPU seconds they took."""
    call = app.wsgi_app
    started = time.process_time()
    for number in range(count):
        body = call(dict(environs[number % len(environs)]), ignore)
        close: Callable[[], None] | None = getattr(body, "close", None)
        if close is not None:
            close()
    return time.process_time() - started


def bots_in(environs: list[dict[str, Any]], count: int) -> int:
    """Bots among the first `count` requests that ``serve`` sends."""
    return sum(environs[number % len(environs)]["bench.bot"] for number in range(count))


def counted(app: Flask, codes: Iterable[str]) -> tuple[int, int]:
    """People and bots the app's visit store has for these codes."""
    store = app.extensions["visit_store"]
    people = bots = 0
    for code in set(codes):
        stats = store.stats(code)
        people, bots = people + stats.visits, bots + stats.bots
    return people, bots


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-visit-code-"))
    apps: dict[str, Flask] = {}
    # Importing the app makes one from the environment, as gunicorn does: here one that
    # counts nothing, in the temporary directory, not in ./data.
    os.environ.update({"DATA_DIR": str(tmp / "imported"), "VISITS": "off",
                       "SECRET_KEY": secrets.token_hex(16)})
    from application import create_app
    try:
        write_links(tmp / "urls.json", args.links)
        for mode in ("off", "on"):
            (tmp / mode).mkdir()
            shutil.copy(tmp / "urls.json", tmp / mode / "urls.json")
            apps[mode] = create_app({"DATA_DIR": str(tmp / mode), "VISITS": mode,
                                     "SECRET_KEY": secrets.token_hex(16), "TRUSTED_PROXY_HOPS": 1,
                                     "CREATE_RATE_LIMIT": "off"})
        codes = [link.code for link in sample_of(args.links)]
        environs = requests(codes)
        recorder: visits.Recorder = apps["on"].extensions["visits"]
        for app in apps.values():  # warm: each app's links read, the writer started
            serve(app, environs, len(environs))
        recorder.flush()
        writer = recorder._writer
        if writer is None:
            raise RuntimeError("the counting app started no visit writer")
        writer_before = own_cpu(writer.pid)
        seconds: dict[str, list[float]] = {"off": [], "on": []}
        for number in range(args.rounds):
            for mode in ("off", "on") if number % 2 == 0 else ("on", "off"):
                seconds[mode].append(serve(apps[mode], environs, args.requests))
        recorder.flush()
        writer_seconds = own_cpu(writer.pid) - writer_before
        answered = len(environs) + args.rounds * args.requests  # the warm-up's, and each round's
        bots_sent = bots_in(environs, len(environs)) + args.rounds * bots_in(environs,
                                                                             args.requests)
        people, bots = counted(apps["on"], codes)
    finally:
        for app in apps.values():
            if app.extensions["visits"] is not None:
                app.extensions["visits"].close()
        shutil.rmtree(tmp, ignore_errors=True)
    each = {mode: [s / args.requests * 1e6 for s in runs] for mode, runs in seconds.items()}
    off, on = statistics.median(each["off"]), statistics.median(each["on"])
    writer_us = writer_seconds / (args.rounds * args.requests) * 1e6
    exact = (people, bots) == (answered - bots_sent, bots_sent)
    result = {
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load": [round(x, 2) for x in os.getloadavg()], "links": args.links,
        "requests": args.requests, "rounds": args.rounds,
        "off_us": round(off, 2), "on_us": round(on, 2), "added_us": round(on - off, 2),
        "on_over_off": round(on / off, 3), "writer_us": round(writer_us, 2),
        "off_rounds_us": [round(x, 2) for x in each["off"]],
        "on_rounds_us": [round(x, 2) for x in each["on"]],
        "people": [answered - bots_sent, people], "bots": [bots_sent, bots], "exact": exact}
    text = "\n".join([
        f"Counting visits in the app's own code, measured {result['started_at']} (load "
        f"{result['load'][0]}): {args.links:,} links, {args.rounds} rounds of "
        f"{args.requests:,} redirects each way, WSGI calls in one process", "",
        "| CPU µs a redirect, VISITS=off | VISITS=on | added by counting | on / off "
        "| visit writer, µs a counted redirect | counts exact |",
        "|---:|---:|---:|---:|---:|---|",
        f"| {off:.2f} | {on:.2f} | {on - off:.2f} | {on / off:.3f} | {writer_us:.2f} | "
        f"{'yes' if exact else '**no**'} ({people:,} people, {bots:,} bots) |", ""])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "visit_code.md").write_text(text)
    (args.out / "visit_code.json").write_text(json.dumps(result, indent=2) + "\n")
    print(text)
    if not exact:
        print(f"bench.visit_code: stored {people:,} people and {bots:,} bots, answered "
              f"{answered - bots_sent:,} and {bots_sent:,}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
