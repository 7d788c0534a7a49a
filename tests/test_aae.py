"""The adversarial autoencoder (variants/aae.py) and the sample-based measures it is judged by
(core/parzen.py, core/mmd.py, core/priors.py)."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import make_dataset, small_config
from core.config import RunConfig
from core.data import PreparedData, prepare_split, to_float
from core.evaluation import evaluate
from core.mmd import mmd_rbf
from core.parzen import parzen_evaluate, parzen_log_likelihood
from core.priors import GaussianMixtureCircle, make_prior
from core.serialization import build_variant
from core.training import train
from core.variant import Batch
from variants.aae import AdversarialAutoencoder

SEMI = {"semi_supervised_labels": 40, "labelled_batch_size": 16}


def aae_config(options: dict | None = None, epochs: int = 1, **train_options) -> RunConfig:
    config = small_config("vae", epochs=epochs, **train_options)
    raw = config.to_dict()
    raw.pop("objective", None)
    return RunConfig.from_dict(raw | {"variant_name": "aae", "variant": options or {}})


@pytest.fixture(scope="module")
def small_data() -> PreparedData:
    return PreparedData(make_dataset(96, 0), prepare_split(make_dataset(32, 1), "dynamic", "test"), True)


def state(variant) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in variant.state_dict().items()}


# -- phases --------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, phase", [
    ({}, "reconstruction"), ({}, "discriminator"), ({}, "generator"),
    ({"encoder": "gaussian", "prior": "mixture", "label_conditioned_prior": True}, "discriminator"),
    ({"encoder": "gaussian", "prior": "mixture", "label_conditioned_prior": True}, "generator"),
    (SEMI, "reconstruction"), (SEMI, "discriminator"), (SEMI, "generator"), (SEMI, "supervised"),
])
def test_each_phase_steps_only_its_own_parameters(options, phase, small_data, monkeypatch):
    """The real trainer, told to run only `phase`: after an epoch of it, the parameters of that
    phase's optimiser moved and every other parameter is bit-identical to its initial value."""
    config = aae_config(options)
    torch.manual_seed(config.train.seed)  # the trainer's initial weights
    initial = build_variant(config, small_data.shape, small_data.num_classes)
    before = state(initial)
    own = {id(p) for p in initial.configure_optimizers(config.train)[phase].param_groups[0]["params"]}
    own_names = {n for n, p in initial.named_parameters() if id(p) in own}
    assert own_names and own_names != set(before)

    monkeypatch.setattr(AdversarialAutoencoder, "phases", ((phase,),))
    trained = train(config, report=lambda m, c: None, data=small_data)
    after = state(trained)
    for name in before:
        if name in own_names:
            continue
        assert torch.equal(before[name], after[name]), f"{phase} changed {name}"
    moved = sum(float((after[n] - before[n]).abs().sum()) for n in own_names)
    assert moved > 0, f"{phase} did not step its own parameters"


def test_discriminator_loss_falls_where_prior_and_codes_differ():
    """A fixed batch whose untrained codes sit near the origin, a mixture prior on a circle of
    radius 4: the discriminator phase alone separates them (from about log 2)."""
    config = aae_config({"prior": "mixture"})
    torch.manual_seed(0)
    variant = build_variant(config, make_dataset(8, 0).shape, 4)
    batch = Batch(torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1)))
    optimizer = variant.configure_optimizers(config.train)["discriminator"]
    history = []
    for _ in range(150):
        optimizer.zero_grad()
        out = variant.losses(batch, ("discriminator",))["discriminator"]
        out.loss.backward()
        optimizer.step()
        history.append((out.loss.item(), out.metrics["accuracy"].item()))
    assert abs(history[0][0] - math.log(2)) < 0.15
    assert history[-1][0] < 0.25 and history[-1][1] > 0.9, history[-1]
    assert sum(h[0] for h in history[-10:]) < sum(h[0] for h in history[:10]) / 3


def test_phases_log_namespaced_metrics_and_evaluation_skips_nll_without_likelihood(small_data):
    history = []
    variant = train(aae_config(), report=lambda m, c: history.append(m), data=small_data)
    keys = set(history[-1])
    for key in ("train/reconstruction/recon", "train/discriminator/loss", "train/discriminator/accuracy",
                "train/generator/loss", "train/generator/fooled", "test/recon"):
        assert key in keys, key
    assert 0.0 <= history[-1]["train/discriminator/accuracy"] <= 1.0
    assert "test/nll" not in keys and not variant.has_likelihood
    assert "nll" not in evaluate(variant, small_data.test, nll_samples=5)


def test_gaussian_encoder_has_an_importance_sampled_nll(small_data):
    """Gaussian encoder, unit-Gaussian prior: log w = log p(x|z) + log N(z; 0, I) - log q(z|x);
    the k=50 NLL is finite and at most the negative one-sample bound (the ELBO, averaged here
    over 200 draws)."""
    torch.manual_seed(0)
    variant = train(aae_config({"encoder": "gaussian"}), report=lambda m, c: None, data=small_data)
    assert variant.has_likelihood
    out = evaluate(variant, small_data.test, nll_samples=50)
    torch.manual_seed(1)
    one_sample = -float(variant.log_weights(Batch(to_float(small_data.test.images)), 200).mean())
    assert math.isfinite(out["nll"]) and out["nll"] <= one_sample + 1e-3


# -- checkpoints ----------------------------------------------------------------------------------

def test_checkpoint_holds_every_optimiser_and_resume_equals_uninterrupted(small_data):
    """Gaussian encoder and dynamic binarisation, so the RNG state matters too."""
    config = aae_config({"encoder": "gaussian"}, epochs=2)
    checkpoints = []
    uninterrupted = train(config, report=lambda m, c: checkpoints.append(c), data=small_data)
    first = checkpoints[0]
    assert set(first["optimizers"]) == {"reconstruction", "discriminator", "generator"}
    for name, opt_state in first["optimizers"].items():
        assert opt_state["state"], f"{name}: no optimiser state saved"
    assert set(first["schedulers"]) == set(first["optimizers"])
    resumed = train(config, report=lambda m, c: None, resume=first, data=small_data)
    for name, value in uninterrupted.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    # The test can fail: resuming without the optimisers' state lands elsewhere.
    fresh = dict(first, optimizers={n: {"state": {}, "param_groups": s["param_groups"]}
                                    for n, s in first["optimizers"].items()})
    forgetful = train(config, report=lambda m, c: None, resume=fresh, data=small_data)
    assert any(not torch.equal(v, forgetful.state_dict()[n]) for n, v in uninterrupted.state_dict().items())


# -- priors ---------------------------------------------------------------------------------------

def test_mixture_density_equals_torch_distributions():
    prior = GaussianMixtureCircle(2, components=10, radius=4.0, radial_std=1.0, tangential_std=0.25)
    angles = 2 * math.pi * torch.arange(10, dtype=torch.float64) / 10
    means = 4.0 * torch.stack([angles.cos(), angles.sin()], -1)
    rot = torch.stack([torch.stack([angles.cos(), -angles.sin()], -1), torch.stack([angles.sin(), angles.cos()], -1)], -2)
    cov = rot @ torch.diag(torch.tensor([1.0, 0.0625], dtype=torch.float64)) @ rot.transpose(-1, -2)
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.ones(10, dtype=torch.float64)),
        torch.distributions.MultivariateNormal(means, cov))
    z = prior.sample(500, generator=torch.Generator().manual_seed(0)).double()
    assert torch.allclose(prior.log_prob(z), reference.log_prob(z), atol=1e-9)
    # a labelled sample lies nearest its own component's mean
    labels = torch.arange(500) % 10
    z = prior.sample(500, labels, generator=torch.Generator().manual_seed(1)).double()
    nearest = torch.cdist(z, means).argmin(-1)
    assert (nearest == labels).float().mean() > 0.95


def test_priors_refuse_a_latent_size_they_do_not_have():
    with pytest.raises(ValueError, match="latent_dim"):
        make_prior("mixture", 3)
    with pytest.raises(ValueError, match="latent_dim"):
        make_prior("swiss_roll", 20)
    assert make_prior("swiss_roll", 2).has_density is False and make_prior("gaussian", 5).has_density


def test_options_fail_at_load_naming_the_field():
    with pytest.raises(ValueError, match="label_conditioned_prior"):
        aae_config({"label_conditioned_prior": True})  # the unit Gaussian has no components
    with pytest.raises(ValueError, match="objective"):
        RunConfig.from_dict({"variant_name": "aae", "objective": {"name": "elbo"}})


# -- Parzen and MMD -------------------------------------------------------------------------------

def test_parzen_equals_a_direct_computation():
    gen = torch.Generator().manual_seed(0)
    samples, x = torch.rand(7, 3, generator=gen), torch.rand(5, 3, generator=gen)
    for sigma in (0.1, 0.3, 1.0):
        direct = []
        for xi in x:
            densities = [math.prod(math.exp(-(float(xi[d]) - float(s[d])) ** 2 / (2 * sigma ** 2))
                                   / math.sqrt(2 * math.pi * sigma ** 2) for d in range(3)) for s in samples]
            direct.append(math.log(sum(densities) / len(samples)))
        ours = parzen_log_likelihood(x, samples, sigma)[:, 0]
        assert ours.tolist() == pytest.approx(direct, rel=1e-10, abs=1e-10)

    validation, test = torch.rand(6, 3, generator=gen), torch.rand(9, 3, generator=gen)
    sigmas = (0.05, 0.2, 0.5, 2.0)
    result = parzen_evaluate(samples, validation, test, sigmas)
    best = max(sigmas, key=lambda s: float(parzen_log_likelihood(validation, samples, s).mean()))
    ll = parzen_log_likelihood(test, samples, best)[:, 0]
    assert result.sigma == best
    assert result.log_likelihood == pytest.approx(float(ll.mean()), rel=1e-12)
    assert result.standard_error == pytest.approx(float(ll.std()) / 3.0, rel=1e-12)


def test_mmd_is_near_zero_for_one_distribution_and_clearly_positive_otherwise():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 2, generator=gen), torch.randn(400, 2, generator=gen)
    same, _ = mmd_rbf(a, b)
    shifted, _ = mmd_rbf(a, b + 1.0)
    assert abs(same) < 0.01 and shifted > 0.1 and shifted > 20 * abs(same)
    # equals the unbiased estimator written out term by term on a tiny case
    a, b, h = torch.randn(4, 2, generator=gen).double(), torch.randn(3, 2, generator=gen).double(), 0.7
    k = lambda u, v: math.exp(-float((u - v).pow(2).sum()) / (2 * h * h))  # noqa: E731
    direct = (sum(k(a[i], a[j]) for i in range(4) for j in range(4) if i != j) / 12
              + sum(k(b[i], b[j]) for i in range(3) for j in range(3) if i != j) / 6
              - 2 * sum(k(a[i], b[j]) for i in range(4) for j in range(3)) / 12)
    assert mmd_rbf(a, b, h)[0] == pytest.approx(direct, rel=1e-12)
