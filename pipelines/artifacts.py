"""Pictures of a trained model: prior samples, reconstructions, the 2-D latent manifold, test
latents coloured by label, and training curves. Each is a PNG file; returns the paths written."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.data import ImageDataset
from core.evaluation import iterate_batches
from pipelines.images import save_grid


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and workers
    import matplotlib.pyplot as plt

    return plt


@torch.no_grad()
def posterior_means(variant, ds: ImageDataset, limit: int = 5000) -> torch.Tensor:
    means = [variant.encode(b.x, b.y)[0] for b in iterate_batches(ds.take(limit), 500)]
    return torch.cat(means)


@torch.no_grad()
def latent_manifold(variant, ds: ImageDataset, size: int = 15) -> torch.Tensor:
    """Decode a grid over the two latent axes with the most posterior-mean variance (the only two
    when D=2), others held at their data mean; grid points at Gaussian quantiles as in Kingma &
    Welling's figures."""
    means = posterior_means(variant, ds)
    order = means.var(0).argsort(descending=True)
    quantiles = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, size))
    z = means.mean(0).repeat(size * size, 1)
    a, b = (order[0], order[1]) if means.shape[1] > 1 else (order[0], order[0])
    z[:, a] = quantiles.repeat_interleave(size)
    if means.shape[1] > 1:
        z[:, b] = quantiles.repeat(size)
    return variant.decode_mean(z)


def write_artifacts(variant, test: ImageDataset, history: list[dict[str, Any]], folder: str | Path,
                    seed: int = 0) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    variant.eval()
    written: list[Path] = []
    gen = torch.Generator().manual_seed(seed)
    batch = next(iterate_batches(test, 32))
    try:
        written.append(save_grid(variant.sample(64, generator=gen), folder / "samples.png", nrow=8))
    except ValueError:  # a quadrant cvae generates completions instead
        written.append(save_grid(torch.cat([batch.x[:16], variant.complete(batch.x[:16], generator=gen)]),
                                 folder / "completions.png", nrow=16))
    recon = variant.reconstruct(batch)
    pairs = torch.stack([batch.x[:32], recon[:32]], 1).flatten(0, 1)  # input, reconstruction, ...
    written.append(save_grid(pairs, folder / "reconstructions.png", nrow=16))
    try:
        written.append(save_grid(latent_manifold(variant, test), folder / "latent_manifold.png", nrow=15))
    except ValueError:
        pass  # no unconditional decoder to walk (quadrant cvae)
    written.append(_latent_scatter(variant, test, folder / "latents_2d.png"))
    if history:
        written.append(_curves(history, folder / "training_curves.png"))
    return written


def _latent_scatter(variant, test: ImageDataset, path: Path) -> Path:
    plt = _pyplot()
    means = posterior_means(variant, test)
    if means.shape[1] > 2:  # project onto the two principal axes
        centred = means - means.mean(0)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        points, title = centred @ v[:2].T, "test posterior means (first two principal axes)"
    else:
        points, title = means if means.shape[1] == 2 else torch.cat([means, torch.zeros_like(means)], 1), "test posterior means"
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    labels = None if test.labels is None else test.labels[: len(points)].numpy()
    sc = ax.scatter(points[:, 0].numpy(), points[:, 1].numpy(), c=labels, s=3, cmap="tab10", alpha=0.7)
    if labels is not None:
        fig.colorbar(sc, ax=ax, label="label")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _curves(history: list[dict[str, Any]], path: Path) -> Path:
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for key, label in [("train/elbo", "train ELBO"), ("test/elbo", "test ELBO"), ("train/bound", "train bound")]:
        if key in history[0] and (key != "train/bound" or history[0][key] != history[0].get("train/elbo")):
            ax.plot(epochs, [h[key] for h in history], marker="o", label=label)
    if "test/nll" in history[0]:
        ax.plot(epochs, [-h["test/nll"] for h in history], marker="o", label="test log-likelihood (IS)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per example")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
