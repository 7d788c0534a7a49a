"""The papers' claims, judged on results over several seeds.

A claim holds only when the difference of the seed means exceeds twice its standard error, over at
least `MIN_SEEDS` seeds each; it does not hold when it is beyond twice its standard error the other
way; anything in between is "not resolved at this budget", never "holds".
"""
from __future__ import annotations

import math
import statistics
from typing import Any

from pipelines.quality.protocol import CORRUPTIONS

HOLDS, FAILS, UNRESOLVED = "holds", "does not hold", "not resolved at this budget"
MIN_SEEDS = 3


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample sd / sqrt(n)); the error is NaN for one value."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def judge(ours: list[float], baseline: list[float], higher_is_better: bool) -> dict[str, Any]:
    """A claim over seeds: "holds" only when ours beats the baseline by more than twice the
    standard error of the difference of the means, with at least MIN_SEEDS seeds each; "does not
    hold" when the baseline wins by that margin; else "not resolved at this budget".
    `difference` is signed so that > 0 means ours is better; its standard error is NaN when a
    side has a single seed."""
    n, m = len(ours), len(baseline)
    if n == 0 or m == 0:
        raise ValueError("judge needs results of both sides")
    sign = 1.0 if higher_is_better else -1.0
    (ours_mean, ours_se), (base_mean, base_se) = mean_se(ours), mean_se(baseline)
    difference = sign * (ours_mean - base_mean)
    variance = (statistics.variance(ours) / n if n > 1 else 0.0) + (statistics.variance(baseline) / m if m > 1 else 0.0)
    standard_error = variance ** 0.5 if min(n, m) > 1 else math.nan  # one seed: no error to give
    if min(n, m) >= MIN_SEEDS and difference > 2 * standard_error:
        verdict = HOLDS
    elif min(n, m) >= MIN_SEEDS and -difference > 2 * standard_error:
        verdict = FAILS
    else:
        verdict = UNRESOLVED
    return {"verdict": verdict, "difference": difference, "standard_error": standard_error, "seeds": min(n, m),
            "ours_mean": ours_mean, "ours_se": ours_se, "baseline_mean": base_mean, "baseline_se": base_se}


def pm(mean: float, se: float, digits: int) -> str:
    """mean ± standard error, or the mean alone where there is no error (one seed)."""
    return f"{mean:.{digits}f} ± {se:.{digits}f}" if math.isfinite(se) else f"{mean:.{digits}f}"


def _seeds(judgement: dict[str, Any]) -> str:
    n = judgement["seeds"]
    return f"{n} seed{'s' if n != 1 else ''}"


def findings(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each claim the issues ask the zoo to reproduce, judged on the results present.

    `results` maps a model key to its aggregate over seeds (pipelines.quality.jobs.aggregate):
    `per_seed` holds each seed's metrics, so a claim compares the seed values of two models."""
    r = results
    out: list[dict[str, Any]] = []

    def values(key: str, metric: str) -> list[float]:
        return [s[metric] for s in r[key]["per_seed"].values() if s.get(metric) is not None] if key in r else []

    def judged(text: str, ours: list[float], base: list[float], higher_is_better: bool, evidence) -> None:
        if ours and base:
            j = judge(ours, base, higher_is_better)
            out.append({"claim": text, "verdict": j["verdict"], "holds": j["verdict"] == HOLDS, "judgement": j,
                        "evidence": evidence(j)})

    def claim(text: str, key: str, base_key: str, metric: str, higher_is_better: bool, digits: int = 2) -> None:
        judged(text, values(key, metric), values(base_key, metric), higher_is_better, lambda j: (
            f"{key} {pm(j['ours_mean'], j['ours_se'], digits)} vs {base_key} {pm(j['baseline_mean'], j['baseline_se'], digits)}"
            f" ({metric}); gain {pm(j['difference'], j['standard_error'], digits)}, {_seeds(j)}"))

    iwae_ks = sorted(v["options"]["k"] for key, v in r.items() if key.startswith("iwae-k"))  # the burda suite
    for small, large in zip(iwae_ks, iwae_ks[1:]):
        claim(f"IWAE test NLL falls from k={small} to k={large}", f"iwae-k{large}", f"iwae-k{small}", "nll", False)
    for k in iwae_ks:
        if k > 1:
            claim(f"IWAE beats the VAE at k={k} (NLL)", f"iwae-k{k}", f"vae-k{k}", "nll", False)
        claim(f"IWAE has more active units than the VAE at k={k}", f"iwae-k{k}", f"vae-k{k}", "active_units", True, 1)
    for key, v in sorted(r.items()):
        if v.get("variant") == "m2":
            n = v["options"]["num_labels"]
            what = "M1+M2" if v["options"].get("m1_run") else "M2"
            claim(f"{what} beats the labels-only classifier with {n} labels (test accuracy)", key,
                  f"classifier-n{n}", "accuracy", True, 4)
            if what == "M1+M2":
                claim(f"M1+M2 beats M2 with {n} labels (test accuracy)", key, f"m2-n{n}", "accuracy", True, 4)
        if v.get("variant") == "cvae" and v["options"].get("condition") == "quadrants":
            q = v["options"]["visible_quadrants"]
            claim(f"CVAE beats the deterministic network on conditional NLL with {q} quadrant(s) given",
                  key, f"network-q{q}", "cond_nll", False)
        if key in {f"dvae-{c}" for c in CORRUPTIONS}:
            claim(f"DVAE ({v['options']['corruption']}) has a lower clean-data NLL than the VAE", key, "vae-k1", "nll", False)
    _dvae_small(r, out, values, judged, claim)
    _applications(r, claim)
    _dcign(r, claim)
    return out


def _dvae_small(r, out, values, judged, claim) -> None:
    if "vae-small" not in r:
        return
    n = next(iter(r["vae-small"]["per_seed"].values())).get("train_images")
    # The premise of the dvae-small claims: train ELBO pulls away from test ELBO.
    judged(f"The vae overfits on {n} training images (train ELBO above test ELBO)", values("vae-small", "train_elbo"),
           values("vae-small", "elbo"), True, lambda j: f"train {pm(j['ours_mean'], j['ours_se'], 2)} vs test "
                                                      f"{pm(j['baseline_mean'], j['baseline_se'], 2)}, {_seeds(j)}")
    for key, v in sorted(r.items()):
        if key.startswith("dvae-small-"):
            claim(f"DVAE (Gaussian noise {v['options']['noise_level']}) has a lower clean test NLL than the VAE "
                  f"on {n} training images", key, "vae-small", "nll", False)
    claim("DIWAE (noise 0.1, k=5) has a lower clean test NLL than the IWAE (k=5) on the small training set",
          "diwae-small-0.1", "iwae-small-k5", "nll", False)


def _applications(r, claim) -> None:
    from pipelines.quality.applications import CONDITIONS

    for suite, conditions in CONDITIONS.items():
        for name in conditions:
            claim(f"CVAE beats the deterministic network on conditional NLL ({suite}, {name})",
                  f"cvae-{name}", f"network-{name}", "cond_nll", False)


def _dcign(r, claim) -> None:
    """Kulkarni et al.: per factor with an assigned group and per baseline, the group predicts its
    factor (held-out R^2) better under dcign than the baseline's best single latent."""
    if "dcign" not in r:
        return
    factors = list(next(iter(r["dcign"]["per_seed"].values())).get("latent_groups", {}))
    for base, label in (("vae-conv", "vae"), ("beta4-vae-conv", "beta-vae (beta=4)")):
        for factor in factors:
            claim(f"DC-IGN's {factor} group explains {factor} better than any single latent of the {label}",
                  "dcign", base, f"explained_variance/{factor}", True, 3)
