"""The README tables (markdown) from a quality report: seed means ± standard errors, the verdicts."""
from __future__ import annotations

import math
from typing import Any

from pipelines.quality.protocol import CORRUPTIONS, NOISE_LEVELS


def markdown(report: dict[str, Any]) -> str:
    """The README tables: one per suite, then every model, then the claims with their verdicts."""
    r, b = report["results"], report["budget"]
    lines: list[str] = [f"Budget: {b['epochs']} epochs; seeds {', '.join(map(str, b.get('seeds', [0])))} "
                        f"(cells are mean ± standard error over the seeds present); NLL with k={b['nll_samples']} "
                        f"on the first {b['nll_examples']} test images for every model, m2 included "
                        f"(cvae and the networks: conditional, `cond_nll`).\n"]

    def table(header: list[str], rows: list[list[Any]]) -> None:
        if not rows:
            return
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        lines.extend("| " + " | ".join(str(c) for c in row) + " |" for row in rows)
        lines.append("")

    def cell(key: str, metric: str, digits: int = 2, scale: float = 1.0) -> str:
        m = r.get(key)
        if m is None or metric not in m["mean"]:
            return ""
        mean, se = m["mean"][metric] * scale, m["se"][metric] * abs(scale)
        return f"{mean:.{digits}f} ± {se:.{digits}f}" if math.isfinite(se) else f"{mean:.{digits}f}"

    ks = [k for k in b["iwae_ks"] if f"iwae-k{k}" in r or f"vae-k{k}" in r]
    table(["k", "VAE NLL", "IWAE NLL", "VAE active units", "IWAE active units"],
          [[k, cell(f"vae-k{k}", "nll"), cell(f"iwae-k{k}", "nll"), cell(f"vae-k{k}", "active_units", 1),
            cell(f"iwae-k{k}", "active_units", 1)] for k in ks])
    table(["model", "corruption", "clean test NLL", "ELBO"],
          [[key, r[key]["options"].get("corruption", "none (vae)"), cell(key, "nll"), cell(key, "elbo")]
           for key in ["vae-k1"] + [f"dvae-{c}" for c in CORRUPTIONS] if key in r and any(k.startswith("dvae-") for k in r)])
    table(["model (small training set)", "objective", "noise sd", "clean test NLL", "test ELBO", "train ELBO (last epoch)"],
          [[key, "iwae k=5" if key.startswith(("iwae", "diwae")) else "elbo", r[key]["options"].get("noise_level", "none"),
            cell(key, "nll"), cell(key, "elbo"), cell(key, "train_elbo")]
           for key in ["vae-small", *[f"dvae-small-{lv}" for lv in NOISE_LEVELS], "iwae-small-k5", "diwae-small-0.1"]
           if key in r])
    table(["labels", "M2 accuracy %", "M1+M2 accuracy %", "labels-only classifier accuracy %"],
          [[n, cell(f"m2-n{n}", "accuracy", 2, 100), cell(f"m1m2-n{n}", "accuracy", 2, 100),
            cell(f"classifier-n{n}", "accuracy", 2, 100)]
           for n in b["m2_labels"] if f"m2-n{n}" in r or f"classifier-n{n}" in r])
    table(["quadrants given", "CVAE conditional NLL", "deterministic network conditional NLL"],
          [[q, cell(f"cvae-q{q}", "cond_nll"), cell(f"network-q{q}", "cond_nll")]
           for q in (1, 2, 3) if f"cvae-q{q}" in r or f"network-q{q}" in r])
    apps = [v for v in r.values() if v["suite"] in ("superres", "inpaint")]
    table(["model", "seeds", "cond. NLL", "NLL images", "PSNR mean", "SSIM mean", "PSNR best", "SSIM best",
           "consistency", "diversity"],
          [[v["key"], len(v["seeds"]), cell(v["key"], "cond_nll"), cell(v["key"], "nll_examples", 0),
            *(cell(v["key"], f"image_{m}", 3) for m in ("psnr_mean", "ssim_mean", "psnr_best", "ssim_best",
                                                          "consistency", "diversity"))] for v in apps])
    _dcign_table(r, table, cell)

    models = [v for v in r.values() if v["kind"] == "variant" and v["suite"] not in ("superres", "inpaint")]
    if models:
        lines.append("Every model: ELBO, KL and active units on the whole test split; training seconds per seed on "
                     "this machine.\n")
        table(["model", "options", "seeds", "NLL (cvae: cond.; M1+M2: of M1's latents)", "ELBO", "KL", "active units",
               "accuracy %", "train s"],
              [[v["key"], ", ".join(f"{k}={x}" for k, x in v["options"].items() if k != "m1_run"), len(v["seeds"]),
                cell(v["key"], next((n for n in ("nll", "cond_nll", "m1_latent_nll") if n in v["mean"]), "nll")),
                cell(v["key"], "elbo"), cell(v["key"], "kl"),
                cell(v["key"], "active_units", 1) or cell(v["key"], "cond_active_units", 1) + " (cond.)",
                cell(v["key"], "accuracy", 2, 100), cell(v["key"], "train_seconds", 0)] for v in models])
    for finding in report["findings"]:
        verdict = finding.get("verdict") or finding.get("status") or ("holds" if finding["holds"] else "does not hold")
        lines.append(f"- {verdict if verdict == 'holds' else f'**{verdict}**'}: {finding['claim']} ({finding['evidence']})")
    return "\n".join(lines) + "\n"


def _dcign_table(r: dict[str, Any], table, cell) -> None:
    """The dcign suite: per factor, held-out R^2 (dcign: its group; vae, beta-vae: best single
    latent) and MIG, as mean ± standard error over seeds."""
    models = {"dcign": "dcign", "vae-conv": "vae", "beta4-vae-conv": "beta-vae (beta=4)"}
    present = [key for key in models if key in r]
    if not present:
        return
    names = sorted({n.split("/", 1)[1] for key in present for n in r[key]["mean"] if n.startswith("explained_variance/")})
    rows = [[f"R^2 {name}"] + [cell(key, f"explained_variance/{name}", 3) for key in models] for name in names]
    rows.append(["MIG"] + [cell(key, "mig", 3) for key in models])
    seeds = max(len(r[key]["seeds"]) for key in present)
    table([f"metric (mean ± SE, {seeds} seeds)"] + list(models.values()), rows)
