"""Saving and loading: a model is config JSON plus safetensors weights, a checkpoint is a
weights-only torch file; nothing is ever unpickled, and a mismatch is a readable ModelLoadError."""
from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file

from core.networks import DataShape
from core.serialization import CONFIG_FILE, WEIGHTS_FILE, ModelLoadError, build_variant, load_model, save_model
from core.serialization import read_checkpoint as load_checkpoint
from core.training import save_checkpoint, train
from core.variant import Batch
from conftest import NUM_CLASSES, small_config

SHAPE = DataShape(1, 8, 8)

CASES = [
    ("vae", {"beta": 2.0}),
    ("iwae", {"k": 3}),
    ("cvae", {"condition": "label"}),
    ("cvae", {"condition": "quadrants", "visible_quadrants": 2}),
    ("dvae", {"corruption": "gaussian", "noise_level": 0.3}),
    ("m2", {"num_labels": 40}),
]
IDS = ["vae", "iwae", "cvae-label", "cvae-quadrants", "dvae", "m2"]


def _build(name, options, architecture="mlp", latent_dim=3, seed=0):
    torch.manual_seed(seed)
    config = small_config(name, options=options, architecture=architecture, latent_dim=latent_dim)
    variant = build_variant(config, SHAPE, NUM_CLASSES)
    with torch.no_grad():  # move away from the initialisation, so equality is not a coincidence of seeds
        for p in variant.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return variant.eval(), config


# -- 7. save then load gives identical outputs ----------------------------------------------------

@pytest.mark.parametrize("architecture", ["mlp", "conv"])
@pytest.mark.parametrize("name,options", CASES, ids=IDS)
def test_save_then_load_gives_identical_model(tmp_path, name, options, architecture, binary_batch, test_set):
    variant, config = _build(name, options, architecture)
    folder = save_model(variant, config, tmp_path / "model")
    assert (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files left

    torch.manual_seed(12345)  # a different seed: nothing may depend on initialisation
    loaded, loaded_config = load_model(folder)
    assert type(loaded) is type(variant) and not loaded.training
    assert loaded_config == config
    assert loaded.shape == SHAPE and loaded.num_classes == NUM_CLASSES

    own, other = variant.state_dict(), loaded.state_dict()
    assert list(own) == list(other)
    for key in own:
        assert own[key].dtype == other[key].dtype and torch.equal(own[key], other[key]), key

    x, y = binary_batch[:16], test_set.labels[:16]
    m1, lv1 = variant.encode(x, y)
    m2, lv2 = loaded.encode(x, y)
    assert torch.equal(m1, m2) and torch.equal(lv1, lv2)
    if name == "m2":  # without labels m2 encodes under its classifier's guess
        assert torch.equal(variant.encode(x)[0], loaded.encode(x)[0])
    torch.manual_seed(0)
    w1 = variant.log_weights(Batch(x, y), 2)
    torch.manual_seed(0)
    w2 = loaded.log_weights(Batch(x, y), 2)
    assert torch.equal(w1, w2)


def test_saved_folder_holds_json_metadata_and_safetensors(tmp_path):
    variant, config = _build("iwae", {"k": 3})
    folder = save_model(variant, config, tmp_path / "m", extra={"test_metrics": {"nll": 12.5}})
    meta = json.loads((folder / CONFIG_FILE).read_text())
    assert meta["format_version"] == 1 and meta["variant"] == "iwae"
    assert meta["data_shape"] == [1, 8, 8] and meta["num_classes"] == NUM_CLASSES and meta["latent_dim"] == 3
    assert meta["config"] == config.to_dict() and meta["test_metrics"] == {"nll": 12.5}
    weights = load_file(str(folder / WEIGHTS_FILE))
    assert set(weights) == set(variant.state_dict())
    assert (folder / WEIGHTS_FILE).read_bytes()[8:9] == b"{"  # safetensors: 8-byte length, JSON header


# -- loading refuses what does not fit ---------------------------------------------------------------

def _swap_weights(tmp_path, target, source):
    tmp_path.mkdir(parents=True, exist_ok=True)
    save_model(*target, tmp_path / "a")
    save_model(*source, tmp_path / "b")
    shutil.copy(tmp_path / "b" / WEIGHTS_FILE, tmp_path / "a" / WEIGHTS_FILE)
    with pytest.raises(ModelLoadError) as err:
        load_model(tmp_path / "a")
    return str(err.value)


def test_weights_of_another_shape_are_refused_naming_the_tensor(tmp_path):
    message = _swap_weights(tmp_path, _build("vae", {}, latent_dim=2), _build("vae", {}, latent_dim=3))
    assert str(tmp_path / "a" / WEIGHTS_FILE) in message
    # one of the tensors whose shape depends on latent_dim is named, with both shapes
    named = [k for k in ("encoder.head.weight", "encoder.head.bias", "decoder.body.0.weight") if k in message]
    assert len(named) == 1, message
    assert "has shape" in message and "the model needs" in message and "vae" in message


def test_weights_of_another_variant_are_refused_naming_the_keys(tmp_path):
    message = _swap_weights(tmp_path, _build("vae", {}), _build("m2", {"num_labels": 40}))
    assert "unexpected" in message and "classifier" in message
    message = _swap_weights(tmp_path / "2", _build("cvae", {"condition": "label"}), _build("vae", {}))
    assert "missing" in message and "prior" in message and "cvae" in message


def test_weights_of_another_architecture_are_refused(tmp_path):
    message = _swap_weights(tmp_path, _build("vae", {}, "mlp"), _build("vae", {}, "conv"))
    assert "missing" in message and "unexpected" in message


def test_broken_model_folders_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="no such model folder"):
        load_model(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json missing"):
        load_model(tmp_path / "empty")
    variant, config = _build("vae", {})
    folder = save_model(variant, config, tmp_path / "m")
    (folder / WEIGHTS_FILE).write_bytes(b"\x00" * 5)
    with pytest.raises(ModelLoadError, match="not a valid safetensors"):
        load_model(folder)
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelLoadError, match="model.safetensors missing"):
        load_model(folder)
    meta = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps(meta | {"format_version": 99}))
    with pytest.raises(ModelLoadError, match="unsupported model format 99"):
        load_model(folder)
    meta["config"]["model"]["latent_dim"] = 0
    (folder / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="model.latent_dim"):
        load_model(folder)
    (folder / CONFIG_FILE).write_text("{")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_model(folder)


# -- checkpoints: weights only, never code ----------------------------------------------------------

class _Payload:
    """Unpickling this object runs a shell command."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_checkpoint_is_refused(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoints" / "last.pt"
    path.parent.mkdir()
    payload = _Payload(f"touch {marker}")
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save({"epoch": 1, "model": payload}, path)
    with pytest.raises(ModelLoadError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()
    # The payload is live: an unsafe loader would have run it (shows the test checks something).
    if writer == "pickle":
        proof = tmp_path / "proof"
        pickle.loads(pickle.dumps(_Payload(f"touch {proof}")))
        assert proof.exists() or sys.platform == "win32"


def test_resume_from_a_saved_checkpoint_continues_exactly(prepared, tmp_path):
    """Resume restores model, optimisers, schedulers, epoch and RNG: epochs 2-3 after a resume from
    the epoch-1 file are bit-identical to an uninterrupted run."""
    config = small_config("m2", epochs=3, lr_schedule="cosine")  # m2 draws labelled batches from the RNG
    history = []

    def report(metrics, checkpoint):  # like the CLI: write each checkpoint when it is reported
        history.append(metrics)
        save_checkpoint(checkpoint, tmp_path / f"epoch{metrics['epoch']}.pt")

    full = train(config, report=report, data=prepared)
    assert not list(tmp_path.glob("*.tmp"))
    restored = load_checkpoint(tmp_path / "epoch1.pt")  # weights_only=True: all a resume needs survives
    assert restored["epoch"] == 1 and restored["config"] == config.to_dict()
    assert set(restored) >= {"model", "optimizers", "schedulers", "rng", "metrics"}
    assert restored["metrics"] == history[0]

    resumed_history = []
    resumed = train(config, report=lambda m, c: resumed_history.append(m), resume=restored, data=prepared)
    assert [m["epoch"] for m in resumed_history] == [2, 3]
    for a, b in zip(history[1:], resumed_history):
        for key in a:
            if key not in ("train/images_per_sec", "train/epoch_seconds"):
                assert a[key] == b[key], key
    for key, value in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_reported_checkpoint_is_a_snapshot_that_later_training_does_not_change(prepared):
    """A report callback may keep the checkpoint (a best-so-far copy, an asynchronous writer, Ray's
    report): the epoch-1 checkpoint must still hold the epoch-1 weights and optimiser state after
    training goes on."""
    config = small_config("vae", epochs=2)
    kept, copies = [], []

    def report(metrics, checkpoint):
        kept.append(checkpoint)
        copies.append(copy.deepcopy(checkpoint))

    train(config, report=report, data=prepared)
    first, at_report = kept[0], copies[0]
    changed = [k for k, v in at_report["model"].items() if not torch.equal(first["model"][k], v)]
    assert not changed, f"epoch-1 checkpoint weights changed by epoch 2: {changed[:3]}"
    state_then = at_report["optimizers"]["model"]["state"]
    state_now = first["optimizers"]["model"]["state"]
    changed = [i for i in state_then if not torch.equal(state_then[i]["exp_avg"], state_now[i]["exp_avg"])]
    assert not changed, f"epoch-1 checkpoint optimiser state changed by epoch 2 (params {changed[:3]})"
