"""The README tables (markdown) from a quality report."""
from __future__ import annotations

from typing import Any

from pipelines.quality.claims import seed_difference
from pipelines.quality.protocol import CORRUPTIONS


def markdown(report: dict[str, Any]) -> str:
    """The README tables: one per suite, then every model, then the claims."""
    r, b = report["results"], report["budget"]
    lines: list[str] = []

    def table(header: list[str], rows: list[list[Any]]) -> None:
        if not rows:
            return
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        lines.extend("| " + " | ".join(str(c) for c in row) + " |" for row in rows)
        lines.append("")

    def f(v, digits=2):
        return "" if v is None else f"{v:.{digits}f}"

    def get(key, metric):
        return r.get(key, {}).get(metric)

    ks = [k for k in b["iwae_ks"] if f"iwae-k{k}" in r or f"vae-k{k}" in r]
    table(["k", "VAE NLL", "IWAE NLL", "VAE active units", "IWAE active units"],
          [[k, f(get(f"vae-k{k}", "nll")), f(get(f"iwae-k{k}", "nll")), get(f"vae-k{k}", "active_units") or "",
            get(f"iwae-k{k}", "active_units") or ""] for k in ks])
    table(["model", "corruption", "clean test NLL", "ELBO"],
          [[key, r[key]["options"].get("corruption", "none (vae)"), f(r[key]["nll"]), f(r[key]["elbo"])]
           for key in ["vae-k1"] + [f"dvae-{c}" for c in CORRUPTIONS] if key in r and any(k.startswith("dvae") for k in r)])
    table(["labels", "M2 accuracy", "labels-only classifier accuracy", "M2 error %", "classifier error %"],
          [[n, f(get(f"m2-n{n}", "accuracy"), 4), f(get(f"classifier-n{n}", "accuracy"), 4),
            f(100 * (1 - get(f"m2-n{n}", "accuracy")), 2) if f"m2-n{n}" in r else "",
            f(100 * (1 - get(f"classifier-n{n}", "accuracy")), 2) if f"classifier-n{n}" in r else ""]
           for n in b["m2_labels"] if f"m2-n{n}" in r or f"classifier-n{n}" in r])
    table(["quadrants given", "CVAE conditional NLL", "deterministic network conditional NLL"],
          [[q, f(get(f"cvae-q{q}", "cond_nll")), f(get(f"network-q{q}", "cond_nll"))]
           for q in (1, 2, 3) if f"cvae-q{q}" in r or f"network-q{q}" in r])
    apps = [v for v in r.values() if v["suite"] in ("superres", "inpaint")]
    table(["model", "cond. NLL", "PSNR mean", "SSIM mean", "PSNR best", "SSIM best", "consistency", "diversity"],
          [[v["key"], f(v.get("cond_nll")), *(f(v.get(f"image_{m}"), 3) for m in (
              "psnr_mean", "ssim_mean", "psnr_best", "ssim_best", "consistency", "diversity"))] for v in apps])

    dcign_table(r, table)

    models = [v for v in r.values() if v["kind"] == "variant"]
    if models:
        lines.append(f"Every model: NLL with k={b['nll_samples']} on the first {b['nll_examples']} test images "
                     f"(m2: {max(1, b['nll_examples'] // 10)}; cvae: conditional); ELBO, KL and active units on "
                     f"the whole test split; training seconds on this machine.\n")
        table(["model", "options", "NLL", "ELBO", "KL", "active units", "accuracy", "train s"],
              [[v["key"], ", ".join(f"{k}={x}" for k, x in v["options"].items()),
                f(v.get("cond_nll", v.get("nll"))), f(v["elbo"]), f(v["kl"]),
                v.get("active_units", v.get("cond_active_units")), f(v.get("accuracy"), 4), v["train_seconds"]] for v in models])
    for finding in report["findings"]:
        verdict = finding.get("verdict") or finding.get("status") or ("holds" if finding["holds"] else "does not hold")
        verdict = verdict if verdict == "holds" else f"**{verdict}**"
        lines.append(f"- {verdict}: {finding['claim']} ({finding['evidence']})")
    return "\n".join(lines) + "\n"


def dcign_table(r: dict[str, Any], table) -> None:
    """The dcign suite: per factor, held-out R^2 (dcign: its group; vae, beta-vae: best single
    latent) and MIG, as mean +- standard error over seeds."""
    prefixes = {"dcign": "dcign", "vae-conv": "vae", "beta4-vae-conv": "beta-vae (beta=4)"}
    runs = {p: [v for k, v in sorted(r.items()) if k.rsplit("-s", 1)[0] == p and k.startswith(p + "-s")]
            for p in prefixes}
    if not any(runs.values()):
        return

    def cell(values: list[float]) -> str:
        if not values:
            return ""
        mean, se = seed_difference(values)
        return f"{mean:.3f}" if se != se else f"{mean:.3f} ± {se:.3f}"

    names = sorted({k.split("/", 1)[1] for vs in runs.values() for v in vs for k in v if k.startswith("explained_variance/")})
    rows = [[f"R^2 {name}"] + [cell([v[f"explained_variance/{name}"] for v in runs[p] if f"explained_variance/{name}" in v])
                               for p in prefixes] for name in names]
    rows.append(["MIG"] + [cell([v["mig"] for v in runs[p] if "mig" in v]) for p in prefixes])
    seeds = max(len(vs) for vs in runs.values())
    table([f"metric (mean ± SE, {seeds} seeds)"] + list(prefixes.values()), rows)
