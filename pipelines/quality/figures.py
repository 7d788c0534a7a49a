"""Figures: prior samples, class-conditional samples, quadrant completions, DC-IGN re-renderings."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.data import PreparedData, to_float
from core.disentanglement import best_single_latent
from core.evaluation import iterate_batches
from core.serialization import load_model
from pipelines.quality.baselines import completion_network
from pipelines.quality.protocol import model_path


@torch.no_grad()
def write_figures(out: Path, data: PreparedData, results: dict[str, dict[str, Any]], seed: int = 0) -> list[Path]:
    """Prior samples of the marginal models, class-conditional samples, quadrant completions,
    DC-IGN re-renderings, completions of the applications: of the models trained with `seed`."""
    from pipelines.images import save_grid

    folder = out / "figures"
    written: list[Path] = []
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731  the same draws for every model
    models = {key: model_path(out, key, seed) for key in results if (model_path(out, key, seed) / "config.json").exists()}
    for key in ("vae-k1", "iwae-k50", "vae-k50", "dvae-gaussian"):
        if key in models:
            variant, _ = load_model(models[key])
            written.append(save_grid(variant.sample(64, generator=gen()), folder / f"samples-{key}.png", nrow=8))
    classes = data.num_classes
    for key in [k for k in models if k.startswith("m2-")][-1:] + (["cvae-label"] if "cvae-label" in models else []):
        variant, _ = load_model(models[key])
        y = torch.arange(classes).repeat_interleave(10)  # one row per class
        written.append(save_grid(variant.sample(len(y), generator=gen(), y=y), folder / f"samples-{key}-by-class.png", nrow=10))
    test_x = next(iterate_batches(data.test, 10)).x
    for q in (1, 2, 3):
        key = f"cvae-q{q}"
        if key not in models:
            continue
        variant, config = load_model(models[key])
        mask = variant.visible_mask
        rows = [test_x, test_x * mask]  # truth, what the models see
        network_file = model_path(out, f"network-q{q}", seed, ".pt")
        if network_file.exists():
            net = completion_network(config, data.shape)
            net.load_state_dict(torch.load(network_file, weights_only=True))
            net.eval()
            rows.append(test_x * mask + torch.sigmoid(net(test_x * mask).view_as(test_x)) * (1 - mask))
        g = gen()
        rows += [variant.complete(test_x, generator=g) for _ in range(3)]
        written.append(save_grid(torch.cat(rows), folder / f"completions-q{q}.png", nrow=len(test_x)))
    for key in ("dcign", "vae-conv", "beta4-vae-conv"):
        if key in models and "dcign" in results and data.test.factors is not None:
            variant, _ = load_model(models[key])
            groups = next(iter(results["dcign"]["per_seed"].values())).get("latent_groups", {})
            factors = list(groups) or list(data.test.factors.names)
            written.append(save_grid(rerender(variant, data, factors), folder / f"dcign-{key}-s{seed}.png", nrow=9))
    from pipelines.quality.applications import write_application_figures

    return written + write_application_figures(out, data, lambda key, suffix: model_path(out, key, seed, suffix))


@torch.no_grad()
def rerender(variant, data: PreparedData, factors: list[str], images: int = 2, steps: int = 8,
             rows: int = 2000) -> torch.Tensor:
    """Kulkarni et al.'s re-renderings: for each factor, `images` test images (first column), then
    their decodings as the factor's latents move through a range (mean +- 2 SD of those latents'
    posterior means over the first `rows` test images), every other latent kept. The latents are
    the factor's group where the variant assigns one, else its best single latent (held-out R^2)."""
    variant.eval()
    n = min(rows, len(data.test))
    means = torch.cat([variant.encode(b.x, b.y)[0] for b in iterate_batches(data.test, 500, torch.arange(n))])
    table = data.test.factors.select(slice(0, n))
    groups = variant.latent_groups() or {}
    best = best_single_latent(means.double(), table.values, table.names)
    x = to_float(data.test.images[:images])
    z = variant.encode(x)[0]
    out = []
    for factor in factors:
        dims = groups.get(factor, [best[factor][0]])
        low = means[:, dims].mean(0) - 2 * means[:, dims].std(0)
        high = means[:, dims].mean(0) + 2 * means[:, dims].std(0)
        for i in range(images):
            walk = z[i].repeat(steps, 1)
            walk[:, dims] = low + torch.linspace(0, 1, steps).unsqueeze(1) * (high - low)
            out += [x[i:i + 1], variant.decode_mean(walk)]
    return torch.cat(out)
