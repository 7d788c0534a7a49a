"""The model as MLflow logs it: a pyfunc whose predict takes images and returns the latent mean
and log-variance, wrapping the native vae-zoo model folder (config JSON + safetensors) as an
artifact, so `models:/NAME@champion` loads either way. Also: model URIs to local folders,
registration, and the champion alias.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

from pipelines.model_uri import resolve_model_uri  # noqa: F401  (re-exported)
from pipelines.tracking import CHAMPION

NATIVE_ARTIFACT = "vaezoo_model"
MODEL_NAME_IN_RUN = "model"


class LatentEncoder(mlflow.pyfunc.PythonModel):
    """predict(images (N, C, H, W) float32 in [0, 1]) -> {"z_mean": (N, D), "z_logvar": (N, D)}."""

    def load_context(self, context) -> None:
        from core.serialization import load_model

        self.variant, self.config = load_model(context.artifacts[NATIVE_ARTIFACT])

    def predict(self, context, model_input, params=None) -> dict[str, np.ndarray]:
        import torch

        images = np.asarray(model_input, dtype=np.float32)
        _refuse_non_finite(images)
        x = torch.as_tensor(images)
        if x.ndim == 3:
            x = x.unsqueeze(1)
        with torch.no_grad():
            mean, logvar = self.variant.encode(x)
        return {"z_mean": mean.numpy(), "z_logvar": logvar.numpy()}


def _refuse_non_finite(images: np.ndarray, shown: int = 10) -> None:
    """NaN or Inf pixels would come back as NaN latents, silently: refuse the batch, naming the
    rows (MLflow's INVALID_PARAMETER_VALUE: a 400 from `mlflow models serve`, not a 500)."""
    if images.ndim == 0 or images.size == 0:
        return
    bad = np.flatnonzero(~np.isfinite(images.reshape(images.shape[0], -1)).all(axis=1))
    if len(bad):
        from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

        rows = ", ".join(map(str, bad[:shown])) + (f", ... ({len(bad)} rows)" if len(bad) > shown else "")
        raise MlflowException(f"images must be finite (float32 in [0, 1]): NaN or Inf in row{'s' if len(bad) > 1 else ''} "
                              f"{rows} of {images.shape[0]}", error_code=INVALID_PARAMETER_VALUE)


def signature_for(shape: tuple[int, int, int], latent_dim: int):
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *shape))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, latent_dim), "z_mean"),
                        TensorSpec(np.dtype(np.float32), (-1, latent_dim), "z_logvar")]),
    )


def log_model(run_id: str, uri: str, model_dir: Path, example: np.ndarray, shape, latent_dim: int) -> str:
    """Log the pyfunc into the run; returns the logged model's URI (models:/m-...)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME_IN_RUN,
            python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
            artifacts={NATIVE_ARTIFACT: str(model_dir)},
            signature=signature_for(tuple(shape), latent_dim),
            input_example=example.astype(np.float32),
            pip_requirements=[f"vae-zoo=={_version()}", "torch", "safetensors"],
        )
    return info.model_uri


def _version() -> str:
    from core.serialization import package_version

    return package_version()


def register(uri: str, name: str, model_uri: str, run_id: str, test_nll: float, definition: str = "") -> dict[str, Any]:
    """Register a new version; move the champion alias to it only if its test NLL beats the
    current champion's (lower is better) and was measured the same way: the same `definition`
    (variant, condition, NLL metric, likelihood, binarisation; pipelines.tracking.metric_definition).
    Returns {"version", "champion", "champion_version"}."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    mv = mlflow.register_model(model_uri, name, tags={"test_nll": f"{test_nll:.6f}", "run_id": run_id,
                                                      "metric_definition": definition})
    version = int(mv.version)
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
        current_nll = float(current.tags.get("test_nll", "inf"))
        comparable = current.tags.get("metric_definition", "") == definition
    except MlflowException:
        current, current_nll, comparable = None, float("inf"), True
    # A conditional NLL scores fewer pixels, another likelihood or binarisation another density:
    # such numbers are never compared, so a champion of one definition is never replaced by another.
    promoted = comparable and test_nll < current_nll
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, str(version))
    return {"version": version, "champion": promoted,
            "champion_version": version if promoted else int(current.version)}
