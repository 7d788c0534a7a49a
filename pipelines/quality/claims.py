"""The papers' claims, checked on the results present."""
from __future__ import annotations

import math
from typing import Any


def seed_difference(diffs: list[float]) -> tuple[float, float]:
    """Mean and standard error of per-seed differences (SE NaN below two seeds)."""
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n)


def dcign_findings(r: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Kulkarni et al.'s claim, per factor with an assigned group and per baseline: the group
    predicts its factor (held-out R^2) better under dcign than the baseline's best single latent.
    Paired by seed: "holds" only when the mean difference exceeds twice its standard error, "does
    not hold" when it is below minus twice that, else "not resolved at this budget"."""
    out = []
    seeds = sorted(int(k.rsplit("-s", 1)[1]) for k in r if k.startswith("dcign-s"))
    if not seeds:
        return out
    factors = list(r[f"dcign-s{seeds[0]}"].get("latent_groups", {}))
    for base, label in (("vae-conv", "vae"), ("beta4-vae-conv", "beta-vae (beta=4)")):
        for factor in factors:
            metric = f"explained_variance/{factor}"
            pairs = [(r[f"dcign-s{s}"].get(metric), r.get(f"{base}-s{s}", {}).get(metric)) for s in seeds]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            if not pairs:
                continue
            mean, se = seed_difference([a - b for a, b in pairs])
            resolved = len(pairs) >= 2 and abs(mean) > 2 * se
            status = ("holds" if mean > 0 else "**does not hold**") if resolved else "not resolved at this budget"
            out.append({"claim": f"DC-IGN's {factor} group explains {factor} better than any single latent of the {label}",
                        "holds": status == "holds", "status": status,
                        "evidence": f"R^2 dcign {sum(a for a, _ in pairs) / len(pairs):.3f} vs {label} "
                                    f"{sum(b for _, b in pairs) / len(pairs):.3f}; difference {mean:+.3f} "
                                    f"(SE {se:.3f}, {len(pairs)} seed{'s' if len(pairs) > 1 else ''})"})
    return out


def findings(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each claim the issue asks the zoo to reproduce, checked on the results present."""
    r = results
    out: list[dict[str, Any]] = []

    def claim(text: str, holds: bool, evidence: str) -> None:
        out.append({"claim": text, "holds": bool(holds), "evidence": evidence})

    iwae = sorted((v["options"]["k"], v) for v in r.values() if v.get("variant") == "iwae")
    if len(iwae) > 1:
        nlls = [v["nll"] for _, v in iwae]
        claim("IWAE test NLL falls as k grows", all(a > b for a, b in zip(nlls, nlls[1:])),
              ", ".join(f"k={k}: {v['nll']:.2f}" for k, v in iwae))
    for k, v in iwae:
        vae = r.get(f"vae-k{k}")
        if vae is None:
            continue
        if k > 1:
            claim(f"IWAE beats the VAE at k={k} (NLL)", v["nll"] < vae["nll"], f"iwae {v['nll']:.2f} vs vae {vae['nll']:.2f}")
        claim(f"IWAE keeps at least as many active units as the VAE at k={k}",
              v["active_units"] >= vae["active_units"], f"iwae {v['active_units']} vs vae {vae['active_units']}")
    for key, v in sorted(r.items()):
        if v.get("variant") == "m2":
            base = r.get(f"classifier-n{v['options']['num_labels']}")
            if base is not None:
                n = v["options"]["num_labels"]
                claim(f"M2 beats the labels-only classifier with {n} labels (test accuracy)",
                      v["accuracy"] > base["accuracy"], f"m2 {v['accuracy']:.4f} vs classifier {base['accuracy']:.4f}")
        if v.get("variant") == "cvae" and v["options"].get("condition") == "quadrants":
            q = v["options"]["visible_quadrants"]
            base = r.get(f"network-q{q}")
            if base is not None:
                claim(f"CVAE beats the deterministic network on conditional NLL with {q} quadrant(s) given",
                      v["cond_nll"] < base["cond_nll"], f"cvae {v['cond_nll']:.2f} vs network {base['cond_nll']:.2f}")
        if v.get("variant") == "dvae" and "vae-k1" in r:
            claim(f"DVAE ({v['options']['corruption']}) has a lower clean-data NLL than the VAE",
                  v["nll"] < r["vae-k1"]["nll"], f"dvae {v['nll']:.2f} vs vae {r['vae-k1']['nll']:.2f}")
    return out + dcign_findings(r)


def judge(ours: list[float], baseline: list[float], higher_is_better: bool) -> dict[str, Any]:
    """A claim over seeds: "holds" only when ours beats the baseline by more than twice the
    standard error of the difference of the means, with at least 3 seeds each; "does not hold"
    when the baseline wins by that margin; else "not resolved at this budget"."""
    import statistics

    n, m = len(ours), len(baseline)
    if n == 0 or m == 0:
        raise ValueError("judge needs results of both sides")
    sign = 1.0 if higher_is_better else -1.0
    difference = sign * (statistics.fmean(ours) - statistics.fmean(baseline))  # > 0: ours better
    variance = (statistics.variance(ours) / n if n > 1 else 0.0) + (statistics.variance(baseline) / m if m > 1 else 0.0)
    standard_error = variance ** 0.5
    if min(n, m) >= 3 and difference > 2 * standard_error:
        verdict = "holds"
    elif min(n, m) >= 3 and -difference > 2 * standard_error:
        verdict = "does not hold"
    else:
        verdict = "not resolved at this budget"
    return {"verdict": verdict, "difference": difference, "standard_error": standard_error, "seeds": min(n, m),
            "ours_mean": statistics.fmean(ours), "baseline_mean": statistics.fmean(baseline)}
