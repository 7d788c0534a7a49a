"""MLflow for vae-zoo, by concern, with no import cycle (each module imports only those above it):

  store      opening a store others write to: first use of SQLite under a file lock, retries
  settings   tracking URI, artifact location, shared metric names, the experiment and its kind
  model_uri  model references (path, models:/, runs:/) to local model folders
  registry   registered versions and the champion alias
  pyfunc     the logged model: a typed pyfunc returning latents (pyfunc_entry logs it from code)
  datasets   the training and test data as run inputs
  runs       one run per training: open, per-epoch metrics, finish (uses all of the above)
  outbox     `vaezoo train`'s run through a queue in its run folder: survives tracker outages; sync

Names are re-exported here lazily (`from pipelines import tracking; tracking.open_run`), so
importing the package costs nothing until a name is used.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "settings": ["DEFAULT_EXPERIMENT", "CHAMPION", "SHARED_METRICS", "EXPERIMENT_KIND_TAG", "TRAINING_KIND",
                 "tracking_uri", "default_artifact_location", "experiment_id"],
    "model_uri": ["resolve_model_uri"],
    "registry": ["register"],
    "pyfunc": ["LatentEncoder", "log_model", "signature_for", "NATIVE_ARTIFACT", "MODEL_NAME_IN_RUN"],
    "datasets": ["log_data_inputs", "images_digest"],
    "outbox": ["OUTBOX_FILE", "UNDELIVERED_EXIT", "TrackedRun", "is_outage", "sync"],
    "runs": ["RUN_FILE", "flatten", "git_commit", "package_versions", "start_run", "EpochLogger", "log_final",
             "backfill_epochs", "end_run", "open_run", "finish_run", "default_model_name", "log_quality",
             "logged_epochs", "model_kind", "metric_definition", "run_fields", "create_run"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
