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


class _BernoulliLogProb(torch.autograd.Function):
    """sum over (C, H, W) of log p(x | logits) = x l - softplus(l), with its gradient x - sigmoid(l).

    The forward pass computes log sigmoid(|l|) - max(l, 0) + x l in six cheap passes. torch's CPU
    log-sigmoid (and binary_cross_entropy_with_logits) goes through log1p, about ten times slower
    than log here: it was the costliest elementwise op of a training step. The log of a sigmoid in
    [1/2, 1) is as accurate as that path (a few float32 ulps of each pixel's term; tested against
    float64), so values agree with -binary_cross_entropy_with_logits to rounding, not bit for bit. The backward pass does not read
    the forward values: sigmoid, subtract, multiply, in place, exactly as before. This is the
    elementwise hot spot of training and of the importance-sampled NLL.
    """

    @staticmethod
    def forward(ctx, logits, x, mask):
        ctx.save_for_backward(logits, x, mask)
        out = logits.abs().sigmoid_().log_()  # log sigmoid(|l|) = -softplus(-|l|)
        out.sub_(torch.relu(logits))           # -softplus(l) = log sigmoid(|l|) - max(l, 0)
        out.addcmul_(x, logits)                # + x l: log p(x | l)
        if mask is not None:
            out.mul_(mask)
        return out.flatten(-3).sum(-1)

    @staticmethod
    def backward(ctx, grad):
        logits, x, mask = ctx.saved_tensors
        g = torch.sigmoid(logits)
        torch.sub(x, g, out=g)
        if mask is not None:
            g.mul_(mask)
        return g.mul_(grad[..., None, None, None]), None, None


class Bernoulli(Likelihood):
    """Decoder outputs logits; numerically stable (log-sigmoid, as binary_cross_entropy_with_logits)."""

    def log_prob(self, logits, x, mask=None):
        if (x.requires_grad or x.dtype != logits.dtype
                or (mask is not None and (mask.requires_grad
                                          or torch.broadcast_shapes(mask.shape, logits.shape) != logits.shape))):
            return super().log_prob(logits, x, mask)  # rare cases (a gradient for the target): plain autograd
        return _BernoulliLogProb.apply(logits, x, mask)

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
