"""vaezoo against pythae, epoch by epoch at the same moments (issue #20, item 1).

    python benchmarks/peer_paired_epochs.py [--batch-size 128] [--rounds 20] [--inputs defaults|same]
                                            [--train-images N] [--no-save]

train_throughput.py compares whole runs of each library, and this VM's speed phases (minutes
long, up to 40%) spread the rounds' ratios 0.9-1.9x. Here both libraries train at once in two
processes and take turns, one epoch each (benchmarks/_turns.py), so each round's two epochs are
seconds apart:

* `vaezoo`: core.training.train, the loop an in-process `vaezoo train` runs (fused Adam, its
  default), timing its own training steps (`train/images_per_sec`);
* `pythae`: pythae 0.1.2's `BaseTrainer.train_step`, one call per epoch, on the same network
  (benchmarks/_pythae_peer.py says what is timed and why).

`--inputs defaults` (the issue's target): each library as a user meets it, vaezoo drawing a
fresh binarisation of each batch, pythae on the grey levels. `--inputs same`: both on the very
same static bits. Round 0 is a warm-up; the rounds alternate which side goes first.
benchmarks/_paired.py judges the issue's targets: vaezoo at least 1.25x pythae at batch 128 and
1.4x at 512. Needs the `bench` extra. Prints one JSON object; unless --no-save it is merged into
benchmarks/results.json under "peer_paired_epochs_<inputs>_<batch>".
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _paired import alternate, judge_ratio
from _results import add_save_argument, emit
from _turns import Coordinator, Turns, make_pipes, train_in_turns

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIDES = ("vaezoo", "pythae")
TARGETS = {128: 1.25, 512: 1.4}  # issue #20, each library with its defaults


def run_vaezoo(folder: str, batch_size: int, epochs: int, binarize: str, images: int | None) -> None:
    from core.datasets import prepare_data
    from train_throughput import vaezoo_config

    train_in_turns(folder, "vaezoo", vaezoo_config(batch_size, epochs, binarize, images),
                   prepare_data("fashion-mnist", None, binarize, images, 500))


def run_pythae(folder: str, batch_size: int, epochs: int, binarize: str, images: int | None) -> None:
    from _pythae_peer import pythae_throughput
    from train_throughput import pythae_inputs

    x = pythae_inputs(binarize, images)
    turns = Turns(folder, "pythae")
    pythae_throughput(x, batch_size, epochs, before_epoch=turns.wait, after_epoch=turns.answer)
    turns.wait()  # the coordinator's "end"


def fail_with_either(children: list[subprocess.Popen]) -> None:
    """A side that fails leaves the coordinator waiting on its pipe for ever: end the whole run."""
    while True:
        for child in children:
            if child.poll() not in (None, 0):
                for other in children:
                    other.kill()
                print("peer_paired_epochs: a side failed (see above)", file=sys.stderr, flush=True)
                os._exit(1)
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--inputs", choices=("defaults", "same"), default="defaults")
    parser.add_argument("--train-images", type=int, default=None, help="default: all 60,000")
    parser.add_argument("--role", choices=("driver", *SIDES), default="driver", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    add_save_argument(parser)
    args = parser.parse_args()
    # vaezoo's default draws a fresh binarisation per batch; pythae has no binarisation (grey levels)
    binarize = {"defaults": {"vaezoo": "dynamic", "pythae": "none"},
                "same": {"vaezoo": "static", "pythae": "static"}}[args.inputs]
    if args.role != "driver":
        run = run_vaezoo if args.role == "vaezoo" else run_pythae
        return run(args.folder, args.batch_size, args.rounds + 1, binarize[args.role], args.train_images)
    if args.rounds < 3 or args.batch_size < 1:
        parser.error("--rounds must be at least 3 (benchmarks/_paired.py) and --batch-size positive")
    from _pythae_peer import pythae_version

    if pythae_version() is None:
        parser.error("pythae is not installed: pip install -c constraints.txt -e '.[bench]'")

    folder = tempfile.mkdtemp(prefix="vzpeer")
    make_pipes(folder, SIDES)
    common = ["--folder", folder, "--batch-size", str(args.batch_size), "--rounds", str(args.rounds),
              "--inputs", args.inputs] + (["--train-images", str(args.train_images)] if args.train_images else [])
    children = [subprocess.Popen([sys.executable, __file__, "--role", side, *common]) for side in SIDES]
    threading.Thread(target=fail_with_either, args=(children,), daemon=True).start()
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    try:
        coordinator = Coordinator(folder, SIDES)  # waits for both sides
        for side in SIDES:  # warm-up: data, model, first epoch
            coordinator.turn(side)
        for i in range(args.rounds):
            for side in alternate(SIDES, i):
                rates[side].append(coordinator.turn(side))
            print(f"[peer_paired_epochs] round {i + 1}/{args.rounds}: vaezoo {rates['vaezoo'][-1]:,.0f}, "
                  f"pythae {rates['pythae'][-1]:,.0f} images/s", file=sys.stderr, flush=True)
        coordinator.end()
        if any(child.wait() != 0 for child in children):
            raise SystemExit("a side failed (see above)")
    finally:
        for child in children:  # never leave a side waiting on a pipe
            child.kill()
        shutil.rmtree(folder, ignore_errors=True)
    pairs = list(zip(rates["vaezoo"], rates["pythae"]))
    result = {
        "benchmark": "peer_paired_epochs",
        "batch_size": args.batch_size,
        "inputs": args.inputs,
        "binarize": binarize,
        "train_images": args.train_images or 60000,
        "rounds": args.rounds,
        "pythae_version": pythae_version(),
        "images_per_sec_median": {side: round(statistics.median(v)) for side, v in rates.items()},
        "vaezoo_vs_pythae": judge_ratio(pairs, TARGETS.get(args.batch_size, 1.0) if args.inputs == "defaults" else 1.0),
        "images_per_sec": rates,
    }
    emit(f"peer_paired_epochs_{args.inputs}_{args.batch_size}", result, args.save)


if __name__ == "__main__":
    main()
