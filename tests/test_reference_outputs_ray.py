"""Behaviour is preserved on Ray Train (issue 13, part 5): each recorded case, re-trained with
pipelines.ray_train.run_ray on 2 CPU workers of one local Ray cluster (started in this process;
this file runs in a pytest process of its own, see scripts/test.sh), writes bit-identical weights
(sha256 of model.safetensors) and exactly the recorded last line of metrics.jsonl.

The in-process twin is tests/test_reference_outputs.py; the cases, the hash and the cluster are
defined once in tests/reference_outputs.py.
"""
# test.sh: own process (it starts Ray: Ray Train V2 cannot start twice in one process)
from __future__ import annotations

import pytest

from core.config import RunConfig
from reference_outputs import RAY, load_reference, train_on_ray

pytestmark = pytest.mark.slow  # a Ray Train worker group per case (25-50 s each on a busy 2-core machine)

ENTRIES = load_reference(RAY)


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["case"] for e in ENTRIES])
def test_ray_training_reproduces_the_reference(local_ray, entry, tmp_path):
    config = RunConfig.from_dict(entry["config"])  # the public config API, as an old run's config loads
    sha256, metrics = train_on_ray(config, tmp_path / "run")
    assert {name: metrics.get(name) for name in entry["metrics"]} == entry["metrics"]
    assert sha256 == entry["sha256"], "the weights the Ray run saved differ from the recorded ones"
