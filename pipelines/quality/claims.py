"""The papers' claims, checked on the results present."""
from __future__ import annotations

from typing import Any


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
    return out
