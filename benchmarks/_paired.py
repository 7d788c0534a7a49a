"""Speed targets judged beyond this machine's drift, as pipelines.quality.claims judges a paper's claim.

A speed target reads "ours is at least `target` times the baseline" (a memory target: at most). On a shared VM the speed of
both sides drifts by more than the code under test changes (on this project's 2-core VM, runs
minutes apart differ by up to 1.6x), so one ratio, or the median of a few, can land on either
side of a target by chance. Here each round measures both sides back to back, and the rounds
alternate which side goes first (`alternate`: a slow spell that grows or fades over a round then
weighs on both sides alike over two rounds). The ratio of a round is one sample; over the rounds:

* `ratio` is their geometric mean (ratios multiply, so their logarithms are averaged), and
  `interval` is exp(mean log-ratio -/+ 2 standard errors);
* the target **holds** when the whole interval is on its side (at or above it for a rate, at or
  below it for a cost), **does not hold** when the whole interval is beyond it, and is **not resolved at this budget** otherwise (or with fewer than
  MIN_ROUNDS rounds): the same two-standard-error rule and words as the quality claims.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Sequence, TypeVar

# pipelines.quality.claims's words and its fewest seeds, restated: importing it imports torch,
# which the benchmarks' Ray drivers must not (tests/test_benchmark_verdicts.py keeps them equal)
HOLDS, FAILS, UNRESOLVED = "holds", "does not hold", "not resolved at this budget"
MIN_ROUNDS = 3
T = TypeVar("T")


def alternate(items: Sequence[T], round_index: int) -> list[T]:
    """`items` in order in even rounds and reversed in odd ones."""
    return list(items) if round_index % 2 == 0 else list(reversed(items))


def judge_ratio(pairs: Sequence[tuple[float, float]], target: float, at_least: bool = True) -> dict[str, Any]:
    """`pairs` holds each round's (ours, baseline) measures. Returns the verdict on "ours >= target x
    baseline" (a rate; `at_least=False`: "ours <= target x baseline", a cost such as memory) with the
    geometric-mean ratio, its 2-standard-error interval, the median and range of the per-round
    ratios, and the number of rounds."""
    if not pairs:
        raise ValueError("judge_ratio needs at least one round")
    if target <= 0 or any(ours <= 0 or base <= 0 for ours, base in pairs):
        raise ValueError("measures and the target must be positive")
    ratios = [ours / base for ours, base in pairs]
    logs = [math.log(r) for r in ratios]
    mean = statistics.fmean(logs)
    judged = len(logs) >= MIN_ROUNDS
    if len(logs) > 1:
        se = statistics.stdev(logs) / math.sqrt(len(logs))
        low, high = math.exp(mean - 2 * se), math.exp(mean + 2 * se)
    else:
        low = high = math.nan
    better, worse = (low >= target, high < target) if at_least else (high <= target, low > target)
    verdict = HOLDS if judged and better else FAILS if judged and worse else UNRESOLVED
    return {"verdict": verdict, "target": f"{'>=' if at_least else '<='} {target:g}", "ratio": round(math.exp(mean), 3),
            "interval": [round(low, 3), round(high, 3)] if len(logs) > 1 else None,
            "median": round(statistics.median(ratios), 3), "range": [round(min(ratios), 3), round(max(ratios), 3)],
            "rounds": len(ratios)}
