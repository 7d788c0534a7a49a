"""Objectives as functions of log-weights, separate from any model (in the style of Pyro).

Shapes: log-weights are (k, B) for k samples of each of B examples. Every bound is returned per
example in nats; callers take the batch mean. Positive numbers are log-likelihoods, so a loss is
the negative of a bound.
"""
from __future__ import annotations

import math
from typing import Callable

import torch


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor,
                prior_mean: torch.Tensor | None = None, prior_logvar: torch.Tensor | None = None) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(prior_mean, exp(prior_logvar))) summed over the last dim.

    With no prior given, the prior is the unit Gaussian.
    """
    if prior_mean is None:
        return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
    var_ratio = (logvar - prior_logvar).exp()
    return 0.5 * (var_ratio + (mean - prior_mean).pow(2) * (-prior_logvar).exp() - 1.0 - (logvar - prior_logvar)).sum(-1)


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor | None = None, logvar: torch.Tensor | None = None) -> torch.Tensor:
    """log N(z; mean, exp(logvar)) summed over the last dim; the unit Gaussian when mean is None."""
    if mean is None:
        return -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
    return -0.5 * ((z - mean).pow(2) * (-logvar).exp() + logvar + math.log(2 * math.pi)).sum(-1)


def elbo_analytic(log_px_z: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
    """ELBO = E_q[log p(x|z)] - KL(q || p): Monte-Carlo reconstruction (mean over k), analytic KL."""
    return log_px_z.mean(0) - kl


def elbo_monte_carlo(log_w: torch.Tensor) -> torch.Tensor:
    """ELBO estimated from log-weights alone: the mean over samples of log w."""
    return log_w.mean(0)


def iwae_bound(log_w: torch.Tensor) -> torch.Tensor:
    """The importance-weighted bound of Burda et al. (2016): log (1/k) sum_i w_i."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


def enumerated_elbo(elbo_given_y: torch.Tensor, log_qy: torch.Tensor) -> torch.Tensor:
    """Label summed out (Kingma et al. 2014, eq. 7): sum_y q(y|x) [ELBO(x, y)] + H(q(y|x)).

    elbo_given_y and log_qy are (Y, B); ELBO(x, y) already includes log p(y).
    """
    qy = log_qy.exp()
    # xlogy makes 0 * log 0 = 0, so a certain label (q(y|x) = 1 for one y) stays finite
    return (qy * elbo_given_y).sum(0) - torch.special.xlogy(qy, qy).sum(0)


@torch.no_grad()
def estimate_log_likelihood(log_weights: Callable[[int], torch.Tensor], num_samples: int,
                            chunk_size: int = 500) -> torch.Tensor:
    """Importance-sampled log p(x) = log (1/K) sum_k w_k, streamed over chunks of samples.

    `log_weights(n)` returns (n', B) log-weights for n fresh samples of z. n' is a multiple of n when
    a variant also enumerates a discrete variable exactly (m2's label): each of those weights then
    includes log p(y), so the sum over y and the mean over the n samples give p(x). Only one chunk
    is held at a time, so K=5000 fits in memory.
    """
    running, count, remaining = None, 0, num_samples
    while remaining > 0:
        n = min(chunk_size, remaining)
        log_w = log_weights(n)
        chunk = torch.logsumexp(log_w, dim=0)
        running = chunk if running is None else torch.logaddexp(running, chunk)
        count += n
        remaining -= n
    return running - math.log(count)


def active_units(posterior_means: torch.Tensor, threshold: float = 0.01) -> int:
    """Latent dimensions whose posterior mean varies over the data: Cov_x(E_q[z_d]) > threshold (Burda et al.)."""
    return int((posterior_means.double().var(dim=0, unbiased=True) > threshold).sum())
