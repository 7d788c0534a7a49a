"""The shared VAE: deterministic encode, explicit reparameterised sampling, the terms every
objective is made of, and the MLP / convolutional networks, optionally conditioned."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from core.config import ModelConfig
from core.model import VAE
from core.networks import DataShape
from core.registry import get_variant
from core.variant import Batch
from conftest import ALL_VARIANTS, NUM_CLASSES, VARIANT_OPTIONS

SHAPE = DataShape(1, 8, 8)


def _cfg(architecture="mlp", **kw):
    return ModelConfig(architecture=architecture, latent_dim=3, hidden_dims=[32], conv_channels=[4, 8], **kw)


def _variant(name, architecture="mlp", options=None, seed=0):
    torch.manual_seed(seed)
    cls = get_variant(name)
    opts = cls.Options.model_validate(VARIANT_OPTIONS[name] if options is None else options)
    return cls(_cfg(architecture), SHAPE, NUM_CLASSES, opts)


# -- 11. encode is deterministic; sampling is explicit --------------------------------------------

@pytest.mark.parametrize("architecture", ["mlp", "conv"])
@pytest.mark.parametrize("name,options", [(n, None) for n in ALL_VARIANTS] + [("cvae", {"condition": "quadrants"})],
                         ids=ALL_VARIANTS + ["cvae-quadrants"])
def test_encode_is_deterministic_and_draws_no_random_numbers(name, options, architecture, binary_batch, test_set):
    variant = _variant(name, architecture, options)
    x, y = binary_batch[:16], test_set.labels[:16]
    variant.train()  # even in training mode: encode never samples
    torch.manual_seed(0)
    rng_before = torch.get_rng_state()
    m1, lv1 = variant.encode(x, y)
    m2, lv2 = variant.encode(x, y)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.equal(m1, m2) and torch.equal(lv1, lv2)
    assert m1.shape == lv1.shape == (16, 3)
    # the mean is the posterior mean the objective uses (not a sample around it)
    if name in ("vae", "iwae", "dvae"):
        terms = variant.vae.terms(x, x, k=2)
        assert torch.equal(terms.mean, m1) and torch.equal(terms.logvar, lv1)


def test_sample_latent_is_reproducible_with_a_seeded_generator():
    mean = torch.tensor([[0.0, 1.0, -2.0], [3.0, 0.5, 0.0]])
    logvar = torch.tensor([[0.0, -1.0, 1.0], [0.5, -3.0, 2.0]])
    a = VAE.sample_latent(mean, logvar, 4, torch.Generator().manual_seed(5))
    b = VAE.sample_latent(mean, logvar, 4, torch.Generator().manual_seed(5))
    c = VAE.sample_latent(mean, logvar, 4, torch.Generator().manual_seed(6))
    assert a.shape == (4, 2, 3)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sample_latent_has_the_posterior_mean_and_variance():
    n = 100_000
    mean = torch.tensor([[0.0, 1.0, -2.0], [3.0, 0.5, 0.0]], dtype=torch.float64)
    logvar = torch.tensor([[0.0, -1.0, 1.0], [0.5, -3.0, 2.0]], dtype=torch.float64)
    z = VAE.sample_latent(mean, logvar, n, torch.Generator().manual_seed(1))
    var = logvar.exp()
    assert torch.all((z.mean(0) - mean).abs() < 5 * torch.sqrt(var / n))
    assert torch.all((z.var(0) - var).abs() < 5 * var * math.sqrt(2 / n))
    # independent dimensions: the sample correlation between two latent dims is ~0
    corr = torch.corrcoef(torch.stack([z[:, 0, 0], z[:, 0, 1]]))[0, 1]
    assert abs(corr.item()) < 5 / math.sqrt(n)


# -- terms: the pieces of every objective, against a hand computation ---------------------------

def test_terms_equal_a_reference_computation(binary_batch):
    torch.manual_seed(0)
    vae = VAE(_cfg(), SHAPE).double()
    x = binary_batch[:10].double()
    k = 3
    terms = vae.terms(x, x, k=k, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        mean, logvar = vae.encode(x)
        eps = torch.randn((k, 10, 3), generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        z = mean + (0.5 * logvar).exp() * eps
        logits = torch.stack([vae.decode(z[i]) for i in range(k)])
        log_px_z = Bernoulli(logits=logits).log_prob(x.expand_as(logits)).sum((-3, -2, -1))
        q = Normal(mean, (0.5 * logvar).exp())
        log_qz = q.log_prob(z).sum(-1)
        log_pz = Normal(0.0, 1.0).log_prob(z).sum(-1)
        kl = kl_divergence(q, Normal(torch.zeros_like(mean), torch.ones_like(mean))).sum(-1)
    for got, ref in [(terms.log_px_z, log_px_z), (terms.log_qz, log_qz), (terms.log_pz, log_pz), (terms.kl, kl),
                     (terms.log_w, log_px_z + log_pz - log_qz)]:
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref)


def test_terms_use_the_conditional_prior_when_there_is_one(binary_batch):
    torch.manual_seed(1)
    cond_dim = NUM_CLASSES
    vae = VAE(_cfg(), SHAPE, cond_dim=cond_dim, conditional_prior=True).double()
    x = binary_batch[:6].double()
    c = torch.nn.functional.one_hot(torch.arange(6) % cond_dim, cond_dim).double()
    terms = vae.terms(x, x, k=2, c=c, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        mean, logvar = vae.encode(x, c)
        pm, plv = vae.prior_params(c)
        eps = torch.randn((2, 6, 3), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        z = mean + (0.5 * logvar).exp() * eps
        prior = Normal(pm, (0.5 * plv).exp())
        post = Normal(mean, (0.5 * logvar).exp())
    torch.testing.assert_close(terms.log_pz, prior.log_prob(z).sum(-1))
    torch.testing.assert_close(terms.kl, kl_divergence(post, prior).sum(-1))
    assert not torch.allclose(terms.log_pz, Normal(0.0, 1.0).log_prob(z).sum(-1))


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
@pytest.mark.parametrize("likelihood,per_pixel", [("bernoulli", 1), ("gaussian", 2), ("gaussian_fixed", 1)])
@pytest.mark.parametrize("shape", [DataShape(1, 8, 8), DataShape(3, 7, 9)], ids=["1x8x8", "3x7x9"])
def test_decoder_output_shape_follows_the_data_and_broadcasts_over_k(architecture, likelihood, per_pixel, shape):
    torch.manual_seed(2)
    cond_dim = 5
    vae = VAE(_cfg(architecture, likelihood=likelihood), shape, cond_dim=cond_dim)
    z = torch.randn(4, 6, 3)
    c = torch.randn(6, cond_dim)
    out = vae.decode(z, c)
    assert out.shape == (4, 6, per_pixel * shape.channels, shape.height, shape.width)
    # The condition of example b goes with every sample of example b.
    for i in range(4):
        torch.testing.assert_close(out[i], vae.decode(z[i], c), rtol=1e-5, atol=1e-5)
    x = torch.rand(6, *shape.as_tuple())
    mean, logvar = vae.encode(x, c)
    assert mean.shape == logvar.shape == (6, 3)
    terms = vae.terms(x, x, k=4, c=c)
    assert terms.log_w.shape == (4, 6) and torch.isfinite(terms.log_w).all()


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_generate_gives_images_in_the_unit_interval(architecture):
    torch.manual_seed(3)
    vae = VAE(_cfg(architecture), SHAPE)
    a = vae.generate(5, generator=torch.Generator().manual_seed(0))
    b = vae.generate(5, generator=torch.Generator().manual_seed(0))
    assert a.shape == (5, 1, 8, 8) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    s = vae.generate(5, generator=torch.Generator().manual_seed(0), mean_image=False)
    assert set(s.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_reconstruct_decodes_the_posterior_mean(name, binary_batch, test_set):
    variant = _variant(name).eval()
    batch = Batch(binary_batch[:8], test_set.labels[:8])
    rec = variant.reconstruct(batch)
    assert rec.shape == (8, 1, 8, 8) and rec.min() >= 0 and rec.max() <= 1
    torch.testing.assert_close(variant.reconstruct(batch), rec, rtol=0, atol=0)  # deterministic
