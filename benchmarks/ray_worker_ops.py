"""The training step's ops timed in-process and inside a one-worker Ray Train worker, side by side.

Issue #20 asks one Ray worker for 0.95x the in-process training rate. This splits the step into
the ops that take its time, with the MLP 784-400-20 VAE's shapes at one batch size: the forward
matmul of the first layer (`fwd`), its weight gradient (`wgrad`) and input-side gradient
(`dgrad`), and a chain of elementwise ops (`elementwise`: sigmoid, mul, add on the batch's
pixels). Each is timed as the second-best of 7 repetitions of 200 calls with 2 torch threads,
in this process (the in-process baseline) and in a Ray Train worker that reserves both CPUs of
a local cluster, as `vaezoo train --num-workers 1` does. Rounds alternate which side goes first,
and each op's Ray/in-process time ratio is judged over the rounds (benchmarks/_paired.py; a
ratio above 1 means slower on Ray).

    python benchmarks/ray_worker_ops.py [--batch-size 512] [--rounds 4] [--no-save]

Prints one JSON object and, unless --no-save, merges it into benchmarks/results.json under
"ray_worker_ops".
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _paired import alternate, judge_ratio  # noqa: E402
from _results import add_save_argument, emit  # noqa: E402

PIXELS, HIDDEN = 784, 400


def time_ops(batch_size: int, threads: int) -> dict[str, float]:
    """Milliseconds per call of each op (second-best of 7 repetitions of 200 calls)."""
    import torch

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, PIXELS, generator=gen)
    w = torch.randn(PIXELS, HIDDEN, generator=gen)
    g = torch.randn(batch_size, HIDDEN, generator=gen)
    ops = {"fwd": lambda: x @ w, "wgrad": lambda: g.t() @ x, "dgrad": lambda: g @ w.t(),
           "elementwise": lambda: torch.sigmoid(x).mul_(2.0).add_(x)}
    for _ in range(100):  # warm the thread pool and caches
        x @ w
    out = {}
    for name, op in ops.items():
        times = []
        for _ in range(7):
            start = time.perf_counter()
            for _ in range(200):
                op()
            times.append(time.perf_counter() - start)
        out[name] = sorted(times)[1] * 1e3 / 200
    return out


def on_ray_worker(batch_size: int, threads: int) -> dict[str, float]:
    """time_ops inside a one-worker Ray Train run on the local cluster main() started."""
    import ray.train
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.ray_lean import torch_config

    def loop(config: dict) -> None:  # the worker runs on this node: it hands its figures over in a file
        Path(config["out"]).write_text(json.dumps(time_ops(config["batch_size"], config["threads"])))

    with tempfile.TemporaryDirectory(prefix="vaezoo-bench-ops-") as storage:
        out = Path(storage) / "ms.json"
        TorchTrainer(
            loop, train_loop_config={"batch_size": batch_size, "threads": threads, "out": str(out)},
            torch_config=torch_config("gloo", 1),
            scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": threads}),
            run_config=ray.train.RunConfig(storage_path=storage, name="ops")).fit()
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=4)
    add_save_argument(parser)
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    from pipelines.ray_connect import connect
    from pipelines.ray_lean import set_local_cluster_defaults

    connect(None, num_cpus=threads)
    set_local_cluster_defaults()
    rounds = []
    for i in range(args.rounds):
        sides = {"in_process": lambda: time_ops(args.batch_size, threads),
                 "ray": lambda: on_ray_worker(args.batch_size, threads)}
        measured = {side: sides[side]() for side in alternate(list(sides), i)}
        rounds.append(measured)
        print(f"round {i}: " + ", ".join(f"{side} " + " ".join(f"{k}={v:.3f}" for k, v in ms.items())
                                        for side, ms in measured.items()), file=sys.stderr, flush=True)
    ops = list(rounds[0]["in_process"])
    emit("ray_worker_ops", {
        "benchmark": "ray_worker_ops", "batch_size": args.batch_size, "torch_threads": threads,
        "rounds": args.rounds, "ms_per_call": rounds,
        # time ratios: "holds" here means Ray is at most 1/0.95 as slow as in-process on that op
        "ray_time_vs_in_process": {op: judge_ratio([(r["ray"][op], r["in_process"][op]) for r in rounds], 1 / 0.95,
                                                   at_least=False) for op in ops},
    }, args.save)


if __name__ == "__main__":
    main()
