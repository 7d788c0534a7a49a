"""What a Ray Train run leaves out beside its workers (pipelines/ray_lean.py); no cluster needed."""
import pytest
from ray.train import ScalingConfig
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars
from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy, ResizeDecision

from pipelines.ray_lean import (LOCAL_CLUSTER_DEFAULTS, SoloBarrier, set_local_cluster_defaults, torch_config,
                                trainer_class)


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


def handed_to_ray(local_cluster: bool, num_workers: int, monkeypatch) -> dict:
    """What the trainer hands Ray's controller start (the controller itself not started): its
    keyword arguments, and as "controller_class" the class Ray would start as the actor."""
    from ray.train.v2.api import data_parallel_trainer
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    handed = {}
    monkeypatch.setattr(DataParallelTrainer, "_initialize_and_run_controller", lambda self, **kwargs: handed.update(
        kwargs, controller_class=data_parallel_trainer.TrainController))
    config = ScalingConfig(num_workers=num_workers)
    trainer = trainer_class(local_cluster)(lambda: None, scaling_config=config)
    trainer._initialize_and_run_controller(scaling_policy=FixedScalingPolicy(config), callbacks=[])
    return handed


def controller_policy(local_cluster: bool, monkeypatch) -> object:
    return handed_to_ray(local_cluster, 2, monkeypatch)["scaling_policy"]


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


# -- the synchronisation actor a one-worker run leaves out (SoloBarrier) ---------------------------

def controller_class(local_cluster: bool, num_workers: int, monkeypatch) -> type:
    return handed_to_ray(local_cluster, num_workers, monkeypatch)["controller_class"]


def test_a_local_one_worker_controller_gives_its_group_a_solo_barrier(monkeypatch):
    from ray.train.v2._internal.execution.controller.controller import TrainController
    from ray.train.v2._internal.execution.worker_group import state, worker_group
    from ray.train.v2.api import data_parallel_trainer

    cls = controller_class(local_cluster=True, num_workers=1, monkeypatch=monkeypatch)
    assert issubclass(cls, TrainController) and cls is not TrainController
    assert data_parallel_trainer.TrainController is TrainController  # Ray's global is restored
    group = cls.worker_group_cls
    original_actor, original_shutdown = worker_group.SynchronizationActor, state._shutdown_sync_actor
    seen = {}

    def record(self):
        seen["actor"] = worker_group.SynchronizationActor
        seen["barrier"] = worker_group.SynchronizationActor.options(label_selector={}).remote(timeout_s=1.0)
        state._shutdown_sync_actor(seen["barrier"])  # a stand-in is not a Ray actor: nothing to kill

    monkeypatch.setattr(worker_group.WorkerGroup, "_start", record)
    instance = group.__new__(group)
    instance._worker_group_context = type("Context", (), {"num_workers": 1})()
    instance._start()
    assert seen["actor"] is SoloBarrier and isinstance(seen["barrier"], SoloBarrier)
    assert (worker_group.SynchronizationActor, state._shutdown_sync_actor) == (original_actor, original_shutdown)


def test_several_workers_or_a_joined_cluster_keep_rays_controller(monkeypatch):
    from ray.train.v2._internal.execution.controller.controller import TrainController

    assert controller_class(local_cluster=True, num_workers=2, monkeypatch=monkeypatch) is TrainController
    assert controller_class(local_cluster=False, num_workers=1, monkeypatch=monkeypatch) is TrainController


def test_a_barrier_of_one_answers_as_rays_actor_would():
    # the answers SynchronizationActor gives a world of one (sync_actor.py in Ray 2.60)
    assert SoloBarrier.broadcast_from_rank_zero._answer(
        world_rank=0, world_size=1, data={"dir": "checkpoint_1"}, caller_method_name="ray.train.report",
        collective_seq=3, relaxable=True) == {"dir": "checkpoint_1"}
    assert SoloBarrier.set_required_ranks._answer(None) is True
    assert SoloBarrier.set_required_ranks._answer([0]) is True
    assert SoloBarrier.set_required_ranks._answer([1]) is False  # rank 0 is the only writer
    assert SoloBarrier.reset._answer() is None
    with pytest.raises(ValueError, match="rank 0 of 1"):  # never a larger group: it would hang in Ray's
        SoloBarrier.broadcast_from_rank_zero._answer(world_rank=1, world_size=2, data=None, caller_method_name="x")
