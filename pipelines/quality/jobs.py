"""Running the planned jobs: one model each, evaluated, its result kept in OUT/results/KEY.json
under a per-job lock, so several processes can share one OUT and a rerun continues."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from core.data import PreparedData
from core.datasets import prepare_data
from core.evaluation import evaluate
from core.files import atomic_torch_save, atomic_write_json
from core.serialization import save_model
from core.training import train
from pipelines.processes import pid_alive
from pipelines.quality.baselines import train_completion_network, train_label_classifier
from pipelines.quality.applications import findings as application_findings
from pipelines.quality.claims import findings
from pipelines.quality.figures import write_figures
from pipelines.quality.protocol import Budget, Job, job_config, plan


def run_job(job: Job, budget: Budget, data: PreparedData, out: Path, progress: bool) -> dict[str, Any]:
    config = job_config(budget, job)
    if not progress:
        config = config.with_overrides({"train.progress": False})
    started = time.perf_counter()
    result: dict[str, Any] = {"key": job.key, "suite": job.suite, "kind": job.kind, "variant": job.variant,
                              "options": job.options}
    if job.overrides:
        result["overrides"] = job.overrides
    if job.kind == "label_classifier":
        _, metrics = train_label_classifier(config, data, job.labels)
        result.update(metrics, labels=job.labels, train_seconds=round(time.perf_counter() - started, 1))
        return result
    if job.kind == "completion_network":
        net, metrics = train_completion_network(config, data, job.visible)
        (out / "models").mkdir(parents=True, exist_ok=True)
        atomic_torch_save(net.state_dict(), out / "models" / f"{job.key}.pt")  # read back weights-only for the figures
        result.update(metrics, visible_quadrants=job.visible, train_seconds=round(time.perf_counter() - started, 1))
        return result

    if job.kind in ("condition_network", "bicubic"):
        return result | _application_baseline(job, budget, config, data, out, started)

    history: list[dict[str, Any]] = []

    def report(metrics, checkpoint):
        history.append(metrics)
        if progress:
            print(f"  {job.key} epoch {metrics['epoch']}: train bound {metrics.get('train/bound', float('nan')):.2f}, "
                  f"test ELBO {metrics.get('test/elbo', float('nan')):.2f}", file=sys.stderr, flush=True)

    variant = train(config, report=report, data=data)
    train_seconds = time.perf_counter() - started
    examples = budget.nll_examples
    if job.variant == "m2":
        examples = max(1, examples // max(1, data.num_classes))
    started = time.perf_counter()
    metrics = evaluate(variant, data.test, nll_samples=budget.nll_samples, nll_examples=examples, progress=progress)
    if job.suite in ("superres", "inpaint"):
        from pipelines.quality.applications import conditioner, image_metrics

        metrics.update(image_metrics("cvae", data, conditioner(config, data, job.options), variant, config.train.seed))
    save_model(variant, config, out / "models" / job.key, extra={"test_metrics": metrics})
    if variant.latent_groups() is not None:
        result["latent_groups"] = variant.latent_groups()
    result.update(metrics, nll_samples=budget.nll_samples, nll_examples=min(examples, len(data.test)),
                  test_examples=len(data.test), train_seconds=round(train_seconds, 1),
                  eval_seconds=round(time.perf_counter() - started, 1),
                  images_per_sec=round(sum(h["train/images_per_sec"] for h in history) / len(history)))
    return result


def _application_baseline(job: Job, budget: Budget, config, data: PreparedData, out: Path,
                          started: float) -> dict[str, Any]:
    """superres/inpaint: the deterministic network (trained, weights kept for the figures) or bicubic."""
    from pipelines.quality.applications import conditioner, image_metrics, train_condition_network

    if job.kind == "bicubic":
        return image_metrics("bicubic", data, conditioner(config, data, job.options))
    net, cond, metrics = train_condition_network(config, data, job.options, budget.nll_examples)
    (out / "models").mkdir(parents=True, exist_ok=True)
    atomic_torch_save(net.state_dict(), out / "models" / f"{job.key}.pt")
    return metrics | image_metrics("network", data, cond, net) | {
        "seed": job.seed, "train_seconds": round(time.perf_counter() - started, 1)}


def _claim(result_path: Path) -> int | None:
    """Claim a model for this process, so that several processes can share one --out (one per
    core, or per machine on shared storage): None when claimed, else the pid of the live process
    that holds it. A lock whose process is gone (killed) is taken over."""
    lock = result_path.with_suffix(".lock")
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        text = lock.read_text().strip() if lock.exists() else ""
        if not text.isdigit():
            return -1  # being created this instant by another process
        if pid_alive(int(text)):
            return int(text)
        lock.unlink(missing_ok=True)
        return _claim(result_path)
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return None


def run(budget: Budget, suites: list[str], out: Path, force: bool = False, progress: bool = True,
        figures: bool = True) -> dict[str, Any]:
    out = Path(out)
    jobs = plan(budget, suites)
    (out / "results").mkdir(parents=True, exist_ok=True)
    budget_file = out / "budget.json"
    if budget_file.exists() and not force:
        previous = json.loads(budget_file.read_text())
        if previous != asdict(budget):
            # Results made under another budget must not be mixed into one table.
            raise ValueError(f"{out} holds results of another budget ({budget_file}); choose another --out or pass --force")
    atomic_write_json(budget_file, asdict(budget))
    d = budget.base_config().data
    data = prepare_data(d.dataset, d.data_dir, d.binarize, d.train_limit, d.test_limit)
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    for i, job in enumerate(jobs, 1):
        path = out / "results" / f"{job.key}.json"
        if path.exists() and not force:
            results[job.key] = json.loads(path.read_text())
            print(f"[{i}/{len(jobs)}] {job.key}: kept from {path}", file=sys.stderr, flush=True)
            continue
        holder = _claim(path)
        if holder is not None:
            print(f"[{i}/{len(jobs)}] {job.key}: being trained by process {holder}, skipped (rerun to include it)",
                  file=sys.stderr, flush=True)
            continue
        try:
            print(f"[{i}/{len(jobs)}] {job.key}: training ({budget.epochs} epochs)", file=sys.stderr, flush=True)
            results[job.key] = run_job(job, budget, data, out, progress)
            atomic_write_json(path, results[job.key])
        finally:
            path.with_suffix(".lock").unlink(missing_ok=True)
    report = {
        "budget": asdict(budget),
        "config": budget.base_config().to_dict(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "results": results,
        "findings": findings(results) + application_findings(results),
        "seconds_this_call": round(time.perf_counter() - started, 1),
    }
    if figures:
        report["figures"] = [str(p) for p in write_figures(out, data, results)]
    atomic_write_json(out / "quality.json", report)
    return report
