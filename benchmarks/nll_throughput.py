"""Importance-sampled NLL throughput (k importance samples per test image), side by side:

* `baseline`: the estimator as first written here, chunks of 500 samples per batch of 100
  images (50,000 decoded rows at a time);
* `vaezoo`: core.evaluation.negative_log_likelihood with its cache-sized chunks (~2,500 rows).

Both evaluate the same MLP 784-400-20 Bernoulli VAE (random weights: the arithmetic is the same
as a trained model's) on the first `--images` Fashion-MNIST test images with k=`--k`, and the
script reports decoded samples per second, the FLOP/s this reaches against this machine's fp32
matrix-multiply peak, and the projected time for k=5000 over all 10,000 test images.

    python benchmarks/nll_throughput.py [--k 5000] [--images 200]

Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from core.config import RunConfig
from core.data import load_split, prepare_split
from core.evaluation import negative_log_likelihood
from core.objectives import estimate_log_likelihood
from core.serialization import build_variant
from core.evaluation import iterate_batches

HIDDEN, LATENT, PIXELS = 400, 20, 784
# One importance sample: decode z (20 -> 400 -> 784), 2 FLOPs per multiply-accumulate. The
# encoder runs once per image per chunk and the elementwise log-likelihood is not counted.
DECODE_FLOPS = 2 * (LATENT * HIDDEN + HIDDEN * PIXELS)


def matmul_peak_flops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


@torch.no_grad()
def baseline_nll(variant, ds, k: int) -> float:
    total = 0.0
    for batch in iterate_batches(ds, 100):
        log_px = estimate_log_likelihood(lambda m: variant.log_weights(batch, m), k, chunk_size=500)
        total -= log_px.sum().item()
    return total / len(ds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = RunConfig.from_dict({"variant_name": "vae", "model": {"hidden_dims": [HIDDEN], "latent_dim": LATENT}})
    test = prepare_split(load_split("fashion-mnist", "test").take(args.images), "dynamic", "test")
    variant = build_variant(cfg, test.shape, test.num_classes).eval()
    peak = matmul_peak_flops()
    samples = args.k * len(test)
    rows = {}
    for name, fn in [("baseline", lambda: baseline_nll(variant, test, args.k)),
                     ("vaezoo", lambda: negative_log_likelihood(variant, test, args.k))]:
        seconds = min(_timed(fn) for _ in range(args.repeats))
        rate = samples / seconds
        rows[name] = {"seconds": round(seconds, 2), "samples_per_sec": round(rate),
                      "gflops": round(rate * DECODE_FLOPS / 1e9, 1),
                      "share_of_matmul_peak": round(rate * DECODE_FLOPS / peak, 3),
                      "projected_seconds_k5000_10000_images": round(5000 * 10000 / rate)}
    print(json.dumps({"benchmark": "nll_throughput", "k": args.k, "images": len(test),
                      "torch_threads": torch.get_num_threads(), "matmul_peak_gflops": round(peak / 1e9, 1),
                      "results": rows, "speedup": round(rows["baseline"]["seconds"] / rows["vaezoo"]["seconds"], 2)},
                     indent=2))


if __name__ == "__main__":
    main()
