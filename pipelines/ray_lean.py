"""What Ray Train runs beside the training workers, cut to what a vaezoo run uses.

On a 2-core machine every other process that wakes up takes a core from a worker whose two torch
threads meet at a barrier many times per step. Measured during steady epochs (issue #20): each
extra Ray process wakes about 100 times a second (its main thread checks for signals every 10 ms),
and the worker's own gloo loop about 80 times. So:

* one worker trains without a torch process group: with a world of one the loop calls no
  collective (core/distributed.py), and the group's gloo and TCP-store threads only wake up;
* on a local cluster this process started (it is the whole cluster), Ray Train's preemption
  watcher (an actor that follows cloud node draining) and its Prometheus metrics (nothing scrapes
  them: the local cluster has no dashboard) are off. An environment variable set by the user wins;
* `trainer_class` leaves out three more helper actors where they have nothing to do: the dataset
  manager when the run passes no Ray Datasets (a vaezoo run reads its data in the worker), and, on
  a local cluster this process started, the placement-group cleaner (it checks the controller
  through the State API, which a cluster without a dashboard does not serve; the local cluster
  ends with this process anyway) and the autoscaling coordinator (a local cluster has no
  autoscaler to ask for nodes). Stopping these three during a run made a neighbouring process's
  matrix products 2.9% faster, interval [0.8, 4.9]% (benchmarks/ray_neighbours.py, issue #20);
* on such a cluster Ray Train's controller runs in the driver (`run_controller_here`), not as an
  actor: the actor's process woke 170 times a second (its signal check every 10 ms and its gRPC
  threads) for a loop that polls the workers every 0.5 s;
* a one-worker run on such a cluster has no synchronisation actor either: its controller gives the
  worker group a `SoloBarrier`, since a barrier of one opens at once. Stopping Ray's actor during
  a run made a plain process's training epoch beside it 3.8% faster, [0.3, 7.4]% (7.7% in another
  run; benchmarks/ray_paired_epochs.py --also-stopped, docs/performance-log.md).
"""
from __future__ import annotations

import contextlib
import os

from pipelines.replaced import replaced

LOCAL_CLUSTER_DEFAULTS = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_METRICS_ENABLED": "0"}


def set_local_cluster_defaults(environ: dict[str, str] | os._Environ = os.environ) -> None:
    """Read by Ray Train in the driver and passed on to its controller: set before `fit()`."""
    for key, value in LOCAL_CLUSTER_DEFAULTS.items():
        environ.setdefault(key, value)


def trainer_class(local_cluster: bool):
    """Ray Train's TorchTrainer without the helpers above; `local_cluster`: the cluster is a local
    one this process started. The overrides are Ray 2.60's private hooks (Ray is pinned);
    tests/test_ray_helpers.py checks which helper processes a run really starts."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy

    class LeanTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            unused = (() if self.datasets else (DatasetsCallback,)) + \
                     ((PlacementGroupCleanerCallback,) if local_cluster else ())
            return [c for c in super()._create_default_callbacks() if not isinstance(c, unused)]

        def _initialize_and_run_controller(self, **controller_init_kwargs):
            if local_cluster and type(controller_init_kwargs.get("scaling_policy")) is FixedScalingPolicy:
                controller_init_kwargs["scaling_policy"] = _policy_without_autoscaler(self.scaling_config)
                return run_controller_here(_controller_in_this_process(), controller_init_kwargs)
            return super()._initialize_and_run_controller(**controller_init_kwargs)

    return LeanTorchTrainer


def _policy_without_autoscaler(scaling_config):
    """Ray's fixed-size policy that sends no resource requests (so starts no coordinator actor)."""
    from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy

    class FixedScalingPolicyWithoutAutoscaler(FixedScalingPolicy):
        def after_controller_start(self, train_run_context) -> None:
            pass  # Ray's creates the coordinator client here; the shutdown hooks skip a missing one

        def _maybe_send_resource_request(self) -> None:
            pass

        def _send_resource_request(self) -> None:
            pass

    return FixedScalingPolicyWithoutAutoscaler(scaling_config)


class SoloBarrier:
    """Ray Train's synchronisation actor for a group of one worker, without a process of its own.

    Ray Train starts a SynchronizationActor beside every worker group: `ray.train.report` and the
    `ray.train.collective` calls meet there, and it is otherwise idle, waking ~150 times a second
    on the worker's cores. A barrier of one opens at once and a broadcast from rank 0 returns the
    caller's own data, so this stand-in answers the same calls (`method.remote(...)` giving an
    object ref) in the calling process."""

    class _Call:
        def __init__(self, answer):
            self._answer = answer

        def remote(self, *args, **kwargs):
            import ray

            return ray.put(self._answer(*args, **kwargs))

    @staticmethod
    def _broadcast(world_rank: int, world_size: int, data, *_, **__):
        if (world_rank, world_size) != (0, 1):
            raise ValueError(f"a solo barrier serves rank 0 of 1, not rank {world_rank} of {world_size}")
        return data

    broadcast_from_rank_zero = _Call(_broadcast)
    # Ray's actor refuses a required set without rank 0 (the only writer of a broadcast)
    set_required_ranks = _Call(lambda ranks: ranks is None or 0 in set(ranks))
    reset = _Call(lambda: None)

    @classmethod
    def options(cls, **_):  # SynchronizationActor.options(...).remote(...) in Ray's worker group
        return cls

    @classmethod
    def remote(cls, **_):
        return cls()


class ControllerInTheDriver:
    """What a worker holds as its controller's handle when the controller runs in the driver
    (`run_controller_here`). Ray's worker calls its controller for one thing only,
    `ray.train.get_all_reported_checkpoints()`, which vaezoo's loop does not use."""

    class _Unavailable:
        def remote(self, *args, **kwargs):
            raise RuntimeError("ray.train.get_all_reported_checkpoints() is not available in a run whose "
                               "controller runs in the driver (a local cluster started by vaezoo)")

    get_all_reported_checkpoints = _Unavailable()


def run_controller_here(controller_cls, controller_init_kwargs: dict):
    """Ray Train's controller loop, run in this (the driver's) process rather than as an actor of
    its own: with an actor, every Ray process checks for signals 100 times a second (a 10 ms timer
    in Ray's C++ task loop) and runs gRPC threads, waking up on the worker's cores; the
    controller's own work is a poll of the workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S
    (0.5 s in vaezoo). Starting that actor (a fresh Python process importing Ray Train) also took
    about 4 s of every command (benchmarks/ray_startup_parts.py). The loop does what Ray's actor
    does: `run()` until a terminal state, then `get_result()`. The workers are the driver's
    actors: its exit ends them, as it ended the controller actor and so its workers."""
    import asyncio

    import ray

    from pipelines.ray_stop import fit_in_thread

    controller = controller_cls(**controller_init_kwargs)
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no event loop runs in this thread (vaezoo runs `fit()` in a thread of its own)
        run = lambda fn: fn()  # noqa: E731
    else:  # one does (a notebook): the controller's loop gets a thread of its own
        run = fit_in_thread
    try:
        run(lambda: asyncio.run(controller.run()))
    except BaseException:
        if ray.is_initialized():  # e.g. Ctrl-C: end the workers, as Ray's SIGINT handler aborts its actor
            with contextlib.suppress(Exception), replaced((ray.actor, "exit_actor", lambda: None)):
                run(lambda: asyncio.run(controller.abort()))  # Ray's abort ends with the actor's exit
        raise
    return controller.get_result()


def _controller_in_this_process():
    """Ray Train's controller for `run_controller_here`: its workers get a `ControllerInTheDriver`
    as their controller's handle, and a group of one worker synchronises through a SoloBarrier
    (the worker group reads the two module globals below in this process)."""
    import ray
    from ray.train.v2._internal.execution.controller.controller import TrainController
    from ray.train.v2._internal.execution.worker_group import state, worker_group
    from ray.train.v2._internal.execution.worker_group.worker_group import WorkerGroup

    def shutdown_sync_actor(sync_actor) -> None:
        if isinstance(sync_actor, ray.actor.ActorHandle):  # Ray's own actor: kill it
            ray.kill(sync_actor)

    @contextlib.contextmanager
    def with_barrier(num_workers: int):
        if num_workers != 1:  # larger groups keep Ray's synchronisation actor
            yield
            return
        with replaced((worker_group, "SynchronizationActor", SoloBarrier),
                      (state, "_shutdown_sync_actor", shutdown_sync_actor)):
            yield

    class WorkerGroupInTheDriver(WorkerGroup):
        def _start(self):
            with with_barrier(self._worker_group_context.num_workers):
                return super()._start()

        def shutdown(self):
            with with_barrier(self._worker_group_context.num_workers):
                return super().shutdown()

        def abort(self):
            with with_barrier(self._worker_group_context.num_workers):
                return super().abort()

        def _init_train_context_on_workers(self, workers, sync_actor, train_context_args) -> None:
            # Ray's method (2.60) but for the controller's handle: Ray's reads the current actor's
            # (`ray.get_runtime_context().current_actor`), which a driver has not.
            # tests/test_ray_lean.py checks Ray's source is still the one this copies.
            ray.get([worker.actor.init_train_context.remote(
                train_run_context=self._train_run_context,
                distributed_context=worker.distributed_context,
                synchronization_actor=sync_actor,
                storage_context=self._storage_context,
                worker_callbacks=self._worker_callbacks_to_propagate,
                controller_actor=ControllerInTheDriver(),
                **{arg: arg_values[i] for arg, arg_values in train_context_args.items()})
                for i, worker in enumerate(workers)])
            self._decorate_worker_log_file_paths(workers)

    class TrainControllerInTheDriver(TrainController):
        worker_group_cls = WorkerGroupInTheDriver

    return TrainControllerInTheDriver


def torch_config(backend: str, num_workers: int):
    """Ray Train's TorchConfig; with one worker, one that sets the usual torch.distributed
    variables (RANK, WORLD_SIZE, ...) but creates no process group."""
    from dataclasses import dataclass

    from ray.train.torch import TorchConfig
    from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

    if num_workers > 1:
        return TorchConfig(backend=backend)

    class _OneWorkerBackend(_TorchBackend):
        def on_start(self, worker_group, backend_config) -> None:
            if len(worker_group) > 1:  # never with this config; a safety net should Ray change
                super().on_start(worker_group, backend_config)
            else:
                worker_group.execute(_set_torch_distributed_env_vars)

    @dataclass
    class _OneWorkerTorchConfig(TorchConfig):
        @property
        def backend_cls(self):
            return _OneWorkerBackend

    return _OneWorkerTorchConfig(backend=backend)
