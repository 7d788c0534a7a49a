"""The training loop: a function of a RunConfig that reports metrics and a checkpoint each epoch.

It knows nothing of Ray or MLflow. Callers pass `report(metrics, checkpoint)`: the CLI prints and
writes checkpoints to disk; Ray Train's worker function forwards to `ray.train.report`. When a
torch.distributed process group exists the loop is data-parallel:

* each step takes one global batch of `batch_size` examples from a permutation that every rank
  draws from the same per-epoch seed, and splits it across ranks, so each example is seen exactly
  once per epoch and the hyperparameters mean the same whatever the number of workers;
* each rank scales its loss by its share of the global batch and gradients are averaged, which
  gives exactly the gradient of the mean loss over the whole global batch;
* metrics are summed over ranks before they are reported;
* the ranks fail together: before each gradient all-reduce every rank says whether its step
  failed (one all-reduce of world_size floats, core.distributed.failed_ranks), so an error or a
  non-finite loss on one rank stops all of them at that step instead of leaving the others
  waiting for a rank that is gone.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import time
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from core.batches import TrainingSource, epoch_permutation  # noqa: F401  (epoch_permutation re-exported)
from core.config import RunConfig
from core.data import PreparedData
from core.datasets import fit_to_likelihood, prepare_run_data
from core.distributed import all_reduce_sum, average_gradients, failed_ranks, gather_objects, world
from core.evaluation import evaluate
from core.files import atomic_torch_save
from core.serialization import build_variant, load_state
from core.variant import Variant

Report = Callable[[dict[str, Any], dict[str, Any]], None]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; raised before the optimiser step, so no bad update is made."""


class RankFailedError(RuntimeError):
    """Another rank's step failed: this rank stops at the same step instead of waiting for it in
    the gradient all-reduce. The failed rank raises its own error (naming rank, step and batch)."""


def _non_finite_weights(variant: torch.nn.Module) -> str:
    """Where a non-finite loss came from: weights already non-finite mean an earlier step's
    gradient was (a finite loss can have a NaN gradient), not this batch's forward pass."""
    bad = [n for n, p in variant.named_parameters() if not torch.isfinite(p).all()]
    if not bad:
        return "every weight is finite (this step's forward pass made it)"
    return (f"{len(bad)} weight tensors were already non-finite ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): "
            f"an earlier step's gradient was non-finite while its loss was finite")


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
    atomic_torch_save(state, path)


def print_report(metrics: dict[str, Any], checkpoint: dict[str, Any] | None = None) -> None:
    keys = ["train/bound", "train/elbo", "train/kl", "test/elbo", "test/recon", "test/nll", "test/cond_nll",
            "test/bits_per_dim", "test/active_units", "test/accuracy", "train/images_per_sec"]
    # a variant with several optimiser groups (aae) logs its numbers per group: train/<group>/<metric>
    keys[3:3] = sorted(k for k in metrics if k.startswith("train/") and k.count("/") == 2
                       and k.rsplit("/", 1)[1] in ("recon", "loss", "accuracy"))
    parts = [f"{k.split('/')[0][:2]}_{'_'.join(k.split('/')[1:])}={metrics[k]:.2f}" for k in keys if k in metrics]
    tqdm.write(f"epoch {metrics['epoch']}: " + " ".join(parts))


def _fail_together(error: Exception | None, rank: int, epoch: int, step: int, steps: int,
                   local_idx: torch.Tensor) -> None:
    """Called by every rank once per phase of a step, with its own error or None: if any rank
    failed, every rank raises (the failed one its own error, already naming rank, step and batch
    when it is the loop's; any other error is wrapped to name them)."""
    failed = failed_ranks(error is not None)
    if not failed:
        return
    where = f"at epoch {epoch}, step {step + 1}/{steps}"
    if error is not None:
        if isinstance(error, NonFiniteLossError):
            raise error
        raise RuntimeError(f"rank {rank} failed {where}, batch of examples {local_idx[:8].tolist()}...: "
                           f"{type(error).__name__}: {error}") from error
    raise RankFailedError(f"rank {', '.join(map(str, failed))} failed {where}; rank {rank} stopped with it")


def train(config: RunConfig, report: Report = print_report, resume: dict[str, Any] | None = None,
          device: str | torch.device = "cpu", data: PreparedData | None = None) -> Variant:
    """Train `config` from scratch or from a checkpoint; returns the trained variant."""
    cfg, tcfg = config, config.train
    rank, size = world()
    device = torch.device(device)
    # The data as the likelihood scores them (dequantised for a Gaussian on grey levels; a
    # Bernoulli on grey levels refused), whether prepared here or by the caller.
    data = prepare_run_data(cfg) if data is None else fit_to_likelihood(data, cfg)
    train_set = data.train
    if device.type != "cpu":  # keep the whole (uint8) dataset resident on the accelerator
        train_set = dataclasses.replace(train_set, images=train_set.images.to(device),
                                        labels=None if train_set.labels is None else train_set.labels.to(device))

    torch.manual_seed(tcfg.seed)  # identical initial weights on every rank
    variant = build_variant(cfg, data.shape, data.num_classes).to(device)
    if tcfg.compile:  # in place (nn.Module.compile): parameter names and checkpoints are unchanged
        for network in variant.networks():
            network.compile()
    optimizers = variant.configure_optimizers(tcfg)
    schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(tcfg.lr_schedule, tcfg.epochs))
                  for name, opt in optimizers.items()}
    groups = {name: [p for g in opt.param_groups for p in g["params"]] for name, opt in optimizers.items()}
    phases = variant.phases or (tuple(optimizers),)
    # One group keeps the plain metric names; several are namespaced (train/<group>/<metric>) so
    # same-named metrics of different groups are never added together.
    metric_name = (lambda group, key: key) if len(optimizers) == 1 else (lambda group, key: f"{group}/{key}")

    source = TrainingSource(train_set, data.dynamic_train, device, dequantized=data.dequantized)
    variant.prepare_training(source, tcfg)

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

    # A no-op context unless bf16 autocast is on (entering a disabled autocast still costs a little each step).
    autocast = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if tcfg.autocast == "bf16"
                else contextlib.nullcontext)
    show = tcfg.progress and rank == 0
    on_rank = f"on rank {rank} " if size > 1 else ""
    for epoch in range(start_epoch, tcfg.epochs + 1):
        variant.train()
        batches = variant.epoch_batches(source, tcfg.batch_size, tcfg.seed, epoch)
        source.start_epoch()
        # Metric sums per optimiser group, one float64 vector each (a step adds every metric in one
        # op, with no host sync); keyed by the group's metric names.
        sums: dict[tuple[str, ...], torch.Tensor] = {}
        seen = 0
        started = time.perf_counter()
        for step, global_idx in enumerate(tqdm(batches, desc=f"epoch {epoch}/{tcfg.epochs}", disable=not show,
                                               leave=False)):
            local_idx = global_idx if size == 1 else global_idx.tensor_split(size)[rank]
            # Scaling by the local share makes the averaged gradient the full global-batch mean.
            share = len(local_idx) * size / len(global_idx)
            error: Exception | None = None  # this rank's failure in this step, shared with the others
            try:
                batch = variant.draw_batch(source, local_idx)
            except Exception as err:
                if size == 1:
                    raise
                error = err
            for phase in phases:
                for name in phase:
                    optimizers[name].zero_grad(set_to_none=True)
                try:
                    if len(local_idx) and error is None:
                        with autocast():
                            outputs = variant.losses(batch, phase)
                        for i, name in enumerate(phase):
                            out = outputs[name]
                            loss_value = out.loss.item()  # one host read (a sync on an accelerator)
                            if not math.isfinite(loss_value):
                                raise NonFiniteLossError(
                                    f"non-finite loss ({loss_value}) {on_rank}at epoch {epoch}, step {step + 1}/{len(batches)}, "
                                    f"optimiser {name!r}, batch of examples {local_idx[:8].tolist()}...; "
                                    f"{_non_finite_weights(variant)}; "
                                    f"the last good checkpoint is kept (try a lower train.lr or train.grad_clip)")
                            loss = out.loss if share == 1.0 else out.loss * share  # x * 1.0 is x: same bits
                            if len(optimizers) == 1:
                                loss.backward()
                            else:  # each group's loss reaches only its own parameters
                                loss.backward(inputs=groups[name], retain_graph=i < len(phase) - 1)
                            if out.metrics:
                                keys = tuple(metric_name(name, key) for key in out.metrics)
                                with torch.no_grad():
                                    step_sums = torch.stack(tuple(out.metrics.values())).double() * len(local_idx)
                                    sums[keys] = (sums[keys] if keys in sums else
                                                  torch.zeros_like(step_sums)).add_(step_sums)
                except Exception as err:
                    if size == 1:
                        raise
                    error = err
                _fail_together(error, rank, epoch, step, len(batches), local_idx)  # a no-op in one process
                for name in phase:
                    average_gradients(groups[name])
                    if tcfg.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(groups[name], tcfg.grad_clip)
                    optimizers[name].step()
            seen += len(local_idx)
        seconds = time.perf_counter() - started
        epoch_lr = next(iter(optimizers.values())).param_groups[0]["lr"]  # the rate this epoch used
        for sched in schedulers.values():
            sched.step()

        totals: dict[str, torch.Tensor] = {}
        for keys, vector in sums.items():
            for key, value in zip(keys, vector.cpu()):
                totals[key] = value if key not in totals else totals[key] + value
        names = sorted(totals)
        packed = all_reduce_sum(torch.stack([totals[n] for n in names] + [torch.tensor(seen, dtype=torch.float64)]))
        metrics: dict[str, Any] = {"epoch": epoch}
        metrics.update({f"train/{n}": float(packed[i] / packed[-1]) for i, n in enumerate(names)})
        metrics["train/images_per_sec"] = float(packed[-1]) / seconds
        metrics["train/epoch_seconds"] = seconds
        metrics["train/lr"] = epoch_lr
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
