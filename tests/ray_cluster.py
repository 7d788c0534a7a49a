"""The private local Ray cluster that the Ray test modules and scripts/record_reference.py start.

One copy, so every Ray test runs on the same kind of cluster: 4 logical CPUs (on a 2-core machine
2 workers plus Ray's own actors can otherwise wait for resources), its own short temp dir (Ray's
socket paths have a length limit) and no token auth, which keep it apart from other clusters and
~/.ray on this host; Ray's own logs at ERROR and not forwarded to the test's output.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator


@contextlib.contextmanager
def local_ray_cluster(num_cpus: int = 4) -> Iterator[None]:
    """Start the cluster, yield, and shut it down, restoring RAY_AUTH_MODE and removing its files."""
    import ray

    temp = tempfile.mkdtemp(prefix="vzray", dir="/tmp")
    old = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _temp_dir=temp, log_to_driver=False,
                 logging_config=ray.LoggingConfig(log_level="ERROR"))
        yield
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = old
        shutil.rmtree(temp, ignore_errors=True)
