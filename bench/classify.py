"""What classifying visits costs: per redirect, per new User-Agent, and with the cache.

Usage: python -m bench.classify [--requests 50000] [--repeat 3] [--seed 14]

Builds a mix of requests from the real User-Agents in
tests/fixtures/visitors/user_agents.json: 85 % people, whose browsers come in eight
recent versions each and follow a Zipf-like popularity, with 3 % of people in in-app
browsers whose build numbers make their User-Agent unique; 15 % bots; half the
requests with a referrer; 10 % with DNT or Sec-GPC. Then, side by side in one run, the
steps taking turns, it times (best of --repeat):

- ``hit()`` per request: the only part on the redirect's path;
- each library alone, and ``visitors.describe()``, on every distinct User-Agent once,
  every cache empty: what a flush pays for a User-Agent it has not seen; with
  ua-parser's optional Rust engine beside its pure-Python one when ua-parser-rs is
  installed (``pip install ua-parser-rs==0.1.5``), and the memory each engine adds;
- ``visitors.classify()`` over the whole mix, from an empty cache (a new worker's first
  flushes), then again with the cache warm (every flush after).

It prints a table and the ratios between them; docs/visits.md records a run. It is not
part of ``make test`` or ``python -m bench``.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import ua_parser
from ua_parser import BasicResolver, Domain, Resolver, load_lazy_builtins

import visitors

FIXTURE = (Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "visitors"
           / "user_agents.json")
VERSION = re.compile(r"\b(Chrome|CriOS|Firefox|FxiOS|Version|Edg|EdgA|EdgiOS|"
                     r"SamsungBrowser|OPR)/(\d+)")
REFERRERS = ["https://t.co/Ab12Cd", "https://www.google.com/", "https://l.facebook.com/l.php?u=x",
             "https://www.linkedin.com/feed/", "android-app://com.slack/",
             "https://news.example/2026/11/29/story?utm_source=newsletter&id=8812",
             "https://lm.facebook.com/", "https://www.reddit.com/r/example/comments/1/x/"]
T = TypeVar("T")


def versions(agent: str, count: int = 8) -> list[str]:
    """The same browser at its `count` latest major versions."""
    return [VERSION.sub(lambda m: f"{m[1]}/{int(m[2]) - back}", agent) for back in range(count)]


def zipf(items: Sequence[T], rng: random.Random, k: int) -> list[T]:
    """k draws from items in a random order of popularity, weight 1/rank."""
    ranked = rng.sample(list(items), len(items))
    return rng.choices(ranked, weights=[1 / rank for rank in range(1, len(ranked) + 1)], k=k)


def mix(requests: int, seed: int) -> list[dict[str, str]]:
    """Request headers as a redirect sees them; see the module's docstring."""
    # A seeded generator: the mix must be the same on every run; nothing here is secret.
    rng = random.Random(seed)  # nosec B311
    rows = json.loads(FIXTURE.read_text())
    people = [variant for row in rows if row["kind"] == "person"
              for variant in versions(row["user_agent"])]
    in_app = [row["user_agent"] for row in rows if "in-app" in row["name"]]
    bots = [row["user_agent"] for row in rows if row["kind"] == "bot"]
    n_bots = requests * 15 // 100
    n_unique = (requests - n_bots) * 3 // 100
    agents = (zipf(people, rng, requests - n_bots - n_unique) + zipf(bots, rng, n_bots)
              + [f"{rng.choice(in_app)} build/{rng.getrandbits(40):x}"
                 for _ in range(n_unique)])
    rng.shuffle(agents)
    headers = []
    for agent in agents:
        request = {"User-Agent": agent}
        if rng.random() < 0.5:
            request["Referer"] = rng.choice(REFERRERS)
        if rng.random() < 0.1:
            request[rng.choice(["DNT", "Sec-GPC"])] = "1"
        headers.append(request)
    return headers


def best_rates(steps: dict[str, Callable[[], int]], repeat: int) -> dict[str, float]:
    """Items per second of each step's fastest run (a step returns how many items it did).
    The steps take turns, so that a busy machine slows them alike."""
    best = dict.fromkeys(steps, 0.0)
    for _ in range(repeat):
        for name, work in steps.items():
            started = time.perf_counter()
            done = work()
            best[name] = max(best[name], done / (time.perf_counter() - started))
    return best


def each(function: Callable[[str], object], agents: Iterable[str]) -> Callable[[], int]:
    def work() -> int:
        count = 0
        for agent in agents:
            function(agent)
            count += 1
        return count
    return work


HIT = "hit(): what the redirect records"
CRAWLERS = "crawlerdetect alone"
PURE = "ua-parser alone, pure-Python engine (the one used)"
RUST = "ua-parser alone, Rust engine (ua-parser-rs)"
PERSON = "describe(): a person's new User-Agent"
BOT = "describe(): a bot's new User-Agent"
CACHED = "classify() over the mix, from an empty cache"
WARM = "classify() over the mix again, cache warm"


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


def engine(make: Callable[[], Resolver], agents: Sequence[str]) -> tuple[Resolver, float]:
    """A ua-parser engine, and the MiB of memory it added once it had read every agent."""
    before = rss_mib()
    resolver = make()
    for agent in agents:
        resolver(agent, Domain.ALL)
    return resolver, rss_mib() - before


def full_cache_mib() -> float:
    """MiB held by a full cache of distinct, realistic User-Agents."""
    rows = json.loads(FIXTURE.read_text())
    visitors.cache_clear()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(visitors.CACHE_SIZE):
        agent = f"{rows[n % len(rows)]['user_agent']} build/{n}"  # as a request brings it
        visitors.classify(visitors.Hit("GET", agent, visitors.DIRECT, False))
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.classify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args(argv)

    requests = mix(args.requests, args.seed)
    hits = [visitors.hit("GET", request) for request in requests]
    distinct = sorted({one.user_agent for one in hits})
    bots = {row["user_agent"] for row in json.loads(FIXTURE.read_text())
            if row["kind"] == "bot"}
    people = [agent for agent in distinct if agent not in bots]
    pure, pure_mib = engine(lambda: BasicResolver(load_lazy_builtins()), distinct)
    engines = {PURE: (pure, pure_mib)}
    if ua_parser.RegexResolver:
        rust_engine = ua_parser.RegexResolver
        engines[RUST] = engine(lambda: rust_engine(load_lazy_builtins()), distinct)
    for agent in distinct:  # every lazily compiled pattern, before anything is timed
        visitors.describe(agent)

    def record() -> int:
        for request in requests:
            visitors.hit("GET", request)
        return len(requests)

    def count_visits() -> int:
        for one in hits:
            visitors.classify(one)
        return len(hits)

    def count_from_empty_cache() -> int:
        visitors.cache_clear()
        return count_visits()

    def parse_with(resolver: Resolver) -> Callable[[], int]:
        return each(lambda agent: resolver(agent, Domain.ALL), distinct)

    rates = best_rates({
        HIT: record,
        CRAWLERS: each(visitors.on_crawler_list, distinct),
        **{name: parse_with(resolver) for name, (resolver, _) in engines.items()},
        PERSON: each(visitors.describe, people),
        BOT: each(visitors.describe, sorted(bots & set(distinct))),
        CACHED: count_from_empty_cache,
        WARM: count_visits,  # right after CACHED filled the cache
    }, args.repeat)
    visitors.cache_clear()
    count_visits()
    info = visitors.cache_info()
    print(f"mix: {len(requests):,} requests, {len(distinct):,} distinct User-Agents "
          f"({len(people):,} people's); cache of {info.maxsize:,}: "
          f"{info.hits / (info.hits + info.misses):.1%} hits; a full cache holds "
          f"{full_cache_mib():.1f} MiB (with its User-Agent strings)\n")
    print("| step | per second | µs each |\n| --- | ---: | ---: |")
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} | {1e6 / rate:,.1f} |")
    print()
    for name, (_, mib) in engines.items():
        print(f"memory added by {name.removeprefix('ua-parser alone, ')}: {mib:.1f} MiB")
    if RUST in rates:
        print(f"Rust engine ÷ pure-Python engine: {rates[RUST] / rates[PURE]:.1f}× the speed, "
              f"{engines[RUST][1] / pure_mib:.1f}× the memory")
    else:
        print("(pip install ua-parser-rs==0.1.5 to compare ua-parser's Rust engine)")
    print(f"classify() from an empty cache ÷ describe() of a person, cold: "
          f"{rates[CACHED] / rates[PERSON]:.0f}×")
    print(f"classify() with a warm cache ÷ describe() of a person, cold: "
          f"{rates[WARM] / rates[PERSON]:.0f}×")
    print(f"hit() ÷ describe() of a person, cold: {rates[HIT] / rates[PERSON]:.0f}×")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
