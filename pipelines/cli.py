"""The `vaezoo` command line: variants, train, evaluate, sample."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, KeyError, RuntimeError)


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
                   help="override any config field, e.g. --set variant.k=5 --set model.architecture=conv")
    p.add_argument("--seed", type=int)
    p.add_argument("--output", help="run folder; the trained model is saved there (default runs/<variant>-<dataset>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.add_argument("--final-nll-samples", type=int, default=1000, help="importance samples for the final test NLL (default 1000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_config(args):
    from core.config import RunConfig, parse_override

    config = RunConfig.from_file(args.config) if args.config else RunConfig()
    overrides = dict(parse_override(item) for item in args.set)
    flags = {"variant_name": args.variant, "data.dataset": args.dataset, "data.data_dir": args.data_dir,
             "train.epochs": args.epochs, "train.batch_size": args.batch_size, "model.latent_dim": args.latent_dim,
             "train.seed": args.seed}
    flags = {k: v for k, v in flags.items() if v is not None}
    if args.no_progress:
        flags["train.progress"] = False
    if "variant_name" in flags and flags["variant_name"] != config.variant_name:
        # A different variant starts from its own option defaults, not the file's.
        raw = config.to_dict() | {"variant_name": flags.pop("variant_name"), "variant": {}}
        config = RunConfig.from_dict(raw)
    return config.with_overrides(flags | overrides)


def cmd_variants(args) -> int:
    from core.registry import available_variants

    for name, cls in available_variants().items():
        print(f"{name:6s} {cls.paper}\n       {cls.description}")
    return 0


def cmd_train(args) -> int:
    from pipelines.local import default_output_dir, run_local

    config = build_config(args)
    output = Path(args.output) if args.output else default_output_dir(config)
    results = run_local(config, output, resume=args.resume, final_nll_samples=args.final_nll_samples)
    print(json.dumps({"output": str(output.resolve()), "test": results}, indent=2, sort_keys=True))
    return 0


def cmd_evaluate(args) -> int:
    from core.data import prepare_split, load_split
    from core.evaluation import evaluate
    from core.serialization import load_model

    variant, config = load_model(args.model)
    dataset = args.dataset or config.data.dataset
    data_dir = args.data_dir if (args.data_dir or args.dataset) else config.data.data_dir
    test = prepare_split(load_split(dataset, args.split, data_dir).take(args.limit), config.data.binarize, "test")
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

    if args.num < 1:
        raise ValueError("--num must be at least 1")
    variant, _ = load_model(args.model)
    images = variant.sample(args.num, generator=torch.Generator().manual_seed(args.seed))
    path = save_grid(images, args.output)
    print(f"wrote {args.num} samples to {path}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaezoo", description="Train, compare and use variational autoencoders.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("variants", help="list the variants with their papers")
    _train_parser(sub)
    e = sub.add_parser("evaluate", help="test metrics of a saved model, as JSON")
    e.add_argument("--model", required=True, help="model folder written by `vaezoo train --output`")
    e.add_argument("--dataset", help="default: the dataset the model was trained on")
    e.add_argument("--data-dir")
    e.add_argument("--split", default="test", choices=["train", "test"])
    e.add_argument("--nll-samples", type=int, default=5000, help="importance samples per example (default 5000)")
    e.add_argument("--limit", type=int, help="evaluate only the first N examples")
    e.add_argument("--no-progress", action="store_true")
    s = sub.add_parser("sample", help="draw images from a model's prior into a PNG grid")
    s.add_argument("--model", required=True)
    s.add_argument("--num", type=int, default=64)
    s.add_argument("--output", required=True, help="PNG file")
    s.add_argument("--seed", type=int, default=0)
    return parser


COMMANDS = {"variants": cmd_variants, "train": cmd_train, "evaluate": cmd_evaluate, "sample": cmd_sample}


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("vaezoo: interrupted", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as err:
        # One clear line for bad input; a bug still shows its traceback under VAEZOO_DEBUG=1.
        import os

        if os.environ.get("VAEZOO_DEBUG"):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"vaezoo {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
