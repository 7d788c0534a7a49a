"""A process group of one (Ray Train with one worker makes one) costs the training loop no
collective: the gradient average, the per-step failure flags and the epoch's metric sums are all
skipped, so one Ray worker runs the very steps of an in-process run (issue #20, part 2)."""
from __future__ import annotations

import torch
import torch.distributed as dist

from conftest import small_config
from core.training import train


def test_a_world_of_one_calls_no_collective_and_trains_as_in_process(prepared, tmp_path, monkeypatch):
    config = small_config("vae", epochs=2)
    history: list[dict] = []
    alone = train(config, report=lambda m, c: history.append(m), data=prepared)

    calls: list[str] = []
    for name in ("all_reduce", "all_gather_object", "all_gather", "broadcast", "barrier"):
        original = getattr(dist, name)
        monkeypatch.setattr(dist, name, lambda *a, _name=name, _f=original, **k: (calls.append(_name), _f(*a, **k))[1])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        grouped_history: list[dict] = []
        grouped = train(config, report=lambda m, c: grouped_history.append(m), data=prepared)
    finally:
        dist.destroy_process_group()
    assert calls == []
    for a, b in zip(alone.state_dict().values(), grouped.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    drop = {"train/images_per_sec", "train/epoch_seconds"}
    assert [{k: v for k, v in m.items() if k not in drop} for m in grouped_history] == \
           [{k: v for k, v in m.items() if k not in drop} for m in history]
