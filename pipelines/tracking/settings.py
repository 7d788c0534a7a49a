"""Where runs go and what every run shares: the tracking URI, the artifact location, the metric
names all variants log, and the experiment (created or found, opened in the UI's Model training
mode)."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_EXPERIMENT = "vae-zoo"
CHAMPION = "champion"
# Final test metrics (whole test split, the final NLL sample count) every variant logs under the
# same names, so runs line up in the compare view. Per-epoch `test/*` numbers are quick estimates
# on a subset; `final/*` are the ones to compare.
SHARED_METRICS = ["final/nll", "final/elbo", "final/kl", "final/recon", "final/active_units", "train/images_per_sec"]
# MLflow 3's UI opens an experiment without this tag in GenAI mode (traces, latency, tokens); the
# value its own "Model training" toggle writes opens the runs table instead.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else SQLite in the working folder, by absolute path (Ray
    workers run in another folder, where a relative URI would point elsewhere)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def default_artifact_location(uri: str) -> str | None:
    """Beside a local SQLite store, artifacts go to an absolute mlartifacts/ folder next to the
    database; a server decides for itself (None)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


# MLflow's HTTP client retries a failed call 7 times (backoff factor 2) with a 120 s timeout: minutes
# per call against a stopped server. vae-zoo queues what it cannot deliver (outbox.py), so it gives
# up sooner: 2 retries, backoff factor 1, 15 s per attempt (a refused connection fails after about
# 3 s, a server that never answers after about 50 s). A value set in the environment is kept.
HTTP_BOUNDS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def bound_http_retries() -> None:
    for name, value in HTTP_BOUNDS.items():
        os.environ.setdefault(name, value)


def client(uri: str):
    from pipelines.tracking.store import open_client  # retries write collisions (many trainings, one store)

    bound_http_retries()
    return open_client(uri)


def experiment_id(uri: str, name: str = DEFAULT_EXPERIMENT) -> str:
    """The experiment's id, created if missing. Its kind is set to Model training when it has none;
    a kind a user chose (any value) is kept."""
    mlflow_client = client(uri)
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is None:
        return mlflow_client.create_experiment(name, artifact_location=default_artifact_location(uri),
                                               tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
    if EXPERIMENT_KIND_TAG not in exp.tags:
        mlflow_client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
    return exp.experiment_id
