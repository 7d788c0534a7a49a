"""The training and test data as MLflow run inputs (the runs table's Dataset column): name, the
folder they were read from, a digest of the image bytes used, split, binarisation and rows."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

CONTEXTS = {"train": "training", "test": "testing"}


def images_digest(images: np.ndarray) -> str:
    """sha256 of the uint8 image bytes a run used (after train_limit/test_limit, before any
    binarisation), shortened to the 32 hex digits MLflow's digest column holds."""
    return hashlib.sha256(np.ascontiguousarray(images, dtype=np.uint8).tobytes()).hexdigest()[:32]


def data_source(dataset: str, data_dir: str | None) -> str:
    """Where load_split reads `dataset` from, as an absolute path or the name it downloads."""
    from core.data import SYSTEM_LOCATIONS

    if Path(dataset).is_dir():
        return str(Path(dataset).resolve())
    if data_dir is not None:
        return str(Path(data_dir).resolve())
    system = SYSTEM_LOCATIONS.get(dataset.lower())
    if system and Path(system).is_dir():
        return system
    return str(Path.home() / ".cache" / "vae-zoo" / dataset.lower())


def input_for(config, split: str, images: np.ndarray) -> tuple[Any, dict[str, str]]:
    """(mlflow dataset, input tags) for one split of the run's data."""
    import warnings

    import mlflow.data

    d = config.data
    name = f"{Path(d.dataset).name}-{split}"
    with warnings.catch_warnings():
        # MLflow registers its local-file source twice (for "" and "file:") and warns that a path
        # "can be interpreted in multiple ways: LocalArtifactDatasetSource, LocalArtifactDatasetSource".
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        dataset = mlflow.data.from_numpy(images, source=data_source(d.dataset, d.data_dir), name=name,
                                         digest=images_digest(images))
    tags = {"split": split, "binarize": d.binarize, "rows": str(images.shape[0])}
    return dataset, tags


def log_data_inputs(uri: str, run_id: str, config) -> None:
    """Log both splits as inputs of `run_id`, with the same limits the run trained with."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.tracking import MlflowClient

    from core.datasets import load_split

    d = config.data
    inputs = []
    for split, limit in (("train", d.train_limit), ("test", d.test_limit)):
        images = load_split(d.dataset, split, d.data_dir).take(limit).images.numpy()
        dataset, tags = input_for(config, split, images)
        tags["mlflow.data.context"] = CONTEXTS[split]
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), [InputTag(k, v) for k, v in tags.items()]))
    MlflowClient(tracking_uri=uri).log_inputs(run_id, datasets=inputs)
