"""The processes a one-worker Ray Train run starts beside its worker, on a local cluster that
run_ray starts itself (pipelines/ray_lean.py, issue #20): Ray Train's controller and the worker,
and none of the helpers that would have nothing to do there (the synchronisation actor, whose
barrier of one opens at once, the dataset manager, the placement-group cleaner, the autoscaling
coordinator, the preemption watcher), and no idle Python worker started ahead of demand (Ray
Train's actors never use one: pipelines/ray_connect.connect(idle_workers=False)). Each of those
wakes 100-150 times a second on the cores the worker trains on. When run_ray returns, no Ray
process of the cluster is left.
"""
# test.sh: own process (it starts Ray: Ray Train V2 cannot start twice in one process)
from __future__ import annotations

import pytest

from pipelines.ray_connect import descendant_processes
from pipelines.ray_train import run_ray
from test_ray_train import make_idx_data, tiny_config

pytestmark = pytest.mark.slow

# Ray's own per-node agents, there with or without Ray Train (an idle worker, "ray::IDLE", is not)
NODE_PROCESSES = {"ray::DashboardAgent", "ray::RuntimeEnvAgent"}


def ray_process_titles() -> set[str]:
    """Process titles ("ray::Class", method names cut off) of this process's descendants."""
    return {cmdline.split()[0].split(".")[0] for _, _, cmdline in descendant_processes()
            if cmdline.startswith("ray::")}


def test_a_local_one_worker_run_starts_only_the_helpers_it_uses(tmp_path):
    import ray

    assert not ray.is_initialized()  # run_ray starts (and owns) the local cluster
    seen: set[str] = set()
    config = tiny_config(make_idx_data(tmp_path / "data"), batch_size=32, epochs=2)
    run_ray(config, tmp_path / "run", num_workers=1, final_nll_samples=2,
            epoch_hook=lambda metrics: seen.update(ray_process_titles()))
    assert seen - NODE_PROCESSES == {"ray::TrainControllerWithSoloBarrier", "ray::RayTrainWorker"}
    # and it leaves no Ray process behind (pipelines.ray_connect.disconnect ends one that hangs at exit)
    assert [cmdline for _, _, cmdline in descendant_processes() if cmdline.startswith("ray::")] == []
