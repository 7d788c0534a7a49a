"""The papers' claims, judged on results over several seeds.

A claim holds only when the difference of the seed means exceeds twice its standard error, over at
least `MIN_SEEDS` seeds each; it does not hold when it is beyond twice its standard error the other
way; anything in between is "not resolved at this budget", never "holds".
"""
from __future__ import annotations

import math
from typing import Any

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
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def judge(ours: list[float], baseline: list[float], higher_is_better: bool) -> dict[str, Any]:
    """Does `ours` beat `baseline` beyond seed noise? Means, standard errors, the difference
    (ours - baseline) with its standard error, and the verdict."""
    ours, baseline = [float(v) for v in ours], [float(v) for v in baseline]
    m_o, se_o = mean_se(ours)
    m_b, se_b = mean_se(baseline)
    diff = m_o - m_b
    diff_se = math.sqrt(se_o ** 2 + se_b ** 2)
    gain = diff if higher_is_better else -diff
    verdict = UNRESOLVED
    if min(len(ours), len(baseline)) >= MIN_SEEDS and math.isfinite(gain) and math.isfinite(diff_se):
        if gain > 2 * diff_se:
            verdict = HOLDS
        elif gain < -2 * diff_se:
            verdict = FAILS
    return {"ours_mean": m_o, "ours_se": se_o, "baseline_mean": m_b, "baseline_se": se_b,
            "difference": diff, "difference_se": diff_se, "seeds": [len(ours), len(baseline)],
            "higher_is_better": higher_is_better, "verdict": verdict}


def _pm(mean: float, se: float, digits: int) -> str:
    return f"{mean:.{digits}f} ± {se:.{digits}f}" if math.isfinite(se) else f"{mean:.{digits}f}"


def findings(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each claim the issue asks the zoo to reproduce, judged on the results present.

    `results` maps a model key to its aggregate (pipelines.quality.jobs.aggregate): `per_seed`
    holds each seed's metrics, so a claim compares the seed values of two models."""
    r = results
    out: list[dict[str, Any]] = []

    def values(key: str, metric: str) -> list[float]:
        return [s[metric] for s in r[key]["per_seed"].values() if s.get(metric) is not None]

    def claim(text: str, key: str, base_key: str, metric: str, higher_is_better: bool, digits: int = 2) -> None:
        ours, base = values(key, metric), values(base_key, metric)
        if not ours or not base:
            return
        j = judge(ours, base, higher_is_better)
        evidence = (f"{key} {_pm(j['ours_mean'], j['ours_se'], digits)} vs {base_key} "
                    f"{_pm(j['baseline_mean'], j['baseline_se'], digits)} ({metric}); difference "
                    f"{_pm(j['difference'], j['difference_se'], digits)}, seeds {j['seeds'][0]}/{j['seeds'][1]}")
        out.append({"claim": text, "verdict": j["verdict"], "evidence": evidence, "judgement": j})

    iwae_ks = sorted(v["options"]["k"] for key, v in r.items() if key.startswith("iwae-k"))  # the burda suite
    for small, large in zip(iwae_ks, iwae_ks[1:]):
        claim(f"IWAE test NLL falls from k={small} to k={large}", f"iwae-k{large}", f"iwae-k{small}", "nll", False)
    for k in iwae_ks:
        if f"vae-k{k}" not in r:
            continue
        if k > 1:
            claim(f"IWAE beats the VAE at k={k} (NLL)", f"iwae-k{k}", f"vae-k{k}", "nll", False)
        claim(f"IWAE has more active units than the VAE at k={k}", f"iwae-k{k}", f"vae-k{k}", "active_units", True, 1)
    for key, v in sorted(r.items()):
        if v.get("variant") == "m2":
            n = v["options"]["num_labels"]
            what = "M1+M2" if v["options"].get("m1_run") else "M2"
            if f"classifier-n{n}" in r:
                claim(f"{what} beats the labels-only classifier with {n} labels (test accuracy)", key,
                      f"classifier-n{n}", "accuracy", True, 4)
            if what == "M1+M2" and f"m2-n{n}" in r:
                claim(f"M1+M2 beats M2 with {n} labels (test accuracy)", key, f"m2-n{n}", "accuracy", True, 4)
        if v.get("variant") == "cvae" and v["options"].get("condition") == "quadrants":
            q = v["options"]["visible_quadrants"]
            if f"network-q{q}" in r:
                claim(f"CVAE beats the deterministic network on conditional NLL with {q} quadrant(s) given",
                      key, f"network-q{q}", "cond_nll", False)
        if v.get("variant") == "dvae" and "vae-k1" in r:
            claim(f"DVAE ({v['options']['corruption']}) has a lower clean-data NLL than the VAE",
                  key, "vae-k1", "nll", False)
    if "vae-small" in r:
        n = next(iter(r["vae-small"]["per_seed"].values())).get("train_images")
        ours, base = values("vae-small", "train_elbo"), values("vae-small", "elbo")
        if ours and base:  # the premise of the dvae-small claims: train ELBO pulls away from test ELBO
            j = judge(ours, base, True)
            out.append({"claim": f"The vae overfits on {n} training images (train ELBO above test ELBO)",
                        "verdict": j["verdict"], "judgement": j,
                        "evidence": f"train {_pm(j['ours_mean'], j['ours_se'], 2)} vs test {_pm(j['baseline_mean'], j['baseline_se'], 2)}"})
        for key, v in sorted(r.items()):
            if key.startswith("dvae-small-"):
                claim(f"DVAE (Gaussian noise {v['options']['noise_level']}) has a lower clean test NLL than the VAE "
                      f"on {n} training images", key, "vae-small", "nll", False)
    if "diwae-small-0.1" in r and "iwae-small-k5" in r:
        claim("DIWAE (noise 0.1, k=5) has a lower clean test NLL than the IWAE (k=5) on the small training set",
              "diwae-small-0.1", "iwae-small-k5", "nll", False)
    return out
