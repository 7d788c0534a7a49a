"""Observation models p(x | z). Each turns decoder outputs into a log-probability summed over the
data dimensions, a mean image and a sample. Decoder outputs have shape (..., P*C, H, W) where P is
`params_per_pixel`; targets (B, C, H, W) broadcast against any leading sample dimension.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from core.config import ModelConfig

LOG_2PI = math.log(2 * math.pi)


class Likelihood:
    params_per_pixel: ClassVar[int] = 1

    def log_prob(self, params: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x | params) summed over (C, H, W); `mask` (broadcastable to x) keeps only some pixels."""
        elementwise = self.elementwise_log_prob(params, x)
        if mask is not None:
            elementwise = elementwise * mask
        return elementwise.flatten(-3).sum(-1)

    def elementwise_log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError


class Bernoulli(Likelihood):
    """Decoder outputs logits; numerically stable through binary_cross_entropy_with_logits."""

    def elementwise_log_prob(self, logits, x):
        return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")

    def mean(self, logits):
        return torch.sigmoid(logits)

    def sample(self, logits, generator=None):
        return torch.bernoulli(torch.sigmoid(logits), generator=generator)


class GaussianLearnedVariance(Likelihood):
    """Diagonal Gaussian with a per-pixel mean and log-variance from the decoder.

    The log-variance is bounded below smoothly: pixels that are always 0 (image borders) would
    otherwise drive their variance to zero and the log-likelihood to infinity.
    """

    params_per_pixel = 2
    min_logvar = math.log(1e-4)

    def split(self, params):
        mean, raw = params.chunk(2, dim=-3)
        logvar = self.min_logvar + F.softplus(raw - self.min_logvar)
        return mean, logvar

    def elementwise_log_prob(self, params, x):
        mean, logvar = self.split(params)
        return -0.5 * (LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar))

    def mean(self, params):
        return self.split(params)[0]

    def sample(self, params, generator=None):
        mean, logvar = self.split(params)
        return mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)


class GaussianFixedVariance(Likelihood):
    """Gaussian with a fixed standard deviation sigma: -log p = ||x - mean||^2 / (2 sigma^2) + const (MSE)."""

    def __init__(self, sigma: float = 1.0):
        self.sigma = sigma
        self._log_norm = -0.5 * LOG_2PI - math.log(sigma)

    def elementwise_log_prob(self, mean, x):
        return self._log_norm - 0.5 * ((x - mean) / self.sigma) ** 2

    def mean(self, mean):
        return mean

    def sample(self, mean, generator=None):
        return mean + self.sigma * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)


LIKELIHOODS = {
    "bernoulli": lambda cfg: Bernoulli(),
    "gaussian": lambda cfg: GaussianLearnedVariance(),
    "gaussian_fixed": lambda cfg: GaussianFixedVariance(cfg.fixed_sigma),
}


def make_likelihood(cfg: ModelConfig) -> Likelihood:
    return LIKELIHOODS[cfg.likelihood](cfg)
