"""What a Ray Train run leaves out beside its workers (pipelines/ray_lean.py); no cluster needed."""
import pytest
from ray.train import ScalingConfig
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars
from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy, ResizeDecision

from pipelines.ray_lean import (LOCAL_CLUSTER_DEFAULTS, ControllerInTheDriver, SoloBarrier, set_local_cluster_defaults,
                                run_controller_here, torch_config, trainer_class)

RAY_INIT_TRAIN_CONTEXT_SHA = "ef1e7879cd7c702e"  # WorkerGroup._init_train_context_on_workers, Ray 2.60


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
    """How the trainer starts Ray Train's controller (the controller itself not started): its
    keyword arguments, "controller_class" (the class of the controller) and "where": "actor"
    (Ray's own start, an actor) or "driver" (`run_controller_here`, in this process)."""
    from ray.train.v2.api import data_parallel_trainer
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    import pipelines.ray_lean as ray_lean

    handed = {}
    monkeypatch.setattr(DataParallelTrainer, "_initialize_and_run_controller", lambda self, **kwargs: handed.update(
        kwargs, controller_class=data_parallel_trainer.TrainController, where="actor"))
    monkeypatch.setattr(ray_lean, "run_controller_here", lambda cls, kwargs: handed.update(
        kwargs, controller_class=cls, where="driver"))
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


# -- where the controller runs, and the synchronisation actor a one-worker run leaves out ----------

def test_on_a_local_cluster_the_controller_runs_in_the_driver_and_a_joined_one_keeps_rays_actor(monkeypatch):
    from ray.train.v2._internal.execution.controller.controller import TrainController

    for workers in (1, 2):
        local = handed_to_ray(local_cluster=True, num_workers=workers, monkeypatch=monkeypatch)
        assert local["where"] == "driver"
        controller = local["controller_class"]
        assert issubclass(controller, TrainController) and controller is not TrainController
    joined = handed_to_ray(local_cluster=False, num_workers=1, monkeypatch=monkeypatch)
    assert joined["where"] == "actor" and joined["controller_class"] is TrainController


def group_start_sees(local_workers: int, group_workers: int, monkeypatch) -> dict:
    """The synchronisation actor class, the barrier it makes and the shutdown hook a worker group
    of `group_workers` sees while it starts, under the local controller of a `local_workers` run."""
    from ray.train.v2._internal.execution.worker_group import state, worker_group

    cls = handed_to_ray(local_cluster=True, num_workers=local_workers, monkeypatch=monkeypatch)["controller_class"]
    group = cls.worker_group_cls
    seen = {}

    def record(self):
        seen["actor"] = worker_group.SynchronizationActor
        seen["shutdown"] = state._shutdown_sync_actor
        if seen["actor"] is SoloBarrier:
            seen["barrier"] = worker_group.SynchronizationActor.options(label_selector={}).remote(timeout_s=1.0)
            state._shutdown_sync_actor(seen["barrier"])  # a stand-in is not a Ray actor: nothing to kill

    monkeypatch.setattr(worker_group.WorkerGroup, "_start", record)
    instance = group.__new__(group)
    instance._worker_group_context = type("Context", (), {"num_workers": group_workers})()
    instance._start()
    return seen


def test_a_local_one_worker_group_gets_a_solo_barrier_and_ray_is_restored(monkeypatch):
    from ray.train.v2._internal.execution.worker_group import state, worker_group

    original = worker_group.SynchronizationActor, state._shutdown_sync_actor
    seen = group_start_sees(local_workers=1, group_workers=1, monkeypatch=monkeypatch)
    assert seen["actor"] is SoloBarrier and isinstance(seen["barrier"], SoloBarrier)
    assert seen["shutdown"] is not original[1]
    assert (worker_group.SynchronizationActor, state._shutdown_sync_actor) == original


def test_larger_groups_keep_rays_synchronisation_actor(monkeypatch):
    from ray.train.v2._internal.execution.worker_group import state, worker_group

    original = worker_group.SynchronizationActor, state._shutdown_sync_actor
    assert (lambda s: (s["actor"], s["shutdown"]))(group_start_sees(2, 2, monkeypatch)) == original
    assert (lambda s: (s["actor"], s["shutdown"]))(group_start_sees(1, 2, monkeypatch)) == original  # a safety net


def test_the_workers_controller_handle_says_what_it_cannot_do():
    import pickle

    handle = pickle.loads(pickle.dumps(ControllerInTheDriver()))  # it travels to the workers
    with pytest.raises(RuntimeError, match="controller runs in the driver"):
        handle.get_all_reported_checkpoints.remote(1, None, None)


def test_the_copied_train_context_start_is_still_rays():
    """`WorkerGroupInTheDriver._init_train_context_on_workers` copies Ray 2.60's method but for the
    controller's handle; this fails when Ray's changes (re-read it, then update the copy and this)."""
    import hashlib
    import inspect

    from ray.train.v2._internal.execution.worker_group.worker_group import WorkerGroup

    source = inspect.getsource(WorkerGroup._init_train_context_on_workers)
    assert "controller_actor=ray.get_runtime_context().current_actor," in source
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == RAY_INIT_TRAIN_CONTEXT_SHA


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


# -- the controller's loop in the driver (run_controller_here) -------------------------------------

class ScriptedController:
    """A controller whose `run()` finishes or raises `error`; `abort()` ends like Ray's, with
    `ray.actor.exit_actor()`, which outside an actor raises."""

    def __init__(self, error: BaseException | None = None, log: list | None = None):
        self.error, self.log = error, log if log is not None else []

    async def run(self):
        self.log.append("run")
        if self.error is not None:
            raise self.error

    async def abort(self):
        import ray

        self.log.append("abort")
        ray.actor.exit_actor()

    def get_result(self):
        return "result"


def test_the_controller_runs_to_its_result_also_under_a_running_event_loop():
    import asyncio

    log = []
    assert run_controller_here(ScriptedController, {"log": log}) == "result"

    async def from_a_notebook_cell():  # asyncio.run cannot nest: the loop gets a thread of its own
        return run_controller_here(ScriptedController, {"log": log})

    assert asyncio.run(from_a_notebook_cell()) == "result"
    assert log == ["run", "run"]


def test_an_interrupted_controller_aborts_its_workers_and_the_interrupt_goes_on(monkeypatch):
    import ray

    log = []
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    original_exit = ray.actor.exit_actor
    with pytest.raises(KeyboardInterrupt):
        run_controller_here(ScriptedController, {"error": KeyboardInterrupt(), "log": log})
    assert log == ["run", "abort"] and ray.actor.exit_actor is original_exit
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # Ray already shut down: nothing to abort
    with pytest.raises(ValueError):
        run_controller_here(ScriptedController, {"error": ValueError("x"), "log": log})
    assert log == ["run", "abort", "run"]
