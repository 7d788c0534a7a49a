"""What generated data costs: generating `dsprites` and `transformed-fashion-mnist` from a seed,
against loading the same splits from the on-disk cache, against reading Fashion-MNIST's IDX files.

* idx_read_s: `core.data.load_idx_split` of Fashion-MNIST's train and test splits (gzip IDX from
  /usr/share/datasets/fashion-mnist, 70,000 images): the baseline a run pays for real data.
* generate_s: both splits of the generated dataset, in memory (transformed-fashion-mnist includes
  its own IDX read).
* cache_write_s: writing both splits to the cache (.npz with a SHA-256, atomic rename).
* cached_load_s: `load_generated_split` of both splits from a warm cache (read, checksum, tensors).

Each figure is the median of --repeats runs (min and max beside it), all in one process, with
torch's default thread count unless --threads is given. The datasets are the defaults (20,000
train and 5,000 test rows; dsprites at 32x32) unless --dataset names others.

    python benchmarks/generated_data.py [--repeats 3] [--threads N] [--no-save]

One JSON object on stdout; unless --no-save it is merged into benchmarks/results.json under
"generated_data" with the command line, UTC date and machine (benchmarks/_results.py).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _results import add_save_argument, emit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from core import factors as F  # noqa: E402
from core.data import load_idx_split  # noqa: E402


def timed(fn, repeats: int) -> dict[str, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median": round(statistics.median(times), 4), "min": round(min(times), 4), "max": round(max(times), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--dataset", nargs="+", default=["dsprites", "transformed-fashion-mnist"])
    add_save_argument(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    result = {"torch_threads": torch.get_num_threads(), "repeats": args.repeats,
              "idx_read_s": timed(lambda: [load_idx_split(F.FASHION_MNIST_DIR, s) for s in ("train", "test")],
                                  args.repeats)}
    with tempfile.TemporaryDirectory() as cache:
        for dataset in args.dataset:
            name, spec = F.parse_spec(dataset)
            pair = F.generate_split_pair(name, spec)
            entry = {"rows": {s: len(ds) for s, ds in pair.items()},
                     "image_shape": list(pair["train"].images.shape[1:]),
                     "bytes": sum(ds.images.numel() for ds in pair.values()),
                     "generate_s": timed(lambda: F.generate_split_pair(name, spec), args.repeats)}

            def write():
                for s, ds in pair.items():
                    F.write_cache(Path(cache) / f"{name}-{s}-{F.cache_key(name, spec, s)}.npz", ds)

            entry["cache_write_s"] = timed(write, args.repeats)
            entry["cached_load_s"] = timed(lambda: [F.load_generated_split(dataset, s, cache_dir=cache)
                                                    for s in ("train", "test")], args.repeats)
            loaded = F.load_generated_split(dataset, "train", cache_dir=cache)
            assert torch.equal(loaded.images, pair["train"].images)  # the figure is for the right bytes
            entry["generate_over_cached_load"] = round(entry["generate_s"]["median"] / entry["cached_load_s"]["median"], 1)
            entry["cached_load_over_idx_read"] = round(entry["cached_load_s"]["median"] / result["idx_read_s"]["median"], 2)
            result[dataset] = entry
            print(f"{dataset}: {entry}", file=sys.stderr)
    emit("generated_data", result, args.save)


if __name__ == "__main__":
    main()
