"""A saved model folder's `config.json`, read without torch: its format, data shape, classes and
the fields a consumer records (core.serialization builds the model from it, and re-exports these
names). `vaezoo encode`'s driver describes a model with it and leaves the weights to its actors,
so the driver never imports torch."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


class ModelLoadError(ValueError):
    """A model folder that is missing, corrupt, or does not match its config."""


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vae-zoo")
    except PackageNotFoundError:
        return "0+unknown"


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise ModelLoadError(f"{directory}: no such model folder")
    if not path.is_file():
        raise ModelLoadError(f"{directory}: not a vae-zoo model ({CONFIG_FILE} missing)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(f"{path}: unsupported model format {meta.get('format_version') if isinstance(meta, dict) else '?'}")
    return meta


def checked_shape_and_classes(meta: dict[str, Any]) -> tuple[tuple[int, int, int], int]:
    """(data shape (C, H, W), number of classes) of a model's metadata, or a ValueError;
    a missing entry is a KeyError."""
    shape, num_classes = meta["data_shape"], meta["num_classes"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(v) is int and v >= 1 for v in shape)):
        raise ModelLoadError(f"data_shape must be 3 positive integers (channels, height, width), got {shape!r}")
    if type(num_classes) is not int or num_classes < 0:
        raise ModelLoadError(f"num_classes must be a non-negative integer, got {num_classes!r}")
    return (shape[0], shape[1], shape[2]), num_classes


@dataclass(frozen=True)
class ModelDescription:
    """What a model folder says about itself; the weights are not read."""
    variant_name: str
    latent_dim: int
    shape: tuple[int, int, int]
    num_classes: int
    binarize: str | None
    vae_zoo_version: str | None


def describe_model(directory: str | os.PathLike) -> ModelDescription:
    """The model in `directory` as its config.json describes it, with the checks that need no
    torch; building it (core.serialization.load_model) checks the rest, the weights included."""
    directory = Path(directory)
    meta = read_metadata(directory)
    where = directory / CONFIG_FILE
    try:
        shape, num_classes = checked_shape_and_classes(meta)
        config = meta["config"]
        latent_dim, variant_name = config["model"]["latent_dim"], config["variant_name"]
    except KeyError as err:
        raise ModelLoadError(f"{where}: no {err} entry") from None
    except (ValueError, TypeError) as err:
        raise ModelLoadError(f"{where}: {err}") from None
    if type(latent_dim) is not int or latent_dim < 1 or not isinstance(variant_name, str):
        raise ModelLoadError(f"{where}: model.latent_dim must be a positive integer and variant_name a name")
    if not (directory / WEIGHTS_FILE).is_file():
        raise ModelLoadError(f"{directory}: {WEIGHTS_FILE} missing")
    data = config.get("data")
    binarize = data.get("binarize") if isinstance(data, dict) else None
    return ModelDescription(variant_name, latent_dim, shape, num_classes, binarize, meta.get("vae_zoo_version"))
