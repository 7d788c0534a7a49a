"""Running the planned jobs: one model at one seed each, evaluated, its result kept in
OUT/results/KEY-seedS.json under a per-job lock, so several processes can share one OUT and a rerun
(in this session or a later one) continues; the seeds of each model are then aggregated."""
from __future__ import annotations

import dataclasses
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
from core.datasets import prepare_run_data
from core.evaluation import evaluate
from core.files import atomic_torch_save, atomic_write_json
from core.serialization import save_model
from core.training import train
from pipelines.processes import pid_alive
from pipelines.quality.baselines import train_completion_network, train_label_classifier
from pipelines.quality.claims import findings, mean_se
from pipelines.quality.figures import write_figures
from pipelines.quality.protocol import Budget, Job, job_config, plan


def run_job(job: Job, budget: Budget, data: PreparedData, out: Path, progress: bool) -> dict[str, Any]:
    if "m1_run" in job.options:  # M1+M2: the vae of this seed, in this results folder
        m1 = (out / job.options["m1_run"].format(seed=job.seed)).resolve()
        if not (m1 / "config.json").exists():
            raise ValueError(f"{job.run_key}: its M1 ({m1}) is not trained yet (another process holds it?); rerun")
        job = dataclasses.replace(job, options=job.options | {"m1_run": str(m1)})
    config = job_config(budget, job)
    if not progress:
        config = config.with_overrides({"train.progress": False})
    started = time.perf_counter()
    result: dict[str, Any] = {"key": job.key, "seed": job.seed, "suite": job.suite, "kind": job.kind,
                              "variant": job.variant, "options": job.options}
    if job.overrides:
        result["overrides"] = job.overrides
    if job.kind == "label_classifier":
        _, metrics = train_label_classifier(config, data, job.labels)
        result.update(metrics, labels=job.labels, train_seconds=round(time.perf_counter() - started, 1))
        return result
    if job.kind == "completion_network":
        net, metrics = train_completion_network(config, data, job.visible, budget.nll_examples)
        (out / "models").mkdir(parents=True, exist_ok=True)
        atomic_torch_save(net.state_dict(), out / "models" / f"{job.run_key}.pt")  # read back weights-only for the figures
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

    if job.train_limit is not None:  # dvae-small: the first train_limit images, the same test images
        data = dataclasses.replace(data, train=data.train.take(job.train_limit))
    variant = train(config, report=report, data=data)
    train_seconds = time.perf_counter() - started
    examples = budget.nll_examples  # the same first test images for every model, m2 included
    started = time.perf_counter()
    metrics = evaluate(variant, data.test, nll_samples=budget.nll_samples, nll_examples=examples, progress=progress)
    if job.suite in ("superres", "inpaint"):
        from pipelines.quality.applications import conditioner, image_metrics

        metrics.update(image_metrics("cvae", data, conditioner(config, data, job.options), variant, config.train.seed))
    save_model(variant, config, out / "models" / job.run_key, extra={"test_metrics": metrics})
    if variant.latent_groups() is not None:
        result["latent_groups"] = variant.latent_groups()
    result.update(metrics, nll_samples=budget.nll_samples, nll_examples=min(examples, len(data.test)),
                  test_examples=len(data.test), train_seconds=round(train_seconds, 1),
                  eval_seconds=round(time.perf_counter() - started, 1),
                  images_per_sec=round(sum(h["train/images_per_sec"] for h in history) / len(history)),
                  train_elbo=history[-1].get("train/elbo"), epochs=len(history), train_images=len(data.train),
                  curves=[{k: h[k] for k in ("epoch", "train/elbo", "test/elbo") if k in h} for h in history])
    return result


def _application_baseline(job: Job, budget: Budget, config, data: PreparedData, out: Path,
                          started: float) -> dict[str, Any]:
    """superres/inpaint: the deterministic network (trained, weights kept for the figures) or bicubic."""
    from pipelines.quality.applications import conditioner, image_metrics, train_condition_network

    if job.kind == "bicubic":
        return image_metrics("bicubic", data, conditioner(config, data, job.options))
    net, cond, metrics = train_condition_network(config, data, job.options, budget.nll_examples)
    (out / "models").mkdir(parents=True, exist_ok=True)
    atomic_torch_save(net.state_dict(), out / "models" / f"{job.run_key}.pt")
    return metrics | image_metrics("network", data, cond, net) | {"train_seconds": round(time.perf_counter() - started, 1)}


NOT_METRICS = {"key", "seed", "suite", "kind", "variant", "options", "labels", "visible_quadrants", "overrides"}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model: what the seeds share, each seed's result (`per_seed`), and the mean and standard
    error over seeds of every number (`mean`, `se`)."""
    models: dict[str, dict[str, Any]] = {}
    for r in sorted(runs, key=lambda r: r["seed"]):
        m = models.setdefault(r["key"], {k: r.get(k) for k in ("key", "suite", "kind", "variant", "options")}
                              | {"per_seed": {}})
        m["per_seed"][str(r["seed"])] = {k: v for k, v in r.items() if k not in NOT_METRICS}
    for m in models.values():
        numbers = lambda s: {n: v for n, v in s.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}  # noqa: E731
        names = sorted({n for s in m["per_seed"].values() for n in numbers(s)})
        stats = {n: mean_se([numbers(s)[n] for s in m["per_seed"].values() if n in numbers(s)]) for n in names}
        m["seeds"] = [int(s) for s in m["per_seed"]]
        m["mean"] = {n: v[0] for n, v in stats.items()}
        m["se"] = {n: v[1] for n, v in stats.items()}
    return models


# Lists whose every member names its own models (`-seed{s}`, `-n{n}`, `-k{k}`): more members, or
# another order, extend a folder rather than change what its results mean.
EXTENDING_FIELDS = ("seeds", "m2_labels", "iwae_ks")


def _shared(budget: dict[str, Any]) -> dict[str, Any]:
    """What every result in one folder must share: the budget less the lists that extend it."""
    return {k: v for k, v in budget.items() if k not in EXTENDING_FIELDS}


def _kept(out: Path, job: Job) -> tuple[dict[str, Any], Path] | None:
    """The job's kept result and its file: under its name, or under an earlier version's
    (Job.legacy_keys), read as this job's (its key and seed)."""
    for name in [job.run_key] + job.legacy_keys:
        path = out / "results" / f"{name}.json"
        if path.exists():
            return json.loads(path.read_text()) | {"key": job.key, "seed": job.seed}, path
    return None


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
        try:  # a folder begun before a budget field existed holds that field's default
            previous = asdict(Budget.from_saved(previous))
        except TypeError:
            pass  # a field this version does not know: compared as it is, so refused
        if _shared(previous) != _shared(asdict(budget)):
            # Results made under another budget must not be mixed into one table.
            raise ValueError(f"{out} holds results of another budget ({budget_file}); choose another --out or pass --force")
    atomic_write_json(budget_file, asdict(budget))
    data = prepare_run_data(budget.base_config())
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    for i, job in enumerate(jobs, 1):
        name = job.run_key
        path = out / "results" / f"{name}.json"
        kept = None if force else _kept(out, job)
        if kept is not None:
            runs.append(kept[0])
            print(f"[{i}/{len(jobs)}] {name}: kept from {kept[1]}", file=sys.stderr, flush=True)
            continue
        holder = _claim(path)
        if holder is not None:
            print(f"[{i}/{len(jobs)}] {name}: being trained by process {holder}, skipped (rerun to include it)",
                  file=sys.stderr, flush=True)
            continue
        try:
            print(f"[{i}/{len(jobs)}] {name}: training ({job.epochs or budget.epochs} epochs)", file=sys.stderr, flush=True)
            runs.append(run_job(job, budget, data, out, progress))
            atomic_write_json(path, runs[-1])
        finally:
            path.with_suffix(".lock").unlink(missing_ok=True)
    results = aggregate(runs)
    report = {
        "budget": asdict(budget),
        "config": budget.base_config().to_dict(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "results": results,
        "findings": findings(results),
        "seconds_this_call": round(time.perf_counter() - started, 1),
    }
    if figures:
        report["figures"] = [str(p) for p in write_figures(out, data, results, seed=budget.seeds[0])]
    atomic_write_json(out / "quality.json", report)
    return report
