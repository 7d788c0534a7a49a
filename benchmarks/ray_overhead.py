"""What Ray costs: whole-command overhead of `vaezoo train` on Ray against in-process training for
one epoch, and training throughput of 1 against 2 Ray Train workers.

* overhead: wall-clock time of the complete command (`python -m pipelines.cli train ...`: imports,
  cluster start, worker start, training, checkpoints, final evaluation, shutdown) for one epoch,
  with `--num-workers 0` (in-process) and `--num-workers 1` (a local Ray cluster started by the
  command); `train_seconds` is the part spent in the training loop (Ray: inside `fit()`).
* throughput: images per second of the training loop (the `train/images_per_sec` the loop logs,
  global over workers) over the steady epochs (all but the first), for the in-process loop and
  for 1 and 2 Ray workers of `--cpus-per-worker` CPUs each (by default `vaezoo train`'s own
  reservation: a local cluster's CPUs split evenly over the workers, 1 each on a joined cluster).

Data: Fashion-MNIST from /usr/share/datasets/fashion-mnist when installed (the first
`--train-size` images), otherwise synthetic 28x28 IDX files. Model: the default MLP VAE
(784-400-20, Bernoulli, dynamic binarisation), batch size 128.

    python benchmarks/ray_overhead.py [--train-size 10000] [--epochs 3] [--repeats 2] [--no-save]
    python benchmarks/ray_overhead.py --address 127.0.0.1:6379 --overhead-only   # joining a running cluster

Runs without RAY_ADDRESS (each Ray command starts its own local cluster) unless --address is
given. Progress goes to stderr; one JSON object to stdout, which (unless --no-save) is also
merged into benchmarks/results.json under "ray_overhead" with the command line, UTC date and
machine (benchmarks/_results.py).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import add_save_argument, emit

REPO = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def synthetic_data(folder: Path, n_train: int, n_test: int) -> Path:
    import numpy as np

    sys.path.insert(0, str(REPO))
    from core.data import write_idx

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:28, :28]
    for split, n in (("train", n_train), ("t10k", n_test)):
        cy, cx = rng.uniform(4, 24, (2, n, 1, 1))
        images = (np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 20.0) * 255).astype(np.uint8)
        write_idx(folder / f"{split}-images-idx3-ubyte", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
    return folder


def run_train(dataset: Path, output: Path, *, epochs: int, workers: int, cpus_per_worker: float | None, train_size: int,
              address: str | None) -> dict:
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--dataset", str(dataset), "--epochs", str(epochs),
           "--batch-size", "128", "--set", f"data.train_limit={train_size}", "--set", "data.test_limit=1000",
           "--set", "train.eval_nll_samples=10", "--set", "train.eval_nll_examples=200",
           "--final-nll-samples", "10", "--no-progress", "--num-workers", str(workers), "--output", str(output)]
    if workers:
        if cpus_per_worker is not None:
            cmd += ["--cpus-per-worker", str(cpus_per_worker)]
        if address:
            cmd += ["--address", address]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Track beside the run folder, not in the user's ./mlflow.db (both backends pay the same logging).
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{output.parent / 'mlflow.db'}")
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    results = json.loads((output / "results.json").read_text())
    metrics = [json.loads(ln) for ln in (output / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return {"wall_s": wall, "train_seconds": results["train_seconds"],
            "images_per_sec": [m["train/images_per_sec"] for m in metrics]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-size", type=int, default=10000, help="training images (default 10000)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the throughput runs (default 3; the first is a warm-up)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each one-epoch overhead command (default 2)")
    parser.add_argument("--cpus-per-worker", type=float, default=None,
                        help="CPUs each Ray worker reserves (default: vaezoo train's own, which on a local "
                             "cluster splits the machine evenly over the workers; 1 on a joined one)")
    parser.add_argument("--address", help="a Ray cluster to join instead of starting one per command "
                                          "(results.json key ray_overhead_address)")
    parser.add_argument("--overhead-only", action="store_true", help="only the one-epoch overhead commands")
    add_save_argument(parser)
    args = parser.parse_args()

    def log(msg: str) -> None:
        print(f"[ray_overhead] {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="vaezoo-bench-") as tmp:
        tmp = Path(tmp)
        if FMNIST.is_dir():
            dataset, source = FMNIST, "fashion-mnist (/usr/share/datasets)"
        else:
            dataset, source = synthetic_data(tmp / "data", args.train_size, 1000), "synthetic 28x28"
        common = dict(cpus_per_worker=args.cpus_per_worker, train_size=args.train_size, address=args.address)
        count = 0

        def run(epochs: int, workers: int) -> dict:
            nonlocal count
            count += 1
            log(f"run {count}: {epochs} epoch(s), {'in-process' if workers == 0 else f'{workers} Ray worker(s)'}")
            r = run_train(dataset, tmp / f"run{count}", epochs=epochs, workers=workers, **common)
            log(f"  wall {r['wall_s']:.1f}s, training loop {r['train_seconds']:.1f}s")
            return r

        overhead = {}
        # Interleaved (in-process, Ray, in-process, Ray, ...): on a shared machine the load moves,
        # and each pair's difference sees about the same load on both sides.
        pairs = [(run(1, 0), run(1, 1)) for _ in range(args.repeats)]
        for label, side in (("in_process", 0), ("ray_1_worker", 1)):
            runs = [pair[side] for pair in pairs]
            overhead[label] = {"wall_s": [round(r["wall_s"], 2) for r in runs],
                               "wall_s_median": round(statistics.median(r["wall_s"] for r in runs), 2),
                               "train_seconds_median": statistics.median(r["train_seconds"] for r in runs)}
        overhead["ray_minus_in_process_s"] = round(overhead["ray_1_worker"]["wall_s_median"]
                                                   - overhead["in_process"]["wall_s_median"], 2)
        overhead["ray_minus_in_process_s_per_pair"] = [round(ray["wall_s"] - local["wall_s"], 2) for local, ray in pairs]
        overhead["ray_minus_in_process_s_median_of_pairs"] = round(statistics.median(
            ray["wall_s"] - local["wall_s"] for local, ray in pairs), 2)

        throughput = {}
        for label, workers in () if args.overhead_only else (("in_process", 0), ("ray_1_worker", 1), ("ray_2_workers", 2)):
            r = run(args.epochs, workers)
            steady = r["images_per_sec"][1:] or r["images_per_sec"]
            throughput[label] = {"images_per_sec_per_epoch": [round(v) for v in r["images_per_sec"]],
                                 "images_per_sec": round(statistics.median(steady)), "wall_s": round(r["wall_s"], 2)}
        if throughput:
            throughput["speedup_2_vs_1_workers"] = round(throughput["ray_2_workers"]["images_per_sec"]
                                                         / throughput["ray_1_worker"]["images_per_sec"], 3)

    import torch

    emit("ray_overhead_address" if args.address else "ray_overhead", {
        "benchmark": "ray_overhead",
        "machine": {"cpus": os.cpu_count(), "torch_threads_in_process": torch.get_num_threads(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "setup": {"data": source, "train_size": args.train_size, "batch_size": 128, "model": "mlp 784-400-20 bernoulli",
                  "cpus_per_worker": args.cpus_per_worker or "vaezoo train's default", "cluster": args.address or "local, started by each command"},
        "overhead_one_epoch": overhead,
        **({"throughput": throughput} if throughput else {}),
    }, args.save)


if __name__ == "__main__":
    main()
