"""Where Ray's start-up cost goes (issue #7, item 3): the parts `vaezoo train` on Ray pays that an
in-process run does not, each timed alone in one process, against a TorchTrainer whose loop does
nothing (the fixed cost of Ray Train itself) and one whose loop only loads the data as our worker
does (the part of the start-up that is ours).

    python benchmarks/ray_startup_parts.py [--rounds 6] [--no-save]

Rows: import of ray.train.torch in the driver; a local cluster start (pipelines.ray_connect, as
`vaezoo train` does it); TorchTrainer.fit() of a no-op loop on 1 worker, twice (the second with
warm caches); fit() of a loop that loads Fashion-MNIST (10k images) as the worker does; then
`--rounds` paired rounds of the no-op fit with Ray's TorchTrainer against the one `vaezoo train`
runs on a local cluster it starts (pipelines.ray_lean.trainer_class: no dataset manager,
placement-group cleaner or autoscaling coordinator, and the controller in the driver, not an actor
process of its own), alternating which goes first, judged as
"vaezoo's fit takes at most as long" (benchmarks/_paired.py); ray.shutdown.
The coordinator is a detached actor that outlives a run, so only the cluster's first fit (Ray's,
above) pays its start: the rounds understate what a `vaezoo train` command saves, which starts a
fresh cluster every time.
Prints one JSON object; unless --no-save it is merged into benchmarks/results.json under
"ray_startup_parts".
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _paired import alternate, judge_ratio
from _results import add_save_argument, emit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def noop_loop(config):
    import ray.train

    ray.train.report({"done": 1})


def load_data_loop(config):
    import time

    import ray.train

    from core.datasets import prepare_data

    started = time.perf_counter()
    prepare_data("fashion-mnist", None, "dynamic", 10000, None)
    Path(config["out"]).write_text(str(time.perf_counter() - started))  # metrics without a checkpoint are not kept
    ray.train.report({"done": 1})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="paired rounds of Ray's no-op fit against vaezoo's")
    add_save_argument(parser)
    args = parser.parse_args()
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # as pipelines/ray_train.py sets it
    seconds: dict[str, float] = {}

    def timed(name, fn):
        started = time.perf_counter()
        out = fn()
        seconds[name] = round(time.perf_counter() - started, 2)
        print(f"[ray_startup_parts] {name}: {seconds[name]} s", file=sys.stderr, flush=True)
        return out

    timed("import_torch", lambda: __import__("torch"))
    timed("import_ray_train_torch", lambda: __import__("ray.train.torch"))
    import ray
    import ray.train
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipelines.ray_connect import connect
    from pipelines.ray_lean import trainer_class

    timed("ray_init_local_cluster", lambda: connect(None, num_cpus=4))
    load_file = Path(tempfile.mkdtemp()) / "load_seconds"

    def fit(loop, name, config=None, trainer_cls=TorchTrainer):
        trainer = trainer_cls(loop, train_loop_config=config or {}, torch_config=TorchConfig(backend="gloo"),
                               scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                               run_config=ray.train.RunConfig(storage_path=tempfile.mkdtemp(), name=name))
        return lambda: trainer.fit()

    timed("fit_noop_loop", fit(noop_loop, "noop"))
    timed("fit_noop_loop_again", fit(noop_loop, "noop-again"))
    timed("fit_load_data_loop", fit(load_data_loop, "load", {"out": str(load_file)}))
    seconds["worker_data_load"] = round(float(load_file.read_text()), 2)
    trainers = {"ray": TorchTrainer, "vaezoo": trainer_class(local_cluster=True)}
    noop_rounds: list[dict[str, float]] = []
    for i in range(args.rounds):
        this_round = {}
        for side in alternate(list(trainers), i):
            started = time.perf_counter()
            fit(noop_loop, f"noop-{side}-{i}", trainer_cls=trainers[side])()
            this_round[side] = round(time.perf_counter() - started, 2)
        noop_rounds.append(this_round)
        print(f"[ray_startup_parts] no-op fit round {i}: {this_round}", file=sys.stderr, flush=True)
    timed("ray_shutdown", ray.shutdown)
    ray_fixed = (seconds["import_ray_train_torch"] + seconds["ray_init_local_cluster"] + seconds["fit_noop_loop_again"]
                 + seconds["ray_shutdown"])
    emit("ray_startup_parts", {
        "benchmark": "ray_startup_parts",
        "seconds": seconds,
        "ray_fixed_cost_s": round(ray_fixed, 2),
        "ours_s": seconds["worker_data_load"],
        "noop_fit_rounds_s": noop_rounds,
        "noop_fit_vaezoo_vs_ray": judge_ratio([(r["vaezoo"], r["ray"]) for r in noop_rounds], 1.0, at_least=False)
        if noop_rounds else None,
        "note": "ray_fixed_cost_s = import + cluster start + a no-op fit (warm) + shutdown: what any Ray Train "
                "job pays here; ours_s is the data load our worker adds before its first step",
    }, args.save)


if __name__ == "__main__":
    main()
