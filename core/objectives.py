"""Objectives over one model, chosen in the config (in the style of Pyro's Trace_ELBO / RenyiELBO).

The functions work on log-weights and terms; the classes below (`ELBO`, `IWAEBound`,
`LabelEnumerated`) are what a variant trains on. Shapes: log-weights are (k, B) for k samples of
each of B examples. Every bound is returned per example in nats; callers take the batch mean.
Positive numbers are log-likelihoods, so a loss is the negative of a bound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar

import torch

if TYPE_CHECKING:
    from core.config import ObjectiveConfig
    from core.model import Terms


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


def iwae_bound(log_w: torch.Tensor) -> torch.Tensor:
    """The importance-weighted bound of Burda et al. (2016): log (1/k) sum_i w_i."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


def enumerated_elbo(elbo_given_y: torch.Tensor, log_qy: torch.Tensor) -> torch.Tensor:
    """Label summed out (Kingma et al. 2014, eq. 7): sum_y q(y|x) [ELBO(x, y)] + H(q(y|x)).

    elbo_given_y and log_qy are (Y, B); ELBO(x, y) already includes log p(y).
    """
    qy = log_qy.exp()
    # q log q, 0 where q is 0 (a certain label, or a probability under float's range). The inner
    # where keeps such a q out of xlogy: its gradient there, log 0 = -inf, times exp's 0 would make
    # the whole backward pass NaN from a finite loss. Where q > 0 the bits are xlogy's own.
    positive = qy > 0
    safe_q = torch.where(positive, qy, torch.ones_like(qy))
    q_log_q = torch.where(positive, torch.special.xlogy(safe_q, safe_q), torch.zeros_like(qy))
    return (qy * elbo_given_y).sum(0) - q_log_q.sum(0)


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



# -- objectives as objects ------------------------------------------------------------------------

@torch.no_grad()  # logged numbers, never differentiated: no autograd graph for them
def bound_metrics(elbo: torch.Tensor, kl: torch.Tensor, log_px_z: torch.Tensor) -> dict[str, torch.Tensor]:
    """The metric names every variant logs (batch means, nats per example); `bound` is the number
    the objective maximises, the ELBO unless an objective says otherwise."""
    elbo_mean = elbo.mean()
    return {"bound": elbo_mean, "elbo": elbo_mean, "kl": kl.mean(), "recon": log_px_z.mean()}


@dataclass(frozen=True)
class Objective:
    """A bound on log p(x) computed from the terms of one forward pass with `samples` latent draws.

    `train_bound` is what training maximises per example (for a beta-ELBO not itself a bound),
    `metrics` the logged numbers, with `bound` the objective's own value.
    """
    name: ClassVar[str]

    @property
    def samples(self) -> int:
        raise NotImplementedError

    @classmethod
    def from_config(cls, cfg: "ObjectiveConfig") -> "Objective":
        raise NotImplementedError

    def train_bound(self, terms: "Terms") -> torch.Tensor:
        raise NotImplementedError

    def metrics(self, terms: "Terms", train_bound: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return bound_metrics(elbo_analytic(terms.log_px_z, terms.kl), terms.kl, terms.log_px_z)


@dataclass(frozen=True)
class ELBO(Objective):
    """E_q[log p(x|z)] - beta KL(q || p), the reconstruction averaged over `num_samples` draws
    (Kingma & Welling's L; Burda et al.'s "VAE, k samples"); beta != 1 is Higgins et al.'s beta-VAE."""
    beta: float = 1.0
    num_samples: int = 1
    name: ClassVar[str] = "elbo"

    @property
    def samples(self) -> int:
        return self.num_samples

    @classmethod
    def from_config(cls, cfg):
        return cls(beta=cfg.beta, num_samples=cfg.samples)

    def train_bound(self, terms):
        if self.beta == 1.0:  # the ELBO itself (x * 1.0 is x exactly: one pass fewer, same bits)
            return elbo_analytic(terms.log_px_z, terms.kl)
        return terms.log_px_z.mean(0) - self.beta * terms.kl

    def metrics(self, terms, train_bound):
        if self.beta == 1.0:  # the trained bound is the ELBO: reuse it rather than recompute it
            return bound_metrics(train_bound, terms.kl, terms.log_px_z)
        return super().metrics(terms, train_bound)


@dataclass(frozen=True)
class IWAEBound(Objective):
    """Burda et al. (2016): log (1/k) sum_i w_i, tighter than the ELBO as k grows. The logged
    `bound` is this number; ELBO, KL and reconstruction come from the same k samples."""
    k: int = 5
    name: ClassVar[str] = "iwae"

    @property
    def samples(self) -> int:
        return self.k

    @classmethod
    def from_config(cls, cfg):
        return cls(k=cfg.k)

    def train_bound(self, terms):
        return iwae_bound(terms.log_w)

    def metrics(self, terms, train_bound):
        with torch.no_grad():
            return super().metrics(terms, train_bound) | {"bound": train_bound.mean()}


OBJECTIVES: dict[str, type[Objective]] = {"elbo": ELBO, "iwae": IWAEBound}


def make_objective(cfg: "ObjectiveConfig") -> Objective:
    """The objective object an `objective:` config section names."""
    return OBJECTIVES[cfg.name].from_config(cfg)


@dataclass(frozen=True)
class LabelEnumerated:
    """A discrete label summed out exactly (Kingma et al. 2014, eq. 7) around any inner objective:
    sum_y q(y|x) [bound(x, y) + log p(y)] + H(q(y|x)), with a uniform p(y)."""
    inner: Objective
    num_classes: int

    @property
    def log_prior_y(self) -> float:
        return -math.log(self.num_classes)

    def labelled_bound(self, terms: "Terms") -> torch.Tensor:
        """bound(x, y) + log p(y) for the label the terms were conditioned on, per example."""
        return self.inner.train_bound(terms) + self.log_prior_y

    def unlabelled_bound(self, terms_per_label: "Terms", log_qy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(bound, reconstruction) per example from terms computed for every label at once, the
        examples repeated label by label (Y*B rows), and log q(y|x) of shape (Y, B)."""
        n_cls, b = log_qy.shape
        bound_y = self.labelled_bound(terms_per_label).view(n_cls, b)
        recon_y = terms_per_label.log_px_z.mean(0).view(n_cls, b)
        return enumerated_elbo(bound_y, log_qy), (log_qy.exp() * recon_y).sum(0)
