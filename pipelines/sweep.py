"""`vaezoo sweep`: many trainings on Ray Tune, one MLflow parent run with a child run per trial.

A trial is a function trainable that trains in its Tune actor (pipelines.local.run_local) and
reports every epoch: small VAE trials would spend more time starting a Ray Train worker group
than training. Each trial has a run folder SWEEP_DIR/trials/<trial id> like `vaezoo train`'s,
so a trial restarted after a crash continues from its checkpoint, and a trial whose folder
already holds results.json is never trained again.

Only the driver writes to MLflow (a Tune callback): SQLite keeps one writer, and a resumed
sweep finds its parent and child runs through sweep.json and each trial's mlflow_run.json.

SWEEP.yaml:
  base:            a RunConfig mapping (as for `vaezoo train --config`), or the path of one
  space:           dotted config keys -> {grid: [...]} | {choice: [...]} | {uniform: [lo, hi]}
                   | {loguniform: [lo, hi]} | {randint: [lo, hi]}   (variant_name, objective.* too)
  search:          grid | random | optuna              (default: grid)
  num_samples:     draws of the random/optuna space, or repeats of the grid (default 1)
  metric, mode:    what ASHA and the best trial use (default test/nll, min: the per-epoch estimate)
  asha:            {grace_period: 1, reduction_factor: 2} or null for no early stopping
  resources:       {cpu: 1, gpu: 0} per trial
  max_concurrent:  trials at once (default 1; --max-concurrent overrides)
  final_nll_samples, experiment, register (a registered model name; default <dataset>-sweep)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Callback

SPACE_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
SEARCHES = ("grid", "random", "optuna")
SWEEP_FILE = "sweep.json"
TRAININGS_DIR = "trainings"  # <trial id>.log: one line per training a trial started (resumes included)
TRIAL_TAG = "sweep.trial_id"


# -- the sweep file ---------------------------------------------------------------------------------
def load_sweep(path: str | Path) -> dict[str, Any]:
    """Read and check SWEEP.yaml; the base config and every key of the space fail here, naming
    the field, not in a trial."""
    from core.config import ConfigError, RunConfig

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read sweep file {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"sweep file {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep file {path} must hold a mapping")
    unknown = set(raw) - {"base", "space", "search", "num_samples", "metric", "mode", "asha", "resources",
                          "max_concurrent", "final_nll_samples", "experiment", "register"}
    if unknown:
        raise ConfigError(f"sweep file {path}: unknown keys {sorted(unknown)}")
    base = raw.get("base") or {}
    if isinstance(base, str):
        base = RunConfig.from_file(path.parent / base).to_dict()
    sweep = {
        "base": RunConfig.from_dict(base).to_dict(),
        "space": raw.get("space") or {},
        "search": raw.get("search", "grid"),
        "num_samples": int(raw.get("num_samples", 1)),
        "metric": raw.get("metric", "test/nll"),
        "mode": raw.get("mode", "min"),
        "asha": raw.get("asha", {"grace_period": 1, "reduction_factor": 2}),
        "resources": {"cpu": 1, "gpu": 0} | (raw.get("resources") or {}),
        "max_concurrent": int(raw.get("max_concurrent", 1)),
        "final_nll_samples": int(raw.get("final_nll_samples", 1000)),
        "experiment": raw.get("experiment", "vae-zoo"),
        "register": raw.get("register"),
    }
    if sweep["search"] not in SEARCHES:
        raise ConfigError(f"search: must be one of {', '.join(SEARCHES)} (got {sweep['search']!r})")
    if sweep["mode"] not in ("min", "max"):
        raise ConfigError(f"mode: min or max (got {sweep['mode']!r})")
    if not sweep["space"]:
        raise ConfigError(f"sweep file {path}: `space` is empty: nothing to sweep")
    for key, spec in sweep["space"].items():
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in SPACE_KINDS):
            raise ConfigError(f"space.{key}: give one of {', '.join(SPACE_KINDS)}, e.g. {{grid: [a, b]}}")
        kind, values = next(iter(spec.items()))
        if not isinstance(values, list) or not values:
            raise ConfigError(f"space.{key}.{kind}: a non-empty list")
        if kind in ("uniform", "loguniform", "randint") and len(values) != 2:
            raise ConfigError(f"space.{key}.{kind}: [low, high]")
        if sweep["search"] == "grid" and kind != "grid":
            raise ConfigError(f"space.{key}: search grid takes only {{grid: [...]}}; use search random or optuna")
        for value in (values if kind in ("grid", "choice") else values[:1]):
            trial_config(sweep["base"], {key: value})  # every value must make a valid config
    return sweep


def trial_config(base: dict[str, Any], overrides: dict[str, Any]):
    """The trial's RunConfig: `base` with dotted-key overrides. A trial that changes the variant
    starts from that variant's default options and objective (RunConfig.with_variant)."""
    from core.config import RunConfig

    return RunConfig.from_dict(base).with_overrides(overrides)


def param_space(sweep: dict[str, Any]) -> dict[str, Any]:
    from ray import tune

    space = {}
    for key, spec in sweep["space"].items():
        kind, values = next(iter(spec.items()))
        if kind == "grid":
            # Optuna draws from a space and cannot enumerate a grid: there a grid is a choice.
            space[key] = tune.choice(values) if sweep["search"] == "optuna" else tune.grid_search(values)
        else:
            space[key] = {"choice": tune.choice, "uniform": tune.uniform, "loguniform": tune.loguniform,
                          "randint": tune.randint}[kind](*([values] if kind == "choice" else values))
    return space


# -- a trial ----------------------------------------------------------------------------------------
def trial_dir(sweep_dir: str | Path, trial_id: str) -> Path:
    return Path(sweep_dir) / "trials" / trial_id


def _epoch_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k == "epoch" or (isinstance(v, (int, float)) and "/" in k)}


def run_trial(overrides: dict[str, Any], base: dict[str, Any], sweep_dir: str, final_nll_samples: int) -> None:
    """Tune's function trainable: train this trial in-process, reporting every epoch."""
    import torch
    from ray import tune

    from pipelines.local import CHECKPOINT, run_local

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    output = trial_dir(sweep_dir, tune.get_context().get_trial_id())
    history = output / "metrics.jsonl"
    if (output / "results.json").is_file():
        # Finished before the driver died (Tune had not saved that yet): report, do not retrain.
        for line in history.read_text().splitlines():
            if line.strip():
                tune.report(_epoch_metrics(json.loads(line)))
        return
    resume = (output / CHECKPOINT).is_file()
    output.mkdir(parents=True, exist_ok=True)
    (Path(sweep_dir) / TRAININGS_DIR).mkdir(exist_ok=True)
    with open(Path(sweep_dir) / TRAININGS_DIR / f"{output.name}.log", "a") as f:
        f.write(("resumed" if resume else "started") + "\n")
    run_local(trial_config(base, overrides), output, resume=resume, final_nll_samples=final_nll_samples,
              epoch_hook=lambda metrics: tune.report(_epoch_metrics(metrics)))


# -- MLflow, from the driver ------------------------------------------------------------------------
class MlflowTrials(Callback):
    """A child run per trial: opened when the trial starts (or found again after a restart),
    its epochs as Tune reports them, its end with the final metrics and why it stopped. Tune
    pickles it with the sweep's state, so a restored sweep logs into the same runs."""

    def __init__(self, sweep: dict[str, Any], sweep_dir: Path, uri: str, parent_run_id: str):
        self.sweep, self.sweep_dir, self.uri, self.parent_run_id = sweep, sweep_dir, uri, parent_run_id
        self._runs: dict[str, str] = {}
        self._logged: dict[str, set[int]] = {}

    def _run_id(self, trial) -> str:
        from pipelines.tracking.runs import RUN_FILE, open_run

        if trial.trial_id not in self._runs:
            output = trial_dir(self.sweep_dir, trial.trial_id)
            config = trial_config(self.sweep["base"], trial.config)
            _, run_id = open_run(config, output, resume=(output / RUN_FILE).is_file(), experiment=self.sweep["experiment"],
                                 uri=self.uri, run_name=f"{config.variant_name}-{trial.trial_id}",
                                 tags={"mlflow.parentRunId": self.parent_run_id, TRIAL_TAG: trial.trial_id})
            self._runs[trial.trial_id] = run_id
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run_id(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from pipelines.tracking.runs import EpochLogger

        if "epoch" not in result:
            return
        run_id = self._run_id(trial)
        if trial.trial_id not in self._logged:  # a restarted sweep: the epochs MLflow already has
            from pipelines.tracking.runs import logged_epochs

            self._logged[trial.trial_id] = logged_epochs(self.uri, run_id)
        if int(result["epoch"]) not in self._logged[trial.trial_id]:
            EpochLogger(self.uri, run_id)(_epoch_metrics(result))
            self._logged[trial.trial_id].add(int(result["epoch"]))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, "FAILED")

    def _close(self, trial, status: str) -> None:
        from pipelines.tracking.runs import backfill_epochs, end_run, log_final
        from pipelines.tracking.settings import client

        run_id = self._run_id(trial)
        output = trial_dir(self.sweep_dir, trial.trial_id)
        history = _history(output)
        epochs = trial_config(self.sweep["base"], trial.config).train.epochs
        if history:
            backfill_epochs(self.uri, run_id, history)
        if (output / "results.json").is_file():
            log_final(self.uri, run_id, json.loads((output / "results.json").read_text()), history)
            reason = f"completed all {epochs} epochs"
        elif status == "FAILED":
            reason = f"failed at epoch {len(history) + 1} of {epochs}"
        else:
            reason = f"stopped by ASHA after epoch {len(history)} of {epochs} ({self.sweep['metric']} behind)"
        client(self.uri).set_tag(run_id, "early_stop_reason", reason)
        end_run(self.uri, run_id, status)



def _history(output: Path) -> list[dict[str, Any]]:
    path = output / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _open_parent(sweep: dict[str, Any], sweep_dir: Path, resume: bool) -> tuple[str, str]:
    from pipelines.tracking.runs import flatten, git_commit
    from pipelines.tracking.settings import client, experiment_id, tracking_uri

    record = sweep_dir / SWEEP_FILE
    if resume:
        saved = json.loads(record.read_text())
        client(saved["tracking_uri"]).update_run(saved["parent_run_id"], status="RUNNING")
        return saved["tracking_uri"], saved["parent_run_id"]
    uri = tracking_uri()
    mlflow_client = client(uri)
    run = mlflow_client.create_run(experiment_id(uri, sweep["experiment"]),
                                   tags={"mlflow.runName": f"sweep-{sweep_dir.name}", "sweep": "parent",
                                         "git_commit": git_commit()})
    from mlflow.entities import Param

    params = {"search": sweep["search"], "metric": sweep["metric"], "mode": sweep["mode"],
              "num_samples": str(sweep["num_samples"]), "asha": json.dumps(sweep["asha"]),
              **{f"space.{k}": json.dumps(v) for k, v in sweep["space"].items()},
              **{f"base.{k}": v for k, v in flatten(sweep["base"]).items()}}
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        mlflow_client.log_batch(run.info.run_id, params=items[i:i + 100])
    _write_atomic(record, json.dumps({"tracking_uri": uri, "parent_run_id": run.info.run_id, "sweep": sweep}))
    return uri, run.info.run_id


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- the sweep --------------------------------------------------------------------------------------
def run_sweep(sweep: dict[str, Any] | None, sweep_dir: Path, resume: bool = False, address: str | None = None,
              max_concurrent: int | None = None) -> dict[str, Any]:
    """Run (or, with resume, continue) a sweep; returns the trials' table and the best trial."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from pipelines.ray_connect import connect

    sweep_dir = Path(sweep_dir).resolve()
    tune_dir = sweep_dir / "tune"
    if resume:
        if not (sweep_dir / SWEEP_FILE).is_file() or not tune.Tuner.can_restore(str(tune_dir)):
            raise FileNotFoundError(f"--resume: {sweep_dir} holds no sweep to continue")
        sweep = json.loads((sweep_dir / SWEEP_FILE).read_text())["sweep"]  # a resumed sweep keeps its own file
    elif sweep_dir.exists() and any(sweep_dir.iterdir()):
        raise FileExistsError(f"sweep folder {sweep_dir} is not empty: choose another --output, or pass --resume")
    concurrent = max_concurrent or sweep["max_concurrent"]
    cpu, gpu = float(sweep["resources"]["cpu"]), float(sweep["resources"]["gpu"])
    sweep_dir.mkdir(parents=True, exist_ok=True)
    connect(address, num_cpus=max(1.0, cpu * concurrent))
    uri, parent_run_id = _open_parent(sweep, sweep_dir, resume)

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=sweep["base"], sweep_dir=str(sweep_dir),
                             final_nll_samples=sweep["final_nll_samples"]),
        {"cpu": cpu, "gpu": gpu})
    callback = MlflowTrials(sweep, sweep_dir, uri, parent_run_id)
    if resume:
        # Finished trials stay finished; interrupted ones continue from their run folder.
        tuner = tune.Tuner.restore(str(tune_dir), trainable, resume_unfinished=True, restart_errored=True)
    else:
        epochs = [trial_config(sweep["base"], {}).train.epochs] + [
            v for k, spec in sweep["space"].items() if k == "train.epochs" for v in next(iter(spec.values()))]
        scheduler = None
        if sweep["asha"]:
            # max_t one past the last epoch: at max_t ASHA stops a trial, which would cut off the
            # final test evaluation that runs after a trial's last epoch.
            scheduler = ASHAScheduler(time_attr="epoch", max_t=max(epochs) + 1, **sweep["asha"])
        search_alg = None
        if sweep["search"] == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            search_alg = OptunaSearch(seed=int(sweep["base"]["train"]["seed"]))
        tuner = tune.Tuner(
            trainable, param_space=param_space(sweep),
            tune_config=tune.TuneConfig(metric=sweep["metric"], mode=sweep["mode"], scheduler=scheduler,
                                        search_alg=search_alg, num_samples=sweep["num_samples"],
                                        max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(name="tune", storage_path=str(sweep_dir), callbacks=[callback],
                                      verbose=0, failure_config=tune.FailureConfig(max_failures=1)))
    grid = tuner.fit()
    return _finish(sweep, sweep_dir, uri, parent_run_id, grid)


def _finish(sweep: dict[str, Any], sweep_dir: Path, uri: str, parent_run_id: str, grid) -> dict[str, Any]:
    """The parent run's table and picture, the best trial's model logged and registered."""
    from mlflow.entities import Metric

    from pipelines.tracking.settings import client

    mlflow_client = client(uri)
    rows, failed = [], 0
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id")
        if trial_id is None:  # failed before its first epoch: nothing to tabulate
            failed += 1
            continue
        output = trial_dir(sweep_dir, trial_id)
        results = json.loads((output / "results.json").read_text()) if (output / "results.json").is_file() else {}
        trainings = sweep_dir / TRAININGS_DIR / f"{trial_id}.log"
        row = {"trial_id": trial_id, **{k: result.config.get(k) for k in sweep["space"]},
               "epochs": len(_history(output)), "final/nll": results.get("nll"), "final/elbo": results.get("elbo"),
               "trainings": len(trainings.read_text().splitlines()) if trainings.is_file() else 0}
        rows.append(row)
    rows.sort(key=lambda r: (r["final/nll"] is None, r["final/nll"] if r["final/nll"] is not None else 0.0))
    (sweep_dir / "results.json").write_text(json.dumps(rows, indent=2))
    mlflow_client.log_artifact(parent_run_id, str(sweep_dir / "results.json"))
    picture = _scatter(rows, list(sweep["space"]), sweep_dir / "sweep.png")
    if picture:
        mlflow_client.log_artifact(parent_run_id, str(picture))
    info: dict[str, Any] = {"sweep_dir": str(sweep_dir), "parent_run_id": parent_run_id, "trials": rows,
                            "failed_before_first_epoch": failed}
    best = rows[0] if rows and rows[0]["final/nll"] is not None else None
    if best is not None:
        import time

        now = int(time.time() * 1000)
        mlflow_client.log_batch(parent_run_id, metrics=[Metric("best/final_nll", float(best["final/nll"]), now, 0)])
        mlflow_client.set_tag(parent_run_id, "best_trial", best["trial_id"])
        info["best"] = best
        info.update(_register_best(sweep, sweep_dir, uri, best))
    mlflow_client.set_terminated(parent_run_id, "FINISHED")
    return info


def _register_best(sweep: dict[str, Any], sweep_dir: Path, uri: str, best: dict[str, Any]) -> dict[str, Any]:
    import shutil
    import tempfile

    from core.datasets import load_split
    from core.serialization import CONFIG_FILE, WEIGHTS_FILE, load_model
    from pipelines.tracking.pyfunc import log_model
    from pipelines.tracking.registry import register

    output = trial_dir(sweep_dir, best["trial_id"])
    run_id = json.loads((output / "mlflow_run.json").read_text())["run_id"]
    variant, config = load_model(output)
    example = (load_split(config.data.dataset, "test", config.data.data_dir).images[:2].float() / 255.0).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "vaezoo_model"
        model_dir.mkdir()
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.copy2(output / name, model_dir / name)
        model_uri = log_model(run_id, uri, model_dir, example, variant.shape.as_tuple(), config.model.latent_dim)
    name = sweep["register"] or f"{Path(config.data.dataset).name}-sweep"
    registered = register(uri, name, model_uri, run_id, float(best["final/nll"]))
    return {"registered_model": name, "model_uri": model_uri, **registered}


def _scatter(rows: list[dict[str, Any]], keys: list[str], path: Path) -> Path | None:
    """final/nll of each finished trial against each swept field (one panel per field)."""
    done = [r for r in rows if r["final/nll"] is not None]
    if not done:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = [str(r[key]) for r in done]
        labels = sorted(set(values), key=lambda v: (len(v), v))
        ax.scatter([labels.index(v) for v in values], [r["final/nll"] for r in done])
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(key)
    axes[0][0].set_ylabel("final/nll (nats)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
