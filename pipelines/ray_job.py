"""Refuse to keep a training's records in a Ray job's temporary working directory.

`ray job submit --working-dir .` runs the entrypoint in an unpacked copy of that folder
(.../runtime_resources/working_dir_files/_ray_pkg_...), which Ray deletes when the job's
resources are cleaned up. A default tracking store (./mlflow.db), a relative SQLite URI or a
relative --output would land there and vanish with the run and its registered version; the job
itself would report success. So inside such a job they are refused at start, in one line that
says what to set.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for the entrypoint


def job_working_dir() -> Path | None:
    """The temporary working directory of the Ray job this process is the entrypoint of, or None
    (not in a job, or a job submitted without --working-dir, which runs where the head started)."""
    raw = os.environ.get(JOB_CONFIG_ENV)
    if not raw:
        return None
    try:
        runtime_env = json.loads(raw).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return None
    if not runtime_env.get("working_dir"):
        return None
    return Path.cwd().resolve()  # the supervisor starts the entrypoint inside the unpacked copy


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder)


def refuse_temporary_paths(output: Path, tracking_uri: str, output_given: bool) -> None:
    """Raise ValueError (one line) when this runs inside a Ray job and the run folder or the
    tracking store would be in the job's temporary working directory."""
    temporary = job_working_dir()
    if temporary is None:
        return
    if not os.environ.get("MLFLOW_TRACKING_URI") or (
            tracking_uri.startswith("sqlite:///") and _inside(Path(tracking_uri[len("sqlite:///"):]), temporary)):
        raise ValueError(
            f"this Ray job runs in a temporary copy of its working directory ({temporary}), deleted after the job, "
            f"and the MLflow tracking store would be inside it ({tracking_uri}): set MLFLOW_TRACKING_URI to a server "
            f"or an absolute sqlite:////PATH/mlflow.db outside it, e.g. --runtime-env-json "
            f"'{{\"env_vars\": {{\"MLFLOW_TRACKING_URI\": \"http://HEAD:5000\"}}}}'")
    if _inside(output, temporary):
        shown = "the default --output" if not output_given else f"--output {output}"
        raise ValueError(f"this Ray job runs in a temporary copy of its working directory ({temporary}), deleted after "
                         f"the job: {shown} is inside it; give --output an absolute path outside it "
                         f"(shared storage on several nodes)")
