"""Disentanglement metrics (core.disentanglement) on latents whose answer is known by construction."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.disentanglement import (
    best_single_latent,
    discrete_mutual_info,
    explained_variance_by_group,
    histogram_discretize,
    mutual_information_gap,
)

N = 6000


@pytest.fixture(scope="module")
def factors():
    """Three independent discrete factors with 4, 6 and 10 values."""
    gen = torch.Generator().manual_seed(0)
    return torch.stack([torch.randint(n, (N,), generator=gen) for n in (4, 6, 10)], dim=1)


def test_discrete_mutual_info_matches_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 8, 100_000)
    assert discrete_mutual_info(a, a) == pytest.approx(math.log(8), abs=1e-3)   # H of a uniform 8-way variable
    assert discrete_mutual_info(a, rng.integers(0, 8, 100_000)) == pytest.approx(0, abs=2e-3)
    assert discrete_mutual_info(a, a // 2) == pytest.approx(math.log(4), abs=1e-3)  # I(a; f(a)) = H(f(a))


def test_histogram_discretize_uses_equal_width_bins_over_each_latent():
    z = np.stack([np.linspace(0, 1, 21), np.linspace(-5, 15, 21)], 1)
    bins = histogram_discretize(z, num_bins=4)
    assert bins.min() == 0 and bins.max() == 3
    assert np.array_equal(bins[:, 0], bins[:, 1])  # the same relative positions, the same bins
    assert np.bincount(bins[:, 0]).tolist() == [5, 5, 5, 6]  # numpy's last bin is closed


def test_mig_is_one_when_each_latent_copies_one_factor(factors):
    noise = torch.randn(N, 3, generator=torch.Generator().manual_seed(1)) * 0.01
    latents = torch.cat([factors.float() * torch.tensor([1.0, -2.0, 0.5]) + noise,
                         torch.randn(N, 2, generator=torch.Generator().manual_seed(2))], dim=1)  # plus 2 noise dims
    result = mutual_information_gap(latents, factors)
    assert result.mig == pytest.approx(1.0, abs=0.02)
    assert result.top_latent == [0, 1, 2]
    assert np.allclose(result.entropy, [math.log(4), math.log(6), math.log(10)], atol=0.01)


def test_mig_is_near_zero_when_every_latent_mixes_the_factors(factors):
    # each latent holds all three factors with the same weights (up to sign): none stands out for any
    standardised = (factors.float() - factors.float().mean(0)) / factors.float().std(0)
    mix = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, -1.0], [1.0, -1.0, 1.0], [-1.0, 1.0, 1.0]])
    result = mutual_information_gap(standardised @ mix.T, factors)
    assert result.mig < 0.05


def test_mig_is_zero_for_noise_and_for_duplicated_latents(factors):
    noise = torch.randn(N, 5, generator=torch.Generator().manual_seed(3))
    assert mutual_information_gap(noise, factors).mig < 0.02
    # two copies of one factor: it is captured, but not by one latent alone: the gap is 0
    copy = factors[:, :1].float()
    result = mutual_information_gap(torch.cat([copy, copy, noise], 1), factors)
    assert result.per_factor[0] == pytest.approx(0.0, abs=1e-9)


def test_mig_rejects_bad_input(factors):
    with pytest.raises(ValueError, match="at least 2 latent"):
        mutual_information_gap(torch.randn(N, 1), factors)
    with pytest.raises(ValueError, match="one N"):
        mutual_information_gap(torch.randn(N - 1, 3), factors)
    with pytest.raises(ValueError, match="NaN"):
        mutual_information_gap(torch.full((N, 3), float("nan")), factors)


def test_explained_variance_is_one_for_a_linear_group_and_zero_for_an_independent_one(factors):
    gen = torch.Generator().manual_seed(4)
    values = factors.double() * torch.tensor([0.1, 1.0, 36.0], dtype=torch.float64)
    names = ("a", "b", "c")
    # latents 0-1: a linear function of factor a; latents 2-3: of factor b, plus a little noise;
    # latents 4-5: noise, assigned to factor c
    z = torch.cat([values[:, :1] @ torch.tensor([[2.0, -1.0]], dtype=torch.float64),
                   values[:, 1:2] @ torch.tensor([[0.5, 3.0]], dtype=torch.float64)
                   + 0.01 * torch.randn(N, 2, generator=gen, dtype=torch.float64),
                   torch.randn(N, 2, generator=gen, dtype=torch.float64)], dim=1)
    r2 = explained_variance_by_group(z, values, names, {"a": [0, 1], "b": [2, 3], "c": [4, 5]})
    assert r2["a"] == pytest.approx(1.0, abs=1e-9)
    assert r2["b"] == pytest.approx(1.0, abs=1e-3)
    assert abs(r2["c"]) < 0.01
    # the wrong group for a factor explains none of it
    assert abs(explained_variance_by_group(z, values, names, {"a": [2, 3]})["a"]) < 0.01
    # best single latent: factor a in latent 0 or 1 (both exact), b in 2 or 3, c nowhere
    best = best_single_latent(z, values, names)
    assert best["a"][0] in (0, 1) and best["a"][1] == pytest.approx(1.0, abs=1e-9)
    assert best["b"][0] in (2, 3) and best["b"][1] == pytest.approx(1.0, abs=1e-3)
    assert best["c"][1] < 0.01


def test_explained_variance_is_scored_on_held_out_rows():
    """A regressor with as many inputs as training rows fits the training rows exactly; held out
    on pure noise it must score about 0 or below, never the training fit's 1."""
    gen = torch.Generator().manual_seed(5)
    n = 50
    z = torch.randn(n, 39, generator=gen, dtype=torch.float64)
    target = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    r2 = explained_variance_by_group(z, target, ("t",), {"t": list(range(39))}, test_fraction=0.2)
    assert r2["t"] < 0.2


def test_explained_variance_rejects_bad_groups(factors):
    z = torch.randn(N, 4)
    with pytest.raises(ValueError, match="names no factor"):
        explained_variance_by_group(z, factors.float(), ("a", "b", "c"), {"d": [0]})
    with pytest.raises(ValueError, match="not within 0..3"):
        explained_variance_by_group(z, factors.float(), ("a", "b", "c"), {"a": [4]})
