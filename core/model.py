"""The VAE of Kingma & Welling (2014), optionally conditioned, with everything a variant reuses.

`encode` is deterministic (posterior mean and log-variance); sampling is the explicit
`sample_latent` (the reparameterisation trick). `terms` gives the pieces every objective is made
of: log p(x|z), log p(z), log q(z|x) for k samples and the analytic KL.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import torch
from torch import nn

from core.config import ModelConfig
from core.likelihoods import make_likelihood
from core.networks import DataShape, Decoder, GaussianEncoder, mlp
from core.objectives import gaussian_kl, gaussian_log_prob


@dataclass
class Terms:
    log_px_z: torch.Tensor  # (k, B)
    kl: torch.Tensor        # (B,) analytic KL(q(z|x) || p(z))
    mean: torch.Tensor      # (B, D) posterior mean
    logvar: torch.Tensor    # (B, D)
    z: torch.Tensor         # (k, B, D) the sampled latents (before any transform)
    prior_mean: torch.Tensor | None = None  # p(z [| c]); None is the unit Gaussian
    prior_logvar: torch.Tensor | None = None

    # log p(z) and log q(z|x) are computed when first asked for: the ELBO (analytic KL), the
    # default objective, needs neither, and a training step then skips both and their gradients.
    @cached_property
    def log_pz(self) -> torch.Tensor:  # (k, B)
        return gaussian_log_prob(self.z, self.prior_mean, self.prior_logvar)

    @cached_property
    def log_qz(self) -> torch.Tensor:  # (k, B)
        return gaussian_log_prob(self.z, self.mean, self.logvar)

    @property
    def log_w(self) -> torch.Tensor:
        return self.log_px_z + self.log_pz - self.log_qz


def _full_precision(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 network outputs (under train.autocast) as float32; float32 and float64 as they are."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class ConditionalPrior(nn.Module):
    """p(z | c) as a diagonal Gaussian from a small network (Sohn et al. 2015's prior network)."""

    def __init__(self, cfg: ModelConfig, cond_dim: int):
        super().__init__()
        self.body = mlp([cond_dim, *cfg.hidden_dims[:1]], cfg.activation)
        self.head = nn.Linear(cfg.hidden_dims[0] if cfg.hidden_dims else cond_dim, 2 * cfg.latent_dim)

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.body(c.flatten(1))).chunk(2, dim=-1)


class VAE(nn.Module):
    def __init__(self, cfg: ModelConfig, shape: DataShape, cond_dim: int = 0, conditional_prior: bool = False):
        super().__init__()
        self.cfg, self.shape, self.latent_dim = cfg, shape, cfg.latent_dim
        self.encoder = GaussianEncoder(cfg, shape, cond_dim)
        self.likelihood = make_likelihood(cfg)
        self.decoder = Decoder(cfg, shape, self.likelihood.params_per_pixel, cond_dim)
        self.prior = ConditionalPrior(cfg, cond_dim) if conditional_prior else None

    def encode(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of q(z | x [, c]); deterministic. Half-precision network
        outputs become float32 here and in decode/prior_params (a no-op unless train.autocast runs
        the networks in bf16): densities, KL and log-likelihood sums stay in float32."""
        mean, logvar = self.encoder(x, c)
        return _full_precision(mean), _full_precision(logvar)

    @staticmethod
    def sample_latent(mean: torch.Tensor, logvar: torch.Tensor, k: int = 1,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """k reparameterised samples z = mean + sigma * eps, shape (k, B, D)."""
        eps = torch.randn((k, *mean.shape), generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Parameters of p(x | z [, c]) for z of shape (..., D)."""
        return _full_precision(self.decoder(z, c))

    def prior_params(self, c: torch.Tensor | None = None):
        if self.prior is None:
            return None, None
        mean, logvar = self.prior(c)
        return _full_precision(mean), _full_precision(logvar)

    def terms(self, x_in: torch.Tensor, target: torch.Tensor, k: int = 1, c: torch.Tensor | None = None,
              target_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
              transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Terms:
        """Encode `x_in`, score `target`: the denoising variant passes a corrupted x_in and a clean
        target. `transform` maps the sampled latents before they are decoded (DC-IGN clamps them);
        densities of z are taken at the sampled, untransformed latents."""
        mean, logvar = self.encode(x_in, c)
        z = self.sample_latent(mean, logvar, k, generator)
        params = self.decode(z if transform is None else transform(z), c)
        log_px_z = self.likelihood.log_prob(params, target, target_mask)
        prior_mean, prior_logvar = self.prior_params(c)
        kl = gaussian_kl(mean, logvar, prior_mean, prior_logvar)
        return Terms(log_px_z, kl, mean, logvar, z, prior_mean, prior_logvar)

    @torch.no_grad()
    def generate(self, n: int, c: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 mean_image: bool = True) -> torch.Tensor:
        """Draw z from the prior and decode; returns the decoder's mean image (or a sample)."""
        device = next(self.parameters()).device
        prior_mean, prior_logvar = self.prior_params(c)
        if prior_mean is None:
            z = torch.randn((n, self.latent_dim), generator=generator, device=device)
        else:
            z = self.sample_latent(prior_mean, prior_logvar, 1, generator)[0]
        params = self.decode(z, c)
        return self.likelihood.mean(params) if mean_image else self.likelihood.sample(params, generator)
