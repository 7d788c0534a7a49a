"""Datasets by name: the one place a name (or path) becomes train and test splits.

Searched in order: generated data with known factors (core/factors.py: dsprites, ...), a folder
of IDX files, `data_dir`, the Debian package's Fashion-MNIST, torchvision's downloads.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from core import factors
from core.config import ConfigError

if TYPE_CHECKING:
    from core.config import RunConfig
from core.data import (
    _TORCHVISION,
    SPLIT_FILES,
    SYSTEM_LOCATIONS,
    DataError,
    ImageDataset,
    PreparedData,
    _load_torchvision,
    load_idx_split,
    prepare_split,
    with_dequantization,
)


def load_split(dataset: str, split: str, data_dir: str | None = None) -> ImageDataset:
    """A split of a dataset given by name or path.

    Order of search: `dataset` as a folder of IDX files; `data_dir` holding IDX files; the Debian
    package's folder for Fashion-MNIST; torchvision (downloads into ~/.cache/vae-zoo).
    """
    if split not in SPLIT_FILES:
        raise DataError(f"unknown split {split!r} (train or test)")
    if factors.is_generated(dataset) and not Path(dataset).is_dir():
        return factors.load_generated_split(dataset, split, data_dir)
    if os.sep in dataset or Path(dataset).is_dir():
        return load_idx_split(dataset, split)
    key = dataset.lower()
    if data_dir is not None:
        return load_idx_split(data_dir, split, name=key)
    system = SYSTEM_LOCATIONS.get(key)
    if system and Path(system).is_dir():
        return load_idx_split(system, split, name=key)
    if key in _TORCHVISION:
        return _load_torchvision(key, split, Path.home() / ".cache" / "vae-zoo" / key)
    known = ", ".join(sorted(set(_TORCHVISION) | set(SYSTEM_LOCATIONS) | set(factors.GENERATORS)))
    raise DataError(f"unknown dataset {dataset!r}: give a folder of IDX files or one of {known}")


def prepare_data(dataset: str, data_dir: str | None, binarize: str,
                 train_limit: int | None = None, test_limit: int | None = None) -> PreparedData:
    train = prepare_split(load_split(dataset, "train", data_dir).take(train_limit), binarize, "train")
    test = prepare_split(load_split(dataset, "test", data_dir).take(test_limit), binarize, "test")
    if train.shape != test.shape:
        raise DataError(f"{dataset}: train images are {train.shape.as_tuple()} but test images are {test.shape.as_tuple()}")
    return PreparedData(train, test, dynamic_train=(binarize == "dynamic"))


def fit_to_likelihood(data: PreparedData, config: "RunConfig") -> PreparedData:
    """The data as the config's likelihood can score them: a Bernoulli needs binary pixels (grey
    levels are refused, naming the field: a Bernoulli on them is no normalised density); a Gaussian
    on 8-bit grey levels is given dequantised data, (x + u) / 256 (core.data.with_dequantization)."""
    if config.data.binarize != "none":
        return data
    if config.model.likelihood == "bernoulli":
        images = data.train.images
        if bool(((images != 0) & (images != 255)).any()):
            raise ConfigError(f"model.likelihood: bernoulli is a density on binary data, but data.binarize=none keeps "
                              f"the grey levels of {config.data.dataset}; set data.binarize=dynamic (or static), or "
                              f"model.likelihood=gaussian (or gaussian_fixed) for grey levels")
        return data
    return with_dequantization(data)


def prepare_run_data(config: "RunConfig") -> PreparedData:
    """The train and test splits a run's config asks for, fitted to its likelihood."""
    d = config.data
    return fit_to_likelihood(prepare_data(d.dataset, d.data_dir, d.binarize, d.train_limit, d.test_limit), config)
