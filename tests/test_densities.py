"""Densities that are densities (issue 16): a Gaussian likelihood on 8-bit grey levels trains and is
scored on dequantised data, (x + u) / 256, with bits/dim beside the nats; a Bernoulli likelihood on
grey levels is refused, naming the field; the logged learning rate is the one the epoch used."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import SIZE, make_dataset, small_config
from core.config import ConfigError
from core.data import PreparedData
from core.datasets import fit_to_likelihood
from core.evaluation import evaluate
from core.serialization import build_variant
from core.training import train
from pipelines.cli import main


def _grey(n_train=64, n_test=40) -> PreparedData:
    return PreparedData(make_dataset(n_train, seed=0), make_dataset(n_test, seed=1), dynamic_train=False)


def test_gaussian_nll_in_bits_per_dim_equals_a_direct_computation():
    config = small_config("vae", latent_dim=3).with_overrides(
        {"model.likelihood": "gaussian_fixed", "model.fixed_sigma": 0.5, "data.binarize": "none"})
    data = fit_to_likelihood(_grey(), config)
    assert data.dequantized and data.test.noise is not None
    variant = build_variant(config, data.shape, data.num_classes)
    # q(z|x) = p(z) = N(0, I) and p(x|z) = N(0.3, 0.5^2) whatever z: every importance weight is p(x)
    # exactly, so the estimate must equal the Gaussian density of the dequantised pixels.
    with torch.no_grad():
        for layer in (variant.vae.encoder.head, variant.vae.decoder.out):
            layer.weight.zero_()
            layer.bias.zero_()
        variant.vae.decoder.out.bias.fill_(0.3)
    metrics = evaluate(variant, data.test, nll_samples=7)

    x = (data.test.images.double() + data.test.noise.double()) / 256  # (x + u) / 256, u fixed
    assert ((x > 0) & (x < 1)).all() and torch.equal((x * 256).floor().to(torch.uint8), data.test.images)
    log_p = (-0.5 * math.log(2 * math.pi) - math.log(0.5) - 0.5 * ((x - 0.3) / 0.5) ** 2).flatten(1).sum(1)
    dims = SIZE * SIZE
    expected_bits = float(((-log_p + dims * math.log(256)) / (dims * math.log(2))).mean())
    assert metrics["nll"] == pytest.approx(float(-log_p.mean()), rel=1e-5)
    assert metrics["bits_per_dim"] == pytest.approx(expected_bits, rel=1e-5)


def test_training_batches_of_a_gaussian_on_grey_levels_are_freshly_dequantised():
    config = small_config("vae", epochs=1).with_overrides({"model.likelihood": "gaussian", "data.binarize": "none"})
    data = _grey()
    seen = []
    variant = build_variant(config, data.shape, data.num_classes)
    original = type(variant).losses

    def spy(self, batch, groups):
        seen.append(batch.x.clone())
        return original(self, batch, groups)

    type(variant).losses = spy
    try:
        history = []
        train(config, report=lambda m, c: history.append(m), data=data)
    finally:
        type(variant).losses = original
    assert seen and "test/bits_per_dim" in history[-1]
    first = seen[0]
    assert ((first > 0) & (first < 1)).all()
    # not the /255 grey levels: a continuous draw within each pixel's 1/256 bin
    assert not torch.allclose(first * 255, (first * 255).round())


def test_a_bernoulli_likelihood_on_grey_levels_is_refused_naming_the_field(idx_folder, tmp_path, capsys):
    config = small_config("vae").with_overrides({"data.binarize": "none"})  # bernoulli by default
    with pytest.raises(ConfigError, match=r"model\.likelihood: bernoulli .*data\.binarize=none"):
        train(config, data=_grey())
    assert main(["train", "--dataset", str(idx_folder), "--output", str(tmp_path / "run"), "--epochs", "1",
                 "--set", "data.binarize=none"]) == 1
    err = capsys.readouterr().err
    assert "model.likelihood" in err and "data.binarize=none" in err
    # binary data with binarize=none is a fine Bernoulli target
    binary = _grey()
    binary.train.images[:] = (binary.train.images > 127).to(torch.uint8) * 255
    assert fit_to_likelihood(binary, config) is binary


def test_train_lr_is_the_rate_the_epoch_used():
    config = small_config("vae", epochs=2, lr=1e-3, lr_schedule="cosine", eval_nll_examples=4)
    history = []
    train(config, report=lambda m, c: history.append(m), data=PreparedData(make_dataset(64, 0), make_dataset(8, 1),
                                                                          dynamic_train=True))
    # cosine over 2 epochs: factor 1 in epoch 1, 0.5 in epoch 2 (0 would be the rate after it)
    assert [h["train/lr"] for h in history] == pytest.approx([1e-3, 0.5e-3])
