"""`run_complete`: read a source on Ray Data (encode's planning, readers and datasource), complete
each image on an actor pool, write the scores to Parquet and the grids to PNG, and commit the
whole folder exactly once (encode's staging)."""
from __future__ import annotations

import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from pipelines.complete.completer import (FORMAT_NAME, FORMAT_VERSION, IMAGES_FOLDER, SCORES_FOLDER, Completer,
                                          scores_schema)
from pipelines.complete.metrics import TASKS
from pipelines.encode.datasource import _make_datasource
from pipelines.encode.job import (MAX_BLOCK_BYTES, _connect, _failure_summary, _input_error, _model_version,
                                  _resolve_model, _sha256)
from pipelines.encode.schema import PREPROCESSING, EncodeError, EncodeFailed
from pipelines.encode.sources import plan_source
from pipelines.encode.staging import _check_replaceable, _commit, _staging_path, clean_stale_staging, verify_output
from pipelines.ray_connect import started_local_cluster
from pipelines.ray_data_lean import lean_execution


def _check_task(variant, config, task: str) -> None:
    if task not in TASKS:
        raise EncodeError(f"--task {task!r}: choose superres or inpaint")
    model_task = getattr(variant, "task", None)
    if model_task is None:
        raise EncodeError(f"--model: a {config.variant_name} model"
                          f"{' conditioned on labels' if config.variant_name == 'cvae' else ''} has no image condition "
                          f"to complete from; train a cvae with variant.condition=lowres (superres) or mask (inpaint)")
    if model_task != task:
        raise EncodeError(f"--task {task}: the model is a cvae for {model_task} "
                          f"(variant.condition={variant.options.condition})")


def _verify_images(folder: Path, num_rows: int) -> None:
    names = {p.name for p in folder.iterdir()}
    want = {f"{i}.png" for i in range(num_rows)}
    if names != want:
        raise EncodeFailed(f"staged images are not one per row: {len(want - names)} missing, "
                           f"{len(names - want)} unexpected")


def run_complete(model: str, inputs: Sequence[str] | str, output: str | os.PathLike, *, task: str, samples: int = 8,
                 nll_samples: int = 1000, seed: int = 0, split: str | None = None, data_dir: str | None = None,
                 image_column: str = "image", label_column: str = "label", batch_size: int = 64, num_workers: int = 1,
                 use_gpu: bool = False, overwrite: bool = False, rows_per_file: int = 100_000,
                 address: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Complete every image of `inputs` with a cvae `model`; returns a summary."""
    started = time.perf_counter()
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else [str(i) for i in inputs]
    for name, value in (("--samples", samples), ("--nll-samples", nll_samples), ("--batch-size", batch_size),
                        ("--num-workers", num_workers), ("--rows-per-file", rows_per_file)):
        if value < 1:
            raise EncodeError(f"{name} must be at least 1, got {value}")
    output = Path(output).absolute()
    if output.exists() or output.is_symlink():
        if not overwrite:
            raise EncodeError(f"{output} already exists; pass --overwrite to replace it")
        _check_replaceable(output, (IMAGES_FOLDER, SCORES_FOLDER))
        if (output / SCORES_FOLDER).is_dir():
            _check_replaceable(output / SCORES_FOLDER)  # scores written by vaezoo complete only
    clean_stale_staging(output)

    from core.serialization import CONFIG_FILE, WEIGHTS_FILE, load_model, package_version

    model_dir = _resolve_model(str(model))
    variant, config = load_model(model_dir)
    _check_task(variant, config, task)
    shape = variant.shape.as_tuple()
    source = plan_source(inputs, shape, split=split, data_dir=data_dir, image_column=image_column,
                         label_column=label_column)
    if source.num_rows == 0:
        raise EncodeError(f"{', '.join(inputs)}: no rows to complete")
    registered, version = _model_version(str(model))
    metadata = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "task": task,
        "model_uri": str(model) if registered or ":/" in str(model) else str(model_dir.resolve()),
        "model_name": registered, "model_version": version, "model_sha256": _sha256(model_dir / WEIGHTS_FILE),
        "variant": config.variant_name, "variant_options": config.to_dict()["variant"], "data_shape": list(shape),
        "preprocessing": PREPROCESSING, "samples": samples, "nll_samples": nll_samples, "seed": seed,
        "grid": "input, mean completion, the samples, truth", "source": source.info,
        "split": split if source.kind != "idx" else (split or "test"), "num_rows": source.num_rows,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "vae_zoo_version": package_version(),
    }
    schema = scores_schema(metadata)
    model_files = {name: (model_dir / name).read_bytes() for name in (CONFIG_FILE, WEIGHTS_FILE)}
    del variant

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_path(output)
    (staging / IMAGES_FOLDER).mkdir(parents=True)
    (staging / SCORES_FOLDER).mkdir()
    connected = False
    try:
        import ray
        import ray.data

        connected = _connect(address, num_workers)
        if use_gpu and ray.cluster_resources().get("GPU", 0) < num_workers:
            raise EncodeError(f"--use-gpu with --num-workers {num_workers} needs as many GPUs; the Ray cluster has "
                              f"{ray.cluster_resources().get('GPU', 0):g}")
        ctx = ray.data.DataContext.get_current()
        saved = ctx.enable_progress_bars, ctx.target_max_block_size
        ctx.enable_progress_bars, ctx.target_max_block_size = progress, MAX_BLOCK_BYTES
        try:
            ds = ray.data.read_datasource(_make_datasource(source, shape), override_num_blocks=len(source.parts))
            ds = ds.map_batches(
                Completer, batch_size=batch_size, batch_format="pyarrow", zero_copy_batch=True,
                compute=ray.data.ActorPoolStrategy(size=num_workers),
                fn_constructor_kwargs={"model_files": model_files, "schema_bytes": schema.serialize().to_pybytes(),
                                       "images_dir": str(staging / IMAGES_FOLDER), "samples": samples,
                                       "nll_samples": nll_samples, "seed": seed,
                                       "device": "cuda" if use_gpu else "cpu"},
                num_cpus=1, num_gpus=1 if use_gpu else 0)
            with lean_execution(started_local_cluster()):  # no dashboard metrics, no autoscaler
                ds.write_parquet(str(staging / SCORES_FOLDER), schema=schema, min_rows_per_file=rows_per_file,
                                 max_rows_per_file=rows_per_file)
        except Exception as err:  # noqa: BLE001 - Ray wraps everything; sort it into input or failure
            if os.environ.get("VAEZOO_DEBUG"):
                raise
            message = _input_error(err)
            if message is not None:
                raise EncodeError(message) from None
            raise EncodeFailed(f"completion failed: {_failure_summary(err)} (Ray's logs have the details)") from None
        finally:
            ctx.enable_progress_bars, ctx.target_max_block_size = saved
        files = verify_output(staging / SCORES_FOLDER, source.num_rows, schema)
        _verify_images(staging / IMAGES_FOLDER, source.num_rows)
        _commit(staging, output, overwrite, (IMAGES_FOLDER, SCORES_FOLDER))
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if connected:
            from pipelines.ray_connect import disconnect

            disconnect()
    seconds = time.perf_counter() - started
    return {"output": str(output), "rows": source.num_rows, "files": len(files), "images": source.num_rows,
            "seconds": round(seconds, 3), "model": str(model), "task": task, "samples": samples,
            "nll_samples": nll_samples, "source": source.kind}
