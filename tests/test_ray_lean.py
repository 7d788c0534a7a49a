"""What a Ray Train run leaves out beside its workers (pipelines/ray_lean.py); no cluster needed."""
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars

from pipelines.ray_lean import LOCAL_CLUSTER_DEFAULTS, set_local_cluster_defaults, torch_config


class RecordingWorkerGroup:
    """The calls a Ray Train backend makes on a worker group, recorded instead of run."""

    def __init__(self, size: int):
        self.size, self.calls = size, []

    def __len__(self) -> int:
        return self.size

    def execute(self, fn, *args, **kwargs):
        self.calls.append(fn)
        return [None] * self.size

    def execute_single(self, rank, fn, *args, **kwargs):
        self.calls.append(fn)
        return ("127.0.0.1", 29500)

    def execute_single_async(self, rank, fn, *args, **kwargs):
        self.calls.append(fn)

    def get_resources_per_worker(self):
        return {"CPU": 1}


def test_one_worker_sets_the_distributed_variables_but_creates_no_process_group():
    config = torch_config("gloo", num_workers=1)
    assert isinstance(config, TorchConfig) and config.backend == "gloo"
    group = RecordingWorkerGroup(1)
    config.backend_cls().on_start(group, config)
    assert group.calls == [_set_torch_distributed_env_vars]


def test_several_workers_get_rays_own_torch_config():
    config = torch_config("gloo", num_workers=2)
    assert type(config) is TorchConfig and config.backend == "gloo"


def test_local_cluster_defaults_leave_a_users_setting_alone():
    environ = {"RAY_TRAIN_METRICS_ENABLED": "1"}
    set_local_cluster_defaults(environ)
    assert environ == {"RAY_TRAIN_METRICS_ENABLED": "1", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    assert set(LOCAL_CLUSTER_DEFAULTS) == {"RAY_TRAIN_METRICS_ENABLED", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"}
