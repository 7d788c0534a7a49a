"""Reference outputs of the zoo before the Zoo v2 refactor (issue 13, part 5): what they are, how
one is computed, and the one weight hash that both the recorder and the tests use.

scripts/record_reference.py writes tests/reference/zoo_v1_outputs.json from these functions;
tests/test_reference_outputs.py (in-process) and tests/test_reference_outputs_ray.py (Ray Train,
2 workers) re-train each recorded case with the current code and compare bit for bit.

Everything here goes through public entry points (RunConfig.from_dict, core.training.train,
pipelines.ray_train.run_ray and the run folder they write), so a refactor that keeps old configs
loading and keeps those entry points can be checked against the recording.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import torch

from core.config import RunConfig

REFERENCE_FILE = Path(__file__).resolve().parent / "reference" / "zoo_v1_outputs.json"

IN_PROCESS, RAY = "in_process", "ray_train_2_workers"
RAY_WORKERS = 2

# Per-epoch metrics that measure time, not the model: never compared.
WALL_CLOCK_METRICS = frozenset({"train/images_per_sec", "train/epoch_seconds"})

# Reductions split over several threads add in another order and round differently: the
# recording and the tests train in-process on one thread (Ray's 1-CPU workers get
# OMP_NUM_THREADS=1 from Ray).
TORCH_THREADS = 1

# The fixed setting every case shares: 1 epoch on the first 2,000 / 500 Fashion-MNIST images,
# MLP defaults, dynamic binarisation, seed 0.
BASE_SETTINGS: dict[str, Any] = {
    "data.dataset": "fashion-mnist",
    "data.train_limit": 2000,
    "data.test_limit": 500,
    "train.epochs": 1,
    "train.batch_size": 128,
    "train.seed": 0,
    "train.eval_nll_samples": 10,
    "train.eval_nll_examples": 100,
    "train.progress": False,
    # torch's default Adam, as every zoo v1 case was recorded; fused Adam, the default since
    # issue #20, rounds differently and has a case of its own below.
    "train.fused_adam": False,
}

# name -> (variant, variant options); names become the test ids.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "vae": ("vae", {}),
    "vae-samples2-beta0.5": ("vae", {"samples": 2, "beta": 0.5}),
    "iwae-k5": ("iwae", {"k": 5}),
    "cvae-label": ("cvae", {"condition": "label"}),
    "cvae-quadrants1": ("cvae", {"condition": "quadrants", "visible_quadrants": 1}),
    "dvae-gaussian": ("dvae", {"corruption": "gaussian"}),
    "dvae-salt_and_pepper": ("dvae", {"corruption": "salt_and_pepper"}),
    "dvae-masking": ("dvae", {"corruption": "masking"}),
    "m2-100labels": ("m2", {"num_labels": 100, "labelled_batch_size": 32}),
    "vae-fused-adam": ("vae", {}),  # the default optimiser since issue #20 (recorded in-process only)
}
# Settings of a case on top of BASE_SETTINGS.
CASE_SETTINGS: dict[str, dict[str, Any]] = {"vae-fused-adam": {"train.fused_adam": True}}


def case_config(name: str) -> RunConfig:
    variant, options = CASES[name]
    return RunConfig.from_dict({"variant_name": variant, "variant": options}).with_overrides(
        BASE_SETTINGS | CASE_SETTINGS.get(name, {}))


def state_dict_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the tensors in sorted key order: for each, its name, dtype and shape, then its
    raw bytes (C order). Equal hashes mean bit-identical weights under identical names."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        header = f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0"
        digest.update(header.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """An epoch's metrics without the wall-clock ones."""
    return {k: v for k, v in metrics.items() if k not in WALL_CLOCK_METRICS}


def train_in_process(config: RunConfig) -> tuple[str, dict[str, Any]]:
    """core.training.train in this process: (sha256 of the trained weights, last epoch's metrics)."""
    from core.training import train

    torch.set_num_threads(TORCH_THREADS)
    history: list[dict[str, Any]] = []
    variant = train(config, report=lambda metrics, checkpoint: history.append(metrics))
    return state_dict_sha256(variant.state_dict()), model_metrics(history[-1])


def train_on_ray(config: RunConfig, run_folder: Path) -> tuple[str, dict[str, Any]]:
    """pipelines.ray_train.run_ray on RAY_WORKERS CPU workers of the Ray cluster this process is
    connected to; the weights and metrics are read back from the run folder it writes."""
    from safetensors.torch import load_file

    from pipelines.ray_train import run_ray

    # The final evaluation (results.json) is not part of the reference: keep it cheap.
    run_ray(config, run_folder, num_workers=RAY_WORKERS, cpus_per_worker=1.0, final_nll_samples=1)
    weights = load_file(str(run_folder / "model.safetensors"))
    lines = [json.loads(ln) for ln in (run_folder / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return state_dict_sha256(weights), model_metrics(lines[-1])


def load_reference(mode: str) -> list[dict[str, Any]]:
    """The recorded entries of one mode, in recording order."""
    if not REFERENCE_FILE.is_file():
        raise FileNotFoundError(f"{REFERENCE_FILE} is missing: run `python scripts/record_reference.py` on the "
                                f"commit before the refactor")
    entries = [e for e in json.loads(REFERENCE_FILE.read_text())["entries"] if e["mode"] == mode]
    if not entries:
        raise ValueError(f"{REFERENCE_FILE} holds no {mode!r} entries")
    return entries
