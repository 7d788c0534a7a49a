"""The cost of dynamic binarisation's per-batch draw alone: core.data.dynamic_binarize (a 15-bit
uniform integer per pixel from a per-batch SFC64 stream, and a compare) against the draws before
it (a torch.randint threshold per pixel; torch.bernoulli on x / 255) and against no draw at all
(the grey levels as floats, what a static binarisation pays), on batches of real Fashion-MNIST
images, in microseconds per batch.

Each figure is the best of `--repeats` timings of 10 draws: on a shared machine the best one is
the time the draw takes when it has the CPU, which is what a quiet machine sees.

    python benchmarks/binarisation_draw.py [--batch-sizes 128 512] [--repeats 50] [--no-save]
"""
from __future__ import annotations

import argparse
import time

import torch

from _results import add_save_argument, emit


def best_microseconds(draw, repeats: int, calls: int = 10) -> float:
    draw()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            draw()
        best = min(best, (time.perf_counter() - started) / calls)
    return best * 1e6


def main() -> None:
    from core.data import dynamic_binarize, load_idx_split

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--repeats", type=int, default=50)
    add_save_argument(parser)
    args = parser.parse_args()
    images = load_idx_split("/usr/share/datasets/fashion-mnist", "train").images
    rows = []
    for bs in args.batch_sizes:
        batch = images[:bs]
        new = best_microseconds(lambda: dynamic_binarize(batch), args.repeats)
        previous = best_microseconds(lambda: torch.gt(batch, torch.randint(0, 255, batch.shape, dtype=torch.uint8))
                                     .to(torch.float32), args.repeats)
        old = best_microseconds(lambda: torch.bernoulli(batch.float().div_(255.0)), args.repeats)
        no_draw = best_microseconds(lambda: batch.float().div_(255.0), args.repeats)
        rows.append({"batch_size": bs, "dynamic_binarize_us": round(new), "previous_randint_us": round(previous),
                     "bernoulli_us": round(old), "no_draw_us": round(no_draw),
                     "speedup_vs_previous": round(previous / new, 1), "speedup_vs_bernoulli": round(old / new, 1)})
    emit("binarisation_draw", {"benchmark": "binarisation_draw", "torch_threads": torch.get_num_threads(),
                               "repeats": args.repeats, "results": rows}, args.save)


if __name__ == "__main__":
    main()
