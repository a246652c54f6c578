"""The short rehearsal: `make rehearse`'s good, B and C cases, through real nginx.

`python -m ops.release --target local` ships, in turn, the committed app under a new
label, the original incident's `json.loads` version (B) and a version whose creates
answer 500 once under traffic (C), to one environment (ops/local.py) while a steady
client sends redirects, form creates and API creates through nginx (ops/rehearse.py).
The figures go to test-output/rehearsal-short.json; `make rehearse` runs every class.

What each case must show is in EXPECTED. Today ops.release verifies a version only
after the environment has promoted it, so C reaches all traffic and is rolled back by
redeploying the last good version. Once ops.release watches the canary (issue 11,
phase 2), C must cost at most the canary's share of the requests sent while it was
watched: tighten C's row then.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from ops.release import EXIT_DEPLOYED, EXIT_ROLLED_BACK
from ops.local import Policy
from ops.rehearse import CASES, CaseResult, Rehearsal, table
from tests.test_local_target import require_nginx

OUTPUT = Path(__file__).resolve().parent.parent / "test-output" / "rehearsal-short.json"
# Shorter than make rehearse's (10 % for 10 s at 50 operations a second); the same steps.
SHORT = Policy(new_version_percent=10, evaluation_time=5, health_check_interval=0.3,
               healthy_threshold=3, unhealthy_threshold=3, command_timeout=10, smoke_timeout=5)
RATE = 25

# case: the release's exit code, and the version serving afterwards
EXPECTED = {"good": (EXIT_DEPLOYED, "good"), "B": (EXIT_ROLLED_BACK, "good"),
            "C": (EXIT_ROLLED_BACK, "good")}


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    require_nginx()
    with Rehearsal(tmp_path_factory.mktemp("rehearsal"), rate=RATE, policy=SHORT) as ready:
        yield ready


@pytest.fixture(scope="module")
def results(rehearsal: Rehearsal) -> Iterator[dict[str, CaseResult]]:
    """Each case once, in order, on the same environment; figures written at the end."""
    done: dict[str, CaseResult] = {}
    yield done
    if done:
        print("\n" + table(list(done.values())))
        OUTPUT.parent.mkdir(exist_ok=True)
        OUTPUT.write_text(json.dumps([asdict(r) for r in done.values()], indent=2) + "\n")


def run(rehearsal: Rehearsal, results: dict[str, CaseResult], name: str) -> CaseResult:
    result = results[name] = rehearsal.run(CASES[name])
    exit_code, serving = EXPECTED[name]
    assert result.exit_code == exit_code, (rehearsal.workdir / f"release-{result.label}.log"
                                           ).read_text()[-3000:]
    assert result.serving_after == serving
    assert result.missing_after == 0, "a link made before or during it is not served after"
    assert result.acknowledged > 0 and result.requests > 100
    return result


def test_a_good_release_costs_no_request(
        rehearsal: Rehearsal, results: dict[str, CaseResult]) -> None:
    result = run(rehearsal, results, "good")
    assert result.failed == 0, result.failures
    assert result.new_version_requests > 0


def test_the_json_loads_release_never_gets_traffic_and_costs_no_request(
        rehearsal: Rehearsal, results: dict[str, CaseResult]) -> None:
    result = run(rehearsal, results, "B")
    assert result.failed_step == "deploy"
    assert result.new_version_requests == 0
    assert result.failed == 0, result.failures


def test_a_version_whose_creates_fail_under_traffic_is_rolled_back(
        rehearsal: Rehearsal, results: dict[str, CaseResult]) -> None:
    result = run(rehearsal, results, "C")
    assert result.new_version_requests > 0, "C never got traffic: nothing was rehearsed"
    assert not result.still_serving and result.exposed_seconds is not None
    assert result.failed > 0 and set(result.failures) == {"5xx"}
    assert result.outcome == "rolled_back"
