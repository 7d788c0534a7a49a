"""Data-parallel training on Ray Train: the core loop in a TorchTrainer worker group.

The run folder (`--output DIR`) has the same layout as an in-process run (pipelines/local.py),
plus what Ray needs:
  config.json, model.safetensors   the trained model (load with `--model DIR`)
  run_config.yaml                  the resolved config
  checkpoints/last.pt              a copy of Ray's latest checkpoint (updated each epoch)
  metrics.jsonl                    one line of global (all-reduced) metrics per epoch
  results.json                     final test metrics, evaluated in the driver
  ray_run.json                     Ray's run name and storage path (what --resume reuses) and
                                   the history of checkpoints: epoch, path, and which worker
                                   (rank, node, pid) computed it
  ray_results/NAME/epoch_NNNN/     Ray's checkpoints (default --storage-path; the last 3 kept)

Who does what:
* each worker runs `core.training.train` (which is data-parallel when a process group exists)
  and reports every epoch; rank 0 attaches the checkpoint (state.pt plus the metric history that
  led to it) and Ray copies it to the storage path;
* a callback on Ray Train's controller (an actor on the driver's node; on a local cluster, the
  driver itself) writes metrics.jsonl, checkpoints/last.pt and ray_run.json as each epoch's
  checkpoint is registered;
* the driver prints each new metrics line (so the console and `ray job logs` show one line per
  epoch, while the logs of Ray's own processes stay in Ray's log files unless --ray-logs); after
  `fit()` it loads the last checkpoint, rewrites metrics.jsonl from that checkpoint's history
  (each epoch exactly once), evaluates on the test set and saves the model, as `run_local` does.

A restarted worker group (`--max-failures`) resumes from Ray's last checkpoint: model,
optimisers, schedulers, epoch and every rank's RNG state. `--resume` after the driver itself died
rebuilds the trainer with the same run name and storage path, so Ray finds that checkpoint too.
SIGTERM or SIGINT to the driver stops the run at the last registered epoch (pipelines/ray_stop.py).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import torch

from core.config import RunConfig
from core.datasets import prepare_run_data
from core.files import atomic_write, atomic_write_json, atomic_write_text
from core.serialization import build_variant, load_state, read_checkpoint
from core.training import RankFailedError, print_report, save_checkpoint, train
from pipelines.local import CHECKPOINT, finish_training, keep_epochs_up_to, prepare_output
from pipelines.ray_stop import (announce_test_hold, fit_in_thread, freeze_run_folder, is_frozen, run_folder_lock,
                                test_hold_from_environment, thaw_run_folder)

RAY_RUN = "ray_run.json"
DEFAULT_STORAGE = "ray_results"
STATE_FILE = "state.pt"          # the core loop's checkpoint dict, inside each Ray checkpoint
HISTORY_FILE = "metrics.jsonl"   # the metric lines of every epoch up to that checkpoint
WORKER_KEYS = ("worker/rank", "worker/node_id", "worker/pid", "worker/torch_threads")  # reported to Ray, kept out of metrics.jsonl


def _is_uri(path: str) -> bool:
    return "://" in path


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _absolute_data_paths(config: RunConfig) -> RunConfig:
    """Workers chdir into Ray's session folder: a data folder given relative to the driver's
    working directory must travel as an absolute path."""
    d = config.data
    overrides = {}
    if Path(d.dataset).is_dir():
        overrides["data.dataset"] = str(Path(d.dataset).resolve())
    if d.data_dir is not None and Path(d.data_dir).is_dir():
        overrides["data.data_dir"] = str(Path(d.data_dir).resolve())
    return config.with_overrides(overrides) if overrides else config


# -- worker side --------------------------------------------------------------------------------

def _train_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray
    import ray.train
    import ray.train.torch

    # Ray starts a worker with one torch thread (OMP_NUM_THREADS=1) whatever it reserved: use
    # every CPU reserved, or a 2-CPU worker trains at one CPU's speed.
    torch.set_num_threads(loop_config["torch_threads"])
    # Progress bars from a worker arrive in the driver's log as one line per refresh.
    config = RunConfig.from_dict(loop_config["config"]).with_overrides({"train.progress": False})
    rank = ray.train.get_context().get_world_rank()
    state, history = None, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restarted worker group, or a resumed Ray run
        state = _load_ray_checkpoint(checkpoint)
        history = state.pop("_history")
    elif loop_config.get("initial_state") is not None:  # --resume of a run that has no Ray checkpoint
        state = ray.get(loop_config["initial_state"])
        history = list(loop_config.get("initial_history") or [])
    identity = {"worker/rank": rank, "worker/node_id": ray.get_runtime_context().get_node_id(),
                "worker/pid": os.getpid(), "worker/torch_threads": torch.get_num_threads()}
    hold = loop_config.get("_test_hold_after_report")
    fault = loop_config.get("_test_fault")
    if fault and rank == fault["rank"]:
        _inject_fault(fault)

    def report(metrics: dict[str, Any], checkpoint_dict: dict[str, Any]) -> None:
        history.append(metrics)
        reported = {**metrics, **identity}
        name = f"epoch_{int(metrics['epoch']):04d}"
        if rank == 0:
            with tempfile.TemporaryDirectory(prefix="vaezoo-ckpt-") as tmp:
                torch.save(checkpoint_dict, Path(tmp) / STATE_FILE)
                (Path(tmp) / HISTORY_FILE).write_text("".join(json.dumps(m) + "\n" for m in history))
                ray.train.report(reported, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=name)
        else:
            ray.train.report(reported, checkpoint_dir_name=name)
        if hold and rank == hold["rank"] and metrics["epoch"] == hold["epoch"]:
            _hold_until_killed(Path(hold["pid_file"]))

    try:
        train(config, report=report, resume=state, device=ray.train.torch.get_device())
    except RankFailedError:  # another rank failed and raises its own error (rank, step, batch, cause): had
        return  # this one raised too, which of the two Ray reported was a race; the run still fails


def _inject_fault(fault: dict[str, Any]) -> None:
    """TEST ONLY (run_ray's `_test_fault`): in this worker process only, make the `fault["call"]`-th
    call of the variant's losses either raise (kind "error") or return a NaN loss (kind "nan")."""
    import dataclasses
    import itertools

    from core.variant import Variant

    calls, original = itertools.count(1), Variant.losses

    def losses(self, batch, groups):
        outputs = original(self, batch, groups)
        if next(calls) == fault["call"]:
            if fault["kind"] == "error":
                raise ValueError("injected fault")
            name = next(iter(outputs))
            outputs[name] = dataclasses.replace(outputs[name], loss=outputs[name].loss * float("nan"))
        return outputs

    Variant.losses = losses


def _hold_until_killed(pid_file: Path, timeout_s: float = 120.0) -> None:
    """TEST ONLY (run_ray's `_test_hold_after_report`): on the first attempt, publish this
    worker's pid and wait for the test to SIGKILL the process, so the failure lands at a known
    point (after an epoch's checkpoint is registered). A restarted worker finds the file and goes on."""
    if pid_file.exists():
        return
    atomic_write_text(pid_file, str(os.getpid()))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.05)
    raise RuntimeError(f"test hold: worker {os.getpid()} was not killed within {timeout_s:.0f}s")


# -- controller side ----------------------------------------------------------------------------

def _run_folder_callback(output: Path, test_hold: dict[str, Any] | None = None):
    from ray.train import UserCallback

    class RunFolderCallback(UserCallback):
        """Keeps the run folder up to date as Ray registers each epoch (runs on Ray Train's
        controller, on the driver's node or in the driver, so `output` is the driver's folder).
        Writes each epoch under the run folder's lock, and nothing once a stopped driver froze
        the folder (pipelines/ray_stop.py)."""

        def __init__(self, output: Path, test_hold: dict[str, Any] | None):
            self.output, self.test_hold = output, test_hold

        def after_report(self, run_context, metrics, checkpoint) -> None:
            with run_folder_lock(self.output):
                if is_frozen(self.output):
                    return
                epoch = self._write_epoch(metrics, checkpoint)
            announce_test_hold(self.test_hold, epoch)

        def _write_epoch(self, metrics, checkpoint) -> int:
            glob = {k: v for k, v in metrics[0].items() if k not in WORKER_KEYS}
            epoch = int(glob["epoch"])
            metrics_file = self.output / "metrics.jsonl"
            done = [m["epoch"] for m in _read_jsonl(metrics_file)]
            if done and epoch <= max(done):  # an epoch repeated after a failure: the new line wins
                keep_epochs_up_to(metrics_file, epoch - 1)
            with open(metrics_file, "a") as f:
                f.write(json.dumps(glob) + "\n")
            info_file = self.output / RAY_RUN
            info = json.loads(info_file.read_text())
            entry = {"epoch": epoch, "checkpoint": None,
                     "workers": [{k.split("/")[1]: m.get(k) for k in WORKER_KEYS} for m in metrics]}
            if checkpoint is not None:
                entry["checkpoint"] = checkpoint.path
                with checkpoint.as_directory() as folder:
                    atomic_write(self.output / CHECKPOINT, lambda tmp: shutil.copyfile(Path(folder) / STATE_FILE, tmp))
            info["history"].append(entry)
            atomic_write_json(info_file, info, newline=False)
            return epoch

    return RunFolderCallback(output, test_hold)


# -- driver side --------------------------------------------------------------------------------

class _EpochPrinter:
    """Prints each new line of metrics.jsonl in the driver while `fit()` blocks, so the console
    (and `ray job logs`) shows one line per epoch without forwarding every Ray process's logs;
    and hands each line to `hook` (e.g. MLflow logging, which then stays in the driver)."""

    def __init__(self, metrics_file: Path, hook: Callable[[dict[str, Any]], None] | None = None,
                 interval_s: float = 0.2):
        self.metrics_file, self.hook, self.interval_s = metrics_file, hook, interval_s
        self.printed: set[str] = set(self._lines())  # a resumed run's old epochs
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="vaezoo-epoch-printer", daemon=True)

    def _lines(self) -> list[str]:
        try:
            return [ln for ln in self.metrics_file.read_text().splitlines() if ln.strip()]
        except OSError:
            return []

    def poll(self) -> None:
        for line in self._lines():
            if line not in self.printed:
                self.printed.add(line)
                try:
                    metrics = json.loads(line)
                except ValueError:  # a line caught mid-write: it comes back complete next time
                    self.printed.discard(line)
                    continue
                print_report(metrics)
                if self.hook is not None:
                    try:
                        self.hook(metrics)
                    except Exception as err:  # noqa: BLE001 - a logging hook must not stop training
                        print(f"vaezoo: epoch hook failed at epoch {metrics.get('epoch')}: {err!r}", file=sys.stderr)
        sys.stdout.flush()

    def _loop(self) -> None:
        while not self.stop.wait(self.interval_s):
            self.poll()

    def __enter__(self) -> "_EpochPrinter":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.poll()


def _connect(address: str | None, num_cpus: float, ray_logs: bool) -> bool:
    """Join `address` (or $RAY_ADDRESS), or start a local cluster listening on 127.0.0.1
    (pipelines/ray_connect.py); True when this call started a local cluster (and so should stop
    it). An already initialised Ray (tests, notebooks) is used as is. A joined cluster is left
    connected until the process exits: a Ray job's driver runs in the job's unpacked working
    directory, which Ray deletes when the driver disconnects, and the final evaluation and MLflow
    logging still run there."""
    from pipelines.ray_connect import connect

    cpus = max(4, int(-(-num_cpus // 1)))
    return connect(address, num_cpus=cpus, log_to_driver=ray_logs, idle_workers=False) == "started"


def _restore_working_directory(path: str, fallback: Path) -> None:
    """A Ray job's driver runs in the job's unpacked working directory, which Ray may replace
    while the job runs; the process is then left in a deleted folder and os.getcwd() fails (torch
    calls it on import). Re-enter the folder by its path, or the run folder if it is gone."""
    try:
        os.getcwd()
    except FileNotFoundError:
        os.chdir(path if os.path.isdir(path) else fallback)


def _new_run_name(config: RunConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"vaezoo-{config.variant_name}-{stamp}-{uuid.uuid4().hex[:6]}"


def _load_ray_checkpoint(checkpoint) -> dict[str, Any]:
    """The core loop's checkpoint inside a Ray checkpoint, with the metric history that led to it
    under "_history". Read like every checkpoint (core.serialization.read_checkpoint: weights
    only, one line naming the file when it is damaged or holds pickled code): `--resume` reads
    whatever storage the run folder points at."""
    with checkpoint.as_directory() as folder:
        state = read_checkpoint(Path(folder) / STATE_FILE)
        state["_history"] = _read_jsonl(Path(folder) / HISTORY_FILE)
    return state


def run_ray(config: RunConfig, output: Path, *, resume: bool = False, final_nll_samples: int = 1000,
            num_workers: int = 1, use_gpu: bool = False, cpus_per_worker: float | None = None, address: str | None = None,
            storage_path: str | None = None, max_failures: int = 0, ray_logs: bool = False,
            epoch_hook: Callable[[dict[str, Any]], None] | None = None,
            _test_hold_after_report: dict[str, Any] | None = None,
            _test_fault: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `config` on `num_workers` Ray Train workers; writes the run folder and returns the
    final test metrics (the same dict as run_local). The console shows one line per epoch;
    `ray_logs` also forwards the logs of Ray's workers and controller (when this call connects).
    `epoch_hook(metrics)` runs in the driver (a background thread) for each epoch as Ray registers
    it, like run_local's (a restarted worker group resumes after the last registered epoch).

    `cpus_per_worker` None reserves, on a local cluster this call starts, the machine's CPUs split
    evenly over the workers (all of them for one worker), and 1 CPU per worker on a cluster it joins.

    `_test_hold_after_report` is for tests only: {"epoch": E, "rank": R, "pid_file": PATH} makes
    rank R, on its first attempt, write its pid to PATH after reporting epoch E and wait to be killed.
    `_test_fault` is for tests only: {"rank": R, "call": N, "kind": "nan" or "error"} makes rank R's
    N-th loss computation NaN or raise.
    """
    import ray
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from pipelines.ray_connect import disconnect, started_local_cluster
    from pipelines.ray_lean import set_local_cluster_defaults, torch_config, trainer_class

    if num_workers < 1:
        raise ValueError("--num-workers must be at least 1 for Ray (0 trains in-process)")
    if cpus_per_worker is None:
        local = address is None and not os.environ.get("RAY_ADDRESS")
        cpus_per_worker = float(max(1, (os.cpu_count() or 1) // num_workers)) if local else 1.0
    if cpus_per_worker <= 0:
        raise ValueError("--cpus-per-worker must be positive")
    if max_failures < -1:
        raise ValueError("--max-failures must be -1 (retry forever) or more")
    output = output.resolve()
    info_file = output / RAY_RUN
    state, info = None, None
    if resume:
        info = json.loads(info_file.read_text()) if info_file.is_file() else None
        if (output / CHECKPOINT).is_file():
            state = read_checkpoint(output / CHECKPOINT)  # weights only; one clear line for a bad file
        if info is None and state is None:
            raise FileNotFoundError(f"--resume: no checkpoint at {output / CHECKPOINT} and no Ray run in {output}")
        if state is not None:
            config = RunConfig.from_dict(state["config"])  # a resumed run keeps its own config
        elif (output / "run_config.yaml").is_file():
            config = RunConfig.from_file(output / "run_config.yaml")
    else:
        prepare_output(output, resume=False)  # refuses a non-empty folder
    config = _absolute_data_paths(config)

    if info is not None:
        if storage_path is not None and storage_path.rstrip("/") != info["storage_path"].rstrip("/"):
            raise ValueError(f"--resume: this run keeps its checkpoints in {info['storage_path']}, not {storage_path}")
    else:
        storage = storage_path or str(output / DEFAULT_STORAGE)
        if not _is_uri(storage):
            storage = str(Path(storage).resolve())
        info = {"name": _new_run_name(config), "storage_path": storage, "history": []}
    info.update(num_workers=num_workers, use_gpu=use_gpu, cpus_per_worker=cpus_per_worker)

    (output / CHECKPOINT.parent).mkdir(parents=True, exist_ok=True)
    (output / "run_config.yaml").write_text(config.to_yaml())
    metrics_file = output / "metrics.jsonl"
    if state is not None:
        keep_epochs_up_to(metrics_file, int(state["epoch"]))
    atomic_write_json(info_file, info, newline=False)
    thaw_run_folder(output)
    test_hold = test_hold_from_environment(dict(os.environ))
    if test_hold is not None and _test_hold_after_report is None:
        _test_hold_after_report = {"epoch": test_hold["epoch"], "rank": 0, "pid_file": f"{test_hold['file']}.pid"}
    # loaded here for the final evaluation, and so that a bad path (or a bad likelihood) fails before Ray starts
    data = prepare_run_data(config)

    # The controller polls workers for reports every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by
    # default) and a worker's report queue holds one entry: short epochs would wait on the poll.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    working_directory = os.getcwd()
    caller_sigterm = signal.getsignal(signal.SIGTERM)
    connected = _connect(address, num_workers * cpus_per_worker, ray_logs)
    if callable(caller_sigterm) and threading.current_thread() is threading.main_thread():
        # ray.init replaces the SIGTERM handler with sys.exit(15): keep the caller's (the CLI's
        # turns SIGTERM into a clean preemption stop that ends the MLflow run KILLED).
        signal.signal(signal.SIGTERM, caller_sigterm)
    local_cluster = started_local_cluster()
    if local_cluster:
        set_local_cluster_defaults()
    try:
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        if nodes > 1 and not _is_uri(info["storage_path"]):
            print(f"vaezoo: the cluster has {nodes} nodes: {info['storage_path']} must be storage they all share "
                  f"(NFS), or pass --storage-path s3://... (or another URI)", file=sys.stderr)
        loop_config: dict[str, Any] = {"config": config.to_dict(), "torch_threads": max(1, int(cpus_per_worker))}
        if state is not None:  # used only when Ray has no checkpoint of its own for this run
            loop_config["initial_state"] = ray.put(state)
            loop_config["initial_history"] = _read_jsonl(metrics_file)
        if _test_hold_after_report:
            loop_config["_test_hold_after_report"] = dict(_test_hold_after_report)
        if _test_fault:
            loop_config["_test_fault"] = dict(_test_fault)
        resources = {"CPU": cpus_per_worker} | ({"GPU": 1} if use_gpu else {})
        # NCCL carries the gradients on GPUs; the loop's metric and evaluation sums are small CPU
        # tensors, which a pure NCCL group cannot reduce: give CPU tensors gloo.
        backend = "cpu:gloo,cuda:nccl" if use_gpu else "gloo"
        trainer = trainer_class(local_cluster)(
            _train_worker,
            train_loop_config=loop_config,
            torch_config=torch_config(backend, num_workers),
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources),
            run_config=ray.train.RunConfig(
                name=info["name"], storage_path=info["storage_path"],
                failure_config=FailureConfig(max_failures=max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=3),
                logging_config=ray.train.LoggingConfig(log_level="WARNING"),
                callbacks=[_run_folder_callback(output, test_hold)]),
        )
        started = time.perf_counter()
        try:
            with _EpochPrinter(metrics_file, epoch_hook):
                try:
                    result = fit_in_thread(trainer.fit)
                except BaseException:  # a signal (or an error): report and log only what last.pt holds
                    freeze_run_folder(output)
                    raise
        except ray.train.TrainingFailedError as err:
            raise RuntimeError(f"Ray training failed (run {info['name']} in {info['storage_path']}; "
                               f"continue it with --resume): {err}") from err
        train_seconds = time.perf_counter() - started
    finally:
        if connected:
            disconnect()
        _restore_working_directory(working_directory, output)

    final = _load_ray_checkpoint(result.checkpoint) if result.checkpoint is not None else state
    if final is None:
        raise RuntimeError(f"Ray run {info['name']} finished without a checkpoint")
    history = final.pop("_history", None)
    save_checkpoint(final, output / CHECKPOINT)
    if history is not None:  # the lineage of the final checkpoint: each epoch exactly once
        metrics_file.write_text("".join(json.dumps(m) + "\n" for m in history))

    variant = build_variant(config, data.shape, data.num_classes)
    load_state(variant, final["model"], str(output / CHECKPOINT))
    return finish_training(variant, config, data, output, final_nll_samples, train_seconds)
