"""`run_encode`: the Ray Data job (read, encode on an actor pool, write), with its provenance and
the sorting of what comes back from Ray into bad input or a failure."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from pipelines.encode.datasource import _make_datasource
from pipelines.encode.encoder import LatentEncoder
from pipelines.encode.schema import FORMAT_NAME, FORMAT_VERSION, PREPROCESSING, EncodeError, EncodeFailed, output_schema
from pipelines.encode.sources import plan_source
from pipelines.encode.staging import _check_replaceable, _commit, _staging_path, clean_stale_staging, verify_output
from pipelines.ray_connect import started_local_cluster
from pipelines.ray_data_lean import lean_execution

MAX_BLOCK_BYTES = 16 << 20  # Ray Data's target block size during the job



def _hold_before_commit_for_tests(timeout_s: float = 120.0) -> None:
    """Tests only: with VAEZOO_TEST_HOLD_BEFORE_COMMIT=FILE set, once every row is staged write
    this process's pid to FILE and wait to be killed, so a test kills the job exactly between its
    staged output and the commit, however loaded the machine is (a poll for staged files raced
    with a fast commit)."""
    hold = os.environ.get("VAEZOO_TEST_HOLD_BEFORE_COMMIT")
    if not hold:
        return
    Path(hold).write_text(str(os.getpid()))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.1)

def _model_version(uri: str) -> tuple[str | None, str | None]:
    """(registered name, version) for models:/NAME/VERSION and models:/NAME@ALIAS; else (None, None)."""
    m = re.fullmatch(r"models:/([^/@]+)/(\d+)(/.*)?", uri)
    if m:
        return m.group(1), m.group(2)
    m = re.fullmatch(r"models:/([^/@]+)@([^/]+)(/.*)?", uri)
    if m:
        try:
            from mlflow.tracking import MlflowClient

            return m.group(1), str(MlflowClient().get_model_version_by_alias(m.group(1), m.group(2)).version)
        except Exception:  # noqa: BLE001 - provenance is best effort; the model itself resolved
            return m.group(1), None
    return None, None


def _resolve_model(model: str) -> Path:
    if "://" not in model and not model.startswith(("models:/", "runs:/")):
        return Path(model)  # a folder: no need to import MLflow (seconds, and its warnings)
    from pipelines.mlflow_model import resolve_model_uri

    return resolve_model_uri(model)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()



# -- errors coming back from Ray -------------------------------------------------------------------

_ERROR_LINE = re.compile(r"EncodeError: (.+)")


def _input_error(err: BaseException) -> str | None:
    """The EncodeError message inside an exception that came back from Ray, if there is one."""
    todo, seen = [err], set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, EncodeError):
            text = e.args[0] if e.args else str(e)
            if isinstance(text, str) and "\n" not in text:
                return text
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    m = _ERROR_LINE.search(str(err))
    return m.group(1).strip() if m else None


def _failure_summary(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    last = next((ln for ln in reversed(lines) if re.match(r"[\w.]+(Error|Exception|Killed|Died)\b", ln)), None)
    return last or (lines[-1] if lines else type(err).__name__)


class _DropErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


@contextlib.contextmanager
def _quiet_ray_data_errors():
    """Ray Data logs a failed job's traceback to the console; the CLI says it in one line instead
    (the full log stays in Ray's session folder, and VAEZOO_DEBUG=1 shows everything)."""
    if os.environ.get("VAEZOO_DEBUG"):
        yield
        return
    import ray.data  # noqa: F401 - configures the "ray.data" logger

    handlers = [h for h in logging.getLogger("ray.data").handlers if not isinstance(h, logging.FileHandler)]
    flt = _DropErrors()
    for h in handlers:
        h.addFilter(flt)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(flt)


# -- the job ---------------------------------------------------------------------------------------

def default_cpus_per_worker(num_workers: int, local: bool) -> float:
    """On a local cluster this job starts, the machine's CPUs split over the actors (all of them
    for one); on a cluster it joins (--address, $RAY_ADDRESS, or a Ray already initialised in
    this process), 1."""
    return float(max(1, (os.cpu_count() or 1) // num_workers)) if local else 1.0


def local_cluster_cpus(num_workers: int, cpus_per_worker: float) -> int:
    """Logical CPUs of a local cluster for this job: the actors' reservation and 2 more, so the
    write tasks run beside the actors; at least the machine's cores, and 4."""
    return max(4, os.cpu_count() or 1, int(-(-num_workers * cpus_per_worker // 1)) + 2)


def _connect(address: str | None, num_workers: int, cpus_per_worker: float = 1.0) -> bool:
    """Join `address` (or $RAY_ADDRESS) or start a local cluster listening on 127.0.0.1
    (pipelines/ray_connect.py); True when this call did (and so must disconnect). An initialised
    Ray (tests, notebooks) is used as it is."""
    from pipelines.ray_connect import connect

    num_cpus = local_cluster_cpus(num_workers, cpus_per_worker)
    return connect(address, num_cpus=num_cpus, log_to_driver=bool(os.environ.get("VAEZOO_DEBUG"))) != "existing"


def _warm_a_writer_worker() -> None:
    """Import what the Parquet write tasks need (Ray Data, pyarrow.parquet) in an idle worker now,
    not awaited. Ray Data writes in task workers apart from the encoder actor, and a cold one
    imports those (about a second) only once the first block is out, a delay that lands at the
    end of the job. The actor takes another idle worker meanwhile, and the writes then reuse this
    one, which holds nothing the writer would not have imported anyway. Measured: 70k rows in
    4.9 s instead of 5.4 s (3 interleaved pairs, 2 cores; docs/performance-log.md)."""
    import ray

    @ray.remote(num_cpus=0, max_retries=0)
    def import_writer_modules() -> None:
        import pyarrow.parquet  # noqa: F401
        import ray.data  # noqa: F401

    import_writer_modules.remote()


def run_encode(model: str, inputs: Sequence[str] | str, output: str | os.PathLike, *, split: str | None = None,
               data_dir: str | None = None, image_column: str = "image", label_column: str = "label",
               batch_size: int = 1024, num_workers: int = 1, use_gpu: bool = False, overwrite: bool = False,
               rows_per_file: int = 100_000, address: str | None = None, progress: bool = False,
               cpus_per_worker: float | None = None) -> dict[str, Any]:
    """Encode `inputs` with `model` into Parquet files in `output`; returns a summary.

    Each encoder actor reserves `cpus_per_worker` CPUs (None: default_cpus_per_worker) and runs
    that many torch threads (at least 1)."""
    started = time.perf_counter()
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else [str(i) for i in inputs]
    for name, value in (("--batch-size", batch_size), ("--num-workers", num_workers), ("--rows-per-file", rows_per_file)):
        if value < 1:
            raise EncodeError(f"{name} must be at least 1, got {value}")
    if cpus_per_worker is not None and not cpus_per_worker > 0:
        raise EncodeError(f"--cpus-per-worker must be positive, got {cpus_per_worker:g}")
    output = Path(output).absolute()
    if output.exists() or output.is_symlink():
        if not overwrite:
            raise EncodeError(f"{output} already exists; pass --overwrite to replace it")
        _check_replaceable(output)
    clean_stale_staging(output)

    from core.model_folder import CONFIG_FILE, WEIGHTS_FILE, describe_model, package_version

    model_dir = _resolve_model(str(model))
    # The driver reads the model's config.json and never imports torch (a second or more, and
    # its memory, on the command's critical path): the actors build the model, and a model that
    # fails to build (weights that do not fit the config) stops the job with the model's message.
    described = describe_model(model_dir)
    shape = described.shape
    latent_dim = described.latent_dim
    source = plan_source(inputs, shape, split=split, data_dir=data_dir, image_column=image_column,
                         label_column=label_column)
    if source.num_rows == 0:
        raise EncodeError(f"{', '.join(inputs)}: no rows to encode")
    registered, version = _model_version(str(model))
    metadata = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
        # A folder is recorded by its absolute path, a URI as given.
        "model_uri": str(model) if registered or ":/" in str(model) else str(model_dir.resolve()),
        "model_name": registered, "model_version": version,
        "model_sha256": _sha256(model_dir / WEIGHTS_FILE),
        "model_vae_zoo_version": described.vae_zoo_version,
        "variant": described.variant_name, "latent_dim": latent_dim, "data_shape": list(shape),
        "num_classes": described.num_classes, "model_binarize": described.binarize,
        "preprocessing": PREPROCESSING, "source": source.info, "split": split if source.kind != "idx" else (split or "test"),
        "num_rows": source.num_rows,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "vae_zoo_version": package_version(),
    }
    schema = output_schema(latent_dim, metadata)
    model_files = {name: (model_dir / name).read_bytes() for name in (CONFIG_FILE, WEIGHTS_FILE)}

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_path(output)
    staging.mkdir()
    connected = False
    try:
        import ray
        import ray.data

        if cpus_per_worker is None:
            local = not (address or os.environ.get("RAY_ADDRESS") or ray.is_initialized())
            cpus_per_worker = default_cpus_per_worker(num_workers, local)
        torch_threads = max(1, int(cpus_per_worker))
        connected = _connect(address, num_workers, cpus_per_worker)
        _warm_a_writer_worker()
        if use_gpu:  # an actor pool asking for GPUs a cluster lacks would wait for ever
            gpus = ray.cluster_resources().get("GPU", 0)
            if gpus < num_workers:
                raise EncodeError(f"--use-gpu with --num-workers {num_workers} needs {num_workers} GPU"
                                  f"{'s' if num_workers > 1 else ''}; the Ray cluster has {gpus:g}")
        ctx = ray.data.DataContext.get_current()
        saved = ctx.enable_progress_bars, ctx.target_max_block_size
        # Blocks of at most MAX_BLOCK_BYTES (Ray's default, 128 MiB, merges what a read task
        # yields into blocks that big): what is in flight stays small whatever the input size.
        ctx.enable_progress_bars, ctx.target_max_block_size = progress, MAX_BLOCK_BYTES
        try:
            # The read runs fused inside the encoder actors (Ray fuses a task-pool read into an
            # actor-pool map when their resources match and the map takes whole blocks): no read
            # worker processes, no trip of the pixels through the object store. Measured on 2
            # cores (docs/performance-log.md): 1.4x less memory than separate read tasks. One read
            # task per part; the actor calls the model on `batch_size` rows at a time.
            resources = {"num_cpus": cpus_per_worker, "num_gpus": 1 if use_gpu else 0}
            ds = ray.data.read_datasource(_make_datasource(source, shape), override_num_blocks=len(source.parts),
                                          **resources)
            ds = ds.map_batches(
                LatentEncoder, batch_size=None, batch_format="pyarrow", zero_copy_batch=True,
                compute=ray.data.ActorPoolStrategy(size=num_workers),
                fn_constructor_kwargs={"model_files": model_files, "schema_bytes": schema.serialize().to_pybytes(),
                                       "device": "cuda" if use_gpu else "cpu", "torch_threads": torch_threads,
                                       "batch_size": batch_size, "model_path": str(model_dir)},
                **resources)
            with lean_execution(started_local_cluster()):  # no dashboard metrics, no autoscaler
                ds.write_parquet(str(staging), schema=schema, min_rows_per_file=rows_per_file,
                                 max_rows_per_file=rows_per_file)
        except Exception as err:  # noqa: BLE001 - Ray wraps everything; sort it into input or failure
            if os.environ.get("VAEZOO_DEBUG"):
                raise
            message = _input_error(err)
            if message is not None:
                raise EncodeError(message) from None
            raise EncodeFailed(f"encoding failed: {_failure_summary(err)} (Ray's logs have the details)") from None
        finally:
            ctx.enable_progress_bars, ctx.target_max_block_size = saved
        files = verify_output(staging, source.num_rows, schema)
        _hold_before_commit_for_tests()
        _commit(staging, output, overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if connected:
            from pipelines.ray_connect import disconnect

            disconnect()
    seconds = time.perf_counter() - started
    return {"output": str(output), "rows": source.num_rows, "files": len(files), "seconds": round(seconds, 3),
            "rows_per_second": round(source.num_rows / seconds, 1), "model": str(model),
            "variant": described.variant_name, "latent_dim": latent_dim, "source": source.kind,
            "num_workers": num_workers, "cpus_per_worker": cpus_per_worker, "torch_threads_per_worker": torch_threads}
