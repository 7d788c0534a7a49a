"""DC-IGN (Kulkarni et al. 2015): the clamp Function against direct float64 computations, the
one-factor epochs it trains on, the latents it frees per batch, a tiny run on dsprites, and the
disentanglement metrics evaluation adds on data with factors."""
from __future__ import annotations

import math

import pytest
import torch

from core.batches import TrainingSource
from core.config import RunConfig
from core.datasets import prepare_data
from core.disentanglement import best_single_latent, explained_variance_by_group
from core.evaluation import disentanglement, evaluate
from core.factors import CACHE_ENV
from core.serialization import build_variant
from core.training import train
from variants.dcign import NO_FACTOR_VARIES, ClampToMean, clamp_to_mean

SPRITES = "dsprites:train_size=192,test_size=96,seed=0"
MODEL = {"architecture": "conv", "latent_dim": 6, "hidden_dims": [32], "conv_channels": [8, 16]}


def dcign_config(**train) -> RunConfig:
    return RunConfig.from_dict({
        "variant_name": "dcign", "model": MODEL, "variant": {"invariance_strength": 0.5},
        "data": {"dataset": SPRITES, "binarize": "none"},
        "train": {"epochs": 2, "batch_size": 16, "eval_nll_samples": 2, "eval_nll_examples": 8, "progress": False,
                  "lr": 3e-3, **train}})


@pytest.fixture(scope="module")
def sprites(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
    yield prepare_data(SPRITES, None, "none")
    mp.undo()


# -- the clamp Function --------------------------------------------------------------------------

def _latents():
    torch.manual_seed(0)
    z = torch.randn(2, 7, 5, dtype=torch.float64)  # (k, B, D)
    free = torch.tensor([False, True, True, False, False])
    return z, free


def test_clamp_forward_is_the_batch_mean_on_clamped_dims_and_untouched_elsewhere():
    z, free = _latents()
    out = clamp_to_mean(z, free, 0.7)
    mean = z.sum(dim=1, keepdim=True) / z.shape[1]
    assert torch.equal(out[..., free], z[..., free])
    assert torch.allclose(out[..., ~free], mean.expand_as(z)[..., ~free], rtol=0, atol=1e-15)
    # each clamped column holds one value per sample of z, across the batch
    assert (out[..., ~free] == out[:, :1, ~free]).all()


def test_clamp_backward_true_gradient_on_the_varying_group():
    z, free = _latents()
    held = z[..., ~free]

    def through_free_dims(z_free):
        full = torch.empty_like(z)
        full[..., free], full[..., ~free] = z_free, held
        return ClampToMean.apply(full, free, 0.7)

    assert torch.autograd.gradcheck(through_free_dims, (z[..., free].clone().requires_grad_(),), eps=1e-6, atol=1e-8)


def test_clamp_backward_replaces_the_clamped_gradient_by_strength_times_distance_from_mean():
    z, free = _latents()
    strength = 0.7
    weights = torch.randn_like(z)
    z_req = z.clone().requires_grad_()
    (clamp_to_mean(z_req, free, strength) * weights).sum().backward()

    # direct float64 computations: the replacement, and the true gradient through the mean
    replacement = strength * (z - z.mean(dim=1, keepdim=True))
    true_clamped = (weights.sum(dim=1, keepdim=True) / z.shape[1]).expand_as(z)
    assert torch.allclose(z_req.grad[..., ~free], replacement[..., ~free], rtol=0, atol=1e-15)
    assert torch.allclose(z_req.grad[..., free], weights[..., free], rtol=0, atol=0)
    assert not torch.allclose(z_req.grad[..., ~free], true_clamped[..., ~free])

    z_req.grad = None
    (clamp_to_mean(z_req, free, 0.0) * weights).sum().backward()
    assert (z_req.grad[..., ~free] == 0).all()  # strength 0: no pull, and no decoder gradient either


# -- batches and free latents --------------------------------------------------------------------

def test_epoch_batches_hold_every_factor_but_one_and_draw_batch_names_it(sprites):
    variant = build_variant(dcign_config(), sprites.shape, sprites.num_classes)
    source = TrainingSource(sprites.train, False, torch.device("cpu"))
    variant.prepare_training(source, dcign_config().train)
    factors = sprites.train.factors
    batches = variant.epoch_batches(source, 16, seed=0, epoch=1)
    seen = set()
    for rows in batches:
        codes = factors.codes[rows]
        varying = [n for n, column in zip(factors.names, codes.T) if column.unique().numel() > 1]
        assert len(varying) == 1 and len(rows) <= 16
        assert variant.draw_batch(source, rows).varying_factor == varying[0]
        seen.add(varying[0])
    assert seen == set(factors.names)  # every factor gets its batches
    assert [b.tolist() for b in variant.epoch_batches(source, 16, seed=0, epoch=1)] == [b.tolist() for b in batches]
    # a worker's share of one row holds every factor: every latent is clamped
    assert variant.draw_batch(source, batches[0][:1]).varying_factor == NO_FACTOR_VARIES
    assert not variant.free_dims(NO_FACTOR_VARIES).any()
    # groups from dimension 0 in the options' order; shape has none, so its batches free the intrinsic dims
    assert variant.latent_groups() == {"scale": [0], "orientation": [1], "x": [2], "y": [3]}
    assert variant.free_dims("x").tolist() == [False, False, True, False, False, False]
    assert variant.free_dims("shape").tolist() == [False, False, False, False, True, True]


def test_bad_configurations_fail_naming_the_problem(sprites, prepared):
    with pytest.raises(ValueError, match="model.architecture=conv"):
        build_variant(RunConfig.from_dict({"variant_name": "dcign"}), sprites.shape, 0)
    with pytest.raises(ValueError, match="at least one must stay intrinsic"):
        build_variant(dcign_config().with_overrides({"model.latent_dim": 4}), sprites.shape, 0)
    unknown = dcign_config().with_overrides({"variant.groups": {"colour": 1}})
    with pytest.raises(ValueError, match="unknown factor 'colour'"):
        build_variant(unknown, sprites.shape, 0).prepare_training(
            TrainingSource(sprites.train, False, torch.device("cpu")), unknown.train)
    no_factors = build_variant(dcign_config(), prepared.shape, 0)
    with pytest.raises(ValueError, match="no generative factors"):
        no_factors.prepare_training(TrainingSource(prepared.train, False, torch.device("cpu")), dcign_config().train)


# -- training and evaluation ---------------------------------------------------------------------

def test_tiny_dcign_trains_and_reports_disentanglement(sprites):
    history = []
    variant = train(dcign_config(), report=lambda m, c: history.append(m), data=sprites)
    assert history[-1]["test/elbo"] > history[0]["test/elbo"]
    assert history[-1]["train/bound"] > history[0]["train/bound"]

    # the reported metrics are the group read-out for assigned factors, the best latent otherwise
    last = history[-1]
    metrics = disentanglement(variant, sprites.test)
    assert {k: last[f"test/{k}"] for k in metrics} == metrics
    with torch.no_grad():
        means = variant.encode(sprites.test.images.float() / 255)[0].double()
    f = sprites.test.factors
    by_group = explained_variance_by_group(means, f.values, f.names, variant.latent_groups())
    assert metrics["explained_variance/x"] == pytest.approx(by_group["x"], abs=1e-9)
    assert metrics["explained_variance/shape"] == pytest.approx(best_single_latent(means, f.values, f.names)["shape"][1],
                                                                abs=1e-9)
    assert 0 <= metrics["mig"] <= 1


def test_evaluation_without_factors_has_no_disentanglement_metrics(prepared):
    vae = build_variant(RunConfig(), prepared.shape, prepared.num_classes)
    metrics = evaluate(vae, prepared.test, nll_samples=0)
    assert not [k for k in metrics if k == "mig" or k.startswith("explained_variance")]


# -- the quality suite ---------------------------------------------------------------------------

def test_quality_plan_trains_three_models_per_seed_on_the_same_conv_networks():
    from pipelines.quality import Budget, job_config, plan

    budget = Budget(dataset=SPRITES, seeds=[0, 1], overrides={"model.conv_channels": [8, 16]})
    jobs = plan(budget, ["dcign"])
    assert [j.run_key for j in jobs] == ["dcign-seed0", "vae-conv-seed0", "beta4-vae-conv-seed0",
                                         "dcign-seed1", "vae-conv-seed1", "beta4-vae-conv-seed1"]
    assert [j.legacy_keys for j in jobs[:1]] == [["dcign-s0"]]  # main's earlier name of the result
    configs = {j.run_key: job_config(budget, j) for j in jobs}
    for key, config in configs.items():
        assert config.model.architecture == "conv" and config.model.conv_channels == [8, 16]
        assert config.train.seed == int(key[-1])
    assert configs["dcign-seed1"].variant_name == "dcign" and configs["vae-conv-seed1"].variant_name == "vae"
    assert (configs["vae-conv-seed0"].objective.beta, configs["beta4-vae-conv-seed0"].objective.beta) == (1.0, 4.0)
    assert configs["beta4-vae-conv-seed0"].objective.name == "elbo"
    with pytest.raises(ValueError, match="needs data with known factors"):
        plan(Budget(dataset="fashion-mnist"), ["dcign"])


def _suite_results(dcign_x: list[float], vae_x: list[float]) -> dict:
    from pipelines.quality.jobs import aggregate

    runs = []
    for s, (a, b) in enumerate(zip(dcign_x, vae_x)):
        runs.append({"key": "dcign", "seed": s, "suite": "dcign", "variant": "dcign", "kind": "variant",
                     "options": {}, "latent_groups": {"x": [0]}, "explained_variance/x": a})
        runs.append({"key": "vae-conv", "seed": s, "suite": "dcign", "variant": "vae", "kind": "variant",
                     "options": {}, "explained_variance/x": b})
    return aggregate(runs)


@pytest.mark.parametrize("dcign_x,vae_x,verdict", [
    ([0.9, 0.8, 0.85], [0.5, 0.45, 0.55], "holds"),                        # +0.35, SE 0.04
    ([0.9, 0.5, 0.7], [0.6, 0.7, 0.6], "not resolved at this budget"),     # +0.07, SE 0.12
    ([0.3, 0.35, 0.3], [0.6, 0.7, 0.6], "does not hold"),                  # -0.32, SE 0.03
    ([0.9], [0.1], "not resolved at this budget"),                          # one seed: no standard error
])
def test_dcign_claim_is_resolved_only_beyond_twice_the_standard_error(dcign_x, vae_x, verdict):
    from pipelines.quality.claims import findings, judge

    found = findings(_suite_results(dcign_x, vae_x))
    assert [f["claim"] for f in found] == ["DC-IGN's x group explains x better than any single latent of the vae"]
    assert found[0]["verdict"] == verdict and found[0]["holds"] == (verdict == "holds")
    direct = judge(dcign_x, vae_x, higher_is_better=True)
    assert [found[0]["judgement"][k] for k in ("verdict", "difference", "seeds")] == \
        [direct[k] for k in ("verdict", "difference", "seeds")]
    mean = sum(dcign_x) / len(dcign_x) - sum(vae_x) / len(vae_x)
    assert found[0]["judgement"]["difference"] == pytest.approx(mean)
    if len(dcign_x) > 1:
        import numpy as np
        se = np.sqrt(np.var(dcign_x, ddof=1) / len(dcign_x) + np.var(vae_x, ddof=1) / len(vae_x))
        assert found[0]["judgement"]["standard_error"] == pytest.approx(se)
    else:  # one seed: no standard error, so nothing can be resolved
        assert math.isnan(found[0]["judgement"]["standard_error"])


def test_rerendering_moves_only_the_factors_latents_through_mean_plus_minus_two_sd(sprites):
    from pipelines.quality.figures import rerender

    variant = build_variant(dcign_config(), sprites.shape, sprites.num_classes)
    walks = []

    def decode_mean(z):  # record the latents each re-rendering decodes
        walks.append(z.clone())
        return torch.zeros(len(z), *sprites.shape.as_tuple())

    variant.decode_mean = decode_mean
    grid = rerender(variant, sprites, ["x", "shape"], images=2, steps=5)
    assert grid.shape == (2 * 2 * 6, *sprites.shape.as_tuple())
    assert torch.equal(grid[0], sprites.test.images[0].float() / 255)  # each row opens on its test image
    with torch.no_grad():
        means = torch.cat([variant.encode(sprites.test.images[i:i + 48].float() / 255)[0] for i in (0, 48)])
        z0 = variant.encode(sprites.test.images[:1].float() / 255)[0][0]
    x_walk = walks[0]  # factor x, image 0: only x's group (dim 2) moves, from mean - 2 SD to mean + 2 SD
    others = [d for d in range(6) if d != 2]
    assert torch.allclose(x_walk[:, others], z0[others].expand(5, -1))
    assert x_walk[0, 2] == pytest.approx(float(means[:, 2].mean() - 2 * means[:, 2].std()), abs=1e-5)
    assert x_walk[-1, 2] == pytest.approx(float(means[:, 2].mean() + 2 * means[:, 2].std()), abs=1e-5)
    best = best_single_latent(means.double(), sprites.test.factors.values, sprites.test.factors.names)["shape"][0]
    moved = (walks[2] != walks[2][:1]).any(0)  # shape has no group: its best single latent moves alone
    assert moved.nonzero().flatten().tolist() == [best]
