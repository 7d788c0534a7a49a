"""The five variants as plug-ins: the registry, each variant's objective against a reference
computation, training on a small synthetic dataset, and evaluation bounds."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli

import core.model
from core.batches import TrainingSource
from core.evaluation import evaluate
from core.networks import DataShape
from core.objectives import estimate_log_likelihood, gaussian_kl
from core.registry import available_variants, get_variant, register_variant
from core.serialization import build_variant
from core.data import prepare_split
from core.variant import Batch, Variant
from conftest import ALL_VARIANTS, NUM_CLASSES, make_dataset, small_config

SHAPE = DataShape(1, 8, 8)


def _build(name, options=None, seed=0, **kw):
    torch.manual_seed(seed)
    config = small_config(name, options=options, **kw)
    return build_variant(config, SHAPE, NUM_CLASSES)


# -- registry -----------------------------------------------------------------------------------

def test_registry_finds_every_builtin_variant_by_name():
    found = available_variants()
    assert set(ALL_VARIANTS) <= set(found)
    for name in ALL_VARIANTS:
        cls = get_variant(name)
        assert issubclass(cls, Variant) and cls.name == name
        assert cls.paper and cls.description


def test_unknown_variant_names_the_known_ones():
    with pytest.raises(KeyError) as err:
        get_variant("no-such-variant")
    message = err.value.args[0]
    assert "no-such-variant" in message
    for name in ALL_VARIANTS:
        assert name in message


def test_register_variant_refuses_a_second_class_under_a_taken_name():
    class Impostor(Variant):
        name = "vae"

    with pytest.raises(ValueError, match="already registered"):
        register_variant(Impostor)
    assert get_variant("vae") is not Impostor

    class Nameless(Variant):
        pass

    with pytest.raises(TypeError):
        register_variant(Nameless)


# -- 1b. IWAE with k=1 is the Monte-Carlo ELBO on the same noise ----------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iwae_with_one_sample_trains_on_the_monte_carlo_elbo(seed, binary_batch):
    iwae = _build("iwae", {"k": 1}, seed=10)
    vae = _build("vae", {}, seed=99)  # different initial weights...
    vae.load_state_dict(iwae.state_dict())  # ...made identical
    x = binary_batch[:32]
    torch.manual_seed(seed)
    out = iwae.losses(Batch(x), ("model",))["model"]
    torch.manual_seed(seed)
    terms = vae.vae.terms(x, x)
    mc_elbo = terms.log_w.mean(0)  # elbo_monte_carlo
    torch.testing.assert_close(out.loss, -mc_elbo.mean(), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.metrics["bound"], mc_elbo.mean(), rtol=0, atol=1e-5)


def test_iwae_logged_bound_is_the_k_sample_bound(binary_batch):
    iwae = _build("iwae", {"k": 7})
    x = binary_batch[:32]
    torch.manual_seed(4)
    out = iwae.losses(Batch(x), ("model",))["model"]
    torch.manual_seed(4)
    log_w = iwae.vae.terms(x, x, k=7).log_w
    expected = (torch.logsumexp(log_w, 0) - math.log(7)).mean()
    torch.testing.assert_close(out.metrics["bound"], expected)
    torch.testing.assert_close(out.loss, -expected)


@pytest.mark.parametrize("beta", [0.0, 1.0, 4.0])
def test_vae_loss_weights_the_kl_by_beta_and_logs_the_true_elbo(beta, binary_batch):
    variant = _build("vae", {"beta": beta})
    x = binary_batch[:32]
    torch.manual_seed(5)
    out = variant.losses(Batch(x), ("model",))["model"]
    torch.manual_seed(5)
    terms = variant.vae.terms(x, x)
    recon = terms.log_px_z.mean(0)
    torch.testing.assert_close(out.loss, -(recon - beta * terms.kl).mean())
    torch.testing.assert_close(out.metrics["elbo"], (recon - terms.kl).mean())  # the ELBO whatever beta is


# -- dvae: corrupt the input, score the clean target, evaluate on clean data ----------------------

def test_dvae_encodes_the_corrupted_input_and_scores_the_clean_one(binary_batch, monkeypatch):
    dvae = _build("dvae", {"corruption": "masking", "noise_level": 0.5})
    x = binary_batch[:16]
    seen = {}
    real_terms = core.model.VAE.terms

    def spy(self, x_in, target, *args, **kwargs):
        seen["x_in"], seen["target"] = x_in, target
        return real_terms(self, x_in, target, *args, **kwargs)

    monkeypatch.setattr(core.model.VAE, "terms", spy)
    torch.manual_seed(0)
    dvae.losses(Batch(x), ("model",))["model"]
    assert seen["target"] is x
    corrupted = seen["x_in"]
    assert not torch.equal(corrupted, x)
    assert torch.all(corrupted <= x)  # masking only zeroes pixels
    on = x == 1
    dropped = (corrupted[on] == 0).double().mean().item()
    assert abs(dropped - 0.5) < 5 * math.sqrt(0.25 / on.sum().item())
    # Evaluation sees clean data only.
    dvae.evaluate(Batch(x))
    assert seen["x_in"] is x and seen["target"] is x


@pytest.mark.parametrize("corruption,level", [("gaussian", 0.3), ("salt_and_pepper", 0.2), ("masking", 0.2)])
def test_dvae_corruptions_have_the_configured_strength(corruption, level):
    dvae = _build("dvae", {"corruption": corruption, "noise_level": level})
    x = torch.full((200, 1, 8, 8), 0.5)
    torch.manual_seed(1)
    x_tilde = dvae.encoder_input(Batch(x))
    n = x.numel()
    if corruption == "gaussian":
        assert abs((x_tilde - x).std().item() - level) < 5 * level / math.sqrt(2 * n)
    else:
        hit = (x_tilde != x).double().mean().item()
        assert abs(hit - level) < 5 * math.sqrt(level * (1 - level) / n)
        assert set(x_tilde[x_tilde != x].unique().tolist()) <= {0.0, 1.0}


# -- cvae ---------------------------------------------------------------------------------------

def test_quadrant_mask_shows_quadrants_in_reading_order():
    from variants.cvae import quadrant_mask

    m = quadrant_mask(2, 4, 6, 3)
    assert m.shape == (1, 2, 4, 6)
    expected = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0]],
                            dtype=torch.float32)
    assert torch.equal(m[0, 0], expected) and torch.equal(m[0, 1], expected)


def test_cvae_quadrants_scores_only_the_hidden_pixels(binary_batch):
    cvae = _build("cvae", {"condition": "quadrants", "visible_quadrants": 1})
    x = binary_batch[:8]
    cond = cvae.condition(Batch(x))
    c, hidden = cond.c, cond.target_mask
    assert torch.equal(c[..., 4:, :], torch.zeros_like(c[..., 4:, :]))  # only top-left is shown
    assert torch.equal(c[..., :4, :4], x[..., :4, :4])
    torch.manual_seed(0)
    terms = cvae.terms(Batch(x))
    torch.manual_seed(0)
    mean, logvar = cvae.vae.encode(x, c)
    z = core.model.VAE.sample_latent(mean, logvar, 1)
    logits = cvae.vae.decode(z, c)
    ref = (Bernoulli(logits=logits).log_prob(x.expand_as(logits)) * hidden).sum((-3, -2, -1))
    torch.testing.assert_close(terms.log_px_z, ref)
    # 48 of 64 pixels are scored: the term is no more negative than a full-image score.
    full = Bernoulli(logits=logits).log_prob(x.expand_as(logits)).sum((-3, -2, -1))
    assert torch.all(terms.log_px_z >= full)


def test_cvae_with_labels_needs_labels(binary_batch):
    cvae = _build("cvae", {"condition": "label"})
    with pytest.raises(ValueError, match="labels"):
        cvae.losses(Batch(binary_batch[:4]), ("model",))["model"]


# -- 5. m2's unlabelled term is the explicit enumeration over labels -----------------------------

def _no_noise(mean, logvar, k=1, generator=None):
    return mean.expand(k, *mean.shape)


def test_m2_unlabelled_term_equals_explicit_enumeration(binary_batch, monkeypatch):
    m2 = _build("m2").double()
    monkeypatch.setattr(core.model.VAE, "sample_latent", staticmethod(_no_noise))
    x = binary_batch[:12].double()
    bound, recon, log_qy = m2.unlabelled_bound(x)
    kl = recon - bound  # what m2 logs as its kl

    with torch.no_grad():
        qy = torch.softmax(m2.classifier(x), dim=-1)  # (B, K)
        expected = torch.zeros(12, dtype=torch.float64)
        expected_recon = torch.zeros(12, dtype=torch.float64)
        for y in range(NUM_CLASSES):
            onehot = F.one_hot(torch.full((12,), y), NUM_CLASSES).double()
            mean, logvar = m2.vae.encode(x, onehot)
            logits = m2.vae.decode(mean, onehot)
            log_px = Bernoulli(logits=logits).log_prob(x).sum((-3, -2, -1))
            kl_y = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
            elbo_y = log_px - kl_y - math.log(NUM_CLASSES)
            expected += qy[:, y] * (elbo_y - torch.log(qy[:, y]))
            expected_recon += qy[:, y] * log_px
    torch.testing.assert_close(bound, expected)
    torch.testing.assert_close(recon, expected_recon)
    torch.testing.assert_close(kl, recon - bound)
    torch.testing.assert_close(log_qy.exp().T, qy)


def test_m2_log_weights_are_laid_out_sample_major_with_log_prior_of_y(binary_batch, monkeypatch):
    m2 = _build("m2").double()
    monkeypatch.setattr(core.model.VAE, "sample_latent", staticmethod(_no_noise))
    x = binary_batch[:5].double()
    k = 3
    log_w = m2.log_weights(Batch(x), k)
    assert log_w.shape == (NUM_CLASSES * k, 5)
    assert m2.log_weights_per_sample() == NUM_CLASSES
    with torch.no_grad():
        for y in range(NUM_CLASSES):
            onehot = F.one_hot(torch.full((5,), y), NUM_CLASSES).double()
            mean, logvar = m2.vae.encode(x, onehot)
            logits = m2.vae.decode(mean, onehot)
            log_px = Bernoulli(logits=logits).log_prob(x).sum((-3, -2, -1))
            log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(mean).sum(-1)
            log_qz = torch.distributions.Normal(mean, (0.5 * logvar).exp()).log_prob(mean).sum(-1)
            expected = log_px + log_pz - log_qz - math.log(NUM_CLASSES)
            for i in range(k):  # row i*K + y is sample i of label y
                torch.testing.assert_close(log_w[i * NUM_CLASSES + y], expected)


def test_m2_importance_sampled_likelihood_is_above_the_enumerated_elbo(binary_batch):
    m2 = _build("m2")
    x = binary_batch[:64]
    torch.manual_seed(0)
    with torch.no_grad():
        # the enumerated ELBO uses one z per label: average 50 draws for a precise reference
        elbo_draws = torch.stack([m2.unlabelled_bound(x)[0] for _ in range(50)]).double()
        log_px = estimate_log_likelihood(lambda n: m2.log_weights(Batch(x), n), 500, chunk_size=100).double()
    elbo = elbo_draws.mean(0)
    assert log_px.shape == elbo.shape == (64,)
    gap = log_px - elbo
    assert gap.mean() > 5 * gap.std() / math.sqrt(64), (gap.mean(), gap.std())


def test_m2_labelled_elbo_includes_log_prior_of_y(binary_batch):
    m2 = _build("m2")
    x, y = binary_batch[:6], torch.arange(6) % NUM_CLASSES
    torch.manual_seed(0)
    own_terms = m2.terms(Batch(x, y))
    elbo = m2.enumerated.labelled_bound(own_terms)
    torch.manual_seed(0)
    terms = m2.vae.terms(x, x, c=F.one_hot(y, NUM_CLASSES).float())
    torch.testing.assert_close(elbo, terms.log_px_z.mean(0) - terms.kl - math.log(NUM_CLASSES))
    torch.testing.assert_close(own_terms.kl, gaussian_kl(terms.mean, terms.logvar))


# -- 8. every variant learns on a small synthetic dataset ---------------------------------------

@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_every_variant_improves_its_bound_during_training(name, trained):
    run = trained(name)
    history = run.history
    assert [m["epoch"] for m in history] == list(range(1, run.config.train.epochs + 1))
    first, last = history[0], history[-1]
    for key in ("train/elbo", "train/bound"):
        assert math.isfinite(last[key])
        assert last[key] > first[key] + 5.0, (key, first[key], last[key])  # nats per example
    assert last["test/elbo"] > first["test/elbo"] + 5.0
    # bounds are negative log-likelihood bounds of 64 binary pixels: below 0 and above 64*log(1/2) - slack
    assert -64 * math.log(2) - 20 < last["test/elbo"] < 0


def test_m2_classifies_easily_separable_classes(trained):
    run = trained("m2")
    accuracy = run.history[-1]["test/accuracy"]
    assert accuracy > 0.8, accuracy  # chance is 1/4; only 40 labels were used


def test_iwae_trains_on_a_bound_above_its_elbo(trained):
    last = trained("iwae").history[-1]
    assert last["train/bound"] > last["train/elbo"]


# -- 6. the importance-sampled log-likelihood is at least the ELBO -------------------------------

@pytest.fixture(scope="module")
def eval_set():
    # 512 held-out examples, binarised once (the fixed test binarisation).
    return prepare_split(make_dataset(512, seed=2), "dynamic", "test")


@pytest.mark.parametrize("name", ["vae", "iwae", "dvae", "cvae", "m2"])
def test_log_likelihood_estimate_is_at_least_the_elbo(name, trained, eval_set):
    run = trained(name)
    torch.manual_seed(0)
    metrics = evaluate(run.variant, eval_set, nll_samples=200)
    nll = "cond_nll" if name == "cvae" else "nll"  # a conditional model's -log p(x|y) is never named nll
    assert metrics["elbo"] <= -metrics[nll], metrics
    assert metrics["kl"] >= 0
    assert metrics["elbo"] == pytest.approx(metrics["recon"] - metrics["kl"], abs=1e-6)
    if name == "cvae":  # label-conditioned: its encoder needs the label
        assert "nll" not in metrics and "active_units" not in metrics and "cond_active_units" in metrics


# -- generation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vae", "iwae", "dvae", "cvae", "m2"])
def test_sample_gives_reproducible_images_in_the_unit_interval(name):
    variant = _build(name).eval()
    a = variant.sample(6, generator=torch.Generator().manual_seed(0))
    b = variant.sample(6, generator=torch.Generator().manual_seed(0))
    c = variant.sample(6, generator=torch.Generator().manual_seed(1))
    assert a.shape == (6, 1, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_conditional_samples_follow_the_requested_labels():
    # Without labels, labelled generators cycle through the classes: sample i has label i mod K.
    for name in ("cvae", "m2"):
        variant = _build(name).eval()
        y = torch.arange(6) % NUM_CLASSES
        cycled = variant.sample(6, generator=torch.Generator().manual_seed(3))
        given = variant.sample(6, generator=torch.Generator().manual_seed(3), y=y)
        assert torch.equal(cycled, given)
        other = variant.sample(6, generator=torch.Generator().manual_seed(3), y=(y + 1) % NUM_CLASSES)
        assert not torch.equal(cycled, other)


def test_cvae_completion_keeps_the_visible_quadrants(binary_batch):
    cvae = _build("cvae", {"condition": "quadrants", "visible_quadrants": 3}).eval()
    x = binary_batch[:5]
    done = cvae.complete(x, generator=torch.Generator().manual_seed(0))
    visible = cvae.visible_mask.bool().expand_as(x)
    assert torch.equal(done[visible], x[visible])
    hidden = done[~visible]
    assert hidden.numel() == 5 * 16 and hidden.min() >= 0 and hidden.max() <= 1
    assert not set(hidden.unique().tolist()) <= {0.0, 1.0}  # decoder means, not copied pixels
    with pytest.raises(ValueError, match="complete"):
        cvae.sample(4)


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_fused_adam_is_the_default_and_takes_the_same_steps_up_to_rounding(name):
    """train.fused_adam (torch's fused kernel) is the default since issue #20; false takes torch's
    default Adam, the optimiser of earlier versions. Both take the same steps but for float rounding."""
    data = make_dataset(64, seed=3)
    results = []
    for fused in (False, True):
        config = small_config(name, fused_adam=fused)
        variant = _build(name)
        variant.prepare_training(TrainingSource(data, dynamic=False, device=torch.device("cpu")), config.train)
        opt = variant.configure_optimizers(config.train)["model"]
        assert bool(opt.defaults["fused"]) is fused
        torch.manual_seed(1)
        for step in range(3):
            part = slice(step * 16, (step + 1) * 16)
            batch = Batch(data.images[part].float() / 255.0, data.labels[part])
            batch.x_labelled, batch.y_labelled = batch.x, batch.y  # read by m2 alone
            opt.zero_grad(set_to_none=True)
            variant.losses(batch, ("model",))["model"].loss.backward()
            opt.step()
        results.append([p.detach().clone() for p in variant.parameters()])
    assert small_config(name).train.fused_adam
    for default, fused in zip(*results):
        torch.testing.assert_close(fused, default, rtol=1e-4, atol=1e-5)
