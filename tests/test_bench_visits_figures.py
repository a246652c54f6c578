"""How bench.visits turns its rounds into figures and judges issue 14's targets: the
ratios of medians, and how far this machine's noise could move them (a bootstrap of the
rounds). No server here: the rounds are made up, so the answers are known."""
from __future__ import annotations

from bench.visits import Run, interval, summary, targets


def rounds(off: list[float], on: list[float]) -> list[Run]:
    """Saturated file rounds at 100 links, on after off, with these redirects/s; p99 in
    ms is 1,000 over the rate (a faster round has the shorter tail)."""
    runs = []
    for number, (rate_off, rate_on) in enumerate(zip(off, on), start=1):
        for mode, rate in (("off", rate_off), ("on", rate_on)):
            runs.append(Run("file", 100, mode, number, rate, 1.0, 1000 / rate, 0, 10, 1,
                            None if mode == "off" else 10, None if mode == "off" else 1, 0.5))
    return runs


def test_rounds_that_agree_have_no_spread_around_their_ratio() -> None:
    assert interval([(100.0, 100.0)] * 7) == [1.0, 1.0]
    assert interval([(90.0, 100.0), (45.0, 50.0), (99.0, 110.0)]) == [0.9, 0.9]


def test_noisy_rounds_give_an_interval_around_the_ratio_and_within_the_rounds() -> None:
    pairs = [(90.0, 100.0), (95.0, 100.0), (100.0, 100.0), (105.0, 100.0), (110.0, 100.0),
             (92.0, 100.0), (98.0, 100.0)]
    low, high = interval(pairs)
    assert 0.9 <= low < 0.98 < high <= 1.1  # 0.98: the median on over the median off
    assert interval(pairs) == [low, high]  # a fixed seed: the same rounds, the same answer
    assert interval(pairs, level=0.5)[0] >= low and interval(pairs, level=0.5)[1] <= high


def test_a_target_is_judged_on_the_ratio_and_its_interval_is_reported_beside_it() -> None:
    off = [5000.0, 5100.0, 4900.0, 5050.0, 4950.0]
    on = [4700.0, 4850.0, 4600.0, 4900.0, 4650.0]  # about 0.94 of off, round by round
    row, = summary(rounds(off, on))
    assert row["rps_ratio"] == round(4700 / 5000, 3)
    low, high = row["rps_ratio_interval"]
    assert low <= row["rps_ratio"] <= high < 1
    judged = targets([row])
    throughput = judged["file at 100 links: redirects/s on / off"]
    assert throughput == {"target": ">= 0.95", "measured": 0.94,
                          "interval": [low, high], "met": False}
    tail = judged["file at 100 links: p99 on / off"]
    assert tail["measured"] == round((1000 / 4700) / (1000 / 5000), 3) and tail["met"]
    assert tail["interval"][0] <= tail["measured"] <= tail["interval"][1]
    assert judged["file at 100 links: counts equal what was sent"]["met"]
