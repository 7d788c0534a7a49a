"""One-worker Ray Train against in-process training, epoch by epoch at the same moments (issue #20, item 2).

    python benchmarks/ray_paired_epochs.py [--batch-size 128] [--rounds 30] [--train-images N]
                                           [--binarize static|dynamic] [--no-save]
                                           [--also-stopped TITLE ...]

Whole runs minutes apart inherit this VM's speed phases (whole runs land up to 40% apart), so the
rounds of train_throughput.py's one-worker Ray rows spread 0.6-1.3x and 30 of them leave the 0.95x
target unresolved. Here both sides are alive at once and take turns, one steady epoch each:

* `ray`: `vaezoo train`'s own Ray run (pipelines.ray_train.run_ray on a local cluster it starts:
  the lean trainer, one worker holding both CPUs as torch threads, its checkpoint report after each
  epoch), whose loop waits for its next turn after each report;
* `in_process`: core.training.train, the loop an in-process `vaezoo train` runs, in a plain
  process that never imports Ray, on the same data and config, while every other process of the
  session is stopped (SIGSTOP, SIGCONT when its epoch ends: the driver, the cluster's daemons and
  idle workers, Ray Train's controller and worker). That is the machine an
  in-process run has, with no Ray on it; only the stopped processes' memory stays;
* `in_process_beside_ray`: the same plain process with nothing stopped, so the ratio splits into the
  worker against a plain process beside the same neighbours, and what the neighbours cost;
* with `--also-stopped TITLE`, `beside_ray_without_TITLE`: the plain process again while only the
  session's processes whose title starts with TITLE (e.g. `ray::TrainController`) are stopped, judged
  against `in_process_beside_ray`: what that one neighbour costs an epoch.

A coordinator process (no Ray, no torch) hands out the turns through named pipes, in rotating order,
each round in the other direction. Images/s are those the loop logs (`train/images_per_sec`: the
epoch's training steps). Round 0, each side's data preparation and first epoch, is a warm-up.
benchmarks/_paired.py judges "ray >= 0.95x in_process" over the rounds. Prints one JSON object;
unless --no-save it is merged into benchmarks/results.json under "ray_paired_epochs_<batch>".
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _paired import alternate, judge_ratio
from _results import add_save_argument, emit
from _session import session_pids, signal_all
from _turns import Coordinator, make_pipes, train_in_turns

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.ray_connect import descendant_processes  # noqa: E402 (no torch, no Ray)

TURNS = ("ray", "in_process", "in_process_beside_ray")
SIDE_OF = {"ray": "ray", "in_process": "plain", "in_process_beside_ray": "plain"}


def ray_worker_in_turns(folder: str):
    """vaezoo's own Ray Train worker function, its loop taking turns: built in the driver, shipped
    by value (cloudpickle) and run on the worker, where pipelines.ray_train is imported unchanged."""

    def worker(loop_config: dict) -> None:
        import pipelines.ray_train as ray_train

        own_train = ray_train.train
        # The run's own report (its checkpoint, as in every `vaezoo train`) comes before the answer.
        ray_train.train = lambda config, report, **kwargs: train_in_turns(
            folder, "ray", config, train=own_train, report=report, **kwargs)
        ray_train._train_worker(loop_config)

    return worker


def run_plain(folder: str, config_json: str) -> None:
    from core.config import RunConfig
    from core.training import prepare_run_data

    config = RunConfig.from_dict(json.loads(config_json))
    train_in_turns(folder, "plain", config, prepare_run_data(config))


def without(title: str) -> str:
    return f"beside_ray_without_{title}"


def coordinate(folder: str, rounds: int, driver: int, plain: int, also_stopped: list[str]) -> None:
    coordinator = Coordinator(folder, ("plain", "ray"))  # waits for both sides
    turns = TURNS + tuple(without(title) for title in also_stopped)
    rates: dict[str, list[float]] = {turn: [] for turn in turns}

    def take(turn: str) -> float:
        stopped = [p for p in session_pids(driver) if p not in (os.getpid(), plain)] if turn == "in_process" else []
        for title in also_stopped:
            if turn == without(title):
                stopped = [pid for pid, _, cmdline in descendant_processes(driver) if cmdline.startswith(title)]
                if not stopped:
                    raise SystemExit(f"--also-stopped {title}: no such process in the session")
        signal_all(stopped, signal.SIGSTOP)
        try:
            return coordinator.turn(SIDE_OF.get(turn, "plain"))  # the --also-stopped turns are plain
        finally:
            signal_all(stopped, signal.SIGCONT)

    take("ray"), take("in_process_beside_ray")  # warm-up: data, model, first epoch
    for i in range(rounds):
        for turn in alternate(turns[i % len(turns):] + turns[:i % len(turns)], i):
            rates[turn].append(take(turn))
        print(f"[ray_paired_epochs] round {i + 1}/{rounds}: "
              + ", ".join(f"{t} {rates[t][-1]:,.0f}" for t in turns), file=sys.stderr, flush=True)
    coordinator.end()
    Path(folder, "rates.json").write_text(json.dumps(rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--train-images", type=int, default=None, help="default: all 60,000")
    parser.add_argument("--binarize", choices=("static", "dynamic"), default="static")
    parser.add_argument("--role", choices=("driver", "plain", "coordinator"), default="driver", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--also-stopped", nargs="+", default=[], metavar="TITLE",
                        help="also time the plain process with only these Ray processes stopped")
    parser.add_argument("--pids", type=int, nargs=2, help=argparse.SUPPRESS)
    add_save_argument(parser)
    args = parser.parse_args()
    if args.role == "plain":
        return run_plain(args.folder, args.config)
    if args.role == "coordinator":
        return coordinate(args.folder, args.rounds, *args.pids, args.also_stopped)
    if args.rounds < 3 or args.batch_size < 1:
        parser.error("--rounds must be at least 3 (benchmarks/_paired.py) and --batch-size positive")

    from train_throughput import vaezoo_config

    from pipelines import ray_train

    folder = tempfile.mkdtemp(prefix="vzepochs")
    make_pipes(folder, ("plain", "ray"))
    config = vaezoo_config(args.batch_size, args.rounds + 1, args.binarize, args.train_images)
    plain_config = config.with_overrides({"train.epochs": (2 + len(args.also_stopped)) * args.rounds + 1})
    me = [sys.executable, __file__, "--folder", folder]
    plain = subprocess.Popen(me + ["--role", "plain", "--config", json.dumps(plain_config.to_dict())])
    coordinator = subprocess.Popen(me + ["--role", "coordinator", "--rounds", str(args.rounds),
                                         "--pids", str(os.getpid()), str(plain.pid)]
                                   + (["--also-stopped", *args.also_stopped] if args.also_stopped else []))
    import _turns
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(_turns)  # the worker cannot import benchmarks/ modules
    ray_train._train_worker = ray_worker_in_turns(folder)
    try:
        with tempfile.TemporaryDirectory(prefix="vaezoo-bench-ray-") as tmp, \
                contextlib.redirect_stdout(sys.stderr):  # its epoch lines: stdout is this script's JSON
            ray_train.run_ray(config, Path(tmp) / "run", final_nll_samples=1, num_workers=1)
        if coordinator.wait() != 0 or plain.wait() != 0:
            raise SystemExit("the coordinator or the in-process side failed (see above)")
        rates = json.loads(Path(folder, "rates.json").read_text())
    finally:
        for child in (coordinator, plain):  # never leave a side waiting on a pipe
            child.kill()
        shutil.rmtree(folder, ignore_errors=True)
    emit(f"ray_paired_epochs_{args.batch_size}", {
        "benchmark": "ray_paired_epochs",
        "batch_size": args.batch_size,
        "binarize": args.binarize,
        "train_images": args.train_images or 60000,
        "rounds": args.rounds,
        "images_per_sec_median": {t: round(statistics.median(v)) for t, v in rates.items()},
        "ray_vs_in_process": judge_ratio(list(zip(rates["ray"], rates["in_process"])), 0.95),
        "ray_vs_in_process_beside_ray": judge_ratio(list(zip(rates["ray"], rates["in_process_beside_ray"])), 1.0),
        "in_process_beside_ray_vs_alone": judge_ratio(
            list(zip(rates["in_process_beside_ray"], rates["in_process"])), 1.0),
        **{f"{without(title)}_vs_beside_ray": judge_ratio(
            list(zip(rates[without(title)], rates["in_process_beside_ray"])), 1.0) for title in args.also_stopped},
        "images_per_sec": rates,
    }, args.save)


if __name__ == "__main__":
    main()
