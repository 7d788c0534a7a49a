"""What runs beside the training threads: CPU and wake-ups (context switches) per second of every
thread of this process's Ray session, during an in-process run and then during a one-worker Ray
Train run, both in the same local cluster (issue #20: where one Ray worker's missing throughput goes).

    python benchmarks/ray_background.py [--batch-size 128] [--epochs 6] [--train-images 60000] [--wait 5] [--window 10]

Each phase trains in a thread; after --wait seconds (for Ray, counted from the start of its
training worker) the script reads /proc for every process that
descends from it (the cluster's daemons, Ray Train's actors, the worker) over --window seconds.
A thread that used over 0.2 cores is a training thread; everything else is listed, grouped by
process title. Prints text; saves nothing.
"""
from __future__ import annotations

import argparse
import os
import threading
import time

import train_throughput as tt
from _session import has_process, session_pids

HZ = os.sysconf("SC_CLK_TCK")


def _threads() -> dict[tuple[int, int], tuple[float, int, str]]:
    """(pid, tid) -> (CPU seconds, context switches, process title)."""
    out = {}
    for pid in session_pids():
        try:
            title = open(f"/proc/{pid}/cmdline").read().split("\0")[0].rsplit("/", 1)[-1][:40]
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                stat = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
                switches = sum(int(line.split()[1]) for line in open(f"/proc/{pid}/task/{tid}/status")
                               if "ctxt_switches" in line)
                out[(pid, int(tid))] = ((int(stat[11]) + int(stat[12])) / HZ, switches, title)
            except (OSError, ValueError):
                pass
    return out


def measure(label: str, train, wait_s: float, window_s: float, trainer_title: str | None = None) -> None:
    """With `trainer_title`, the --wait seconds count from when a process of that title exists."""
    result: dict[str, float] = {}
    worker = threading.Thread(target=lambda: result.setdefault("rate", train()))
    worker.start()
    while trainer_title and worker.is_alive() and not has_process(trainer_title):
        time.sleep(0.2)  # Ray starts the cluster's Train actors first: seconds
    time.sleep(wait_s)
    before, started = _threads(), time.time()
    time.sleep(window_s)
    after, seconds = _threads(), time.time() - started
    worker.join()
    rows = [((after[k][0] - before[k][0]) / seconds, (after[k][1] - before[k][1]) / seconds, after[k][2])
            for k in after if k in before]
    training = [r for r in rows if r[0] > 0.2]
    rest = [r for r in rows if r[0] <= 0.2]
    print(f"== {label}: {result['rate']:.0f} images/s; load average {os.getloadavg()[0]:.1f}")
    for cpu, switches, title in training:
        print(f"   training thread of {title}: {cpu:.2f} cores, {switches:.0f} wake-ups/s")
    print(f"   every other thread: {100 * sum(r[0] for r in rest):.1f}% of a core, {sum(r[1] for r in rest):.0f} wake-ups/s")
    by_title: dict[str, list[float]] = {}
    for cpu, switches, title in rest:
        total = by_title.setdefault(title, [0.0, 0.0])
        total[0] += cpu
        total[1] += switches
    for title, (cpu, switches) in sorted(by_title.items(), key=lambda kv: -kv[1][1]):
        print(f"     {title:40s} {100 * cpu:5.2f}% {switches:6.0f}/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-images", type=int, default=60000)
    parser.add_argument("--wait", type=float, default=5.0,
                        help="seconds before the window opens (Ray: after its training worker started)")
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured")
    args = parser.parse_args()
    from pipelines.ray_connect import connect

    connect(None, num_cpus=os.cpu_count())
    tt.vaezoo_config(args.batch_size, args.epochs, "static", args.train_images)  # variants registered before the threads
    measure("in-process", lambda: tt.vaezoo_throughput(args.batch_size, args.epochs, "static", args.train_images, False),
            args.wait, args.window)
    measure("1 Ray Train worker", lambda: tt.ray_throughput(args.batch_size, args.epochs, args.train_images, os.cpu_count()),
            args.wait, args.window, trainer_title="ray::RayTrainWorker")


if __name__ == "__main__":
    main()
