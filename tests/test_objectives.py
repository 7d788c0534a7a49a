"""Objectives as functions of log-weights: ELBO, IWAE bound, analytic KL, enumerated ELBO, the
importance-sampled log-likelihood, active units."""
from __future__ import annotations

import math

import pytest
import torch

from core.evaluation import active_units
from core.model import VAE
from core.objectives import (
    elbo_analytic,
    enumerated_elbo,
    estimate_log_likelihood,
    gaussian_kl,
    gaussian_log_prob,
    iwae_bound,
)


# -- 1a. IWAE with k=1 is the ELBO -----------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 7, 64])
def test_iwae_bound_with_one_sample_equals_monte_carlo_elbo(batch):
    gen = torch.Generator().manual_seed(batch)
    log_w = torch.randn(1, batch, generator=gen) * 30 - 100
    assert iwae_bound(log_w).shape == (batch,)
    torch.testing.assert_close(iwae_bound(log_w), log_w.mean(0), rtol=0, atol=1e-5)
    torch.testing.assert_close(iwae_bound(log_w), log_w[0], rtol=0, atol=1e-5)


def test_iwae_bound_matches_reference_and_is_stable_for_large_weights():
    gen = torch.Generator().manual_seed(0)
    log_w = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    expected = torch.log(log_w.exp().mean(0))
    torch.testing.assert_close(iwae_bound(log_w), expected)
    # Shifting all log-weights by a constant shifts the bound by it: no overflow at -2000 nats.
    torch.testing.assert_close(iwae_bound(log_w - 2000.0), expected - 2000.0)
    # Equal weights: the bound is that weight whatever k is (the -log k term is there).
    torch.testing.assert_close(iwae_bound(torch.full((50, 2), -3.0)), torch.full((2,), -3.0))


def test_iwae_bound_is_at_least_the_mean_log_weight_and_at_most_the_max():
    gen = torch.Generator().manual_seed(1)
    log_w = torch.randn(20, 100, generator=gen, dtype=torch.float64) * 5
    bound = iwae_bound(log_w)
    assert torch.all(bound >= log_w.mean(0) - 1e-12)  # Jensen, per example
    assert torch.all(bound <= log_w.max(0).values + 1e-12)


def test_elbo_analytic_is_mean_reconstruction_minus_kl():
    log_px_z = torch.tensor([[-10.0, -20.0], [-12.0, -22.0]])
    kl = torch.tensor([1.5, 2.5])
    torch.testing.assert_close(elbo_analytic(log_px_z, kl), torch.tensor([-12.5, -23.5]))


# -- 3. Analytic KL against a large-sample Monte-Carlo KL ----------------------------------------

def _mc_kl(mean, logvar, prior_mean=None, prior_logvar=None, n=200_000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = VAE.sample_latent(mean, logvar, n, gen)  # (n, B, D)
    log_q = gaussian_log_prob(z, mean, logvar)
    log_p = gaussian_log_prob(z) if prior_mean is None else gaussian_log_prob(z, prior_mean, prior_logvar)
    diff = log_q - log_p  # (n, B)
    return diff.mean(0), diff.std(0) / math.sqrt(n)


def test_analytic_kl_to_unit_prior_equals_monte_carlo_kl():
    mean = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5], [0.3, 0.1, -1.2]], dtype=torch.float64)
    logvar = torch.tensor([[0.0, 0.0, 0.0], [-1.0, 0.5, -0.2], [-2.0, 1.0, 0.0]], dtype=torch.float64)
    analytic = gaussian_kl(mean, logvar)
    assert analytic.shape == (3,)
    assert analytic[0].item() == 0.0  # q equal to the prior
    mc, se = _mc_kl(mean, logvar)
    assert torch.all((analytic - mc).abs() <= 5 * se + 1e-9), (analytic, mc, se)
    # and the closed form by hand for one dimension: 0.5 (mu^2 + s^2 - 1 - log s^2)
    torch.testing.assert_close(gaussian_kl(mean[1:2, :1], logvar[1:2, :1]),
                               torch.tensor([0.5 * (1.0 + math.exp(-1.0) - 1.0 + 1.0)], dtype=torch.float64))


def test_analytic_kl_to_non_unit_prior_equals_monte_carlo_kl():
    mean = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]], dtype=torch.float64)
    logvar = torch.tensor([[-1.0, 0.5, -0.2], [0.3, 0.3, 0.3]], dtype=torch.float64)
    prior_mean = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    prior_logvar = torch.tensor([[0.7, -0.5, 1.0], [0.3, 0.3, 0.3]], dtype=torch.float64)
    analytic = gaussian_kl(mean, logvar, prior_mean, prior_logvar)
    assert analytic[1].item() == pytest.approx(0.0, abs=1e-12)  # q equal to the prior
    mc, se = _mc_kl(mean, logvar, prior_mean, prior_logvar, seed=1)
    assert torch.all((analytic - mc).abs() <= 5 * se + 1e-9), (analytic, mc, se)
    # The general formula with a unit prior given explicitly equals the unit-prior shortcut.
    torch.testing.assert_close(gaussian_kl(mean, logvar, torch.zeros_like(mean), torch.zeros_like(logvar)),
                               gaussian_kl(mean, logvar))
    # and torch.distributions agrees
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(prior_mean, (0.5 * prior_logvar).exp())
    torch.testing.assert_close(analytic, torch.distributions.kl_divergence(q, p).sum(-1))


def test_gaussian_log_prob_equals_torch_distributions():
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(4, 5, 3, generator=gen, dtype=torch.float64)
    mean = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    logvar = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    ref = torch.distributions.Normal(mean, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(z, mean, logvar), ref)
    unit = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(z), unit)


# -- enumerated ELBO and the importance-sampled log-likelihood ------------------------------------

def test_enumerated_elbo_equals_explicit_sum_over_labels():
    gen = torch.Generator().manual_seed(3)
    elbo_y = torch.randn(4, 6, generator=gen, dtype=torch.float64) * 10 - 50
    log_qy = torch.log_softmax(torch.randn(4, 6, generator=gen, dtype=torch.float64), dim=0)
    expected = torch.zeros(6, dtype=torch.float64)
    for b in range(6):
        for y in range(4):
            q = math.exp(log_qy[y, b].item())
            expected[b] += q * elbo_y[y, b].item() - q * log_qy[y, b].item()
    torch.testing.assert_close(enumerated_elbo(elbo_y, log_qy), expected)
    # The bound is maximised by q(y) proportional to exp ELBO_y, where it equals logsumexp_y ELBO_y.
    assert torch.all(enumerated_elbo(elbo_y, log_qy) <= torch.logsumexp(elbo_y, 0) + 1e-9)
    torch.testing.assert_close(enumerated_elbo(elbo_y, torch.log_softmax(elbo_y, 0)), torch.logsumexp(elbo_y, 0))


def test_enumerated_elbo_with_a_certain_label_is_that_labels_elbo():
    # q(y|x) one-hot: labels with q = 0 contribute nothing (0 log 0 = 0), so the bound is ELBO(x, y=0).
    elbo_y = torch.tensor([[-52.0, -10.0], [-40.0, -11.0], [-60.0, -12.0]], dtype=torch.float64)
    log_qy = torch.log(torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(enumerated_elbo(elbo_y, log_qy), torch.tensor([-52.0, -10.0], dtype=torch.float64))


def test_enumerated_elbo_gradient_is_finite_when_a_label_probability_underflows():
    # Logits 120 apart: float32's softmax gives q = 0 exactly for the other labels. The true
    # gradient is finite (q log q -> 0); xlogy's own backward gave NaN for every logit, which
    # diverged M2 and M1+M2 training one step after a finite loss.
    elbo_y = torch.tensor([[-5.0, -7.0], [-6.0, -9.0], [-4.0, -8.0]])
    logits = torch.tensor([[0.0, 1.0], [120.0, 0.5], [3.0, -0.2]], requires_grad=True)
    value = enumerated_elbo(elbo_y, torch.log_softmax(logits, 0))
    assert (torch.log_softmax(logits, 0).exp()[:, 0] == torch.tensor([0.0, 1.0, 0.0])).all()
    value.sum().backward()
    wide = logits.detach().double().requires_grad_(True)  # float64: no underflow at this gap
    enumerated_elbo(elbo_y.double(), torch.log_softmax(wide, 0)).sum().backward()
    assert torch.isfinite(logits.grad).all()
    torch.testing.assert_close(logits.grad, wide.grad.float(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(value[0], torch.tensor(-6.0))  # example 0's label is certain: its ELBO


@pytest.mark.parametrize("chunk_size", [1, 7, 300, 1000])
def test_estimate_log_likelihood_streams_chunks_exactly(chunk_size):
    gen = torch.Generator().manual_seed(4)
    all_log_w = torch.randn(1000, 5, generator=gen, dtype=torch.float64) * 3 - 80
    served = []

    def log_weights(n):
        start = sum(served)
        served.append(n)
        return all_log_w[start:start + n]

    est = estimate_log_likelihood(log_weights, 1000, chunk_size=chunk_size)
    assert sum(served) == 1000 and max(served) <= chunk_size
    torch.testing.assert_close(est, iwae_bound(all_log_w))


def test_estimate_log_likelihood_with_an_enumerated_variable_divides_by_samples_not_rows():
    # m2-style: log_weights(n) returns (Y*n, B) rows whose weights already carry log p(y).
    # With w = p(y) for every row, p(x) = sum_y p(y) * mean_over_samples(1) = 1 exactly.
    num_y = 4

    def log_weights(n):
        return torch.full((num_y * n, 3), -math.log(num_y), dtype=torch.float64)

    est = estimate_log_likelihood(log_weights, 250, chunk_size=60)
    torch.testing.assert_close(est, torch.zeros(3, dtype=torch.float64))


def test_active_units_counts_dimensions_whose_mean_varies():
    gen = torch.Generator().manual_seed(5)
    n = 1000
    means = torch.stack([torch.randn(n, generator=gen),           # variance 1: active
                         0.01 * torch.randn(n, generator=gen),    # variance 1e-4: inactive
                         torch.full((n,), 3.0),                   # constant: inactive
                         0.5 * torch.randn(n, generator=gen)], 1)  # variance 0.25: active
    sums = (torch.tensor(float(n), dtype=torch.float64), means.double().sum(0), means.double().pow(2).sum(0))
    assert active_units(*sums) == int((means.double().var(0) > 0.01).sum()) == 2
    assert active_units(*sums, threshold=0.5) == 1


# -- 2. The IWAE bound grows with k on a trained model ------------------------------------------

def _expected_bound(vae, x, k, groups, seed):
    """Per example, the mean over `groups` independent draws of the k-sample bound: an unbiased
    estimate of E[bound_k(x)]. Each k gets its own fresh samples, so the ordering is not Jensen's
    inequality by construction (as it would be for nested subsets of one draw)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        draws = [iwae_bound(vae.terms(x, x, k=k, generator=gen).log_w.double()) for _ in range(groups)]
    return torch.stack(draws).mean(0)  # (B,)


def _paired(a, b):
    d = b - a
    return d.mean().item(), (d.std() / math.sqrt(len(d))).item()


def test_iwae_bound_grows_with_k_on_a_trained_model(trained, test_set):
    run = trained("vae")
    x = torch.bernoulli(test_set.images.float().div(255).repeat(4, 1, 1, 1),
                        generator=torch.Generator().manual_seed(7))  # 512 examples
    b1 = _expected_bound(run.variant.vae, x, 1, 100, seed=11)
    b5 = _expected_bound(run.variant.vae, x, 5, 40, seed=12)
    b50 = _expected_bound(run.variant.vae, x, 50, 8, seed=13)
    assert b1.mean() < b5.mean() < b50.mean(), (b1.mean(), b5.mean(), b50.mean())
    # The gaps stand clear of the Monte-Carlo noise (paired over the same examples).
    gap, se = _paired(b1, b5)
    assert gap > 4 * se, (gap, se)
    gap, se = _paired(b5, b50)
    assert gap > 4 * se, (gap, se)
