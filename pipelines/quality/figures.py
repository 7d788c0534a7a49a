"""Figures: prior samples, class-conditional samples, quadrant completions."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.data import PreparedData
from core.evaluation import iterate_batches
from core.serialization import load_model
from pipelines.quality.baselines import completion_network


@torch.no_grad()
def write_figures(out: Path, data: PreparedData, results: dict[str, dict[str, Any]], seed: int = 0) -> list[Path]:
    """Prior samples of the marginal models, class-conditional samples, quadrant completions, of
    the models trained with `seed`."""
    from pipelines.images import save_grid

    folder = out / "figures"
    written: list[Path] = []
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731  the same draws for every model
    models = {key: out / "models" / f"{key}-seed{seed}" for key in results
              if (out / "models" / f"{key}-seed{seed}" / "config.json").exists()}
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
        network_file = out / "models" / f"network-q{q}-seed{seed}.pt"
        if network_file.exists():
            net = completion_network(config, data.shape)
            net.load_state_dict(torch.load(network_file, weights_only=True))
            net.eval()
            rows.append(test_x * mask + torch.sigmoid(net(test_x * mask).view_as(test_x)) * (1 - mask))
        g = gen()
        rows += [variant.complete(test_x, generator=g) for _ in range(3)]
        written.append(save_grid(torch.cat(rows), folder / f"completions-q{q}.png", nrow=len(test_x)))
    return written
