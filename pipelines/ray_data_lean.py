"""What Ray Data starts beside an encode job, cut to what a job on a local cluster uses.

A Ray Data execution starts three helper actors. Each is a worker process that imports Ray Data
(1.0-1.6 s of CPU each, measured on 2 cores) at the moment the encoder actor imports torch and
loads its model:

* the stats actor: dataset metrics for Ray's dashboard. A local cluster that vaezoo starts has
  no dashboard to show them;
* the autoscaling coordinator: it asks the cluster's autoscaler for nodes, and tells the job how
  much of the cluster it may use. A local cluster has no autoscaler, and its size is fixed;
* the actor-location tracker: the actor pool's locality, kept (the pool's scheduling uses it).

`lean_execution(local_cluster)` replaces the first two for the duration of a job, on a local
cluster this process started only: the metrics are dropped, and the job's budget is the
cluster's own resources. A joined cluster keeps Ray's behaviour. These are Ray
2.60's private hooks (Ray is pinned); tests/test_ray_data_lean.py checks which helpers a job starts.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from pipelines.replaced import replaced


@contextlib.contextmanager
def lean_execution(local_cluster: bool) -> Iterator[None]:
    if not local_cluster:
        yield
        return
    import ray
    from ray.data._internal.cluster_autoscaler import ClusterAutoscaler
    from ray.data._internal.execution import streaming_executor
    from ray.data._internal.execution.interfaces.execution_options import ExecutionResources
    from ray.data._internal.stats import _StatsManager

    class FixedLocalCluster(ClusterAutoscaler):
        """No autoscaler to ask: the budget is what the cluster has (read once; it cannot grow)."""

        def __init__(self) -> None:
            self._total = ExecutionResources.from_resource_dict(ray.cluster_resources())

        def try_trigger_scaling(self) -> None:
            pass

        def on_executor_shutdown(self) -> None:
            pass

        def get_total_resources(self) -> ExecutionResources:
            return self._total

    def no_metrics(*args, **kwargs) -> None:
        return None

    with replaced((streaming_executor, "create_cluster_autoscaler", lambda *args, **kwargs: FixedLocalCluster()),
                  (_StatsManager, "register_dataset_to_stats_actor", staticmethod(no_metrics)),
                  (_StatsManager, "update_execution_metrics", staticmethod(no_metrics)),
                  (_StatsManager, "update_iteration_metrics", staticmethod(no_metrics))):
        yield
