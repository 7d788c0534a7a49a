"""The processes a one-worker Ray Train run starts beside its worker, on a local cluster that
run_ray starts itself (pipelines/ray_lean.py, issue #20): Ray Train's controller, its
synchronisation actor and the worker, and none of the helpers that would have nothing to do there
(the dataset manager, the placement-group cleaner, the autoscaling coordinator, the preemption
watcher). Each of those wakes about 100 times a second on the cores the worker trains on.
"""
# test.sh: own process (it starts Ray: Ray Train V2 cannot start twice in one process)
from __future__ import annotations

import os

import pytest

from pipelines.ray_train import run_ray
from test_ray_train import make_idx_data, tiny_config

pytestmark = pytest.mark.slow

# Ray's own per-node processes, there with or without Ray Train
NODE_PROCESSES = {"ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent"}


def ray_process_titles() -> set[str]:
    """Process titles ("ray::Class", method names cut off) of this process's descendants."""
    parent = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat").read()
            parent[int(pid)] = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError):
            pass

    def descends(pid: int) -> bool:
        while pid > 1:
            if pid == os.getpid():
                return True
            pid = parent.get(pid, 0)
        return False

    titles = set()
    for pid in filter(descends, parent):
        try:
            title = open(f"/proc/{pid}/cmdline").read().split("\0")[0].split()[0]
        except (OSError, IndexError):
            continue
        if title.startswith("ray::"):
            titles.add(title.split(".")[0])
    return titles


def test_a_local_one_worker_run_starts_only_the_helpers_it_uses(tmp_path):
    import ray

    assert not ray.is_initialized()  # run_ray starts (and owns) the local cluster
    seen: set[str] = set()
    config = tiny_config(make_idx_data(tmp_path / "data"), batch_size=32, epochs=2)
    run_ray(config, tmp_path / "run", num_workers=1, final_nll_samples=2,
            epoch_hook=lambda metrics: seen.update(ray_process_titles()))
    assert seen - NODE_PROCESSES == {"ray::TrainController", "ray::SynchronizationActor", "ray::RayTrainWorker"}
