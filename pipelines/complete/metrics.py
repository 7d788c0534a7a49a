"""What a completion is scored on, shared by `vaezoo complete` and the superres/inpaint suites.

Images are (B, C, H, W) floats in [0, 1]. The scored pixels are the hidden ones (inpainting) or
every high-resolution pixel (super-resolution), as the cvae's `Condition.target_mask` says.

- conditional NLL of the scored pixels: importance-sampled for the cvae, exact for a
  deterministic network (its pixels are independent Bernoullis given the condition);
- PSNR (scikit-image) on the scored pixels, SSIM (scikit-image) on the whole completed image, each
  of the mean completion and of the best of the N samples (the highest over samples);
- consistency: mean squared error between the input and what the output shows of it (the output
  average-pooled, for super-resolution; the model's guess at the visible pixels, for inpainting);
- diversity: mean over pairs of samples of their root-mean-square difference on the scored pixels.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from core.batches import Batch
from core.likelihoods import Bernoulli
from core.objectives import estimate_log_likelihood
from variants.cvae import downsample

TASKS = {"superres": "lowres", "inpaint": "mask"}


def psnr(truth: np.ndarray, guess: np.ndarray) -> float:
    """PSNR in dB of pixels in [0, 1] (scikit-image); infinite for identical pixels."""
    from skimage.metrics import peak_signal_noise_ratio

    if truth.size == 0:
        raise ValueError("PSNR of no pixels")
    with warnings.catch_warnings():  # identical pixels: MSE 0, scikit-image divides by it and returns inf
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(peak_signal_noise_ratio(truth.astype(np.float64), guess.astype(np.float64), data_range=1.0))


def ssim(truth: np.ndarray, guess: np.ndarray) -> float:
    """SSIM of one (C, H, W) image pair in [0, 1] (scikit-image, 7x7 windows)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(truth.astype(np.float64), guess.astype(np.float64), data_range=1.0,
                                       channel_axis=0))


def bicubic(lowres: torch.Tensor, factor: int) -> torch.Tensor:
    """Bicubic upsampling by `factor`, clipped to [0, 1]."""
    return F.interpolate(lowres, scale_factor=factor, mode="bicubic", align_corners=False).clamp(0, 1)


@dataclass
class Completions:
    """N completions of B images and what they are scored against."""
    truth: torch.Tensor          # (B, C, H, W)
    samples: torch.Tensor        # (N, B, C, H, W): visible pixels kept (inpainting)
    mean: torch.Tensor           # (B, C, H, W) the mean completion
    scored: torch.Tensor         # (B or 1, C, H, W) 1 on the scored pixels
    consistency: torch.Tensor    # (B,)


def image_scores(c: Completions) -> dict[str, np.ndarray]:
    """Per-image PSNR/SSIM of the mean and the best sample, consistency and diversity, shape (B,) each."""
    truth, scored = c.truth.double().cpu().numpy(), c.scored.expand_as(c.truth).bool().cpu().numpy()
    samples, mean = c.samples.double().cpu().numpy(), c.mean.double().cpu().numpy()
    n, b = samples.shape[:2]
    out = {k: np.empty(b) for k in ("psnr_mean", "ssim_mean", "psnr_best", "ssim_best", "diversity")}
    for i in range(b):
        keep = scored[i]
        out["psnr_mean"][i] = psnr(truth[i][keep], mean[i][keep])
        out["ssim_mean"][i] = ssim(truth[i], mean[i])
        out["psnr_best"][i] = max(psnr(truth[i][keep], s[i][keep]) for s in samples)
        out["ssim_best"][i] = max(ssim(truth[i], s[i]) for s in samples)
        pairs = [np.sqrt(np.mean((samples[a, i][keep] - samples[z, i][keep]) ** 2))
                 for a in range(n) for z in range(a + 1, n)]
        out["diversity"][i] = float(np.mean(pairs)) if pairs else 0.0
    out["consistency"] = c.consistency.double().cpu().numpy()
    return out


def _consistency(cvae, x: torch.Tensor, guess: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
    if cvae.options.condition == "lowres":
        f = cvae.options.lowres_factor
        return (downsample(guess, f) - downsample(x, f)).pow(2).flatten(1).mean(1)
    shown = visible.expand_as(x)
    return ((guess - x).pow(2) * shown).flatten(1).sum(1) / shown.flatten(1).sum(1).clamp(min=1)


@torch.no_grad()
def cvae_completions(cvae, x: torch.Tensor, samples: int, generator: torch.Generator | None = None,
                     visible: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> Completions:
    """`samples` completions from z ~ p(z|c) (decoder means); the mean completion is their average,
    a Monte Carlo estimate of E[x | c]. `noise` (samples, B, D) fixes the draws of z (else from
    `generator`)."""
    cond = cvae.condition_given(x, visible)
    prior_mean, prior_logvar = cvae.vae.prior_params(cond.c)
    if noise is None:
        noise = torch.randn((samples, *prior_mean.shape), generator=generator).to(prior_mean.device)
    z = prior_mean + torch.exp(0.5 * prior_logvar) * noise  # as VAE.sample_latent draws it
    draws = cvae.vae.likelihood.mean(cvae.vae.decode(z, cond.c))
    scored = torch.ones_like(x[:1]) if cond.target_mask is None else cond.target_mask
    pasted = draws if cond.target_mask is None else x * (1 - scored) + draws * scored
    shown = None if cond.target_mask is None else 1 - cond.target_mask
    return Completions(x, pasted, pasted.mean(0), scored, _consistency(cvae, x, draws.mean(0), shown))


@torch.no_grad()
def network_completions(net, cvae, x: torch.Tensor, visible: torch.Tensor | None = None) -> Completions:
    """The deterministic network's one completion (its Bernoulli means), as one sample."""
    cond = cvae.condition_given(x, visible)
    guess = torch.sigmoid(net(cond.c).view_as(x))
    scored = torch.ones_like(x[:1]) if cond.target_mask is None else cond.target_mask
    pasted = guess if cond.target_mask is None else x * (1 - scored) + guess * scored
    shown = None if cond.target_mask is None else 1 - cond.target_mask
    return Completions(x, pasted[None], pasted, scored, _consistency(cvae, x, guess, shown))


@torch.no_grad()
def bicubic_completions(cvae, x: torch.Tensor) -> Completions:
    f = cvae.options.lowres_factor
    guess = bicubic(downsample(x, f), f)
    return Completions(x, guess[None], guess, torch.ones_like(x[:1]), _consistency(cvae, x, guess, None))


@torch.no_grad()
def cvae_conditional_nll(cvae, x: torch.Tensor, k: int, visible: torch.Tensor | None = None,
                         chunk: int = 500) -> torch.Tensor:
    """-log p(scored pixels | c) per image (B,), importance-sampled with k samples of q(z|x,c)."""
    cond = cvae.condition_given(x, visible)
    batch = Batch(x)
    return -estimate_log_likelihood(lambda m: cvae.terms(batch, m, condition=cond).log_w, k, chunk_size=chunk)


def network_conditional_nll(net, cvae, x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    """-log p(scored pixels | c) per image (B,) of a network that outputs Bernoulli logits."""
    cond = cvae.condition_given(x, visible)
    return -Bernoulli().log_prob(net(cond.c).view_as(x), x, cond.target_mask)
