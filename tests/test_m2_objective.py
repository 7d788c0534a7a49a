"""M2's loss is Kingma et al. (2014) eq. 9, per example: each term weighted by how often it occurs
(N_l / N labelled, (N - N_l) / N unlabelled) and the cross-entropy by alpha / N = 0.1."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import NUM_CLASSES, make_dataset, small_config
from core.batches import Batch, TrainingSource
from core.model import VAE
from core.serialization import build_variant


def direct_bound(m2, x, y):
    """L(x, y) = log p(x|y,z) + log p(y) - KL(q(z|x,y) || p(z)) at z = the posterior mean."""
    c = F.one_hot(y, NUM_CLASSES).float()
    mean, logvar = m2.vae.encoder(x, c)
    p = torch.sigmoid(m2.vae.decoder(mean, c))
    log_px = (x * p.log() + (1 - x) * (1 - p).log()).sum((1, 2, 3))
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
    return log_px + math.log(1 / NUM_CLASSES) - kl


def at_posterior_mean(monkeypatch):
    """z at the posterior mean: every term deterministic, so two computations must agree exactly."""
    monkeypatch.setattr(VAE, "sample_latent", staticmethod(lambda mean, logvar, k=1, generator=None:
                                                            mean.expand(k, *mean.shape)))


@pytest.mark.parametrize("alpha, ce_weight, labelled_weight", [(None, 0.1, None), (2.0, 2.0, None),
                                                               (None, 0.1, 1.0), (10.0, 10.0, 0.5)])
def test_m2_loss_equals_a_direct_computation_of_eq_9(monkeypatch, alpha, ce_weight, labelled_weight):
    """Eq. 9; and the labelled_weight ablation: w mean L + 1 mean U in place of eq. 9's weights."""
    n, n_labelled = 64, 8
    config = small_config("m2", options={"num_labels": n_labelled, "alpha": alpha,
                                         "labelled_weight": labelled_weight}, latent_dim=3)
    train_set = make_dataset(n, seed=0)
    torch.manual_seed(0)
    m2 = build_variant(config, train_set.shape, NUM_CLASSES)
    m2.prepare_training(TrainingSource(train_set, dynamic=True, device=torch.device("cpu")), config.train)
    at_posterior_mean(monkeypatch)
    gen = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((5, 1, 8, 8), 0.4), generator=gen)
    x_l = torch.bernoulli(torch.full((3, 1, 8, 8), 0.6), generator=gen)
    y_l = torch.tensor([0, 2, 3])
    loss = m2.losses(Batch(x, None, x_l, y_l), ("model",))["model"].loss

    def bound(x, y):
        return direct_bound(m2, x, y)

    qy = F.softmax(m2.classifier(x), -1)
    every = torch.stack([bound(x, torch.full((5,), y)) for y in range(NUM_CLASSES)], 1)  # (B, Y)
    unlabelled = (qy * every).sum(1) - (qy * qy.log()).sum(1)  # U(x): label summed out, + entropy
    cross_entropy = -F.log_softmax(m2.classifier(x_l), -1)[torch.arange(3), y_l].mean()
    if labelled_weight is None:
        eq9 = (n_labelled / n) * bound(x_l, y_l).mean() + ((n - n_labelled) / n) * unlabelled.mean()
    else:
        eq9 = labelled_weight * bound(x_l, y_l).mean() + unlabelled.mean()
    assert loss.item() == pytest.approx((-eq9 + ce_weight * cross_entropy).item(), rel=1e-5)


def test_label_use_margins_equal_a_direct_computation(monkeypatch):
    from pipelines.quality.label_use import label_bounds, label_use

    config = small_config("m2", options={"num_labels": 8}, latent_dim=3)
    torch.manual_seed(2)
    m2 = build_variant(config, make_dataset(16, seed=0).shape, NUM_CLASSES)
    at_posterior_mean(monkeypatch)
    x = torch.bernoulli(torch.full((7, 1, 8, 8), 0.5), generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    bounds = label_bounds(m2, x, samples=3, batch_size=3)  # chunks of 3, 3 and 1 images
    with torch.no_grad():
        direct = torch.stack([direct_bound(m2, x, torch.full((7,), c)) for c in range(NUM_CLASSES)], 1)
    torch.testing.assert_close(bounds, direct, rtol=1e-5, atol=1e-4)

    margins = [direct[i, y[i]].item() - max(direct[i, c].item() for c in range(NUM_CLASSES) if c != y[i])
               for i in range(7)]
    hits = [int(direct[i].argmax()) == int(y[i]) for i in range(7)]
    logits = torch.randn(7, NUM_CLASSES, generator=torch.Generator().manual_seed(5))
    summary = label_use(direct, y, logits)
    assert summary["margin_mean"] == pytest.approx(sum(margins) / 7, rel=1e-6)
    assert summary["generative_accuracy"] == pytest.approx(sum(hits) / 7)
    assert summary["classifier_accuracy"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert [m > 0 for m in margins] == hits
    with pytest.raises(ValueError, match="bounds must be"):
        label_use(direct[:3], y)


def test_m1_plus_m2_models_the_frozen_m1_posterior_means(tmp_path, prepared):
    from core.evaluation import evaluate
    from core.serialization import load_model, save_model
    from core.training import train

    m1_config = small_config("vae", epochs=1, latent_dim=3)
    m1 = train(m1_config, report=lambda m, c: None, data=prepared)
    save_model(m1, m1_config, tmp_path / "m1")
    config = small_config("m2", options={"num_labels": 16, "m1_run": str(tmp_path / "m1")}, epochs=1)
    m1m2 = train(config, report=lambda m, c: None, data=prepared)

    # M2 sits on M1's 3 latent means with a Gaussian likelihood; M1 itself is not trained further
    assert m1m2.vae.shape.as_tuple() == (1, 1, 3) and m1m2.vae.cfg.likelihood == "gaussian"
    for name, value in m1.vae.state_dict().items():
        assert torch.equal(m1m2.m1.state_dict()[name], value), name
    x = prepared.test.images[:6].float() / 255
    with torch.no_grad():
        means, _ = m1.vae.encode(x)
        assert torch.equal(m1m2.represent(x), means.view(6, 1, 1, 3))
    metrics = evaluate(m1m2, prepared.test, nll_samples=5, nll_examples=16)
    assert "nll" not in metrics and metrics["m1_latent_nll"] == metrics["m1_latent_nll"]  # a latent density, named so
    assert 0 <= metrics["accuracy"] <= 1
    assert m1m2.sample(4, generator=torch.Generator().manual_seed(0)).shape == (4, *prepared.shape.as_tuple())

    save_model(m1m2, config, tmp_path / "m1m2")
    loaded, _ = load_model(tmp_path / "m1m2")
    assert torch.equal(loaded.classify(x), m1m2.classify(x))


def test_m2_active_units_are_unconditional_encoded_under_its_classifiers_label(prepared):
    from core.evaluation import active_units, evaluate

    config = small_config("m2", options={"num_labels": 16}, latent_dim=4)
    torch.manual_seed(3)
    m2 = build_variant(config, prepared.shape, NUM_CLASSES).eval()
    x, y = prepared.test.images.float() / 255, prepared.test.labels
    with torch.no_grad():
        guessed = F.one_hot(m2.classifier(x).argmax(-1), NUM_CLASSES).float()
        means = m2.vae.encode(x, guessed)[0].double()
        true_means = m2.vae.encode(x, F.one_hot(y, NUM_CLASSES).float())[0].double()
    assert not torch.equal(means, true_means)  # the classifier's labels are not the true ones here
    metrics = evaluate(m2, prepared.test)
    assert "cond_active_units" not in metrics
    # the default threshold (0.01) on the same means: recomputed exactly
    assert metrics["active_units"] == active_units(torch.tensor(float(len(x)), dtype=torch.float64),
                                                   means.sum(0), means.pow(2).sum(0))


def test_m2_gradients_stay_finite_when_its_classifier_is_certain():
    """A classifier so sure that q(y|x) of the other labels underflows to 0 in float32 (logits 200
    apart): the loss and every gradient stay finite. Before the fix, the label entropy's backward
    made every weight's gradient NaN here, which diverged 100-epoch M2 and M1+M2 runs."""
    config = small_config("m2", options={"num_labels": 8, "alpha": 10.0, "labelled_weight": 1.0}, latent_dim=3)
    train_set = make_dataset(64, seed=0)
    torch.manual_seed(0)
    m2 = build_variant(config, train_set.shape, NUM_CLASSES)
    m2.prepare_training(TrainingSource(train_set, dynamic=True, device=torch.device("cpu")), config.train)
    last = m2.classifier[-1][-1]  # Flatten, then the MLP; its last Linear
    with torch.no_grad():
        last.bias.copy_(torch.arange(NUM_CLASSES, dtype=torch.float32) * 200.0)
    gen = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((5, 1, 8, 8), 0.4), generator=gen)
    x_l = torch.bernoulli(torch.full((3, 1, 8, 8), 0.6), generator=gen)
    assert (F.softmax(m2.classifier(x), -1) == 0).any()  # the case: probabilities of exactly 0
    loss = m2.losses(Batch(x, None, x_l, torch.tensor([0, 2, 3])), ("model",))["model"].loss
    loss.backward()
    assert math.isfinite(loss.item())
    grads = [p.grad for p in m2.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
