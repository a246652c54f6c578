"""Link data for the benchmark, written straight into the app's urls.json format, or
loaded into PostgreSQL with COPY (bench/postgres.py).

Going through the HTTP API would take hours at 1,000,000 links; writing the file takes
seconds. Codes are 7-character base62 strings, like the app's random codes, derived
from the link's index so that every run uses the same data.
"""
import json
import random
from dataclasses import dataclass
from pathlib import Path

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
CODE_LENGTH = 7
SPACE = len(ALPHABET) ** CODE_LENGTH
STRIDE = 2_654_435_761  # odd and coprime with 62**7, so index -> code is one-to-one
CREATED_AT = "2026-11-27T05:00:00+00:00"
SAMPLE_SIZE = 1000


@dataclass(frozen=True)
class Link:
    """One stored link: the code the load generator asks for and where it must redirect."""

    code: str
    url: str


def code_for(index: int) -> str:
    """The code of link number `index`: base62, scattered over the whole code space."""
    value = ((index + 1) * STRIDE) % SPACE
    digits = []
    for _ in range(CODE_LENGTH):
        value, digit = divmod(value, len(ALPHABET))
        digits.append(ALPHABET[digit])
    return "".join(digits)


def url_for(index: int) -> str:
    """A plausible long URL for link number `index`."""
    return f"https://www.example.com/articles/{index}/how-to-shorten-a-url?ref=bench&id={index}"


def sample_of(count: int) -> list[Link]:
    """Up to SAMPLE_SIZE of the `count` links, spread evenly: the hot set the load asks for."""
    step = max(1, count // SAMPLE_SIZE)
    return [Link(code_for(index), url_for(index)) for index in range(0, count, step)][
        :SAMPLE_SIZE]


def random_links(count: int, how_many: int, seed: int = 12) -> list[Link]:
    """how_many distinct links drawn uniformly from all `count`: requests the cache of
    recently served links cannot have seen (unless it holds a large share of them)."""
    rng = random.Random(seed)  # nosec B311: a benchmark's sample, not a secret
    return [Link(code_for(index), url_for(index))
            for index in rng.sample(range(count), min(count, how_many))]


def write_links(urls_file: Path, count: int) -> list[Link]:
    """Write `count` links to `urls_file`; return up to SAMPLE_SIZE of them spread evenly."""
    urls_file.parent.mkdir(parents=True, exist_ok=True)
    with urls_file.open("w", encoding="utf-8") as f:
        f.write("{")
        for index in range(count):
            record = json.dumps({"url": url_for(index), "created_at": CREATED_AT})
            f.write(f'{"," if index else ""}\n"{code_for(index)}": {record}')
        f.write("\n}\n")
    return sample_of(count)
