"""Save and load a model as config JSON plus safetensors weights: nothing is ever unpickled.

A saved model is a folder: `config.json` (the run config, data shape, classes, versions) and
`model.safetensors`. Each file is written under a temporary name and renamed into place
(core/files.py), weights first, so a crash never leaves a half-written model behind.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.config import RunConfig
from core.files import atomic_write, atomic_write_json
from core.model_folder import (CONFIG_FILE, FORMAT_VERSION, WEIGHTS_FILE, ModelLoadError,  # noqa: F401 - re-exported
                               checked_shape_and_classes, package_version, read_metadata)
from core.networks import DataShape
from core.objectives import make_objective
from core.registry import get_variant
from core.variant import Variant

def build_variant(config: RunConfig, shape: DataShape, num_classes: int) -> Variant:
    cls = get_variant(config.variant_name)
    objective = None if config.objective is None else make_objective(config.objective)
    return cls(config.model, shape, num_classes, config.variant_options(), objective)


def model_metadata(variant: Variant, config: RunConfig) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "vae_zoo_version": package_version(),
        "variant": config.variant_name,
        "data_shape": list(variant.shape.as_tuple()),
        "num_classes": variant.num_classes,
        "latent_dim": config.model.latent_dim,
        "config": config.to_dict(),
    }


def save_model(variant: Variant, config: RunConfig, directory: str | os.PathLike,
               extra: dict[str, Any] | None = None) -> Path:
    """Write the model into `directory` (which may also hold a run's checkpoints and metrics).

    Each file is written under a temporary name and renamed, weights first: `config.json` is
    what marks a folder as a model, so a folder never looks complete while it is not.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = model_metadata(variant, config) | (extra or {})
    state = {k: v.detach().cpu().contiguous() for k, v in variant.state_dict().items()}
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata={"variant": config.variant_name}))
    atomic_write_json(directory / CONFIG_FILE, meta, newline=False)
    return directory


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Variant, RunConfig]:
    directory = Path(directory)
    meta = read_metadata(directory)
    try:
        config = RunConfig.from_dict(meta["config"])
        shape, num_classes = checked_shape_and_classes(meta)
        variant = build_variant(config, DataShape(*shape), num_classes)
    except KeyError as err:
        raise ModelLoadError(f"{directory / CONFIG_FILE}: no {err} entry") from None
    except (ValueError, TypeError, RuntimeError) as err:  # ConfigError and ModelLoadError are ValueErrors
        raise ModelLoadError(f"{directory / CONFIG_FILE}: {_first_line(err)}") from None
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelLoadError(f"{directory}: {WEIGHTS_FILE} missing")
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelLoadError(f"{weights}: not a valid safetensors file ({err})") from None
    load_state(variant, state, str(weights))
    return variant.to(device).eval(), config


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


CHECKPOINT_KEYS = ("epoch", "model", "optimizers", "schedulers", "config")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A training checkpoint (`checkpoints/last.pt`) read with `torch.load(weights_only=True)`:
    a file that holds pickled code, is corrupt or is not a vae-zoo checkpoint is refused with one
    line naming it (torch's own message for a refused pickle is a page that suggests turning the
    protection off)."""
    import pickle
    import zipfile

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such checkpoint") from None
    except pickle.UnpicklingError as err:
        detail = next((ln.strip() for ln in str(err).splitlines() if "GLOBAL" in ln), "")
        raise ModelLoadError(f"{path}: refused: it holds pickled objects other than weights, and checkpoints are "
                             f"loaded weights-only" + (f" ({detail})" if detail else "")) from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError,
            zipfile.BadZipFile, UnicodeDecodeError) as err:
        # torch.load reports a damaged file in many shapes: "[Errno 22]", KeyError(101), EOFError...
        raise ModelLoadError(f"{path}: not a readable checkpoint (corrupt or truncated: "
                             f"{type(err).__name__}: {_first_line(err)})") from None
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        found = sorted(map(str, state))[:6] if isinstance(state, dict) else type(state).__name__
        raise ModelLoadError(f"{path}: not a vae-zoo training checkpoint (needs {', '.join(CHECKPOINT_KEYS)}; "
                             f"found {found})")
    if not isinstance(state["model"], dict) or not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise ModelLoadError(f"{path}: its 'model' entry is not a dict of tensors")
    if not isinstance(state["config"], dict) or isinstance(state["epoch"], bool) or not isinstance(state["epoch"], int):
        raise ModelLoadError(f"{path}: its 'config' or 'epoch' entry is malformed")
    return state


def load_state(variant: Variant, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with one readable error for a checkpoint of another variant or shape."""
    own = variant.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]  # model order: the same message each time
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}")
        if wrong:
            k = wrong[0]
            parts.append(f"{k} has shape {tuple(state[k].shape)}, the model needs {tuple(own[k].shape)}")
        raise ModelLoadError(f"{source}: weights do not fit this {variant.name} model ({'; '.join(parts)})")
    variant.load_state_dict(state)
