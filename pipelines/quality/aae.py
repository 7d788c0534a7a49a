"""Quality suite `aae` (Makhzani et al. 2016): the adversarial autoencoder against a vae of the
same networks, data, optimiser and epochs, evaluated as the paper evaluates it.

Models, each trained once per seed, all with a 2-D code (the paper's Figure 2 setting):

  vae            Kingma & Welling's VAE, unit-Gaussian prior (the ELBO)
  aae-gaussian   deterministic encoder, unit-Gaussian prior imposed adversarially
  aae-mixture    deterministic encoder, the prior a mixture of 10 Gaussians on a circle

Measures, per model and seed:

* Parzen-window log-likelihood (core/parzen.py) of the first `test_examples` grey-level test images
  under `samples` decoded prior samples (the decoder's mean images), the window width chosen on
  `validation_examples` training images the models never saw (those right after `train_limit`),
  in nats with its standard error over the test images;
* MMD^2 (core/mmd.py, RBF kernel) between the test codes (posterior means) and as many samples of
  the model's own prior, the bandwidth the median distance between those prior samples (so every
  model under one prior is measured with the same kernel);
* test log p(x | code) (`recon`) and, where a model has one, the importance-sampled NLL.

Claims, with the zoo's rule (`claims.judge`: a difference "holds" when it exceeds twice its
standard error over 3 or more seeds; otherwise "not resolved at this budget"):

1. The aae's test codes match the imposed prior better than the vae's posterior does (MMD^2 of
   aae-gaussian below the vae's, both against N(0, I)).
2. Parzen LL of the aae against the vae (the paper's Table 1 reports the aae higher on MNIST).

3. Semi-supervised (section 5, `run_semi_supervised`): test accuracy of the aae's q(y|x) with N
   class-balanced labels against the labels-only classifier of the same network on the same
   labels and number of labelled batches (pipelines/quality.py's m2 baseline; m2 itself is in the
   `m2` suite of `vaezoo quality`). The aae here has a 10-D style code.

`vaezoo quality --suites aae` runs both parts (into OUT/aae; its findings join the report's);
`python -m pipelines.quality.aae` runs either part alone with its own options.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.config import RunConfig
from core.data import ImageDataset, PreparedData, prepare_split, to_float
from core.datasets import load_split
from core.evaluation import evaluate, iterate_batches
from core.mmd import median_bandwidth, mmd_rbf
from core.parzen import parzen_evaluate
from core.training import train

MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "vae": ("vae", {}),
    "aae-gaussian": ("aae", {"prior": "gaussian"}),
    "aae-mixture": ("aae", {"prior": "mixture"}),
}


@dataclass
class AAEBudget:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    train_limit: int = 10_000
    validation_examples: int = 1_000
    test_examples: int = 1_000
    epochs: int = 5
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    hidden_dims: list[int] = field(default_factory=lambda: [512, 512])
    batch_size: int = 100
    lr: float = 1e-3
    samples: int = 10_000        # Parzen: decoded prior samples per model
    mmd_points: int = 2_000      # MMD: test codes and prior samples each
    nll_samples: int = 200       # importance samples for models with a likelihood (the vae)
    semi_labels: list[int] = field(default_factory=lambda: [100, 1000])
    semi_style_dim: int = 10

    def config(self, model: str, seed: int) -> RunConfig:
        variant, options = MODELS[model]
        raw: dict[str, Any] = {
            "variant_name": variant, "variant": options,
            "model": {"architecture": "mlp", "latent_dim": 2, "hidden_dims": self.hidden_dims},
            "data": {"dataset": self.dataset, "data_dir": self.data_dir, "binarize": "dynamic",
                     "train_limit": self.train_limit, "test_limit": self.test_examples},
            "train": {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "seed": seed,
                      "eval_nll_samples": 10, "eval_nll_examples": 100, "progress": False},
        }
        return RunConfig.from_dict(raw)


    def semi_config(self, labels: int, seed: int) -> RunConfig:
        raw = self.config("aae-gaussian", seed).to_dict()
        raw["variant"] = {"semi_supervised_labels": labels}
        raw["model"]["latent_dim"] = self.semi_style_dim
        return RunConfig.from_dict(raw)


@dataclass
class SuiteData:
    prepared: PreparedData        # dynamic-binarised training images, one binarised test draw
    validation_grey: torch.Tensor  # (V, D) held-out training images in [0, 1]
    test_grey: torch.Tensor       # (T, D) test images in [0, 1]
    test_labels: torch.Tensor


def load_suite_data(budget: AAEBudget) -> SuiteData:
    full_train = load_split(budget.dataset, "train", budget.data_dir)
    end = budget.train_limit + budget.validation_examples
    if end > len(full_train):
        raise ValueError(f"train_limit + validation_examples = {end} exceeds the {len(full_train)} training images")
    train_part = ImageDataset(full_train.images[:budget.train_limit], full_train.labels[:budget.train_limit],
                              full_train.num_classes, full_train.name)
    held_out = full_train.images[budget.train_limit:end]
    test = load_split(budget.dataset, "test", budget.data_dir).take(budget.test_examples)
    prepared = PreparedData(prepare_split(train_part, "dynamic", "train"), prepare_split(test, "dynamic", "test"),
                            dynamic_train=True)
    return SuiteData(prepared, to_float(held_out).flatten(1), to_float(test.images).flatten(1), test.labels)


@torch.no_grad()
def test_codes(variant, data: SuiteData) -> torch.Tensor:
    return torch.cat([variant.encode(b.x)[0] for b in iterate_batches(data.prepared.test, 500)])


def model_prior_sample(variant, n: int, generator: torch.Generator) -> torch.Tensor:
    prior = getattr(variant, "prior", None)
    if prior is None:  # the vae: N(0, I)
        return torch.randn((n, variant.model_cfg.latent_dim), generator=generator)
    return prior.sample(n, generator=generator)


@torch.no_grad()
def measure(variant, data: SuiteData, budget: AAEBudget, seed: int) -> dict[str, Any]:
    variant.eval()
    gen = torch.Generator().manual_seed(10_000 + seed)
    samples = torch.cat([variant.sample(1000, generator=gen).flatten(1) for _ in range(budget.samples // 1000)]
                        + [variant.sample(budget.samples % 1000, generator=gen).flatten(1)] * (budget.samples % 1000 > 0))
    parzen = parzen_evaluate(samples, data.validation_grey, data.test_grey)
    codes = test_codes(variant, data)[:budget.mmd_points].double()
    prior = model_prior_sample(variant, 2 * len(codes), gen).double()
    bandwidth = median_bandwidth(prior[:len(codes)], prior[len(codes):])
    mmd2, _ = mmd_rbf(codes, prior[:len(codes)], bandwidth)
    nll = budget.nll_samples if variant.has_likelihood else 0
    test = evaluate(variant, data.prepared.test, nll_samples=nll, batch_size=500)
    return {"parzen": parzen.as_dict(), "mmd2": mmd2, "mmd_bandwidth": bandwidth, "mmd_points": len(codes),
            "test": test}


def seed_claim(name: str, better: list[float], worse: list[float], unit: str) -> dict[str, Any]:
    """`better` beats `worse` (higher is better) over the seeds, judged as every quality claim is
    (`claims.judge`: beyond twice the standard error of the difference of the means, 3 seeds or more)."""
    from pipelines.quality.claims import judge

    j = judge(better, worse, higher_is_better=True)
    se = j["standard_error"]
    return {"claim": name, "difference": j["difference"], "standard_error": se, "seeds": j["seeds"], "unit": unit,
            "verdict": j["verdict"], "evidence": f"difference {j['difference']:+.4f} ± {se:.4f} {unit} over {j['seeds']} seeds"}


def findings(results: dict[str, dict[int, dict[str, Any]]], seeds: list[int]) -> list[dict[str, Any]]:
    mmd = {m: [results[m][s]["mmd2"] for s in seeds] for m in results}
    parzen = {m: [results[m][s]["parzen"]["log_likelihood"] for s in seeds] for m in results}
    out = [seed_claim("aae-gaussian codes match N(0, I) better than the vae's (lower MMD^2)",
                        [-v for v in mmd["aae-gaussian"]], [-v for v in mmd["vae"]], "MMD^2")]
    for model in ("aae-gaussian", "aae-mixture"):
        out.append(seed_claim(f"{model} Parzen LL above the vae's", parzen[model], parzen["vae"], "nats"))
    return out


def write_figures(variants: dict[str, Any], data: SuiteData, folder: Path) -> list[Path]:
    """Test codes coloured by label beside prior samples (Figure 2's comparison), and decoded prior
    samples of each model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipelines.images import save_grid

    folder.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, len(variants), figsize=(4 * len(variants), 8))
    gen = torch.Generator().manual_seed(0)
    for col, (key, variant) in enumerate(variants.items()):
        codes = test_codes(variant, data).numpy()
        top, bottom = axes[0, col], axes[1, col]
        points = top.scatter(codes[:, 0], codes[:, 1], c=data.test_labels.numpy(), cmap="tab10", s=3, vmin=-0.5,
                             vmax=9.5)
        top.set_title(f"{key}: test codes q(z|x)")
        prior = model_prior_sample(variant, len(codes), gen).numpy()
        bottom.scatter(prior[:, 0], prior[:, 1], s=3, c="grey")
        bottom.set_title(f"{key}: prior p(z) samples")
        lim = max(abs(codes).max(), abs(prior).max()) * 1.05
        for ax in (top, bottom):
            ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_aspect("equal")
    fig.colorbar(points, ax=axes[0, :].tolist(), ticks=range(10), label="label")
    codes_png = folder / "aae-codes.png"
    tmp = folder / ".aae-codes.png.tmp"
    fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    os.replace(tmp, codes_png)
    written = [codes_png]
    for key, variant in variants.items():
        written.append(save_grid(variant.sample(100, generator=torch.Generator().manual_seed(0)),
                                 folder / f"aae-samples-{key}.png", nrow=10))
    return written


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def run_aae_suite(budget: AAEBudget, out: Path, figures: Path | None = None, log=print) -> dict[str, Any]:
    """Train and measure every model for every seed; write OUT/aae.json (atomically) and the
    figures of seed `seeds[0]` (into `figures`, OUT/figures by default). Returns the report."""
    out.mkdir(parents=True, exist_ok=True)
    data = load_suite_data(budget)
    results: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in MODELS}
    first: dict[str, Any] = {}
    started = time.perf_counter()
    for seed in budget.seeds:
        for model in MODELS:
            t0 = time.perf_counter()
            variant = train(budget.config(model, seed), report=lambda m, c: None, data=data.prepared)
            train_s = time.perf_counter() - t0
            results[model][seed] = measure(variant, data, budget, seed) | {"train_seconds": round(train_s, 1)}
            r = results[model][seed]
            log(f"{model} seed {seed}: Parzen {r['parzen']['log_likelihood']:.1f} +- {r['parzen']['standard_error']:.1f} "
                f"(sigma {r['parzen']['sigma']:.3f}), MMD^2 {r['mmd2']:.4f}, train {train_s:.0f} s")
            if seed == budget.seeds[0]:
                first[model] = variant
    report = {"budget": asdict(budget), "results": {m: {str(s): v for s, v in r.items()} for m, r in results.items()},
              "findings": findings(results, budget.seeds), "seconds": round(time.perf_counter() - started, 1)}
    report["figures"] = [str(p) for p in write_figures(first, data, figures or out / "figures")]
    _write_json(out / "aae.json", report)
    return report


def run_semi_supervised(budget: AAEBudget, out: Path, log=print) -> dict[str, Any]:
    """Test accuracy of the semi-supervised aae and of the labels-only classifier, for each number
    of labels and seed; OUT/aae-semi.json (atomically). Returns the report."""
    from pipelines.quality.baselines import train_label_classifier  # the m2 suite's baseline, unchanged

    out.mkdir(parents=True, exist_ok=True)
    data = load_suite_data(budget)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for labels in budget.semi_labels:
        for seed in budget.seeds:
            config = budget.semi_config(labels, seed)
            variant = train(config, report=lambda m, c: None, data=data.prepared)
            aae_acc = evaluate(variant, data.prepared.test, batch_size=500)["accuracy"]
            _, baseline = train_label_classifier(config, data.prepared, labels)
            results.setdefault(f"n{labels}", {})[str(seed)] = {"aae": aae_acc, "classifier": baseline["accuracy"]}
            log(f"semi-supervised n={labels} seed {seed}: aae {aae_acc:.4f}, labels-only classifier "
                f"{baseline['accuracy']:.4f}")
    report = {"budget": asdict(budget), "results": results, "findings": [
        seed_claim(f"aae accuracy above the labels-only classifier's with {n} labels",
                     [r["aae"] for r in results[f"n{n}"].values()], [r["classifier"] for r in results[f"n{n}"].values()],
                     "accuracy")
        for n in budget.semi_labels]}
    _write_json(out / "aae-semi.json", report)
    return report


def semi_markdown(report: dict[str, Any]) -> str:
    rows = ["| labels | aae accuracy per seed | labels-only classifier per seed | difference ± s.e. | verdict |",
            "| --- | --- | --- | --- | --- |"]
    for (key, per_seed), f in zip(report["results"].items(), report["findings"]):
        aae = ", ".join(f"{r['aae']:.4f}" for r in per_seed.values())
        baseline = ", ".join(f"{r['classifier']:.4f}" for r in per_seed.values())
        rows.append(f"| {key[1:]} | {aae} | {baseline} | {f['difference']:+.4f} ± {f['standard_error']:.4f} | "
                    f"{f['verdict']} |")
    return "\n".join(rows)


def markdown(report: dict[str, Any]) -> str:
    seeds = report["budget"]["seeds"]
    rows = ["| model | Parzen LL (nats) per seed, ± s.e. over test images | MMD² codes vs prior per seed |",
            "| --- | --- | --- |"]
    for model, per_seed in report["results"].items():
        parzen = ", ".join(f"{per_seed[str(s)]['parzen']['log_likelihood']:.1f} ± {per_seed[str(s)]['parzen']['standard_error']:.1f}"
                           for s in seeds)
        mmd = ", ".join(f"{per_seed[str(s)]['mmd2']:.4f}" for s in seeds)
        rows.append(f"| {model} | {parzen} | {mmd} |")
    rows += ["", "| claim | difference ± s.e. (over seeds) | verdict |", "| --- | --- | --- |"]
    rows += [f"| {f['claim']} | {f['difference']:.4g} ± {f['standard_error']:.2g} {f['unit']} | {f['verdict']} |"
             for f in report["findings"]]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.quality.aae", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--figures", default=None, help="folder for the PNGs (default OUT/figures)")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--train-limit", type=int, default=AAEBudget.train_limit)
    parser.add_argument("--epochs", type=int, default=AAEBudget.epochs)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--samples", type=int, default=AAEBudget.samples)
    parser.add_argument("--test-examples", type=int, default=AAEBudget.test_examples)
    parser.add_argument("--part", choices=["unsupervised", "semi", "all"], default="all")
    parser.add_argument("--semi-labels", default="100,1000")
    args = parser.parse_args(argv)
    budget = AAEBudget(dataset=args.dataset, train_limit=args.train_limit, epochs=args.epochs,
                       seeds=[int(s) for s in args.seeds.split(",")], samples=args.samples,
                       test_examples=args.test_examples, semi_labels=[int(n) for n in args.semi_labels.split(",")])
    if args.part in ("unsupervised", "all"):
        print(markdown(run_aae_suite(budget, Path(args.out), Path(args.figures) if args.figures else None)))
    if args.part in ("semi", "all"):
        print(semi_markdown(run_semi_supervised(budget, Path(args.out))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
