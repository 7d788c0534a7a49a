"""The model as MLflow logs it: a pyfunc whose predict takes images and returns the latent mean
and log-variance, wrapping the native vae-zoo model folder (config JSON + safetensors) as an
artifact, so `models:/NAME@champion` loads either way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

NATIVE_ARTIFACT = "vaezoo_model"
MODEL_NAME_IN_RUN = "model"


class LatentEncoder(mlflow.pyfunc.PythonModel):
    """predict(images (N, C, H, W) float32 in [0, 1]) -> {"z_mean": (N, D), "z_logvar": (N, D)}."""

    def load_context(self, context) -> None:
        from core.serialization import load_model

        self.variant, self.config = load_model(context.artifacts[NATIVE_ARTIFACT])

    # Typed input: MLflow warns on every log_model of an untyped predict.
    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
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
