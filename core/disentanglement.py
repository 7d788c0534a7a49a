"""Disentanglement metrics: posterior means against the ground-truth factors that made the data.

Pure torch/numpy over tensors; a caller encodes the data (posterior means) and passes the
FactorTable's codes or values (core.factors).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def histogram_discretize(latents: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """Each latent (column) into `num_bins` equal-width bins over its own range (ids 0..num_bins-1)."""
    out = np.zeros(latents.shape, dtype=np.int64)
    for j in range(latents.shape[1]):
        edges = np.histogram(latents[:, j], num_bins)[1]
        out[:, j] = np.digitize(latents[:, j], edges[1:-1])  # interior edges: the maximum lands in the last bin
    return out


def discrete_mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    """I(a; b) in nats of two integer-labelled samples, from their joint histogram."""
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a.reshape(-1), b.reshape(-1)), 1)
    joint /= joint.sum()
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])))


@dataclass
class MIGResult:
    mig: float                      # mean over factors with entropy > 0
    per_factor: list[float]         # (I(z_top; v) - I(z_second; v)) / H(v)
    mutual_info: np.ndarray         # (latents, factors) in nats
    entropy: np.ndarray             # (factors,) in nats
    top_latent: list[int]           # per factor, the latent that shares most information with it


def mutual_information_gap(latents: torch.Tensor | np.ndarray, factor_codes: torch.Tensor | np.ndarray,
                           num_bins: int = 20) -> MIGResult:
    """The Mutual Information Gap (Chen, Li, Grosse, Duvenaud 2018, "Isolating Sources of
    Disentanglement in Variational Autoencoders", eq. 6), as disentanglement_lib computes it
    (google-research/disentanglement_lib, evaluation/metrics/mig.py, `_compute_mig`):

    each latent is discretised into `num_bins` equal-width histogram bins (20 there); the discrete
    mutual information I(z_j; v_k) is taken with each (discrete) factor v_k; per factor, the gap
    between the largest and second-largest I over latents is divided by the factor's entropy
    H(v_k) = I(v_k; v_k); MIG is the mean over factors. 1: each factor lives in one latent alone;
    0: no latent knows a factor better than another.

    latents: (N, D) posterior means, D >= 2. factor_codes: (N, F) integer codes (FactorTable.codes).
    A factor constant over the sample (entropy 0) gets NaN and is left out of the mean.
    """
    z = _as_numpy(latents).astype(np.float64)
    v = _as_numpy(factor_codes)
    if z.ndim != 2 or v.ndim != 2 or z.shape[0] != v.shape[0]:
        raise ValueError(f"MIG needs latents (N, D) and factors (N, F) of one N, got {z.shape} and {v.shape}")
    if z.shape[1] < 2:
        raise ValueError("MIG compares the top two latents: it needs at least 2 latent dimensions")
    if not np.isfinite(z).all():
        raise ValueError("MIG: latents hold NaN or Inf")
    zd = histogram_discretize(z, num_bins)
    mi = np.array([[discrete_mutual_info(zd[:, j], v[:, k]) for k in range(v.shape[1])] for j in range(z.shape[1])])
    entropy = np.array([discrete_mutual_info(v[:, k], v[:, k]) for k in range(v.shape[1])])
    top = np.sort(mi, axis=0)[::-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        per = np.where(entropy > 0, (top[0] - top[1]) / entropy, np.nan)
    valid = per[~np.isnan(per)]
    return MIGResult(float(valid.mean()) if valid.size else float("nan"), per.tolist(), mi, entropy,
                     np.argmax(mi, axis=0).tolist())


def _split(n: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if n < 4:
        raise ValueError(f"explained variance needs at least 4 rows to fit and score, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = min(max(1, round(n * test_fraction)), n - 2)
    return perm[n_test:], perm[:n_test]


def held_out_r2(features: torch.Tensor, target: torch.Tensor, train: torch.Tensor, test: torch.Tensor) -> float:
    """R^2 on the `test` rows of a least-squares linear fit (with intercept) on the `train` rows:
    1 - SSE / SST with SST around the test rows' mean (so a useless fit scores about 0, or below)."""
    x = features.double()
    x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    y = target.double().reshape(-1, 1)
    coef = torch.linalg.lstsq(x[train], y[train], driver="gelsd").solution
    resid = y[test] - x[test] @ coef
    sst = (y[test] - y[test].mean()).square().sum()
    if sst == 0:
        return float("nan")  # the factor does not vary on the held-out rows
    return float(1 - resid.square().sum() / sst)


def explained_variance_by_group(latents: torch.Tensor, factor_values: torch.Tensor, factor_names: list[str] | tuple[str, ...],
                                groups: dict[str, list[int]], test_fraction: float = 0.2,
                                seed: int = 0) -> dict[str, float]:
    """DC-IGN's check (Kulkarni et al. 2015): for each factor with an assigned latent group, the
    share of its variance that the group alone explains, as the held-out R^2 of a linear regressor
    from the group's latents to the factor's value (fitted on a seeded (1 - test_fraction) split).

    groups: factor name -> latent dimensions. Linear on the raw value: a circular factor
    (orientation) or a categorical one (shape) can be under-rated by a linear read-out.
    """
    z, values = torch.as_tensor(latents), torch.as_tensor(factor_values)
    if z.ndim != 2 or values.ndim != 2 or z.shape[0] != values.shape[0] or values.shape[1] != len(factor_names):
        raise ValueError(f"latents (N, D) and factor values (N, {len(factor_names)}) expected, got "
                         f"{tuple(z.shape)} and {tuple(values.shape)}")
    train, test = _split(z.shape[0], test_fraction, seed)
    result = {}
    for name, dims in groups.items():
        if name not in factor_names:
            raise ValueError(f"latent group {name!r} names no factor; the factors are {', '.join(factor_names)}")
        if not dims or min(dims) < 0 or max(dims) >= z.shape[1]:
            raise ValueError(f"latent group {name!r}: dimensions {dims} are not within 0..{z.shape[1] - 1}")
        result[name] = held_out_r2(z[:, list(dims)], values[:, list(factor_names).index(name)], train, test)
    return result


def best_single_latent(latents: torch.Tensor, factor_values: torch.Tensor, factor_names: list[str] | tuple[str, ...],
                       test_fraction: float = 0.2, seed: int = 0) -> dict[str, tuple[int, float]]:
    """For a model without latent groups: per factor, the single latent whose linear fit explains
    most of its held-out variance, as (latent index, R^2), on the same split as the group check."""
    z, values = torch.as_tensor(latents), torch.as_tensor(factor_values)
    if z.ndim != 2 or values.ndim != 2 or z.shape[0] != values.shape[0] or values.shape[1] != len(factor_names):
        raise ValueError(f"latents (N, D) and factor values (N, {len(factor_names)}) expected, got "
                         f"{tuple(z.shape)} and {tuple(values.shape)}")
    train, test = _split(z.shape[0], test_fraction, seed)
    result = {}
    for k, name in enumerate(factor_names):
        scores = [held_out_r2(z[:, [j]], values[:, k], train, test) for j in range(z.shape[1])]
        best = int(np.nanargmax(scores)) if not np.all(np.isnan(scores)) else 0
        result[name] = (best, scores[best])
    return result
