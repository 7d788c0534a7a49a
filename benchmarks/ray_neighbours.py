"""What the processes beside a one-worker Ray Train run cost its worker's matrix products (issue #20).

    python benchmarks/ray_neighbours.py [--rounds 60] [--trainer ray|vaezoo] [--calls 100] [--no-save]

During a live one-worker Ray Train run on a local cluster this script starts, two timers take turns,
each running `--calls` products of the first layer at batch 512 (512x784 @ 784x400, 2 torch threads)
and reporting the time per product:

* W, the Ray Train worker's training thread, and P, a plain Python process the driver started;
* P again while a group of the session's other processes is stopped (SIGSTOP, then SIGCONT as
  soon as P's turn ends): `left_out` (the dataset manager, placement-group cleaner and autoscaling
  coordinator, which `vaezoo train` leaves out on a local cluster: pipelines/ray_lean.py),
  `ray_train` (every Ray Train actor: those three, the controller, the synchronisation actor (not
  started by `vaezoo train` for one worker on a local cluster since 2026-12-02) and the worker,
  idle in its turn), `node` (the GCS, raylet, agents and idle workers) or `all`.

A coordinator in the driver hands out the turns through named pipes, in rotating order, so a
spell of this VM's drifting speed falls on every condition alike. Each pair of turns in a round is
one sample for benchmarks/_paired.py, which judges "W takes at most as long as P" and, for each
group, "P takes at most as long with the group stopped". `--trainer ray` runs Ray's own
TorchTrainer (the left-out helpers present), `vaezoo` the one `vaezoo train` runs, on a
cluster without idle workers as `vaezoo train` starts it.
Prints one JSON object; unless --no-save it is merged into benchmarks/results.json under
"ray_neighbours".
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from _paired import judge_ratio
from _results import add_save_argument, emit
from _session import signal_all

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.ray_connect import descendant_processes  # noqa: E402 (no torch, no Ray)

# Run by P (`python -c`) and, with NAME = "W", by the Ray worker: wait for "go" on its pipe, time
# the products, answer on the shared pipe; "stop" ends it.
TIMER = r'''
import sys, time, torch
FOLDER, NAME, CALLS = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(2)
x, w = torch.randn(512, 784), torch.randn(784, 400)
for _ in range(50):
    x @ w
turns, answers = open(f"{FOLDER}/go_{NAME}"), open(f"{FOLDER}/done", "w")
while turns.readline().strip() == "go":
    started = time.perf_counter()
    for _ in range(CALLS):
        x @ w
    answers.write(f"{NAME} {(time.perf_counter() - started) * 1e3 / CALLS}\n")
    answers.flush()
'''
LEFT_OUT = ("ray::DatasetManager", "ray::PlacementGroupCleaner", "ray::_AutoscalingCoordinatorActor")
NODE_ACTORS = ("ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent")  # per node, with or without Train
GROUPS = ("left_out", "ray_train", "node", "all")


def worker_loop(config: dict) -> None:
    sys.argv = ["timer", config["folder"], "W", str(config["calls"])]
    exec(compile(TIMER, "timer", "exec"), {"__name__": "timer"})


def neighbour_groups(exclude: set[int]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {name: [] for name in GROUPS}
    for pid, _, title in descendant_processes():
        if pid in exclude:
            continue
        train_actor = title.startswith("ray::") and not title.startswith(NODE_ACTORS)
        groups["ray_train" if train_actor else "node"].append(pid)
        if title.startswith(LEFT_OUT):
            groups["left_out"].append(pid)
        groups["all"].append(pid)
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--calls", type=int, default=100, help="products per turn")
    parser.add_argument("--trainer", choices=("ray", "vaezoo"), default="ray")
    add_save_argument(parser)
    args = parser.parse_args()
    if args.rounds < 1 or args.calls < 1:
        parser.error("--rounds and --calls must be at least 1")

    folder = tempfile.mkdtemp(prefix="vzturns")
    for name in ("go_P", "go_W", "done"):
        os.mkfifo(f"{folder}/{name}")
    plain = subprocess.Popen([sys.executable, "-c", TIMER, folder, "P", str(args.calls)])
    turns = ["W", "P"] + [f"P_{g}_stopped" for g in GROUPS]
    times: dict[str, list[float]] = {t: [] for t in turns}
    found: dict[str, int] = {}
    failure: list[BaseException] = []

    def coordinate() -> None:
        try:
            pipes = {name: open(f"{folder}/go_{name}", "w") for name in ("P", "W")}  # waits for both timers
            answers = open(f"{folder}/done")
            groups = neighbour_groups({os.getpid(), plain.pid})
            found.update({g: len(p) for g, p in groups.items()})
            for i in range(args.rounds):
                order = turns[i % len(turns):] + turns[:i % len(turns)]
                for turn in order if i % 2 == 0 else order[::-1]:
                    stopped = groups[turn.split("_", 1)[1].rsplit("_", 1)[0]] if turn.startswith("P_") else []
                    signal_all(stopped, signal.SIGSTOP)
                    try:
                        pipes[turn[0]].write("go\n")
                        pipes[turn[0]].flush()
                        times[turn].append(float(answers.readline().split()[1]))
                    finally:
                        signal_all(stopped, signal.SIGCONT)
                print(f"[ray_neighbours] round {i + 1}/{args.rounds}", file=sys.stderr, flush=True)
            for pipe in pipes.values():
                pipe.write("stop\n")
                pipe.close()
        except BaseException as err:  # the timers are not waiting for anything else: let them end
            failure.append(err)
            for name in ("P", "W"):
                with open(f"{folder}/go_{name}", "w") as pipe:
                    pipe.write("stop\n")

    coordinator = threading.Thread(target=coordinate, daemon=True)
    coordinator.start()
    import ray.train
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.ray_connect import connect, disconnect
    from pipelines.ray_lean import set_local_cluster_defaults, torch_config, trainer_class

    connect(None, num_cpus=2, idle_workers=args.trainer == "ray")  # `vaezoo train` starts none
    set_local_cluster_defaults()
    trainer_cls = TorchTrainer if args.trainer == "ray" else trainer_class(local_cluster=True)
    trainer_cls(worker_loop, train_loop_config={"folder": folder, "calls": args.calls},
                torch_config=torch_config("gloo", 1),
                scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 2}),
                run_config=ray.train.RunConfig(storage_path=tempfile.mkdtemp(), name="neighbours")).fit()
    coordinator.join()
    plain.wait()
    disconnect()
    shutil.rmtree(folder, ignore_errors=True)
    if failure:
        raise failure[0]
    emit("ray_neighbours", {
        "benchmark": "ray_neighbours",
        "trainer": args.trainer,
        "rounds": args.rounds,
        "calls_per_turn": args.calls,
        "processes_per_group": found,
        "ms_per_product_median": {t: round(statistics.median(v), 4) for t, v in times.items()},
        "worker_vs_plain_process": judge_ratio(list(zip(times["W"], times["P"])), 1.0, at_least=False),
        "with_group_stopped_vs_running": {
            g: judge_ratio(list(zip(times[f"P_{g}_stopped"], times["P"])), 1.0, at_least=False) for g in GROUPS},
        "raw_ms": times,
    }, args.save)


if __name__ == "__main__":
    main()
