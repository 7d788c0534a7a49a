"""The training loop: a function of a RunConfig that reports metrics and a checkpoint each epoch.

It knows nothing of Ray or MLflow. Callers pass `report(metrics, checkpoint)`: the CLI prints and
writes checkpoints to disk; Ray Train's worker function forwards to `ray.train.report`. When a
torch.distributed process group exists the loop is data-parallel:

* each step takes one global batch of `batch_size` examples from a permutation that every rank
  draws from the same per-epoch seed, and splits it across ranks, so each example is seen exactly
  once per epoch and the hyperparameters mean the same whatever the number of workers;
* each rank scales its loss by its share of the global batch and gradients are averaged, which
  gives exactly the gradient of the mean loss over the whole global batch;
* metrics are summed over ranks before they are reported.
"""
from __future__ import annotations

import copy
import math
import os
import time
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from core.config import RunConfig
from core.data import PreparedData, labelled_subset, prepare_data, to_float
from core.distributed import all_reduce_sum, average_gradients, gather_objects, world
from core.evaluation import evaluate
from core.serialization import build_variant, load_state
from core.variant import Batch, Variant

Report = Callable[[dict[str, Any], dict[str, Any]], None]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; raised before the optimiser step, so no bad update is made."""


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The same permutation on every rank, a new one each epoch."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def lr_factor(schedule: str, epochs: int) -> Callable[[int], float]:
    if schedule == "cosine":
        return lambda e: 0.5 * (1.0 + math.cos(math.pi * min(e, epochs) / epochs))
    return lambda e: 1.0


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code


def print_report(metrics: dict[str, Any], checkpoint: dict[str, Any] | None = None) -> None:
    keys = ["train/bound", "train/elbo", "train/kl", "test/elbo", "test/nll", "test/active_units", "test/accuracy",
            "train/images_per_sec"]
    parts = [f"{k.split('/')[0][:2]}_{k.split('/')[1]}={metrics[k]:.2f}" for k in keys if k in metrics]
    tqdm.write(f"epoch {metrics['epoch']}: " + " ".join(parts))


def train(config: RunConfig, report: Report = print_report, resume: dict[str, Any] | None = None,
          device: str | torch.device = "cpu", data: PreparedData | None = None) -> Variant:
    """Train `config` from scratch or from a checkpoint; returns the trained variant."""
    cfg, tcfg = config, config.train
    rank, size = world()
    device = torch.device(device)
    if data is None:
        d = cfg.data
        data = prepare_data(d.dataset, d.data_dir, d.binarize, d.train_limit, d.test_limit)
    train_set = data.train
    if device.type != "cpu":  # keep the whole (uint8) dataset resident on the accelerator
        train_set = type(train_set)(train_set.images.to(device), None if train_set.labels is None else train_set.labels.to(device),
                                    train_set.num_classes, train_set.name)

    torch.manual_seed(tcfg.seed)  # identical initial weights on every rank
    variant = build_variant(cfg, data.shape, data.num_classes).to(device)
    if tcfg.compile:  # in place (nn.Module.compile): parameter names and checkpoints are unchanged
        variant.vae.encoder.compile()
        variant.vae.decoder.compile()
    optimizers = variant.configure_optimizers(tcfg)
    schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(tcfg.lr_schedule, tcfg.epochs))
                  for name, opt in optimizers.items()}
    groups = {name: [p for g in opt.param_groups for p in g["params"]] for name, opt in optimizers.items()}

    labelled = None
    if variant.num_labelled() is not None:
        if train_set.labels is None:
            raise ValueError(f"{variant.name} needs a labelled dataset; {train_set.name} has no labels")
        labelled = labelled_subset(data.train.labels, variant.num_labelled(), data.num_classes, seed=tcfg.seed).to(device)

    start_epoch = 1
    torch.manual_seed(tcfg.seed + 1 + rank)  # each rank its own noise stream
    if resume is not None:
        load_state(variant, resume["model"], "checkpoint")
        for name, opt in optimizers.items():
            opt.load_state_dict(resume["optimizers"][name])
            schedulers[name].load_state_dict(resume["schedulers"][name])
        start_epoch = int(resume["epoch"]) + 1
        rng = resume.get("rng") or []
        if len(rng) == size:  # same world size: every rank continues its own stream exactly
            _set_rng_state(rng[rank])
        else:
            torch.manual_seed(tcfg.seed + 1 + rank + 7919 * start_epoch)

    n_train, batch_size = len(train_set), tcfg.batch_size
    steps = -(-n_train // batch_size)
    show = tcfg.progress and rank == 0
    for epoch in range(start_epoch, tcfg.epochs + 1):
        variant.train()
        perm = epoch_permutation(n_train, tcfg.seed, epoch).to(device)
        sums: dict[str, torch.Tensor] = {}
        seen = torch.zeros((), dtype=torch.float64)
        started = time.perf_counter()
        for step in tqdm(range(steps), desc=f"epoch {epoch}/{tcfg.epochs}", disable=not show, leave=False):
            global_idx = perm[step * batch_size:(step + 1) * batch_size]
            local_idx = global_idx.tensor_split(size)[rank]
            # Scaling by the local share makes the averaged gradient the full global-batch mean.
            share = len(local_idx) * size / len(global_idx)
            batch = Batch(to_float(train_set.images[local_idx], data.dynamic_train),
                          None if train_set.labels is None else train_set.labels[local_idx])
            if labelled is not None:
                pick = labelled[torch.randint(len(labelled), (variant.options.labelled_batch_size,), device=device)]
                batch.x_labelled = to_float(train_set.images[pick], data.dynamic_train)
                batch.y_labelled = train_set.labels[pick]
            for name, opt in optimizers.items():
                opt.zero_grad(set_to_none=True)
                if len(local_idx):
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tcfg.autocast == "bf16"):
                        out = variant.training_step(batch, name)
                    if not torch.isfinite(out.loss):
                        raise NonFiniteLossError(
                            f"non-finite loss ({out.loss.item()}) at epoch {epoch}, step {step + 1}/{steps}, "
                            f"optimiser {name!r}, batch of examples {local_idx[:8].tolist()}...; "
                            f"the last good checkpoint is kept (try a lower train.lr or train.grad_clip)")
                    (out.loss * share).backward()
                    for key, value in out.metrics.items():
                        sums[key] = sums.get(key, 0.0) + value.detach().double() * len(local_idx)
                average_gradients(groups[name])
                if tcfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(groups[name], tcfg.grad_clip)
                opt.step()
            seen += len(local_idx)
        for sched in schedulers.values():
            sched.step()
        seconds = time.perf_counter() - started

        names = sorted(sums)
        packed = all_reduce_sum(torch.stack([torch.as_tensor(sums[n], dtype=torch.float64).cpu() for n in names] + [seen]))
        metrics: dict[str, Any] = {"epoch": epoch}
        metrics.update({f"train/{n}": float(packed[i] / packed[-1]) for i, n in enumerate(names)})
        metrics["train/images_per_sec"] = float(packed[-1]) / seconds
        metrics["train/epoch_seconds"] = seconds
        metrics["train/lr"] = next(iter(optimizers.values())).param_groups[0]["lr"]
        test = evaluate(variant, data.test, nll_samples=tcfg.eval_nll_samples, nll_examples=tcfg.eval_nll_examples,
                        batch_size=tcfg.eval_batch_size, device=device)
        metrics.update({f"test/{k}": v for k, v in test.items()})
        checkpoint = {
            "epoch": epoch,
            # Copies, not views: on CPU .cpu() aliases the live weights, and a caller that keeps
            # the checkpoint must not see later training.
            "model": {k: v.detach().to("cpu", copy=True) for k, v in variant.state_dict().items()},
            "optimizers": {n: copy.deepcopy(o.state_dict()) for n, o in optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in schedulers.items()},
            "rng": gather_objects(_rng_state()),
            "config": cfg.to_dict(),
            "metrics": metrics,
        }
        report(metrics, checkpoint)
    return variant
