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
  matrix products 2.9% faster, interval [0.8, 4.9]% (benchmarks/ray_neighbours.py, issue #20).
"""
from __future__ import annotations

import os

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
