"""What Ray Train runs beside the training workers, cut to what a vaezoo run uses.

On a 2-core machine every other process that wakes up takes a core from a worker whose two torch
threads meet at a barrier many times per step. Measured during steady epochs (issue #20): each
extra Ray process wakes about 100 times a second (its main thread checks for signals every 10 ms),
and the worker's own gloo loop about 80 times. So:

* one worker trains without a torch process group: with a world of one the loop calls no
  collective (core/distributed.py), and the group's gloo and TCP-store threads only wake up;
* on a local cluster this process started (it is the whole cluster), Ray Train's preemption
  watcher (an actor that follows cloud node draining) and its Prometheus metrics (nothing scrapes
  them: the local cluster has no dashboard) are off. An environment variable set by the user wins.
"""
from __future__ import annotations

import os

LOCAL_CLUSTER_DEFAULTS = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_METRICS_ENABLED": "0"}


def set_local_cluster_defaults(environ: dict[str, str] | os._Environ = os.environ) -> None:
    """Read by Ray Train in the driver and passed on to its controller: set before `fit()`."""
    for key, value in LOCAL_CLUSTER_DEFAULTS.items():
        environ.setdefault(key, value)


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
