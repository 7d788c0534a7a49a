"""pipelines/ray_data_lean.py: on a local cluster, a Ray Data job (an actor pool, written to
Parquet as `vaezoo encode` does) starts neither the stats actor nor the autoscaling coordinator,
and writes the same rows; without it (a joined cluster) Ray starts both, so the check can fail."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
# Ray Data's helper actors, by the names Ray registers them under (registered when created).
HELPERS = ["_StatsActor", "AutoscalingCoordinator"]

# In a process of its own: a fresh local cluster started the way `vaezoo encode` starts one. The
# lean job runs first, as the helpers are detached actors that outlive the job that started them.
JOB = textwrap.dedent("""
    import json, sys
    import ray, ray.data
    from pipelines.ray_connect import connect, disconnect
    from pipelines.ray_data_lean import lean_execution
    from ray.data._internal.stats import STATS_ACTOR_NAME, STATS_ACTOR_NAMESPACE

    NAMES = {"_StatsActor": (STATS_ACTOR_NAME, STATS_ACTOR_NAMESPACE),
             "AutoscalingCoordinator": ("AutoscalingCoordinator", "AutoscalingCoordinator")}

    def helpers():
        found = []
        for helper, (name, namespace) in NAMES.items():
            try:
                ray.get_actor(name, namespace=namespace)
                found.append(helper)
            except ValueError:
                pass
        return found

    class Square:
        def __call__(self, batch):
            return {"id": batch["id"], "square": batch["id"] ** 2}

    connect(None, num_cpus=4)
    seen = {}
    for lean, folder in ((True, sys.argv[1]), (False, sys.argv[2])):
        with lean_execution(lean):
            ds = ray.data.range(1000, override_num_blocks=4).map_batches(
                Square, batch_size=None, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
            ds.write_parquet(folder)
        seen[str(lean)] = helpers()
    disconnect()
    print(json.dumps(seen))
""")


def read_rows(folder: Path) -> list[tuple[int, int]]:
    table = pq.read_table(folder)
    return sorted(zip(table.column("id").to_pylist(), table.column("square").to_pylist()))


def test_a_local_cluster_job_starts_no_stats_actor_or_autoscaling_coordinator_and_writes_the_same_rows(tmp_path):
    lean, full = tmp_path / "lean", tmp_path / "full"
    done = subprocess.run([sys.executable, "-c", JOB, str(lean), str(full)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["True"] == []
    assert seen["False"] == HELPERS  # Ray's own job starts them: the check can fail
    expected = [(i, i * i) for i in range(1000)]
    assert read_rows(lean) == expected
    assert read_rows(full) == expected
