"""Super-resolution and inpainting (issue #17): the cvae's lowres and mask conditions, the scores
of a completion against reference computations, the claim judge, the superres/inpaint plan."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.config import RunConfig
from core.likelihoods import Bernoulli
from core.networks import DataShape
from core.serialization import build_variant
from core.variant import Batch
from pipelines.complete.metrics import (Completions, cvae_completions, image_scores, network_conditional_nll, psnr,
                                        ssim)
from pipelines.quality import Budget, plan
from pipelines.quality.applications import condition_network
from pipelines.quality.claims import judge
from variants.cvae import block_masks

SHAPE = DataShape(1, 28, 28)


def cvae(**options):
    config = RunConfig.from_dict({"variant_name": "cvae", "variant": options, "objective": None,
                                  "model": {"latent_dim": 4, "hidden_dims": [32]}})
    return build_variant(config, SHAPE, 10).eval(), config


def images(n=6, seed=0):
    return torch.rand((n, *SHAPE.as_tuple()), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("factor", [2, 4])
def test_lowres_condition_is_exactly_the_average_of_each_block(factor):
    model, _ = cvae(condition="lowres", lowres_factor=factor)
    x = images().double()
    cond = model.condition_given(x)
    side = 28 // factor
    want = np.empty((len(x), 1, side, side))
    xs = x.numpy()
    for r in range(side):
        for c in range(side):
            want[:, 0, r, c] = xs[:, 0, r * factor:(r + 1) * factor, c * factor:(c + 1) * factor].mean(axis=(1, 2))
    assert cond.c.shape == (len(x), 1, side, side)
    np.testing.assert_allclose(cond.c.numpy(), want, rtol=0, atol=1e-12)
    assert cond.target_mask is None  # every high-resolution pixel is scored
    assert model.vae.encoder.cond_dim == side * side


def hidden_set(mask: torch.Tensor) -> set[tuple[int, int]]:
    """The (row, col) of the pixels a visible mask (1, H, W) hides."""
    return {(int(r), int(c)) for r, c in torch.nonzero(mask[0] == 0)}


def test_centre_mask_hides_exactly_the_centre_square():
    model, _ = cvae(condition="mask", mask="centre", mask_size=10)
    x = images()
    cond = model.condition_given(x)
    want = {(r, c) for r in range(9, 19) for c in range(9, 19)}
    assert hidden_set(model.visible_mask[0]) == want
    assert hidden_set(1 - cond.target_mask[0]) == want  # the scored pixels are the hidden ones
    assert torch.equal(cond.c, x * model.visible_mask)  # the condition shows the rest and only the rest


def test_block_masks_hide_exactly_their_blocks_and_pixel_masks_their_rate():
    tops_lefts = torch.Generator().manual_seed(5)
    masks = block_masks(4, 1, 28, 28, 5, 2, torch.Generator().manual_seed(5))
    tops = torch.randint(0, 24, (4, 2), generator=tops_lefts)
    lefts = torch.randint(0, 24, (4, 2), generator=tops_lefts)
    for i in range(4):
        want = {(r, c) for b in range(2) for r in range(int(tops[i, b]), int(tops[i, b]) + 5)
                for c in range(int(lefts[i, b]), int(lefts[i, b]) + 5)}
        assert hidden_set(masks[i]) == want

    model, _ = cvae(condition="mask", mask="pixels", mask_rate=0.3)
    x = images(200)
    cond = model.condition_given(x)
    hidden = cond.target_mask
    assert 0.27 < float(hidden.mean()) < 0.33  # 156,800 Bernoulli(0.3) draws: 5 sigma is 0.006
    visible = 1 - hidden
    # The condition carries the shown pixels and the mask itself: a shown black pixel differs from a hidden one.
    assert torch.equal(cond.c[:, :784].view_as(x), x * visible) and torch.equal(cond.c[:, 784:].view_as(x), visible)


def test_random_masks_are_seeded_at_evaluation_and_fresh_in_training():
    model, _ = cvae(condition="mask", mask="blocks")
    x = images(8)
    first, again = model.condition_given(x).target_mask, model.condition_given(x).target_mask
    assert torch.equal(first, again)  # every evaluation of a batch (each NLL chunk) sees the same masks
    assert not torch.equal(first[0], first[1])  # but not one mask for every image
    model.train()
    torch.manual_seed(0)
    a = model.condition_given(x).target_mask
    b = model.condition_given(x).target_mask
    assert not torch.equal(a, b)


def test_quadrants_as_a_mask_family_are_todays_quadrants():
    old, _ = cvae(condition="quadrants", visible_quadrants=2)
    new, _ = cvae(condition="mask", mask="quadrants", visible_quadrants=2)
    assert torch.equal(old.visible_mask, new.visible_mask)


@pytest.mark.parametrize("options", [{"condition": "mask", "mask": "pixels"}, {"condition": "mask", "mask": "centre"},
                                     {"condition": "lowres", "lowres_factor": 4}])
@torch.no_grad()
def test_conditional_nll_scores_only_the_hidden_pixels(options):
    model, config = cvae(**options)
    x = torch.bernoulli(images(5))
    cond = model.condition_given(x)
    torch.manual_seed(3)
    terms = model.terms(Batch(x), 2)
    # Direct: the same z, the Bernoulli log-probability summed over the scored pixels in float64.
    torch.manual_seed(3)
    mean, logvar = model.vae.encode(x, cond.c)
    z = model.vae.sample_latent(mean, logvar, 2)
    p = torch.sigmoid(model.vae.decode(z, cond.c)).double()
    scored = torch.ones_like(x) if cond.target_mask is None else cond.target_mask.expand_as(x)
    per_pixel = x.double() * torch.log(p) + (1 - x.double()) * torch.log1p(-p)
    want = (per_pixel * scored).flatten(2).sum(-1)
    np.testing.assert_allclose(terms.log_px_z.double().numpy(), want.numpy(), rtol=1e-5)
    if cond.target_mask is not None:  # the visible pixels, had they been scored, would have counted
        assert not np.allclose(terms.log_px_z.double().numpy(), per_pixel.flatten(2).sum(-1).numpy(), rtol=1e-3)
    # The deterministic network is scored on the same pixels.
    net = condition_network(config, model.vae.encoder.cond_dim, SHAPE)
    q = torch.sigmoid(net(cond.c).view_as(x)).double()
    direct = ((x.double() * torch.log(q) + (1 - x.double()) * torch.log1p(-q)) * scored).flatten(1).sum(1)
    np.testing.assert_allclose(network_conditional_nll(net, model, x).double().numpy(), -direct.numpy(),
                               rtol=1e-5)


def test_psnr_of_an_image_with_itself_is_infinite_and_of_a_known_error_exact():
    x = images(1).numpy()[0]
    assert psnr(x, x) == math.inf
    assert psnr(np.zeros(100), np.full(100, 0.1)) == pytest.approx(20.0)  # MSE 0.01 on range 1
    assert ssim(x, x) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no pixels"):
        psnr(np.zeros(0), np.zeros(0))


def test_image_scores_best_of_n_diversity_and_psnr_on_scored_pixels_only():
    truth = torch.zeros(1, 1, 28, 28)
    scored = torch.zeros(1, 1, 28, 28)
    scored[..., :14, :] = 1  # the top half is scored
    near, far = torch.full_like(truth, 0.1), torch.full_like(truth, 0.3)
    near[..., 14:, :] = 1.0  # wrong only where nothing is scored
    samples = torch.stack([far, near])
    scores = image_scores(Completions(truth, samples, samples.mean(0), scored, torch.zeros(1)))
    assert scores["psnr_best"][0] == pytest.approx(20.0)  # the near sample, on the top half only
    assert scores["psnr_mean"][0] == pytest.approx(-10 * math.log10(0.2 ** 2))
    assert scores["diversity"][0] == pytest.approx(0.2)  # RMS difference of the two samples where scored


def test_lowres_completions_are_consistent_with_their_input_only_as_far_as_the_model_is():
    model, _ = cvae(condition="lowres", lowres_factor=2)
    x = images(4)
    done = cvae_completions(model, x, 3, generator=torch.Generator().manual_seed(0))
    assert done.samples.shape == (3, 4, 1, 28, 28)
    assert torch.allclose(done.mean, done.samples.mean(0))
    pooled = torch.nn.functional.avg_pool2d(done.samples.mean(0), 2)
    want = (pooled - torch.nn.functional.avg_pool2d(x, 2)).pow(2).flatten(1).mean(1)
    assert torch.allclose(done.consistency, want)


def test_judge_needs_twice_the_standard_error_over_three_seeds():
    assert judge([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], higher_is_better=False)["verdict"] == "holds"
    assert judge([2.0, 2.1, 1.9], [1.0, 1.1, 0.9], higher_is_better=False)["verdict"] == "does not hold"
    assert judge([1.0, 2.0, 3.0], [1.5, 2.5, 3.5], higher_is_better=False)["verdict"] == "not resolved at this budget"
    two_seeds = judge([1.0, 1.0], [5.0, 5.0], higher_is_better=False)
    assert two_seeds["verdict"] == "not resolved at this budget" and two_seeds["seeds"] == 2
    high = judge([3.0, 3.1, 2.9], [1.0, 1.1, 0.9], higher_is_better=True)
    assert high["verdict"] == "holds" and high["difference"] == pytest.approx(2.0)
    assert high["standard_error"] == pytest.approx(math.sqrt(0.01 / 3 + 0.01 / 3))


def test_plan_pairs_each_condition_and_seed_with_its_network_and_bicubic_once():
    jobs = plan(Budget(seeds=[0, 1, 2]), ["superres", "inpaint"])
    keys = [j.run_key for j in jobs]
    assert len(keys) == len(set(keys)) == 3 * (2 * 3 + 3 * 2)  # per seed: sr2/sr4 with bicubic, 3 masks
    for name in ("sr2", "sr4", "centre", "blocks", "pixels"):
        for seed in (0, 1, 2):
            cv, = [j for j in jobs if j.run_key == f"cvae-{name}-seed{seed}"]
            net, = [j for j in jobs if j.run_key == f"network-{name}-seed{seed}"]
            assert cv.options == net.options and cv.seed == net.seed == seed
            assert cv.legacy_keys == [f"cvae-{name}-s{seed}"]  # main's earlier names still resume
    bicubic = [j for j in jobs if j.kind == "bicubic"]
    assert {j.key for j in bicubic} == {"bicubic-sr2", "bicubic-sr4"} and len(bicubic) == 6
    assert bicubic[0].legacy_keys == ["bicubic-sr2-s0", "bicubic-sr2"]  # it was kept once, seedless


def test_application_claims_are_judged_over_the_seeds_on_the_aggregates():
    from pipelines.quality.claims import findings
    from pipelines.quality.jobs import aggregate

    runs = [{"key": key, "seed": s, "suite": "superres", "kind": kind, "variant": None, "options": {},
             "cond_nll": base + s} for s in range(3)
            for key, kind, base in (("cvae-sr2", "variant", 100.0), ("network-sr2", "condition_network", 110.0),
                                    ("cvae-centre", "variant", 50.0), ("network-centre", "condition_network", 49.0))]
    found = {f["claim"]: f["verdict"] for f in findings(aggregate(runs))}
    assert found == {"CVAE beats the deterministic network on conditional NLL (superres, sr2)": "holds",
                     # 50, 51, 52 vs 49, 50, 51: a difference of 1 with s.e. 0.82, within 2 s.e.
                     "CVAE beats the deterministic network on conditional NLL (inpaint, centre)":
                         "not resolved at this budget"}


def test_quality_report_and_figures_become_mlflow_artifacts(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from pipelines.images import save_grid
    from pipelines.tracking import log_quality

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "quality"
    figure = save_grid(images(7), out / "figures" / "superres-sr2.png", nrow=7)
    (out / "quality.json").write_text('{"findings": []}')
    run_id = log_quality(out, {"figures": [str(figure)]})
    client = MlflowClient(tracking_uri=uri)
    got = client.download_artifacts(run_id, "figures/superres-sr2.png", str(tmp_path / "down"))
    assert open(got, "rb").read() == figure.read_bytes()
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize("options", [{"condition": "lowres", "lowres_factor": 2}, {"condition": "mask", "mask": "centre"}])
def test_network_cond_nll_is_scored_on_exactly_the_cvaes_first_nll_examples_images(prepared, options):
    from pipelines.quality.applications import train_condition_network

    config = RunConfig.from_dict({"model": {"latent_dim": 4, "hidden_dims": [32]},
                                  "train": {"epochs": 1, "batch_size": 64, "seed": 3}})
    n = 70  # fewer than the 128 test images: the whole split would give another mean
    net, cond, metrics = train_condition_network(config, prepared, options, nll_examples=n)
    assert metrics["nll_examples"] == n and metrics["test_examples"] == len(prepared.test)

    @torch.no_grad()
    def direct(count):  # -log p(scored pixels | c), summed in float64 over the first `count` images
        x = prepared.test.floats(torch.arange(count)).double()
        c = cond.condition_given(x.float())
        q = torch.sigmoid(net(c.c).view_as(x)).double()
        scored = torch.ones_like(x) if c.target_mask is None else c.target_mask.expand_as(x).double()
        return float(-((x * torch.log(q) + (1 - x) * torch.log1p(-q)) * scored).sum() / count)

    assert metrics["cond_nll"] == pytest.approx(direct(n), rel=1e-6)
    assert metrics["cond_nll"] != pytest.approx(direct(len(prepared.test)), rel=1e-6)
