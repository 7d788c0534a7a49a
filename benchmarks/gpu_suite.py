"""The GPU suite in one command (issue #20, item 5): training throughput on CUDA in fp32, with bf16
autocast and with torch.compile (vaezoo's uint8 dataset resident on the device, against the
classic PyTorch recipe that copies each DataLoader batch), then the k=5000 importance-sampled NLL
over the whole test set on the device.

    python benchmarks/gpu_suite.py              # on a machine with a CUDA device; saves each result
    python benchmarks/gpu_suite.py --dry-run    # the same steps on the CPU, tiny, nothing saved
    python benchmarks/gpu_suite.py --list       # print the commands only

Each step is one of the benchmark scripts, run in its own process; each (unless --dry-run) merges
its JSON into benchmarks/results.json under its own key: train_throughput_cuda,
train_throughput_cuda_bf16, train_throughput_cuda_compile and nll_throughput_cuda. --dry-run
proves the steps run (same flags but the device, a few hundred images, a small k) where no GPU
is at hand. The suite stops at the first step that fails and exits with its status.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (name, script, arguments on the GPU); the device flag is added by `suite`.
STEPS = [
    ("train fp32", "train_throughput.py", ["--no-ray"]),
    ("train bf16 autocast", "train_throughput.py", ["--no-ray", "--autocast", "bf16"]),
    ("train compile", "train_throughput.py", ["--no-ray", "--compile"]),
    ("nll k=5000", "nll_throughput.py", ["--k", "5000", "--images", "10000"]),
]
# What --dry-run changes so that every step takes seconds on a CPU.
DRY_RUN = {
    "train_throughput.py": ["--batch-sizes", "128", "--epochs", "2", "--train-images", "512", "--no-save"],
    "nll_throughput.py": ["--k", "50", "--images", "20", "--baseline-images", "10", "--no-save"],
}


def suite(dry_run: bool) -> list[tuple[str, list[str]]]:
    """(name, command) of every step: on CUDA, or with --dry-run on the CPU, tiny and unsaved."""
    commands = []
    for name, script, args in STEPS:
        if dry_run:
            # Later flags win with argparse: the tiny sizes override the GPU's.
            args = [*args, *DRY_RUN[script]]
        commands.append((name, [sys.executable, str(HERE / script), "--device", "cpu" if dry_run else "cuda", *args]))
    return commands


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="run every step on the CPU, tiny, saving nothing")
    parser.add_argument("--list", action="store_true", help="print the commands and exit")
    args = parser.parse_args()
    commands = suite(args.dry_run)
    if args.list:
        for name, cmd in commands:
            print(f"{name}: {' '.join(cmd)}")
        return 0
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            parser.error("torch sees no CUDA device here (use --dry-run to check the steps on the CPU)")
    for name, cmd in commands:
        print(f"[gpu_suite] {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        code = subprocess.run(cmd, cwd=HERE.parent).returncode
        print(f"[gpu_suite] {name}: exit {code} after {time.perf_counter() - started:.0f} s", file=sys.stderr,
              flush=True)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
