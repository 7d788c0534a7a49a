"""In-process training run: the core loop plus a run folder with checkpoints, metrics and the model.

Run folder layout (`--output DIR`):
  config.json, model.safetensors   the trained model (load with `--model DIR`)
  run_config.yaml                  the resolved config
  checkpoints/last.pt              model, optimisers, schedulers, epoch and RNG state (each epoch)
  metrics.jsonl                    one line of metrics per epoch
  results.json                     final test metrics
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from core.config import RunConfig
from core.datasets import prepare_run_data
from core.evaluation import evaluate
from core.serialization import build_variant, load_state, read_checkpoint, save_model
from core.training import print_report, save_checkpoint, train
from pipelines.ray_stop import FROZEN_MARKER, LOCK_FILE, hold_in_process, test_hold_from_environment

CHECKPOINT = Path("checkpoints") / "last.pt"
_TRACKING_FILES = {"mlflow_run.json", "tracking_outbox.json"}  # the run record, its queue (pipelines/tracking)


def default_output_dir(config: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = Path(config.data.dataset).name or "data"
    return Path("runs") / f"{config.variant_name}-{name}-{stamp}"


def prepare_output(output: Path, resume: bool) -> dict[str, Any] | None:
    """Refuse to overwrite a finished run; return the checkpoint to resume from, if asked."""
    checkpoint = output / CHECKPOINT
    if resume:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint}")
        return read_checkpoint(checkpoint)  # weights only; one clear line for a bad file
    # The MLflow run record and its queue are written first (the run opens before training starts).
    if output.exists() and any(p.name not in _TRACKING_FILES for p in output.iterdir()):
        raise FileExistsError(f"output folder {output} is not empty: choose another --output, or pass --resume to continue it")
    return None


# What a run folder holds before its first checkpoint: nothing a --resume could continue from.
_BEFORE_FIRST_CHECKPOINT = _TRACKING_FILES | {"run_config.yaml", "ray_run.json", LOCK_FILE, FROZEN_MARKER}


def discard_unstarted_run(output: Path) -> bool:
    """After a failed start (bad data, a bad option found late): remove what this run wrote to
    `output` if no checkpoint was written, so the folder is not left half made and the same
    command can run again. Anything else in the folder (a checkpoint, Ray's storage, the user's
    files) keeps it all. Returns whether the folder was cleaned."""
    output = Path(output)
    if not output.is_dir():
        return False
    entries = list(output.iterdir())
    for entry in entries:
        if entry.name == CHECKPOINT.parent.name and entry.is_dir() and not entry.is_symlink():
            if any(entry.iterdir()):
                return False
        elif entry.name not in _BEFORE_FIRST_CHECKPOINT or not entry.is_file():
            return False
    for entry in entries:
        entry.rmdir() if entry.is_dir() else entry.unlink()
    try:
        output.rmdir()
    except OSError:
        pass
    return True


def finish_training(variant, config: RunConfig, data, output: Path, final_nll_samples: int,
                    train_seconds: float) -> dict[str, Any]:
    """Final test evaluation, then the model and results.json into the run folder (both backends)."""
    results = evaluate(variant, data.test, nll_samples=final_nll_samples, batch_size=config.train.eval_batch_size,
                       progress=config.train.progress)
    results.update(nll_samples=final_nll_samples, binarize=config.data.binarize, train_seconds=round(train_seconds, 1),
                   test_examples=len(data.test))
    save_model(variant, config, output, extra={"test_metrics": results})
    (output / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    return results


def keep_epochs_up_to(metrics_file: Path, last_epoch: int) -> None:
    if not metrics_file.exists():
        return
    lines = [ln for ln in metrics_file.read_text().splitlines() if ln.strip()]
    kept = [ln for ln in lines if json.loads(ln)["epoch"] <= last_epoch]
    metrics_file.write_text("".join(ln + "\n" for ln in kept))


def run_local(config: RunConfig, output: Path, resume: bool = False, final_nll_samples: int = 1000,
              epoch_hook: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train in this process; `epoch_hook(metrics)` sees every epoch's metrics (MLflow logging)."""
    output = output.resolve()
    state = prepare_output(output, resume)
    if state is not None:
        config = RunConfig.from_dict(state["config"])  # a resumed run keeps its own config
    # The data first: a bad path or file fails before anything is written to the run folder.
    data = prepare_run_data(config)
    if state is not None:  # its data may have changed since: say so naming the file, before writing anything
        load_state(build_variant(config, data.shape, data.num_classes), state["model"], str(output / CHECKPOINT))
    (output / CHECKPOINT.parent).mkdir(parents=True, exist_ok=True)
    (output / "run_config.yaml").write_text(config.to_yaml())

    metrics_file = output / "metrics.jsonl"
    if state is not None:
        keep_epochs_up_to(metrics_file, int(state["epoch"]))

    test_hold = test_hold_from_environment(dict(os.environ))

    def report(metrics: dict[str, Any], checkpoint: dict[str, Any]) -> None:
        # Metrics before the checkpoint: a kill in between repeats the epoch on resume, and
        # keep_epochs_up_to drops the stale line, so every epoch appears exactly once.
        with open(metrics_file, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        save_checkpoint(checkpoint, output / CHECKPOINT)
        if epoch_hook is not None:
            epoch_hook(metrics)
        print_report(metrics)
        hold_in_process(test_hold, int(metrics["epoch"]))

    started = time.perf_counter()
    variant = train(config, report=report, resume=state, data=data)
    train_seconds = time.perf_counter() - started
    return finish_training(variant, config, data, output, final_nll_samples, train_seconds)
