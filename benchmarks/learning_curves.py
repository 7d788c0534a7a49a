"""Train and test ELBO per epoch of `vaezoo quality` models, mean over seeds: the dvae-small
suite's evidence that the vae overfits its small training set (issue 16, item 2).

Reads OUT/results/<key>-seed<N>.json (each holds `curves`: epoch, train/elbo, test/elbo), writes
one PNG with a panel per model (train solid, test dashed, a band of +- one standard error over the
seeds) and prints JSON: per model, the seeds, the best test ELBO and its epoch, and the final
train-test gap (mean +- s.e.).

    python benchmarks/learning_curves.py OUT [--keys vae-small,dvae-small-0.1,...] [--png PATH]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

import numpy as np

RESULT = re.compile(r"^(?P<key>.+)-seed(?P<seed>\d+)\.json$")


def load_curves(out: Path, keys: list[str] | None) -> dict[str, dict[int, dict[str, np.ndarray]]]:
    """{key: {seed: {"epoch", "train", "test"}}} of every finished result that kept its curves."""
    curves: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    for path in sorted((out / "results").glob("*-seed*.json")):
        m = RESULT.match(path.name)
        if not m or (keys and m["key"] not in keys):
            continue
        history = json.loads(path.read_text()).get("curves") or []
        rows = [h for h in history if "train/elbo" in h and "test/elbo" in h]
        if rows:
            curves.setdefault(m["key"], {})[int(m["seed"])] = {
                "epoch": np.array([h["epoch"] for h in rows]),
                "train": np.array([h["train/elbo"] for h in rows]),
                "test": np.array([h["test/elbo"] for h in rows])}
    return curves


def mean_se(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over axis 0 (zero error with one seed)."""
    se = values.std(axis=0, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else np.zeros(values.shape[1:])
    return values.mean(axis=0), se


def summarise(curves: dict[str, dict[int, dict[str, np.ndarray]]]) -> dict[str, dict]:
    summary = {}
    for key, seeds in curves.items():
        epochs = min(len(c["epoch"]) for c in seeds.values())  # seeds cut to a common length
        train = np.stack([c["train"][:epochs] for c in seeds.values()])
        test = np.stack([c["test"][:epochs] for c in seeds.values()])
        test_mean, _ = mean_se(test)
        gap_mean, gap_se = mean_se(train[:, -1:] - test[:, -1:])
        best = int(test_mean.argmax())
        summary[key] = {"seeds": sorted(seeds), "epochs": epochs,
                        "best_test_elbo": round(float(test_mean[best]), 2),
                        "best_epoch": int(next(iter(seeds.values()))["epoch"][best]),
                        "final_test_elbo": round(float(test_mean[-1]), 2),
                        "final_train_minus_test": [round(float(gap_mean[0]), 2), round(float(gap_se[0]), 2)],
                        "per_seed_final_gap": [round(float(g), 2) for g in (train[:, -1] - test[:, -1])]}
    return summary


def plot(curves: dict[str, dict[int, dict[str, np.ndarray]]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(curves)
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharey=True)
    for ax, key in zip(axes.flat, keys):
        seeds = curves[key]
        epochs = min(len(c["epoch"]) for c in seeds.values())
        x = next(iter(seeds.values()))["epoch"][:epochs]
        for part, style in (("train", "-"), ("test", "--")):
            mean, se = mean_se(np.stack([c[part][:epochs] for c in seeds.values()]))
            ax.plot(x, mean, style, label=f"{part} ELBO")
            ax.fill_between(x, mean - se, mean + se, alpha=0.3)
        ax.set_title(f"{key} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes[0][0].set_ylabel("ELBO (nats)")
    axes[0][0].legend()
    top = max(float(np.max(c["train"])) for s in curves.values() for c in s.values())
    axes[0][0].set_ylim(top - 60, top + 5)  # the first epochs' -500 would flatten the gap
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(png)  # never a half-written figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a `vaezoo quality --out` folder")
    parser.add_argument("--keys", help="comma-separated model keys (default: every model with curves)")
    parser.add_argument("--png", type=Path, help="figure path (default OUT/figures/learning-curves.png)")
    args = parser.parse_args()
    if not (args.out / "results").is_dir():
        parser.error(f"{args.out} has no results/ folder: not a `vaezoo quality --out` folder")
    curves = load_curves(args.out, args.keys.split(",") if args.keys else None)
    if not curves:
        parser.error(f"no results with curves in {args.out / 'results'}")
    png = args.png or args.out / "figures" / "learning-curves.png"
    plot(curves, png)
    print(json.dumps({"figure": str(png), "models": summarise(curves)}, indent=1))


if __name__ == "__main__":
    main()
