"""Steady training images/s with the default optimiser (core.optim.FusedAdam) against torch's own
fused Adam (torch.optim.Adam(fused=True), the same kernel through torch's step), in `core.training.train`.

Both train the default vae (MLP 784-400-20, dynamic binarisation, Adam 1e-3) on the first
`--train-images` Fashion-MNIST images for 2 epochs and report the second epoch's images/s; the
two runs alternate within each round, so load that moves between rounds moves both, and the
ratio (ours / torch's) is taken per round and the rounds are judged by benchmarks/_paired.py
("ours >= torch's"). Both give the same weights bit for bit (tests/test_optim.py), so any
difference is the Python around the kernel: torch's `step` and its `zero_grad`, which FusedAdam
replaces with the same kernel call and a plain `p.grad = None` loop.

    python benchmarks/optimizer_step.py [--batch-sizes 128 512] [--rounds 20] [--train-images 30000] [--no-save]

Prints one JSON document and, unless --no-save, merges it into benchmarks/results.json under
"optimizer_step".
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from _paired import alternate, judge_ratio  # noqa: E402
from _results import add_save_argument, emit  # noqa: E402


def steady_rate(optimiser: str, batch_size: int, images: int) -> float:
    import core.variant
    from core.optim import FusedAdam
    from train_throughput import vaezoo_throughput

    # Swap the optimiser the default Variant.configure_optimizers builds; nothing else changes.
    core.variant.adam = (
        (lambda params, lr, weight_decay, fused: FusedAdam(params, lr=lr, weight_decay=weight_decay))
        if optimiser == "ours" else
        (lambda params, lr, weight_decay, fused: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay,
                                                                   fused=True)))
    # train_throughput's run (the same MLP VAE and Adam 1e-3), 2 epochs: the second one's rate
    return vaezoo_throughput(batch_size, 2, "dynamic", images, fused_adam=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--train-images", type=int, default=30000)
    add_save_argument(parser)
    args = parser.parse_args()
    rows = []
    for bs in args.batch_sizes:
        rounds = []
        for round_index in range(args.rounds):
            rates = {side: steady_rate(side, bs, args.train_images) for side in alternate(("ours", "torch"), round_index)}
            ours, torch_fused = rates["ours"], rates["torch"]
            rounds.append({"fused_adam_direct": round(ours), "torch_fused_adam": round(torch_fused),
                           "ratio": round(ours / torch_fused, 3)})
        ratios = [r["ratio"] for r in rounds]
        judged = judge_ratio([(r["fused_adam_direct"], r["torch_fused_adam"]) for r in rounds], 1.0)
        rows.append({"batch_size": bs, "median_ratio": round(statistics.median(ratios), 3),
                     "min_ratio": min(ratios), "max_ratio": max(ratios), "faster": judged, "rounds": rounds})
    emit("optimizer_step", {"benchmark": "optimizer_step", "torch_threads": torch.get_num_threads(),
                            "train_images": args.train_images, "results": rows}, args.save)


if __name__ == "__main__":
    main()
