"""What a Ray Train run leaves out beside its workers (pipelines/ray_lean.py); no cluster needed."""
from ray.train import ScalingConfig
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars
from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy, ResizeDecision

from pipelines.ray_lean import LOCAL_CLUSTER_DEFAULTS, set_local_cluster_defaults, torch_config, trainer_class


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


# -- the helper actors a run leaves out (trainer_class) -------------------------------------------

def default_callback_types(local_cluster: bool, datasets=None) -> set[str]:
    trainer = trainer_class(local_cluster)(lambda: None, scaling_config=ScalingConfig(num_workers=1),
                                           datasets=datasets)
    return {type(c).__name__ for c in trainer._create_default_callbacks()}


def test_a_local_run_without_datasets_leaves_out_the_dataset_manager_and_the_cleaner():
    kept = default_callback_types(local_cluster=True)
    assert not kept & {"DatasetsCallback", "PlacementGroupCleanerCallback"}
    assert {"BackendSetupCallback", "AcceleratorSetupCallback"} <= kept  # what the workers need stays


def test_a_joined_cluster_keeps_the_cleaner_and_datasets_keep_their_manager():
    assert "PlacementGroupCleanerCallback" in default_callback_types(local_cluster=False)
    assert "DatasetsCallback" not in default_callback_types(local_cluster=False)
    with_data = default_callback_types(local_cluster=True, datasets={"train": lambda: None})
    assert "DatasetsCallback" in with_data and "PlacementGroupCleanerCallback" not in with_data


def controller_policy(local_cluster: bool, monkeypatch) -> object:
    """The scaling policy the trainer hands its controller (the controller itself not started)."""
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    handed = {}
    monkeypatch.setattr(DataParallelTrainer, "_initialize_and_run_controller",
                        lambda self, **kwargs: handed.update(kwargs))
    config = ScalingConfig(num_workers=2)
    trainer = trainer_class(local_cluster)(lambda: None, scaling_config=config)
    trainer._initialize_and_run_controller(scaling_policy=FixedScalingPolicy(config), callbacks=[])
    return handed["scaling_policy"]


def test_on_a_local_cluster_the_fixed_policy_asks_no_autoscaler(monkeypatch):
    policy = controller_policy(local_cluster=True, monkeypatch=monkeypatch)
    assert isinstance(policy, FixedScalingPolicy) and type(policy) is not FixedScalingPolicy
    policy.after_controller_start(train_run_context=None)  # Ray's would create the coordinator here
    decision = policy.make_decision_for_non_running_worker_group()
    assert isinstance(decision, ResizeDecision) and decision.num_workers == 2
    assert policy._coordinator_client is None
    policy.before_controller_abort()  # and cancel a request here


def test_on_a_joined_cluster_the_policy_is_rays(monkeypatch):
    assert type(controller_policy(local_cluster=False, monkeypatch=monkeypatch)) is FixedScalingPolicy
