"""Ranks fail together, on a real local Ray cluster with 2 Train workers.

* A NaN loss or an exception on one rank stops every rank at that step: the run ends with one
  error naming the rank, the step and the batch, instead of the other rank waiting in the
  gradient all-reduce. Each run has a deadline that fails the test (no hang, no sleep).
* Gradient averaging keeps "no gradient" as no gradient: a parameter unused on every rank stays
  None (Adam leaves it untouched, as in one process); one used on one rank only gets that rank's
  gradient divided by the world size on every rank, which is the gradient one process computes
  on the whole global batch.
"""
# test.sh: own process (it starts Ray: Ray Train V2 cannot start twice in one process)
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from core.config import RunConfig
from pipelines.ray_train import run_ray
from test_ray_train import make_idx_data, tiny_config

pytestmark = pytest.mark.slow

DEADLINE_S = 240  # generous for a loaded 2-core machine; a hang waits 30 min (gloo's default timeout)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_idx_data(tmp_path_factory.mktemp("data"))


def within_deadline(fn, *args, **kwargs):
    """fn's result or exception; a run still going after DEADLINE_S fails the test (it hung)."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(fn, *args, **kwargs)
        try:
            return future.result(timeout=DEADLINE_S)
        except TimeoutError:
            pytest.fail(f"training still running {DEADLINE_S}s after one rank failed: the other rank hangs")


@pytest.mark.parametrize("fault", [{"rank": 1, "call": 3, "kind": "nan"}, {"rank": 0, "call": 2, "kind": "error"}],
                         ids=["nan-on-rank-1", "error-on-rank-0"])
def test_one_rank_failing_stops_every_rank_naming_rank_step_and_batch(local_ray, data, tmp_path, fault):
    config = tiny_config(data, batch_size=32, epochs=2).with_overrides({"data.train_limit": 128})  # 4 steps an epoch

    def run():
        with pytest.raises(RuntimeError) as caught:
            run_ray(config, tmp_path / "run", num_workers=2, final_nll_samples=2, _test_fault=fault)
        return str(caught.value)

    message = within_deadline(run)
    step = fault["call"]
    assert f"rank {fault['rank']}" in message
    assert f"epoch 1, step {step}/4" in message
    assert "batch of examples" in message
    assert ("non-finite loss" if fault["kind"] == "nan" else "ValueError: injected fault") in message
    assert "stopped with it" not in message  # only the failing rank's error: the others end without one
    assert not (tmp_path / "run" / "model.safetensors").exists()  # no model saved from a failed run


def test_gradient_averaging_keeps_no_gradient_as_no_gradient(local_ray, tmp_path):
    """Three parameters, two ranks with equal shares: one used everywhere, one only on rank 0,
    one nowhere. After averaging and an Adam step, each rank holds what one process holds after
    the same step on the mean of the two ranks' losses."""
    folder = str(tmp_path)

    def loop(_):
        import torch

        from core.distributed import average_gradients, world

        rank, _ = world()
        params = {name: torch.nn.Parameter(torch.ones(3)) for name in ("everywhere", "rank0_only", "nowhere")}
        x = torch.tensor([1.0, 2.0, 3.0]) * (rank + 1)
        loss = (params["everywhere"] * x).sum() + (rank == 0) * (params["rank0_only"] * 5 * x).sum()
        loss.backward()
        average_gradients(list(params.values()))
        grads = {n: None if p.grad is None else p.grad.tolist() for n, p in params.items()}
        torch.optim.Adam(params.values(), lr=0.1).step()
        out = {"grads": grads, "weights": {n: p.detach().tolist() for n, p in params.items()}}
        with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)

    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    within_deadline(lambda: TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=2)).fit())
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    # One process on the whole global batch: the mean of the two ranks' losses.
    params = {name: torch.nn.Parameter(torch.ones(3)) for name in ("everywhere", "rank0_only", "nowhere")}
    x0, x1 = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 6.0])
    loss = ((params["everywhere"] * x0).sum() + (params["rank0_only"] * 5 * x0).sum() + (params["everywhere"] * x1).sum()) / 2
    loss.backward()
    expected = {n: None if p.grad is None else p.grad.tolist() for n, p in params.items()}
    torch.optim.Adam(params.values(), lr=0.1).step()
    expected_weights = {n: p.detach().tolist() for n, p in params.items()}

    assert expected["nowhere"] is None and expected["rank0_only"] == [2.5, 5.0, 7.5]
    for r in ranks:
        assert r["grads"] == expected  # None stays None; rank 1 receives rank 0's gradient / 2
        assert r["weights"] == expected_weights
