"""The adversarial autoencoder on Ray Train (a real local Ray cluster, 2 workers): its three phases,
each a forward pass, backward into its own group and an all-reduce, give the parameters of one
process stepping each phase on the mean loss of the whole global batch."""
# test.sh: own process (it starts Ray: Ray Train V2 cannot start twice in one process)
from __future__ import annotations

from pathlib import Path

import pytest

from core.config import RunConfig
from core.serialization import load_model
from pipelines.ray_train import run_ray
from test_ray_train import make_idx_data, max_param_diff, read_jsonl, whole_batch_reference

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_idx_data(tmp_path_factory.mktemp("data"))


def aae_config(data: Path) -> RunConfig:
    # Gaussian encoder and a label-conditioned mixture prior: every phase draws noise (codes and
    # prior samples) and reads the labels, so per-rank streams and label shards both matter.
    return RunConfig.from_dict({
        "variant_name": "aae",
        "variant": {"encoder": "gaussian", "prior": "mixture", "label_conditioned_prior": True,
                    "discriminator_hidden": [16]},
        "model": {"hidden_dims": [16], "latent_dim": 2},
        "data": {"dataset": str(data), "binarize": "static", "train_limit": 100},
        "train": {"epochs": 1, "batch_size": 63, "eval_nll_samples": 2, "eval_nll_examples": 16, "progress": False},
    })


def test_two_workers_match_one_process_on_the_whole_batch(local_ray, data, tmp_path):
    config = aae_config(data)
    out = tmp_path / "run"
    run_ray(config, out, num_workers=2, final_nll_samples=2)
    trained, _ = load_model(out)

    reference, ref_metrics = whole_batch_reference(config, world_size=2)  # phases in order, one optimiser each
    assert max_param_diff(trained, reference) < 1e-6
    unaveraged, _ = whole_batch_reference(config, world_size=2, average=False)
    assert max_param_diff(trained, unaveraged) > 1e-4

    (logged,) = read_jsonl(out / "metrics.jsonl")
    # Means over all 100 examples; the reference keys metrics without the group ("loss" of two
    # groups would add up there), so compare the names only one group logs.
    for group, key in (("reconstruction", "recon"), ("discriminator", "accuracy"), ("generator", "fooled")):
        assert logged[f"train/{group}/{key}"] == pytest.approx(ref_metrics[f"train/{key}"], rel=1e-5, abs=1e-6)
    assert "train/generator/loss" in logged and "train/discriminator/loss" in logged
