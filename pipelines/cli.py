"""The `vaezoo` command line: variants, train, evaluate, sample, compare, encode, quality."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipelines.errors import Preempted, run_command, stop_request


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a variant", description="Train a variant and save it to --output.")
    p.add_argument("--variant", help="variant name (see `vaezoo variants`); default vae")
    p.add_argument("--dataset", help="dataset name (fashion-mnist, mnist, cifar10, ...) or a folder of IDX files")
    p.add_argument("--data-dir", help="folder with MNIST-layout IDX files for --dataset")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--latent-dim", type=int)
    p.add_argument("--config", help="YAML or JSON config file; flags and --set override it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set objective.k=5 --set model.architecture=conv")
    p.add_argument("--seed", type=int)
    p.add_argument("--output", help="run folder; the trained model is saved there (default runs/<variant>-<dataset>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.add_argument("--final-nll-samples", type=int, default=1000, help="importance samples for the final test NLL (default 1000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    t = p.add_argument_group("MLflow (tracking store: $MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db)")
    t.add_argument("--experiment", default="vae-zoo", help="MLflow experiment (default vae-zoo)")
    t.add_argument("--register", metavar="NAME", help="registered model name (default <dataset>-<variant>)")
    t.add_argument("--no-register", action="store_true", help="log the model in the run but register no version")
    r = p.add_argument_group("Ray Train (distributed data parallel)")
    r.add_argument("--num-workers", type=int, default=1,
                   help="Ray Train workers; each global batch is split across them (default 1; 0 trains in-process without Ray)")
    r.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL backend (default CPU workers, gloo)")
    r.add_argument("--cpus-per-worker", type=float, default=None,
                   help="CPUs reserved per worker, each a torch thread (default: on a local cluster the machine's "
                        "CPUs split over the workers; on a cluster joined with --address, 1)")
    r.add_argument("--address", help="Ray cluster to join (host:port, auto); default $RAY_ADDRESS, else a local "
                                     "cluster started for this run")
    r.add_argument("--storage-path", help="where Ray keeps checkpoints (the last 3), a folder or URI; shared storage "
                                          "(NFS, s3://...) when workers span nodes (default OUTPUT/ray_results)")
    r.add_argument("--max-failures", type=int, default=0,
                   help="restarts of a failed worker group from the last checkpoint (default 0; -1: no limit)")
    r.add_argument("--ray-logs", action="store_true",
                   help="also forward Ray's worker and controller logs to this console (default: one line per epoch)")


def _quality_parser(sub) -> None:
    p = sub.add_parser("quality", help="train every variant on one budget and check its paper's claims",
                       description="The quality benchmark (benchmarks/quality.py): every variant and its paper's "
                                   "baseline on the same budget, test NLL/ELBO/KL/active units, the papers' claims "
                                   "checked. Results per model in --out; a rerun continues.")
    p.add_argument("--out", default="quality", help="results folder (default ./quality); reruns continue it")
    p.add_argument("--suites", default="burda,dvae,dvae-small,m2,m1m2,cvae,zoo",
                   help="comma-separated, from burda, dvae, dvae-small, m2, m1m2, cvae, zoo, dcign, superres, inpaint, "
                        "aae (default the first seven; dcign needs --dataset dsprites)")
    p.add_argument("--seeds", default="0,1,2", help="seeds every model is trained with, one model each; claims are "
                                                   "judged over them and need >= 3 (default 0,1,2)")
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist (Debian package), mnist, or an IDX folder")
    p.add_argument("--data-dir", help="folder of MNIST-layout IDX files for --dataset (e.g. MNIST's)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs of every model (default 10)")
    p.add_argument("--nll-samples", type=int, default=5000, help="importance samples of the test NLL (default 5000)")
    p.add_argument("--nll-examples", type=int, default=1000, help="test images the NLL averages over (default 1000)")
    p.add_argument("--iwae-k", default="1,5,50", help="k values of the burda suite (default 1,5,50)")
    p.add_argument("--m2-labels", default="100,600,1000,3000", help="label counts of the m2 suite")
    p.add_argument("--m2-set", action="append", default=[], metavar="KEY=VALUE",
                   help="an m2 option for the m2 and m1m2 models (ablations), e.g. --m2-set alpha=1.0")
    p.add_argument("--small-train-limit", type=int, default=1000,
                   help="dvae-small: training images, few enough that the vae overfits (default 1000)")
    p.add_argument("--small-epochs", type=int, default=100, help="dvae-small: epochs (default 100)")
    p.add_argument("--train-limit", type=int, help="use only the first N training images (quick runs)")
    p.add_argument("--test-limit", type=int, help="use only the first N test images (quick runs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every model, e.g. --set model.latent_dim=50")
    p.add_argument("--force", action="store_true", help="retrain models whose results exist")
    p.add_argument("--no-figures", action="store_true", help="skip the sample and completion PNGs")
    p.add_argument("--mlflow", action="store_true", help="log quality.json and the figures to an MLflow run "
                                                         "(experiment vae-zoo-quality; MLFLOW_TRACKING_URI)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown instead of JSON")


# The config field each `vaezoo train` flag sets.
TRAIN_FLAGS = {"variant": "variant_name", "dataset": "data.dataset", "data_dir": "data.data_dir", "epochs": "train.epochs",
               "batch_size": "train.batch_size", "latent_dim": "model.latent_dim", "seed": "train.seed"}


def _given_flags(args) -> dict[str, object]:
    return {field: getattr(args, dest) for dest, field in TRAIN_FLAGS.items() if getattr(args, dest) is not None}


def build_config(args):
    from core.config import RunConfig, parse_override

    config = RunConfig.from_file(args.config) if args.config else RunConfig()
    overrides = dict(parse_override(item) for item in args.set)
    flags = _given_flags(args)
    if args.no_progress:
        flags["train.progress"] = False
    if "variant_name" in flags:  # a different variant starts from its own defaults, not the file's
        config = config.with_variant(flags.pop("variant_name"))
    return config.with_overrides(flags | overrides)


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _same_value(field: str, given: object, kept: object) -> bool:
    if given == kept:
        return True
    if field in ("data.dataset", "data.data_dir") and isinstance(given, str) and isinstance(kept, str):
        try:  # the same folder by another path (Ray runs record data folders as absolute paths)
            return Path(given).resolve() == Path(kept).resolve() and Path(given).exists()
        except OSError:
            return False
    return False


def refuse_conflicting_resume_flags(args, output: Path) -> None:
    """`--resume` continues a run with the config its checkpoint holds. A config flag, --set or
    --config that asks for something else is refused, naming the field, instead of being
    silently ignored. That includes --epochs: the resumed run trains to the checkpoint's
    train.epochs (the loop, its LR schedule and the MLflow run's logged params are all fixed by
    that config), so training longer is a new run, not a resume. --no-progress and the flags
    that are not config (--num-workers, --final-nll-samples, MLflow and Ray options) may differ."""
    from core.config import RunConfig, parse_override
    from core.serialization import read_checkpoint

    checkpoint = output / "checkpoints" / "last.pt"
    if checkpoint.is_file():
        kept = RunConfig.from_dict(read_checkpoint(checkpoint)["config"])  # weights only; one line for a bad file
    elif (output / "run_config.yaml").is_file():  # a Ray run killed before its first checkpoint was copied
        kept = RunConfig.from_file(output / "run_config.yaml")
    else:
        return
    flags = _given_flags(args)
    sets = dict(parse_override(item) for item in args.set)
    labels = {field: f"--{dest.replace('_', '-')} {getattr(args, dest)}" for dest, field in TRAIN_FLAGS.items()
              if field in flags}
    labels.update({field: f"--set {field}={value}" for field, value in sets.items()})
    if "variant_name" in flags and flags["variant_name"] != kept.variant_name:
        asked = flags
    elif args.config:
        asked = _flatten(build_config(args).to_dict())
    else:  # only what was given is compared: anything else comes from the checkpoint anyway
        asked = _flatten(kept.with_overrides(flags | sets).to_dict())
    have = _flatten(kept.to_dict())
    for field, value in asked.items():
        if field == "train.progress" or _same_value(field, value, have.get(field)):
            continue
        label = labels.get(field, f"--config {args.config} ({field}: {value!r})")
        raise ValueError(f"--resume: {label} conflicts with the run's {field}={have.get(field)!r} "
                         f"(a resumed run keeps its checkpoint's config; train a new --output to change it)")


def cmd_variants(args) -> int:
    from core.registry import available_variants

    for name, cls in available_variants().items():
        print(f"{name:6s} {cls.paper}\n       {cls.description}")
    return 0


def cmd_train(args) -> int:
    from pipelines.local import default_output_dir, prepare_output, run_local
    from pipelines import tracking

    config = build_config(args)
    output = (Path(args.output) if args.output else default_output_dir(config)).resolve()
    if args.num_workers < 0:
        raise ValueError("--num-workers must be 0 (in-process) or more")
    ray_only = [flag for flag, given in (("--use-gpu", args.use_gpu), ("--address", args.address),
                                         ("--storage-path", args.storage_path), ("--ray-logs", args.ray_logs)) if given]
    if args.num_workers == 0 and ray_only:
        raise ValueError(f"{', '.join(ray_only)}: only for training on Ray, not with --num-workers 0")
    from pipelines.ray_job import refuse_temporary_paths

    refuse_temporary_paths(output, tracking.tracking_uri(), output_given=bool(args.output))
    if not args.resume:
        prepare_output(output, resume=False)  # refuse a used folder before an MLflow run is opened
    elif not ((output / "checkpoints" / "last.pt").is_file() or (output / "ray_run.json").is_file()):
        raise FileNotFoundError(f"--resume: {output} holds no checkpoint and no Ray run to continue")
    else:
        refuse_conflicting_resume_flags(args, output)  # before the MLflow run is reopened
    # One MLflow run per training: opened here, continued by --resume, logged each epoch by the
    # driver (in-process, or as Ray registers the epoch), closed with the model and pictures. All
    # of it goes through a queue in the run folder: a tracker outage never stops training.
    from pipelines.tracking.outbox import UNDELIVERED_EXIT, TrackedRun, undelivered_line

    run = TrackedRun.open(config, output, args.resume, args.experiment)
    log_epoch = run.log_epoch
    try:
        if args.num_workers == 0:
            results = run_local(config, output, resume=args.resume, final_nll_samples=args.final_nll_samples,
                                epoch_hook=log_epoch)
        else:
            from pipelines.ray_train import run_ray

            results = run_ray(config, output, resume=args.resume, final_nll_samples=args.final_nll_samples,
                              num_workers=args.num_workers, use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker,
                              address=args.address, storage_path=args.storage_path, max_failures=args.max_failures,
                              ray_logs=args.ray_logs, epoch_hook=log_epoch)
    except BaseException as err:
        stopped = stop_request(err)
        run.end("KILLED" if stopped else "FAILED")
        if not args.resume:
            from pipelines.local import discard_unstarted_run

            discard_unstarted_run(output)  # no checkpoint yet: leave no half-made run folder behind
        if stopped is not None:
            print(_stopped_line(stopped, output), file=sys.stderr)
            raise stopped from None
        raise
    trained_config = build_config_from_run(output)
    name = None if args.no_register else (args.register or tracking.default_model_name(trained_config))
    info = run.finish(name)
    print(json.dumps({"output": str(output), "test": results, "mlflow": info}, indent=2, sort_keys=True))
    if run.pending:  # the model and results are in the run folder; the tracker gets them at sync
        print(undelivered_line("train", output, run.pending), file=sys.stderr)
        return UNDELIVERED_EXIT
    return 0


def cmd_sync(args) -> int:
    from pipelines.tracking.outbox import UNDELIVERED_EXIT, read_record, sync, undelivered_line

    output = Path(args.output).resolve()
    queued, left, info = sync(output)
    if left:
        print(undelivered_line("sync", output, left), file=sys.stderr)
        return UNDELIVERED_EXIT
    print(json.dumps({"output": str(output), "delivered_operations": queued, "run_id": read_record(output)["run_id"],
                      "mlflow": info}, indent=2, sort_keys=True))
    return 0


def _stopped_line(err: BaseException, output: Path) -> str:
    """What a preempted or interrupted training kept: the step in progress is abandoned, the
    checkpoint is the last complete epoch's (written atomically at the end of each epoch)."""
    from pipelines.local import CHECKPOINT

    signal_name = "SIGTERM" if isinstance(err, Preempted) else "SIGINT"
    checkpoint = output / CHECKPOINT
    if not checkpoint.is_file():
        return f"vaezoo train: stopped by {signal_name} before the first epoch ended: nothing to resume"
    from core.serialization import read_checkpoint

    epoch = read_checkpoint(checkpoint)["epoch"]
    return (f"vaezoo train: stopped by {signal_name}; the MLflow run is KILLED; {checkpoint} holds epoch {epoch}, "
            f"the last complete one: continue with `vaezoo train --output {output} --resume`")


def cmd_sweep(args) -> int:
    from pipelines.sweep import SWEEP_FILE, load_sweep, run_sweep

    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ValueError("--max-concurrent must be 1 or more")
    if not args.config and not (args.resume and args.output):
        raise ValueError("give --config SWEEP.yaml (or --resume --output SWEEP_DIR)")
    output = Path(args.output or Path("sweeps") / Path(args.config).stem)
    if args.resume:  # a resumed sweep keeps the file it started with (saved in the sweep folder)
        if not (output / SWEEP_FILE).is_file():
            raise FileNotFoundError(f"--resume: {output} holds no sweep to continue")
        sweep = None
    else:
        sweep = load_sweep(args.config)
    info = run_sweep(sweep, output, resume=args.resume, address=args.address, max_concurrent=args.max_concurrent)
    print(json.dumps(info, indent=2, sort_keys=True, default=str))
    return 0


def build_config_from_run(output: Path):
    from core.config import RunConfig

    return RunConfig.from_file(output / "run_config.yaml")


def cmd_evaluate(args) -> int:
    from core.data import PreparedData, prepare_split
    from core.datasets import fit_to_likelihood, load_split
    from core.evaluation import evaluate
    from core.serialization import load_model
    from pipelines.model_uri import resolve_model_uri

    variant, config = load_model(resolve_model_uri(args.model))
    dataset = args.dataset or config.data.dataset
    data_dir = args.data_dir if (args.data_dir or args.dataset) else config.data.data_dir
    test = prepare_split(load_split(dataset, args.split, data_dir).take(args.limit), config.data.binarize, "test")
    # scored as in training: dequantised for a Gaussian on grey levels, a Bernoulli on grey levels refused
    test = fit_to_likelihood(PreparedData(test, test, dynamic_train=False), config).test
    if test.shape != variant.shape:
        raise ValueError(f"{dataset} images are {test.shape.as_tuple()} but the model expects {variant.shape.as_tuple()}")
    results = evaluate(variant, test, nll_samples=args.nll_samples, progress=not args.no_progress)
    results.update(model=str(args.model), variant=config.variant_name, dataset=dataset, split=args.split,
                   examples=len(test), nll_samples=args.nll_samples, binarize=config.data.binarize)
    print(json.dumps(results, indent=2, sort_keys=True))
    return 0


def cmd_sample(args) -> int:
    import torch

    from core.serialization import load_model
    from pipelines.images import save_grid
    from pipelines.model_uri import resolve_model_uri

    if args.num < 1:
        raise ValueError("--num must be at least 1")
    variant, _ = load_model(resolve_model_uri(args.model))
    images = variant.sample(args.num, generator=torch.Generator().manual_seed(args.seed))
    path = save_grid(images, args.output)
    print(f"wrote {args.num} samples to {path}")
    return 0


def cmd_encode(args) -> int:
    from pipelines.encode import cmd_encode as run

    return run(args)


def cmd_complete(args) -> int:
    from pipelines.complete import cmd_complete as run

    return run(args)


def cmd_quality(args) -> int:
    from pipelines.quality import command

    return command(args)


def cmd_compare(args) -> int:
    from pipelines.compare import format_table, latest_runs

    print(format_table(latest_runs(experiment=args.experiment), args.format), end="")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaezoo", description="Train, compare and use variational autoencoders.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("variants", help="list the variants with their papers")
    _train_parser(sub)
    _quality_parser(sub)
    e = sub.add_parser("evaluate", help="test metrics of a saved model, as JSON")
    e.add_argument("--model", required=True, help="a model folder (`vaezoo train --output`), models:/NAME@ALIAS, "
                                                  "models:/NAME/VERSION or runs:/RUN_ID/model")
    e.add_argument("--dataset", help="default: the dataset the model was trained on")
    e.add_argument("--data-dir")
    e.add_argument("--split", default="test", choices=["train", "test"])
    e.add_argument("--nll-samples", type=int, default=5000, help="importance samples per example (default 5000)")
    e.add_argument("--limit", type=int, help="evaluate only the first N examples")
    e.add_argument("--no-progress", action="store_true")
    s = sub.add_parser("sample", help="draw images from a model's prior into a PNG grid")
    s.add_argument("--model", required=True, help="a model folder or an MLflow model URI")
    s.add_argument("--num", type=int, default=64)
    s.add_argument("--output", required=True, help="PNG file")
    s.add_argument("--seed", type=int, default=0)
    from pipelines.encode import add_encode_parser

    add_encode_parser(sub)
    w = sub.add_parser("sweep", help="a sweep of trainings on Ray Tune (ASHA, grid/random/optuna)",
                       description="Train every configuration of SWEEP.yaml's space on Ray Tune; one MLflow parent "
                                   "run, a child run per trial, the best trial registered (see pipelines/sweep.py).")
    w.add_argument("--config", help="SWEEP.yaml: base config, space, search, asha, resources (not needed with --resume)")
    w.add_argument("--output", help="sweep folder (default sweeps/<sweep file name>)")
    w.add_argument("--max-concurrent", type=int, help="trials at once (default: the file's max_concurrent, else 1)")
    w.add_argument("--resume", action="store_true", help="continue the sweep in --output; finished trials are kept")
    w.add_argument("--address", help="Ray cluster to join; default $RAY_ADDRESS, else a local cluster")

    from pipelines.complete.command import add_complete_parser

    add_complete_parser(sub)
    y = sub.add_parser("sync", help="deliver what a training queued while its MLflow tracker was down",
                       description="Deliver a run folder's queued metrics, params, tags, artifacts, model and "
                                   "registration to its MLflow run (created now if the tracker was down at the start). "
                                   "A second sync changes nothing.")
    y.add_argument("--output", required=True, help="the run folder of `vaezoo train`")
    c = sub.add_parser("compare", help="the latest run of each variant on the shared test metrics")
    c.add_argument("--experiment", default="vae-zoo", help="MLflow experiment (default vae-zoo)")
    c.add_argument("--format", default="text", choices=["text", "csv", "markdown"])
    return parser


COMMANDS = {"variants": cmd_variants, "train": cmd_train, "evaluate": cmd_evaluate, "sample": cmd_sample,
            "compare": cmd_compare, "sweep": cmd_sweep, "encode": cmd_encode, "quality": cmd_quality,
            "complete": cmd_complete, "sync": cmd_sync}


def main(argv: list[str] | None = None) -> int:
    import logging

    # MLflow announces the creation of a new SQLite store at INFO on stderr: not news to a user.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    args = make_parser().parse_args(argv)
    return run_command(args.command, COMMANDS[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
