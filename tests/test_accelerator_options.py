"""train.autocast and train.compile: the accelerator options of core.training.train. They run on a
CPU too, which is where these tests check them: bf16 autocast must run the networks in bfloat16
while every density and sum stays float32, and compile must train the same model (same parameter
names, same steps up to float rounding) as the eager loop."""
from __future__ import annotations

import pytest
import torch

from core.training import train
from conftest import ALL_VARIANTS, small_config


def _run(config, data):
    history = []
    variant = train(config, report=lambda metrics, checkpoint: history.append((metrics, checkpoint)), data=data)
    return variant, history


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_bf16_autocast_runs_the_networks_in_bf16_and_keeps_densities_float32(name, prepared, monkeypatch):
    config = small_config(name, epochs=2, autocast="bf16")
    assert small_config(name).train.autocast == "off"
    seen: list[torch.dtype] = []
    # Record the dtype every linear layer computes in while autocast is on (the training steps).
    original = torch.nn.Linear.forward

    def spy(self, x):
        out = original(self, x)
        if torch.is_autocast_enabled("cpu"):
            seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", spy)
    variant, history = _run(config, prepared)
    monkeypatch.undo()
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in variant.parameters())
    assert all(v.dtype == torch.float32 for v in history[-1][1]["model"].values() if v.is_floating_point())
    _, ref_history = _run(small_config(name, epochs=2), prepared)
    bf16_elbo, fp32_elbo = history[-1][0]["train/elbo"], ref_history[-1][0]["train/elbo"]
    assert bf16_elbo == pytest.approx(fp32_elbo, rel=0.05), (bf16_elbo, fp32_elbo)


def test_autocast_leaves_network_outputs_and_log_likelihoods_float32(trained, prepared):
    """Under bf16 autocast the linear layers compute in bf16, but what the VAE hands on (posterior
    parameters, decoder outputs) is float32, and so is the log-likelihood summed over pixels: the
    same value as float32 arithmetic on those outputs (only the matmuls are rounded)."""
    variant = trained("vae").variant
    x = prepared.test.images[:16].float() / 255.0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert variant.vae.encoder(x)[0].dtype == torch.bfloat16  # the network itself runs in bf16
        mean, logvar = variant.vae.encode(x)
        params = variant.vae.decode(mean)
        log_px = variant.vae.likelihood.log_prob(params, x)
    assert mean.dtype == logvar.dtype == params.dtype == log_px.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(log_px, variant.vae.likelihood.log_prob(params, x))
        fp32_log_px = variant.vae.likelihood.log_prob(variant.vae.decode(variant.vae.encode(x)[0]), x)
    assert not torch.equal(log_px, fp32_log_px)  # bf16 matmuls did round
    torch.testing.assert_close(log_px, fp32_log_px, rtol=0.05, atol=0.5)


def test_compile_trains_the_same_model_with_the_same_parameter_names(prepared):
    eager, eager_history = _run(small_config("vae", epochs=1), prepared)
    compiled, compiled_history = _run(small_config("vae", epochs=1, compile=True), prepared)
    assert compiled.vae.encoder._compiled_call_impl is not None  # the option did compile
    assert eager.vae.encoder._compiled_call_impl is None
    eager_state, compiled_state = eager_history[-1][1]["model"], compiled_history[-1][1]["model"]
    assert list(compiled_state) == list(eager_state)  # checkpoints load into an eager model
    for key in eager_state:
        torch.testing.assert_close(compiled_state[key], eager_state[key], rtol=1e-3, atol=1e-4)
    assert compiled_history[-1][0]["train/elbo"] == pytest.approx(eager_history[-1][0]["train/elbo"], rel=1e-3)
