"""Parzen-window log-likelihood (Breuleux et al. 2011; the protocol of Goodfellow et al. 2014 and
Makhzani et al. 2016): fit an isotropic Gaussian kernel density to model samples and score held-out
data under it, choosing the window width on a validation split.

    log p(x) = logsumexp_i [ -||x - s_i||^2 / (2 sigma^2) ] - log N - (D/2) log(2 pi sigma^2)

in nats per example, over N samples s_i of dimension D. The estimate is biased and high-variance in
high dimension (Theis et al. 2016): it ranks models roughly at best, and is reported because the
paper reports it, beside the importance-sampled NLL where a model has a likelihood.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

# Widths tried on the validation split (data in [0, 1]; Goodfellow et al.'s MNIST width was ~0.2).
DEFAULT_SIGMAS = tuple(float(s) for s in torch.logspace(math.log10(0.05), math.log10(1.0), 20))


def _squared_distances(x: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """(M, N) ||x_m - s_n||^2 in float64 (the expansion loses digits in float32 at D=784)."""
    x, samples = x.double(), samples.double()
    d2 = x.pow(2).sum(1, keepdim=True) - 2 * x @ samples.T + samples.pow(2).sum(1)
    return d2.clamp_(min=0)


def parzen_log_likelihood(x: torch.Tensor, samples: torch.Tensor, sigmas: torch.Tensor | float,
                          chunk: int = 256) -> torch.Tensor:
    """log p(x) per example (M, len(sigmas)) for each width, x (M, D) and samples (N, D) flattened."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    n, dim = samples.shape
    out = []
    for start in range(0, len(x), chunk):
        d2 = _squared_distances(x[start:start + chunk], samples)  # (m, N), once for every width
        scaled = -d2[:, None, :] / (2 * sigmas[None, :, None] ** 2)  # (m, S, N)
        out.append(torch.logsumexp(scaled, dim=-1) - math.log(n) - 0.5 * dim * torch.log(2 * math.pi * sigmas ** 2))
    return torch.cat(out)


@dataclass(frozen=True)
class ParzenResult:
    log_likelihood: float   # mean log p(x) over the test examples, nats
    standard_error: float   # std / sqrt(M) over the test examples
    sigma: float            # the width chosen on the validation split
    validation_log_likelihood: float
    samples: int
    test_examples: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def parzen_evaluate(samples: torch.Tensor, validation: torch.Tensor, test: torch.Tensor,
                    sigmas: tuple[float, ...] = DEFAULT_SIGMAS) -> ParzenResult:
    """The width with the highest mean validation log-likelihood, then the test log-likelihood
    under that width with its standard error. Inputs are flattened to (n, D)."""
    samples, validation, test = (t.reshape(len(t), -1) for t in (samples, validation, test))
    if len(test) < 2 or len(validation) < 1 or len(samples) < 1:
        raise ValueError("parzen_evaluate needs samples, a validation split and at least 2 test examples")
    if not samples.shape[1] == validation.shape[1] == test.shape[1]:
        raise ValueError(f"dimensions differ: samples {samples.shape[1]}, validation {validation.shape[1]}, "
                         f"test {test.shape[1]}")
    val = parzen_log_likelihood(validation, samples, torch.tensor(sigmas, dtype=torch.float64)).mean(0)
    best = int(val.argmax())
    ll = parzen_log_likelihood(test, samples, sigmas[best])[:, 0]
    return ParzenResult(float(ll.mean()), float(ll.std() / math.sqrt(len(ll))), sigmas[best], float(val[best]),
                        len(samples), len(test))
