"""The processes a one-worker Ray Train run starts beside its worker, on a local cluster that
run_ray starts itself (pipelines/ray_lean.py, issue #20): the worker alone, with no controller
actor (Ray Train's controller runs in the driver: pipelines.ray_lean.run_controller_here) and none
of the helpers that would have nothing to do there (the synchronisation actor, whose barrier of
one opens at once, the dataset manager, the placement-group cleaner, the autoscaling coordinator,
the preemption watcher), and no idle Python worker started ahead of demand (Ray Train's actors
never use one: pipelines/ray_connect.connect(idle_workers=False)). Each of those wakes 100-150
times a second on the cores the worker trains on. When run_ray returns, no Ray process of the
cluster is left. A local cluster also runs without the head services it has no use for (the
autoscaler's monitor, and the log monitor unless logs go to the driver), and with slower
housekeeping timers (pipelines/ray_connect.LOCAL_HOUSEKEEPING).
"""
# test.sh: own process (it starts Ray: Ray Train V2 cannot start twice in one process)
from __future__ import annotations

import pytest

from pipelines.ray_connect import LOCAL_HOUSEKEEPING, connect, descendant_processes, disconnect
from pipelines.ray_train import run_ray
from test_ray_train import make_idx_data, tiny_config

pytestmark = pytest.mark.slow

# Ray's own per-node agents, there with or without Ray Train (an idle worker, "ray::IDLE", is not)
NODE_PROCESSES = {"ray::DashboardAgent", "ray::RuntimeEnvAgent"}


# The scripts of the head services Ray 2.60 starts beside the GCS and raylet. The API server stays
# (without it a State API call waits 10 s where it would fail at once: pipelines/ray_connect.py).
API_SERVER, LOG_MONITOR = "dashboard/dashboard.py", "_private/log_monitor.py"
HEAD_SERVICE_SCRIPTS = ("autoscaler/_private/monitor.py", LOG_MONITOR, API_SERVER)


def head_services_running() -> set[str]:
    return {script for _, _, cmdline in descendant_processes() for script in HEAD_SERVICE_SCRIPTS
            if script in cmdline.split(" --")[0]}


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
            epoch_hook=lambda metrics: seen.update(ray_process_titles() | head_services_running()))
    assert seen - NODE_PROCESSES == {"ray::RayTrainWorker", API_SERVER}
    # and it leaves no Ray process behind (pipelines.ray_connect.disconnect ends one that hangs at exit)
    assert [cmdline for _, _, cmdline in descendant_processes() if cmdline.startswith("ray::")] == []


def test_a_local_cluster_keeps_the_log_monitor_only_when_logs_go_to_the_driver(capfd):
    """The control for the run above: the listing sees a head service where one runs, and the log
    monitor kept for `--ray-logs` forwards a worker's output to the driver."""
    import time

    import ray
    from ray._private.state import state

    def forwarded(marker: str) -> bool:
        deadline, seen = time.monotonic() + 60, ""
        while marker not in seen and time.monotonic() < deadline:
            time.sleep(0.2)  # Ray forwards log lines asynchronously: wait for the line, not for a time
            seen += capfd.readouterr().out
        return marker in seen

    for log_to_driver, expected in ((False, {API_SERVER}), (True, {API_SERVER, LOG_MONITOR})):
        assert connect(None, 1, log_to_driver=log_to_driver) == "started"
        try:
            running = head_services_running()
            system_config = state.get_system_config()
            # the node serves tasks without the services it lacks
            assert ray.get(ray.remote(lambda: print("vaezoo-marker-7f3a") or 42).remote()) == 42
            if log_to_driver:
                assert forwarded("vaezoo-marker-7f3a")
        finally:
            disconnect()
        assert running == expected
        assert LOCAL_HOUSEKEEPING.items() <= system_config.items()
