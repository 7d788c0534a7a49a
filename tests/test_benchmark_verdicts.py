"""benchmarks/_paired.py: speed targets are judged over rounds by the quality claims' two-standard-
error rule, on ratios taken within each round, and rounds alternate which side runs first."""
from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _paired import FAILS, HOLDS, MIN_ROUNDS, UNRESOLVED, alternate, judge_ratio  # noqa: E402

from pipelines.quality import claims  # noqa: E402


def test_the_verdicts_are_the_quality_claims_words_and_minimum():
    assert (HOLDS, FAILS, UNRESOLVED, MIN_ROUNDS) == (claims.HOLDS, claims.FAILS, claims.UNRESOLVED, claims.MIN_SEEDS)


def test_the_ratio_is_the_geometric_mean_of_the_round_ratios_with_a_two_standard_error_interval():
    pairs = [(150.0, 100.0), (260.0, 200.0), (70.0, 50.0), (33.0, 20.0)]
    logs = [math.log(a / b) for a, b in pairs]
    mean, se = statistics.fmean(logs), statistics.stdev(logs) / 2  # 4 rounds: sqrt(4) = 2
    j = judge_ratio(pairs, 1.0)
    assert j["ratio"] == round(math.exp(mean), 3)
    assert j["interval"] == [round(math.exp(mean - 2 * se), 3), round(math.exp(mean + 2 * se), 3)]
    assert j["median"] == round(statistics.median([1.5, 1.3, 1.4, 1.65]), 3)
    assert j["range"] == [1.3, 1.65] and j["rounds"] == 4 and j["verdict"] == HOLDS


def test_a_drift_that_moves_both_sides_alike_does_not_move_the_verdict():
    # the machine runs at 1x, 0.5x, 1.6x, 0.8x speed in turn; ours is always 1.3x the baseline
    speeds = [1.0, 0.5, 1.6, 0.8]
    pairs = [(1.3 * 1000 * s, 1000 * s) for s in speeds]
    assert judge_ratio(pairs, 1.25)["verdict"] == HOLDS
    assert judge_ratio(pairs, 1.35)["verdict"] == FAILS


def test_a_target_inside_the_interval_or_too_few_rounds_is_not_resolved():
    spread = [(1.1, 1.0), (1.5, 1.0), (1.2, 1.0), (1.4, 1.0)]  # geometric mean 1.29, interval about 1.11-1.49
    assert judge_ratio(spread, 1.25)["verdict"] == UNRESOLVED
    assert judge_ratio(spread, 1.05)["verdict"] == HOLDS
    assert judge_ratio(spread, 1.6)["verdict"] == FAILS
    two_rounds = [(2.0, 1.0), (2.0, 1.0)]  # far above, but two rounds give no trusted error
    assert judge_ratio(two_rounds, 1.25)["verdict"] == UNRESOLVED
    one = judge_ratio([(2.0, 1.0)], 1.25)
    assert one["verdict"] == UNRESOLVED and one["interval"] is None and one["ratio"] == 2.0


def test_a_cost_target_holds_when_the_whole_interval_is_at_or_below_it():
    memory = [(1.30, 1.0), (1.36, 1.0), (1.28, 1.0), (1.33, 1.0)]  # ours uses 1.28-1.36x the baseline's
    assert judge_ratio(memory, 1.5, at_least=False)["verdict"] == HOLDS
    assert judge_ratio(memory, 1.2, at_least=False)["verdict"] == FAILS
    assert judge_ratio(memory, 1.32, at_least=False)["verdict"] == UNRESOLVED
    assert judge_ratio(memory, 1.5, at_least=False)["target"] == "<= 1.5"


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        judge_ratio([], 1.0)
    with pytest.raises(ValueError):
        judge_ratio([(1.0, 0.0)], 1.0)
    with pytest.raises(ValueError):
        judge_ratio([(1.0, 1.0)], 0.0)


def test_rounds_alternate_which_side_runs_first():
    assert [alternate(["a", "b", "c"], i) for i in range(3)] == [["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"]]
