"""Model references to local model folders; MLflow is imported only for registry and run URIs."""
from __future__ import annotations

from pathlib import Path


def resolve_model_uri(model: str) -> Path:
    """A local model folder for `model`: a path, `models:/NAME@ALIAS`, `models:/NAME/VERSION`,
    `models:/m-ID` or `runs:/RUN_ID/...` (downloaded from the tracking server)."""
    if "://" not in model and not model.startswith(("models:/", "runs:/")):
        return Path(model)
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipelines.tracking.settings import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model))
    except (MlflowException, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"model URI {model} does not resolve: {first}") from None
    found = sorted(local.rglob("config.json"), key=lambda p: len(p.parts))
    for candidate in found:
        if (candidate.parent / "model.safetensors").is_file():
            return candidate.parent
    raise ValueError(f"model URI {model} holds no vae-zoo model (no config.json with model.safetensors)")
