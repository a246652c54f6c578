"""The short rehearsal: `make rehearse`'s good, B and C cases, through real nginx.

`python -m ops.release --target local` ships, in turn, the committed app under a new
label, the original incident's `json.loads` version (B) and a version whose creates
answer 500 for real traffic but not for the smoke test (C), to one environment
(ops/local.py) while a steady client sends redirects, form creates and API creates
through nginx (ops/rehearse.py). The figures go to test-output/rehearsal-short.json;
`make rehearse` runs every class.

The targets of issue 11, each asserted below: a good release fails no request; B fails
none because it never gets traffic; C fails at most the canary's share of the requests
sent between the canary getting traffic and every request being back on the last good
version, which happens within 30 s; and after every case the final version serves every
link created before and during the release.
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

pytestmark = pytest.mark.alone  # counts requests lost in timed windows, through real nginx

OUTPUT = Path(__file__).resolve().parent.parent / "test-output" / "rehearsal-short.json"
# Shorter than make rehearse's (10 % for 10 s at 50 operations a second); the same steps.
SHORT = Policy(new_version_percent=10, evaluation_time=5, health_check_interval=0.3,
               healthy_threshold=3, unhealthy_threshold=3, command_timeout=10, smoke_timeout=5)
RATE = 25

# case: the release's exit code, and the version serving afterwards
EXPECTED = {"good": (EXIT_DEPLOYED, "good"), "B": (EXIT_ROLLED_BACK, "good"),
            "C": (EXIT_ROLLED_BACK, "good")}
DETECTION_LIMIT = 30.0  # seconds from the canary's first request to all traffic back


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
    report = json.loads((rehearsal.workdir / "release-good.json").read_text())
    assert "full smoke test passed against" in report["canary"]["smoke"]
    assert report["canary"]["verdict"] is None and report["backup"] == result.snapshot


def test_the_json_loads_release_never_gets_traffic_and_costs_no_request(
        rehearsal: Rehearsal, results: dict[str, CaseResult]) -> None:
    result = run(rehearsal, results, "B")
    assert result.failed_step == "canary" and "did not pass 3 health checks" in str(result.error)
    assert result.new_version_requests == 0 and result.window_seconds is None
    assert result.failed == 0, result.failures


def test_a_version_whose_creates_fail_costs_at_most_the_canarys_share_of_the_window(
        rehearsal: Rehearsal, results: dict[str, CaseResult]) -> None:
    result = run(rehearsal, results, "C")
    assert result.new_version_requests > 0, "C never got traffic: nothing was rehearsed"
    assert result.outcome == "rolled_back" and result.failed_step == "canary"
    assert "requests it answered" in str(result.error), "not the canary's 5xx watch"
    assert result.window_seconds is not None and result.window_seconds <= DETECTION_LIMIT
    assert 0 < result.failed <= result.window_bound, (result.failed, result.window_requests)
    assert set(result.failures) == {"5xx"}
    assert not result.still_serving
