"""Observation models p(x|z) against torch.distributions: log-probabilities summed over (C, H, W),
masks, broadcasting over a leading sample dimension, means and samples."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli as TorchBernoulli
from torch.distributions import Normal

from core.config import ModelConfig
from core.likelihoods import Bernoulli, GaussianFixedVariance, GaussianLearnedVariance, make_likelihood

B, C, H, W = 3, 2, 4, 5


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _binary(shape, seed):
    return torch.bernoulli(torch.full(shape, 0.4), generator=_gen(seed))


def test_bernoulli_log_prob_equals_torch_bernoulli():
    logits = torch.randn(B, C, H, W, generator=_gen(0), dtype=torch.float64) * 4
    x = _binary((B, C, H, W), 1).double()
    ref = TorchBernoulli(logits=logits).log_prob(x).sum((-3, -2, -1))
    got = Bernoulli().log_prob(logits, x)
    assert got.shape == (B,)
    torch.testing.assert_close(got, ref)


def test_bernoulli_is_stable_for_extreme_logits():
    logits = torch.tensor([[[[80.0, -80.0]]]])
    x = torch.tensor([[[[1.0, 0.0]]]])
    got = Bernoulli().log_prob(logits, x)
    assert torch.isfinite(got).all() and got.item() == pytest.approx(0.0, abs=1e-6)
    wrong = Bernoulli().log_prob(logits, 1 - x)
    assert wrong.item() == pytest.approx(-160.0, rel=1e-6)


def test_gaussian_learned_variance_log_prob_equals_torch_normal():
    lik = GaussianLearnedVariance()
    params = torch.randn(B, 2 * C, H, W, generator=_gen(2), dtype=torch.float64)
    x = torch.rand(B, C, H, W, generator=_gen(3), dtype=torch.float64)
    mean, logvar = lik.split(params)
    assert mean.shape == logvar.shape == (B, C, H, W)
    torch.testing.assert_close(mean, params[:, :C])  # the first C channels are the mean
    ref = Normal(mean, torch.exp(0.5 * logvar)).log_prob(x).sum((-3, -2, -1))
    torch.testing.assert_close(lik.log_prob(params, x), ref)
    torch.testing.assert_close(lik.mean(params), mean)


def test_gaussian_learned_variance_is_bounded_below():
    lik = GaussianLearnedVariance()
    raw = torch.tensor([-1000.0, -50.0, 0.0, 3.0]).view(1, 4, 1, 1)
    params = torch.cat([torch.zeros_like(raw), raw], dim=1)
    _, logvar = lik.split(params)
    assert torch.all(logvar >= lik.min_logvar - 1e-6)
    assert logvar.flatten()[0].item() == pytest.approx(lik.min_logvar, abs=1e-6)
    assert logvar.flatten()[-1].item() == pytest.approx(3.0, abs=1e-3)  # far above the floor: the raw value
    # A pixel predicted exactly never gets an infinite log-likelihood.
    assert torch.isfinite(lik.log_prob(params, torch.zeros(1, 4, 1, 1))).all()


@pytest.mark.parametrize("sigma", [1.0, 0.1, 2.5])
def test_gaussian_fixed_variance_log_prob_equals_torch_normal(sigma):
    lik = GaussianFixedVariance(sigma)
    mean = torch.randn(B, C, H, W, generator=_gen(4), dtype=torch.float64)
    x = torch.rand(B, C, H, W, generator=_gen(5), dtype=torch.float64)
    ref = Normal(mean, sigma).log_prob(x).sum((-3, -2, -1))
    torch.testing.assert_close(lik.log_prob(mean, x), ref)


def test_gaussian_fixed_variance_with_unit_sigma_is_half_squared_error_plus_constant():
    lik = GaussianFixedVariance(1.0)
    mean = torch.randn(B, C, H, W, generator=_gen(6), dtype=torch.float64)
    x = torch.rand(B, C, H, W, generator=_gen(7), dtype=torch.float64)
    d = C * H * W
    expected = -0.5 * ((x - mean) ** 2).sum((-3, -2, -1)) - 0.5 * d * math.log(2 * math.pi)
    torch.testing.assert_close(lik.log_prob(mean, x), expected)


def _cases():
    yield Bernoulli(), 1, lambda p, x: TorchBernoulli(logits=p).log_prob(x.expand_as(p))
    lik = GaussianLearnedVariance()
    yield lik, 2, lambda p, x: Normal(lik.split(p)[0], torch.exp(0.5 * lik.split(p)[1])).log_prob(x)
    yield GaussianFixedVariance(0.5), 1, lambda p, x: Normal(p, 0.5).log_prob(x)


@pytest.mark.parametrize("case", list(_cases()), ids=["bernoulli", "gaussian", "gaussian_fixed"])
def test_mask_sums_only_masked_pixels(case):
    lik, per_pixel, elementwise_ref = case
    params = torch.randn(B, per_pixel * C, H, W, generator=_gen(8), dtype=torch.float64)
    x = _binary((B, C, H, W), 9).double()
    mask = torch.zeros(1, C, H, W, dtype=torch.float64)
    mask[..., :2, :3] = 1.0  # a corner of every channel
    ref = (elementwise_ref(params, x) * mask).sum((-3, -2, -1))
    got = lik.log_prob(params, x, mask)
    torch.testing.assert_close(got, ref)
    # Masked and unmasked parts add up to the whole.
    torch.testing.assert_close(got + lik.log_prob(params, x, 1.0 - mask), lik.log_prob(params, x))
    # An all-zero mask scores nothing.
    assert torch.all(lik.log_prob(params, x, torch.zeros_like(mask)) == 0)


@pytest.mark.parametrize("case", list(_cases()), ids=["bernoulli", "gaussian", "gaussian_fixed"])
def test_log_prob_broadcasts_over_a_leading_sample_dim(case):
    lik, per_pixel, elementwise_ref = case
    k = 4
    params = torch.randn(k, B, per_pixel * C, H, W, generator=_gen(10), dtype=torch.float64)
    x = _binary((B, C, H, W), 11).double()
    got = lik.log_prob(params, x)
    assert got.shape == (k, B)
    for i in range(k):
        torch.testing.assert_close(got[i], lik.log_prob(params[i], x))
        torch.testing.assert_close(got[i], elementwise_ref(params[i], x).sum((-3, -2, -1)))
    mask = torch.zeros(1, C, H, W, dtype=torch.float64)
    mask[:, 0] = 1.0  # first channel only
    masked = lik.log_prob(params, x, mask)
    assert masked.shape == (k, B)
    torch.testing.assert_close(masked[2], lik.log_prob(params[2], x, mask))


def test_samples_have_the_right_statistics():
    n = 20_000
    logits = torch.tensor([-2.0, 0.0, 1.5]).view(1, 3, 1, 1).expand(n, 3, 1, 1)
    s = Bernoulli().sample(logits, generator=_gen(12))
    assert set(s.unique().tolist()) <= {0.0, 1.0}
    p = torch.sigmoid(torch.tensor([-2.0, 0.0, 1.5]))
    se = torch.sqrt(p * (1 - p) / n)
    assert torch.all((s.mean(0).flatten() - p).abs() < 5 * se)
    torch.testing.assert_close(Bernoulli().mean(logits[:1]).flatten(), p)

    lik = GaussianLearnedVariance()
    params = torch.tensor([0.5, math.log(4.0)]).view(1, 2, 1, 1).expand(n, 2, 1, 1)  # mean 0.5, var ~4
    g = lik.sample(params, generator=_gen(13))
    _, logvar = lik.split(params[:1])
    var = logvar.exp().item()
    assert abs(g.mean().item() - 0.5) < 5 * math.sqrt(var / n)
    assert abs(g.var().item() - var) < 5 * var * math.sqrt(2 / n)

    f = GaussianFixedVariance(0.3).sample(torch.zeros(n, 1, 1, 1), generator=_gen(14))
    assert abs(f.std().item() - 0.3) < 5 * 0.3 / math.sqrt(2 * n)
    # Seeded sampling is reproducible.
    torch.testing.assert_close(Bernoulli().sample(logits, generator=_gen(12)), s)


@pytest.mark.parametrize("name,cls,per_pixel", [("bernoulli", Bernoulli, 1), ("gaussian", GaussianLearnedVariance, 2),
                                                ("gaussian_fixed", GaussianFixedVariance, 1)])
def test_make_likelihood_follows_the_config(name, cls, per_pixel):
    lik = make_likelihood(ModelConfig(likelihood=name, fixed_sigma=0.7))
    assert isinstance(lik, cls) and lik.params_per_pixel == per_pixel
    if name == "gaussian_fixed":
        assert lik.sigma == 0.7


@pytest.mark.parametrize("k", [None, 3])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bernoulli_fast_path_matches_bce(k, masked, dtype):
    """Bernoulli.log_prob's fused autograd Function gives exactly the gradients of
    -binary_cross_entropy_with_logits summed over pixels (the plain autograd path), and its values
    to rounding: within 8 ulps of the float64 value (the BCE path's own error is of that size)."""
    lead = (B,) if k is None else (k, B)
    logits = (torch.randn(*lead, C, H, W, generator=_gen(20), dtype=dtype) * 6)
    logits.view(-1)[:4] = torch.tensor([90.0, -90.0, 1e-9, 0.0], dtype=dtype)  # saturated and tiny logits
    x = _binary((B, C, H, W), 21).to(dtype)
    mask = None
    if masked:
        mask = torch.zeros(1, C, H, W, dtype=dtype)
        mask[..., 1:, 2:] = 1.0
    weights = torch.randn(lead, generator=_gen(22), dtype=dtype)
    results = []
    for log_prob in (Bernoulli().log_prob, super(Bernoulli, Bernoulli()).log_prob):
        leaf = logits.clone().requires_grad_()
        value = log_prob(leaf, x, mask)
        (value * weights).sum().backward()
        results.append((value.detach(), leaf.grad))
    (fast, fast_grad), (ref, ref_grad) = results
    assert fast.shape == lead
    assert torch.equal(fast_grad, ref_grad)
    exact = super(Bernoulli, Bernoulli()).log_prob(logits.double(), x.double(), None if mask is None else mask.double())
    for value in (fast, ref):
        torch.testing.assert_close(value.double(), exact, rtol=8 * torch.finfo(dtype).eps, atol=0)
    with torch.no_grad():
        assert torch.equal(Bernoulli().log_prob(logits, x, mask), fast)
