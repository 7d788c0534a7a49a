"""Maximum mean discrepancy (Gretton et al. 2012) between two samples with a Gaussian (RBF) kernel
k(a, b) = exp(-||a - b||^2 / (2 h^2)): how far apart two distributions are (0 when equal).

The estimate is the unbiased MMD^2 (diagonals left out), so it scatters around 0 for two samples
of one distribution and can be slightly negative. The bandwidth h defaults to the median heuristic:
the median distance between distinct points of the pooled sample.
"""
from __future__ import annotations

import torch


def median_bandwidth(a: torch.Tensor, b: torch.Tensor) -> float:
    pooled = torch.cat([a, b]).double()
    d = torch.cdist(pooled, pooled)
    return float(d[torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)].median())


def mmd_rbf(a: torch.Tensor, b: torch.Tensor, bandwidth: float | None = None) -> tuple[float, float]:
    """(unbiased MMD^2, bandwidth used) between samples a (n, D) and b (m, D), n, m >= 2."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"mmd_rbf needs two (n, D) samples of one dimension, got {tuple(a.shape)} and {tuple(b.shape)}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("mmd_rbf needs at least 2 points in each sample")
    h = median_bandwidth(a, b) if bandwidth is None else float(bandwidth)
    if not h > 0:
        raise ValueError(f"bandwidth must be positive, got {h}")
    a, b = a.double(), b.double()
    kernel = lambda u, v: torch.exp(-torch.cdist(u, v).pow(2) / (2 * h * h))  # noqa: E731
    n, m = len(a), len(b)
    kaa, kbb, kab = kernel(a, a), kernel(b, b), kernel(a, b)
    mmd2 = ((kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1)) + (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
            - 2 * kab.mean())
    return float(mmd2), h
