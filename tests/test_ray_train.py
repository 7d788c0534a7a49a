"""Ray Train on a real local Ray cluster (started in this process with 4 logical CPUs).

* Gradient averaging: two workers give the parameters of one process that takes an optimiser step
  on the mean loss of the whole global batch.
* Fault tolerance: a worker SIGKILLed mid-run; the restarted worker group finishes from the last
  checkpoint with every epoch reported once, and ends exactly where an uninterrupted run ends.

Tests on clusters started with `ray start` (two nodes, Ray Jobs) are in test_ray_jobs.py.
"""
# test.sh: own process (it starts Ray: Ray Train V2 cannot start twice in one process)
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from core.config import RunConfig  # noqa: E402
from core.data import to_float, write_idx  # noqa: E402
from core.datasets import prepare_data
from core.serialization import build_variant, load_model  # noqa: E402
from core.serialization import read_checkpoint as load_checkpoint
from core.training import epoch_permutation, train  # noqa: E402
from core.variant import Batch  # noqa: E402
from pipelines.ray_train import RAY_RUN, run_ray  # noqa: E402

pytestmark = pytest.mark.slow


def make_idx_data(folder: Path, n_train: int = 256, n_test: int = 64, side: int = 12, seed: int = 0) -> Path:
    """A tiny MNIST-layout dataset: smooth random blobs, so a VAE has something to learn."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:side, :side]
    for split, n in (("train", n_train), ("t10k", n_test)):
        cy, cx = rng.uniform(2, side - 2, (2, n, 1, 1))
        images = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 6.0)
        write_idx(folder / f"{split}-images-idx3-ubyte", (images * 255).astype(np.uint8))
        write_idx(folder / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
    return folder


def tiny_config(data: Path, **train) -> RunConfig:
    return RunConfig().with_overrides({
        "data.dataset": str(data), "data.binarize": "static",
        "model.hidden_dims": [16], "model.latent_dim": 2,
        "train.eval_nll_samples": 2, "train.eval_nll_examples": 16, "train.progress": False,
        **{f"train.{k}": v for k, v in train.items()},
    })


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_idx_data(tmp_path_factory.mktemp("data"))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


# -- gradient averaging -------------------------------------------------------------------------

def whole_batch_reference(config: RunConfig, world_size: int, average: bool = True):
    """One process, one epoch: each step is one optimiser step on the gradient of the mean loss
    over the whole global batch. Only the reparameterisation noise is taken from the workers: the
    part of the batch that rank r holds is sampled from rank r's own stream (seeded seed+1+r, as in
    core.training.train), which is the one thing two processes cannot share with one. Returns the
    variant and the epoch's mean training metrics.

    `average=False` is what a broken data-parallel loop would do on rank 0: step on rank 0's part
    alone and log rank 0's metrics."""
    cfg, tcfg = config, config.train
    data = prepare_data(cfg.data.dataset, None, cfg.data.binarize, cfg.data.train_limit)
    torch.manual_seed(tcfg.seed)
    variant = build_variant(cfg, data.shape, data.num_classes)
    optimizers = variant.configure_optimizers(tcfg)
    streams = []
    for rank in range(world_size):
        torch.manual_seed(tcfg.seed + 1 + rank)
        streams.append(torch.get_rng_state())
    n, b = len(data.train), tcfg.batch_size
    perm = epoch_permutation(n, tcfg.seed, 1)
    sums: dict[str, float] = {}
    variant.train()
    for step in range(-(-n // b)):
        global_idx = perm[step * b:(step + 1) * b]
        for name, opt in optimizers.items():
            params = [p for g in opt.param_groups for p in g["params"]]
            total = [torch.zeros_like(p) for p in params]
            for rank, local_idx in enumerate(global_idx.tensor_split(world_size)):
                torch.set_rng_state(streams[rank])
                variant.zero_grad(set_to_none=True)
                labels = None if data.train.labels is None else data.train.labels[local_idx]
                out = variant.losses(Batch(to_float(data.train.images[local_idx]), labels), (name,))[name]
                streams[rank] = torch.get_rng_state()
                out.loss.backward()
                if not average and rank > 0:
                    continue
                # d(mean over the global batch) = sum_r n_r/N dL_r, with L_r the mean over rank r's part
                weight = len(local_idx) / len(global_idx) if average else 1.0
                for t, p in zip(total, params):
                    if p.grad is not None:
                        t += weight * p.grad
                for key, value in out.metrics.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach()) * len(local_idx)
            for t, p in zip(total, params):
                p.grad = t
            opt.step()
    seen = n if average else sum(len(perm[s * b:(s + 1) * b].tensor_split(world_size)[0]) for s in range(-(-n // b)))
    return variant, {f"train/{k}": v / seen for k, v in sums.items()}


def max_param_diff(a, b) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


def test_reference_is_the_core_loop_for_one_process(data):
    """The reference above is an independent re-statement of the core loop: with one rank it
    must reproduce core.training.train exactly (same seeds, same permutation, same steps)."""
    config = tiny_config(data, batch_size=48, epochs=1).with_overrides({"data.train_limit": 100})
    trained = train(config, report=lambda m, c: None)
    reference, _ = whole_batch_reference(config, world_size=1)
    assert max_param_diff(trained, reference) < 1e-6


def test_two_workers_match_one_process_on_the_whole_batch(local_ray, data, tmp_path):
    # 100 examples, global batches of 63 then 37: the ranks hold 32/31 then 19/18 examples, so
    # the shares are unequal and the scaling of each rank's loss matters.
    config = tiny_config(data, batch_size=63, epochs=1).with_overrides({"data.train_limit": 100})
    out = tmp_path / "run"
    run_ray(config, out, num_workers=2, final_nll_samples=2)
    trained, _ = load_model(out)

    reference, ref_metrics = whole_batch_reference(config, world_size=2)
    assert max_param_diff(trained, reference) < 1e-6

    # The test can fail: steps on rank 0's part alone (no averaging) land elsewhere.
    unaveraged, shard_metrics = whole_batch_reference(config, world_size=2, average=False)
    assert max_param_diff(trained, unaveraged) > 1e-4

    # The logged training metrics are means over all 100 examples, not over rank 0's shard.
    (logged,) = read_jsonl(out / "metrics.jsonl")
    assert logged["epoch"] == 1
    for key, value in ref_metrics.items():
        assert logged[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert logged["train/elbo"] != pytest.approx(shard_metrics["train/elbo"], rel=1e-5)

    # The run folder has the in-process layout plus ray_run.json.
    for name in ("config.json", "model.safetensors", "run_config.yaml", "checkpoints/last.pt", "results.json", RAY_RUN):
        assert (out / name).is_file(), name
    info = json.loads((out / RAY_RUN).read_text())
    assert [h["epoch"] for h in info["history"]] == [1]
    assert sorted(w["rank"] for w in info["history"][0]["workers"]) == [0, 1]
    # By default the machine's CPUs are split over the local workers, each CPU a torch thread.
    per_worker = max(1, os.cpu_count() // 2)
    assert info["cpus_per_worker"] == per_worker
    assert [w["torch_threads"] for w in info["history"][0]["workers"]] == [per_worker, per_worker]
    assert Path(info["storage_path"]) == out / "ray_results"


def test_one_local_worker_reserves_the_machine_and_trains_on_every_cpu(local_ray, data, tmp_path):
    """A 1-CPU Ray worker runs one torch thread: the default gives a single local worker every CPU,
    each a thread, so Ray trains at in-process speed on one node."""
    config = tiny_config(data, batch_size=32, epochs=1).with_overrides({"data.train_limit": 64})
    run_ray(config, tmp_path / "run", num_workers=1, final_nll_samples=2)
    info = json.loads((tmp_path / "run" / RAY_RUN).read_text())
    assert info["cpus_per_worker"] == os.cpu_count()
    assert [w["torch_threads"] for w in info["history"][0]["workers"]] == [os.cpu_count()]


# -- fault tolerance ----------------------------------------------------------------------------

def kill_worker_after_epoch(run: Path, pid_file: Path, epoch: int, result: dict, deadline_s: float = 240.0) -> None:
    """SIGKILL the worker that published its pid, once Ray has registered `epoch`'s checkpoint
    (the controller writes metrics.jsonl after registering it)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if pid_file.exists() and (run / "metrics.jsonl").exists():
            if any(m["epoch"] == epoch for m in read_jsonl(run / "metrics.jsonl")):
                pid = int(pid_file.read_text())
                os.kill(pid, signal.SIGKILL)
                result["killed"] = pid
                return
        time.sleep(0.05)
    result["error"] = "the worker never reached the kill point"


def test_killed_worker_resumes_from_last_checkpoint(local_ray, data, tmp_path):
    config = tiny_config(data, batch_size=32, epochs=4).with_overrides(
        {"data.train_limit": 128, "data.binarize": "dynamic"})  # dynamic: the RNG state matters on resume
    run, pid_file = tmp_path / "faulty", tmp_path / "worker.pid"
    result: dict = {}
    killer = threading.Thread(target=kill_worker_after_epoch, args=(run, pid_file, 2, result), daemon=True)
    killer.start()
    run_ray(config, run, num_workers=2, max_failures=1, final_nll_samples=2,
            _test_hold_after_report={"epoch": 2, "rank": 1, "pid_file": str(pid_file)})
    killer.join()
    assert "killed" in result, result

    # Every epoch once, in the metrics and in the checkpoint history.
    assert [m["epoch"] for m in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3, 4]
    info = json.loads((run / RAY_RUN).read_text())
    history = info["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    before = {w["pid"] for h in history[:2] for w in h["workers"]}
    after = {w["pid"] for h in history[2:] for w in h["workers"]}
    assert result["killed"] in before and not before & after  # epochs 3-4 came from a new worker group
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 4
    kept = sorted(p.name for p in (Path(info["storage_path"]) / info["name"]).glob("epoch_*"))
    assert kept == ["epoch_0002", "epoch_0003", "epoch_0004"]  # the last 3

    # Model, optimiser, scheduler, epoch and both ranks' RNG streams were restored: the interrupted
    # run ends exactly where an uninterrupted one does.
    clean = tmp_path / "clean"
    run_ray(config, clean, num_workers=2, final_nll_samples=2)
    assert max_param_diff(load_model(run)[0], load_model(clean)[0]) == 0.0
    assert read_jsonl(run / "metrics.jsonl")[3]["train/elbo"] == read_jsonl(clean / "metrics.jsonl")[3]["train/elbo"]
