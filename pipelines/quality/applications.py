"""The superres and inpaint suites: the cvae as a conditional generator against a deterministic
network of the same size trained on the same pixels with the same budget, and (super-resolution)
bicubic upsampling, each seed its own model.

  superres  conditions lowres_factor 2 and 4 (28x28 -> 14x14, 7x7); every pixel scored
  inpaint   masks centre, blocks, pixels (rate 1/2); the hidden pixels scored

Every model is scored on the test split as the budget binarises it: the conditional NLL of the
scored pixels on the same first nll_examples test images (the cvae's importance-sampled with the
budget's nll_samples, the network's exact; both in batches of NLL_BATCH, so a random mask family
draws the same masks for both), and on the first IMAGE_EXAMPLES test images
PSNR/SSIM of the mean and of the best of SAMPLES completions, consistency and diversity
(pipelines/complete/metrics.py). The claim: the cvae's conditional NLL beats the network's,
judged over the seeds (`claims.judge`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from core.config import RunConfig
from core.data import PreparedData, to_float
from core.evaluation import iterate_batches
from core.networks import mlp
from core.serialization import build_variant
from core.training import epoch_permutation
from pipelines.complete.metrics import (bicubic_completions, cvae_completions, image_scores, network_completions,
                                        network_conditional_nll)

CONDITIONS = {
    "superres": {f"sr{f}": {"condition": "lowres", "lowres_factor": f} for f in (2, 4)},
    "inpaint": {fam: {"condition": "mask", "mask": fam} for fam in ("centre", "blocks", "pixels")},
}
SAMPLES, IMAGE_EXAMPLES = 16, 200
# core.evaluation scores a cvae's NLL in batches of 100; evaluation masks are seeded per batch, so
# the network is scored in the same batches to see the same masks.
NLL_BATCH = 100


def conditioner(config: RunConfig, data: PreparedData, options: dict[str, Any]):
    """An (untrained) cvae with these options: the one source of conditions, masks and scored
    pixels, so the network sees exactly what the cvae sees."""
    cfg = RunConfig.from_dict(config.to_dict() | {"variant_name": "cvae", "variant": dict(options), "objective": None})
    return build_variant(cfg, data.shape, data.num_classes)


def condition_network(config: RunConfig, cond_dim: int, shape) -> nn.Module:
    """Deterministic baseline: the condition in, Bernoulli logits of every pixel out, through the
    hidden sizes the cvae's networks use."""
    return nn.Sequential(nn.Flatten(), mlp([cond_dim, *config.model.hidden_dims, shape.numel],
                                           config.model.activation, final_activation=False))


@torch.no_grad()
def network_nll(net: nn.Module, cond, test, nll_examples: int) -> tuple[float, int]:
    """The network's mean conditional NLL over the first `nll_examples` test images (the cvae's
    images), and how many images that is."""
    net.eval()
    cond.eval()
    n = min(nll_examples, len(test))
    total = sum(float(network_conditional_nll(net, cond, b.x).double().sum())
                for b in iterate_batches(test, NLL_BATCH, torch.arange(n)))
    return total / n, n


def train_condition_network(config: RunConfig, data: PreparedData, options: dict[str, Any], nll_examples: int):
    """The same batches, epochs, optimiser and seed as the cvae; loss: the NLL of the scored pixels
    (random masks drawn per batch from the seeded RNG, as the cvae's are). Scored on the first
    `nll_examples` test images, as the cvae is."""
    t = config.train
    torch.manual_seed(t.seed)
    cond = conditioner(config, data, options)
    net = condition_network(config, cond.vae.encoder.cond_dim, data.shape)
    opt = torch.optim.Adam(net.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    torch.manual_seed(t.seed + 1)
    cond.train()
    net.train()
    n = len(data.train)
    for epoch in range(1, t.epochs + 1):
        perm = epoch_permutation(n, t.seed, epoch)
        for start in range(0, n, t.batch_size):
            x = to_float(data.train.images[perm[start:start + t.batch_size]], data.dynamic_train)
            loss = network_conditional_nll(net, cond, x).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    cond_nll, scored = network_nll(net, cond, data.test, nll_examples)
    return net, cond, {"cond_nll": cond_nll, "nll_examples": scored, "test_examples": len(data.test)}


def _mean_scores(completions) -> dict[str, float]:
    scores = image_scores(completions)
    return {f"image_{k}": float(np.mean(v)) for k, v in scores.items()}


@torch.no_grad()
def image_metrics(kind: str, data: PreparedData, cond, model=None, seed: int = 0) -> dict[str, float]:
    """Mean PSNR/SSIM (mean and best), consistency and diversity on the first IMAGE_EXAMPLES test images."""
    x = next(iterate_batches(data.test, IMAGE_EXAMPLES)).x
    cond.eval()
    if kind == "cvae":
        done = cvae_completions(model, x, SAMPLES, generator=torch.Generator().manual_seed(seed))
    elif kind == "network":
        done = network_completions(model, cond, x)
    else:
        done = bicubic_completions(cond, x)
    return _mean_scores(done) | {"image_examples": len(x), "image_samples": SAMPLES if kind == "cvae" else 1}


def plan_jobs(suite: str, job_type) -> list:
    """The suite's models without their seeds (`protocol.plan` gives each its seeds; bicubic, which
    trains nothing, is scored once per seed too, so every job has a seed)."""
    jobs = []
    for name, options in CONDITIONS[suite].items():
        if suite == "superres":
            jobs.append(job_type(f"bicubic-{name}", suite, "bicubic", options=options))
        jobs.append(job_type(f"cvae-{name}", suite, "variant", "cvae", options))
        jobs.append(job_type(f"network-{name}", suite, "condition_network", options=options))
    return jobs


@torch.no_grad()
def write_application_figures(out, data: PreparedData, locate, rows: int = 8) -> list:
    """One PNG per condition, one test image per row: input, bicubic (superres), deterministic
    network, three cvae samples, truth. `locate(key, suffix)` is the kept model of the figures' seed."""
    from core.serialization import load_model
    from pipelines.complete.completer import input_view
    from pipelines.complete.metrics import bicubic
    from pipelines.images import save_grid
    from variants.cvae import downsample

    written = []
    x = next(iterate_batches(data.test, rows)).x
    for suite, conditions in CONDITIONS.items():
        for name in conditions:
            cvae_dir, net_file = locate(f"cvae-{name}", ""), locate(f"network-{name}", ".pt")
            if not (cvae_dir / "config.json").exists() or not net_file.exists():
                continue
            cvae, config = load_model(cvae_dir)
            cvae.eval()
            net = condition_network(config, cvae.vae.encoder.cond_dim, data.shape)
            net.load_state_dict(torch.load(net_file, weights_only=True))
            net.eval()
            columns = [input_view(cvae, x, None)]
            if suite == "superres":
                f = cvae.options.lowres_factor
                columns.append(bicubic(downsample(x, f), f))
            columns.append(network_completions(net, cvae, x).mean)
            columns += list(cvae_completions(cvae, x, 3, generator=torch.Generator().manual_seed(0)).samples)
            columns.append(x)
            grid = torch.stack(columns, 1).flatten(0, 1)
            written.append(save_grid(grid, out / "figures" / f"{suite}-{name}.png", nrow=len(columns)))
    return written
