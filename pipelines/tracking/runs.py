"""One MLflow run per `vaezoo train` (or per sweep trial): params and tags, per-epoch metrics, the
data as run inputs, final metrics, pictures, the logged model and its registration.

Only the driver and rank 0 write (SQLite dislikes many writers): the driver opens the run and
passes its id; rank 0 logs epoch metrics into it with step=epoch.
"""
from __future__ import annotations

import json
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pipelines.tracking.settings import DEFAULT_EXPERIMENT, client as _client, experiment_id, tracking_uri


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {}
    for pkg in ("vae-zoo", "torch", "ray", "mlflow", "pyarrow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "missing"
    return out


def run_fields(config, run_name: str | None = None, tags: dict[str, str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """(tags, params) of a new run: variant, dataset, commit, package versions and the flat config.
    `tags` adds to them (a sweep's child passes `mlflow.parentRunId`)."""
    dataset = Path(config.data.dataset).name
    fields = {"variant": config.variant_name, "dataset": dataset, "git_commit": git_commit(),
              "mlflow.runName": run_name or f"{config.variant_name}-{dataset}"}
    fields.update({f"version.{k}": v for k, v in package_versions().items()})
    fields.update(tags or {})
    return fields, {k: v[:6000] for k, v in flatten(config.to_dict()).items()}


def create_run(uri: str, experiment: str, tags: dict[str, str], params: dict[str, str]) -> str:
    """Create (or find) the experiment and open a run with these tags and params. Returns its id."""
    from mlflow.entities import Param

    client = _client(uri)
    run = client.create_run(experiment_id(uri, experiment), tags=tags)
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i:i + 100])
    return run.info.run_id


def start_run(config, uri: str, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
              tags: dict[str, str] | None = None) -> str:
    """Open a run for `config` (params, tags, versions; see run_fields). Returns the run id."""
    return create_run(uri, experiment, *run_fields(config, run_name, tags))


class EpochLogger:
    """report() hook: logs one epoch's numeric metrics with step=epoch."""

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id
        self._client = None

    def __call__(self, metrics: dict[str, Any], timestamp_ms: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        if self._client is None:
            self._client = _client(self.uri)
        epoch = int(metrics["epoch"])
        now = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items()
                 if k != "epoch" and isinstance(v, (int, float))]
        self._client.log_batch(self.run_id, metrics=batch)


def log_final(uri: str, run_id: str, results: dict[str, Any], history: list[dict[str, Any]]) -> None:
    from mlflow.entities import Metric

    import time

    client = _client(uri)
    step = int(history[-1]["epoch"]) if history else 0
    final = {f"final/{k}": v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in final.items()])


# A metric the trainer logs every epoch for every variant (train/elbo is not one: an aae has none).
EPOCH_MARKER = "train/epoch_seconds"


def logged_epochs(uri: str, run_id: str) -> set[int]:
    """The epochs a run already has in MLflow."""
    return {m.step for m in _client(uri).get_metric_history(run_id, EPOCH_MARKER)}


def backfill_epochs(uri: str, run_id: str, history: list[dict[str, Any]]) -> None:
    """Log the epochs of the run folder's history that MLflow lacks. A kill can land after an
    epoch's checkpoint is written but before its metrics reach MLflow; the resumed run starts
    after that epoch, so without this its step would be missing."""
    logged = logged_epochs(uri, run_id)
    logger = EpochLogger(uri, run_id)
    for metrics in history:
        if int(metrics["epoch"]) not in logged:
            logger(metrics)


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    _client(uri).set_terminated(run_id, status)


# -- one run per training, across restarts ---------------------------------------------------------
RUN_FILE = "mlflow_run.json"


def open_run(config, output: Path, resume: bool, experiment: str = DEFAULT_EXPERIMENT, uri: str | None = None,
             run_name: str | None = None, tags: dict[str, str] | None = None) -> tuple[str, str]:
    """(tracking URI, run id): a new run, or on --resume the run this output folder already has."""
    uri = uri or tracking_uri()
    record = Path(output) / RUN_FILE
    if resume and record.is_file():
        saved = json.loads(record.read_text())
        _client(saved["tracking_uri"]).update_run(saved["run_id"], status="RUNNING")
        return saved["tracking_uri"], saved["run_id"]
    run_id = start_run(config, uri, experiment, run_name=run_name, tags=tags)
    Path(output).mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"tracking_uri": uri, "run_id": run_id, "experiment": experiment}))
    return uri, run_id


def finish_run(uri: str, run_id: str, output: Path, register_name: str | None,
               progress: dict[str, Any] | None = None, save_progress=None) -> dict[str, Any]:
    """After training: final metrics, data inputs, pictures, the logged model, registry and
    champion alias, then the run ends FINISHED. Everything is read back from the run folder,
    whichever backend trained the model. `progress` holds the steps already done (their results)
    and `save_progress(progress)` is called after each one, so a finish cut short by a tracker
    outage continues where it stopped (pipelines/tracking/outbox.py) and logs nothing twice."""
    from core.serialization import load_model
    from pipelines.tracking.datasets import log_data_inputs

    output = Path(output)
    progress = {} if progress is None else progress
    variant, config = load_model(output)
    history = [json.loads(ln) for ln in (output / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    results = json.loads((output / "results.json").read_text())
    test_set = []  # loaded on first use: a continued finish may not need it

    def test_images():
        if not test_set:
            from core.data import prepare_split
            from core.datasets import load_split

            d = config.data
            test_set.append(prepare_split(load_split(d.dataset, "test", d.data_dir).take(d.test_limit), d.binarize, "test"))
        return test_set[0]

    def step(name: str, do):
        if name not in progress:
            progress[name] = do()
            if save_progress is not None:
                save_progress(progress)
        return progress[name]

    def final_metrics() -> None:
        backfill_epochs(uri, run_id, history)
        log_final(uri, run_id, results, history)

    step("final_metrics", final_metrics)
    step("data_inputs", lambda: log_data_inputs(uri, run_id, config))
    step("artifacts", lambda: _log_artifacts(uri, run_id, output, variant, test_images(), history, config.train.seed))
    model_uri = step("model", lambda: _log_model(uri, run_id, output, variant, test_images(), config))
    info: dict[str, Any] = {"run_id": run_id, "tracking_uri": uri, "model_uri": model_uri}
    if register_name:
        info.update(step("registration", lambda: _register(uri, register_name, model_uri, run_id, config, results)))
    end_run(uri, run_id)
    return info


def _log_artifacts(uri: str, run_id: str, output: Path, variant, test_set, history, seed: int) -> None:
    from pipelines.artifacts import write_artifacts

    client = _client(uri)
    for path in write_artifacts(variant, test_set, history, output / "artifacts", seed=seed):
        client.log_artifact(run_id, str(path), "plots")
    for name in ("results.json", "run_config.yaml", "metrics.jsonl"):
        client.log_artifact(run_id, str(output / name))


def _log_model(uri: str, run_id: str, output: Path, variant, test_set, config) -> str:
    import shutil
    import tempfile

    from core.serialization import CONFIG_FILE, WEIGHTS_FILE
    from pipelines.tracking.pyfunc import log_model

    example = (test_set.images[:2].float() / 255.0).numpy()
    with tempfile.TemporaryDirectory() as tmp:  # only the model files, not the run's checkpoints
        model_dir = Path(tmp) / "vaezoo_model"
        model_dir.mkdir()
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.copy2(output / name, model_dir / name)
        return log_model(run_id, uri, model_dir, example, variant.shape.as_tuple(), config.model.latent_dim)


def _register(uri: str, name: str, model_uri: str, run_id: str, config, results: dict[str, Any]) -> dict[str, Any]:
    from pipelines.tracking.registry import register, version_of_run

    known = version_of_run(uri, name, run_id)  # registered before an outage cut the finish short
    if known is not None:
        return {**known, "registered_model": name}
    definition = metric_definition(config)
    # a model without a likelihood (deterministic aae) has no NLL: registered, never champion
    test_nll = float(results.get(definition.split("|")[1], float("inf")))
    return {**register(uri, name, model_uri, run_id, test_nll, definition), "registered_model": name}


def model_kind(config) -> str:
    """The variant with what changes its NLL's meaning (Variant.kind: cvae's condition, m2 on an
    M1's latents)."""
    from core.registry import get_variant

    return get_variant(config.variant_name).kind(config.variant)


def metric_definition(config) -> str:
    """What a registered model's test NLL measures: kind|metric|likelihood|binarisation. Champions
    are compared only within one definition."""
    from core.registry import get_variant

    metric = get_variant(config.variant_name).nll_metric_of(config.variant)
    return f"{model_kind(config)}|{metric}|{config.model.likelihood}|{config.data.binarize}"


def default_model_name(config) -> str:
    return f"{Path(config.data.dataset).name}-{model_kind(config)}"


def log_quality(out: Path, report: dict[str, Any], experiment: str = "vae-zoo-quality") -> str:
    """One MLflow run for a `vaezoo quality` call: the findings' verdicts as tags, quality.json
    and every figure (superres/inpaint rows among them) as artifacts. Returns the run id."""
    uri = tracking_uri()
    client = _client(uri)
    run = client.create_run(experiment_id(uri, experiment), tags={"git_commit": git_commit(), "mlflow.runName": f"quality-{Path(out).name}"})
    run_id = run.info.run_id
    client.log_artifact(run_id, str(Path(out) / "quality.json"))
    for figure in report.get("figures", []):
        client.log_artifact(run_id, figure, "figures")
    client.set_terminated(run_id, "FINISHED")
    return run_id
