"""Importance-sampled NLL throughput: the k=5000 test protocol, its FLOP/s against this machine's
fp32 matrix-multiply peak, and a baseline in the same run.

* `vaezoo`: core.evaluation.negative_log_likelihood as `vaezoo evaluate --nll-samples 5000` runs it
  (batches of 100 images, cache-sized chunks of ~2,500 decoded rows);
* `baseline`: the estimator as first written here, chunks of 500 samples per batch of 100
  images (50,000 decoded rows at a time), on the first `--baseline-images` images (the cost of a
  sample does not depend on the image, so rates compare; 0 skips it).

Both evaluate the same MLP 784-400-20 Bernoulli VAE (random weights: the arithmetic is the same
as a trained model's) on the first `--images` Fashion-MNIST test images (1,000 by default, a
quick run; `--images 10000` is the whole protocol) with k=`--k` samples each. The script reports
decoded samples per second, the useful matmul FLOP/s (benchmarks/_flops.py: the encoder once per
image, the decoder once per sample; the encoder passes the implementation repeats for every
chunk, the bias adds and the elementwise log-likelihood are not credited), that FLOP/s as a share
of the measured fp32 matmul peak (best of 10 products of 2048 x 2048 matrices, the same
measurement as train_throughput.py), and the time projected for k=5000 over all 10,000 test images.

    python benchmarks/nll_throughput.py [--k 5000] [--images 1000] [--baseline-images 200] [--no-save]
    python benchmarks/nll_throughput.py --images 10000      # the full protocol, measured
    python benchmarks/nll_throughput.py --device cuda      # on a GPU: its fp32 matmul peak, key nll_throughput_cuda

Prints one JSON object and, unless --no-save, merges it into benchmarks/results.json under
"nll_throughput" with the command line, UTC date and machine (benchmarks/_results.py).
"""
from __future__ import annotations

import argparse
import time

import torch

from _flops import matmul_peak_flops, nll_flops
from _results import add_save_argument, emit
from core.config import RunConfig
from core.data import prepare_split
from core.datasets import load_split
from core.evaluation import iterate_batches, negative_log_likelihood
from core.objectives import estimate_log_likelihood
from core.serialization import build_variant

HIDDEN, LATENT, PIXELS = 400, 20, 784
PROTOCOL_K, PROTOCOL_IMAGES = 5000, 10_000


@torch.no_grad()
def baseline_nll(variant, ds, k: int, device: str = "cpu") -> float:
    total = 0.0
    for batch in iterate_batches(ds, 100, device=device):
        log_px = estimate_log_likelihood(lambda m: variant.log_weights(batch, m), k, chunk_size=500)
        total -= log_px.sum().item()
    return total / len(ds)


def measure(fn, images: int, k: int, repeats: int) -> dict:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    # Useful matmul FLOPs: encoder once per image, decoder once per sample (see benchmarks/_flops.py).
    flops = nll_flops(images, k, PIXELS, [HIDDEN], LATENT)
    return {"images": images, "seconds": round(best, 2), "samples_per_sec": round(images * k / best),
            "flops_per_sec": flops / best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=PROTOCOL_K, help=f"importance samples per image (default {PROTOCOL_K})")
    parser.add_argument("--images", type=int, default=1000,
                        help="test images to evaluate (default 1000, a quick run; 10000: the whole protocol)")
    parser.add_argument("--baseline-images", type=int, default=200,
                        help="test images for the baseline estimator (default 200; 0 skips it)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each; the fastest counts (default 1)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the model and batches live")
    add_save_argument(parser)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    device = args.device
    torch.manual_seed(0)
    cfg = RunConfig.from_dict({"variant_name": "vae", "model": {"hidden_dims": [HIDDEN], "latent_dim": LATENT}})
    test = prepare_split(load_split("fashion-mnist", "test").take(args.images), "dynamic", "test")
    variant = build_variant(cfg, test.shape, test.num_classes).to(device).eval()
    peak = matmul_peak_flops(device=device)
    protocol_flops = nll_flops(PROTOCOL_IMAGES, PROTOCOL_K, PIXELS, [HIDDEN], LATENT)

    negative_log_likelihood(variant, test.take(20), 100, device=device)  # warm-up (threads, allocator), not timed
    baseline_nll(variant, test.take(20), 100, device)
    runs = [("vaezoo", len(test), lambda: negative_log_likelihood(variant, test, args.k, device=device))]
    if args.baseline_images > 0:
        base = test.take(min(args.baseline_images, len(test)))
        runs.append(("baseline", len(base), lambda: baseline_nll(variant, base, args.k, device)))
    rows = {}
    for name, images, fn in runs:
        r = measure(fn, images, args.k, args.repeats)
        rate = r.pop("flops_per_sec")
        rows[name] = {**r, "gflops": round(rate / 1e9, 1), "share_of_matmul_peak": round(rate / peak, 3),
                      f"projected_seconds_k{PROTOCOL_K}_{PROTOCOL_IMAGES}_images": round(protocol_flops / rate)}
    result = {"benchmark": "nll_throughput", "k": args.k, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "images": len(test), "torch_threads": torch.get_num_threads(),
              "matmul_peak_gflops": round(peak / 1e9, 1),
              "useful_mflop_per_image": round(nll_flops(1, args.k, PIXELS, [HIDDEN], LATENT) / 1e6, 1),
              "results": rows}
    if args.k == PROTOCOL_K:  # issue #7: the k=5000 protocol reaches >= 40% of the matmul peak
        result["targets_met"] = {"share_of_matmul_peak_ge_0.4": rows["vaezoo"]["share_of_matmul_peak"] >= 0.4}
    if "baseline" in rows:
        result["speedup_vs_baseline"] = round(rows["vaezoo"]["samples_per_sec"] / rows["baseline"]["samples_per_sec"], 2)
    emit("nll_throughput" + ("_cuda" if device == "cuda" else ""), result, args.save)


if __name__ == "__main__":
    main()
